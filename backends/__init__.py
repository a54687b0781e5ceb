"""The built-in pruneplug backends, installed as ``pruneplug_backends``; each is an ordinary plugin."""
