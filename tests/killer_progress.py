"""Shared by the kill -9 + resume tests (no heavy imports: the toy tests load it without transformers)."""
# The start of the kill -9 + resume tests' ``python -c`` scripts (each appends its own run): the
# imports and a progress object that kills its own process with SIGKILL when the stream enters a
# step starting with sys.argv[4] after sys.argv[5] blocks ("never": runs to the end).
KILLER_PROGRESS = """
import os, signal, sys


class Killer:
    def start(self, *a, **k): pass
    def set_step(self, step):
        if step.startswith(sys.argv[4]) and self.done == int(sys.argv[5]):
            os.kill(os.getpid(), signal.SIGKILL)
    def update(self, items=0, amount=0):
        self.done += items
    def close(self): pass
    done = 0
"""
