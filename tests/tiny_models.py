"""Tiny real models built in the tests (nothing downloaded): a 2-layer BERT directory."""

from __future__ import annotations

from pathlib import Path

WORDS = "the a cat dog sat on mat ran fast slow big small red blue".split()


def tiny_bert_dir(directory: Path) -> Path:
    """A Hugging Face model directory (config, weights, WordPiece tokenizer) of a 2-layer BERT with
    hidden size 16, seeded, so that transformers loads it like any checkpoint."""
    import torch
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)] + WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(str(directory))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(directory))
    return directory
