"""Tiny real models built in the tests (nothing downloaded): a 2-layer BERT directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def same_layout_untouched_identical(src_path: Path, dst_path: Path, pruned: Any) -> tuple[dict, dict]:
    """Assert that the checkpoint at ``dst_path`` has the tensor names, dtypes and shapes of
    ``src_path`` and that every tensor not in ``pruned`` is byte-identical; return both as dicts."""
    from safetensors.numpy import load_file

    src, dst = load_file(str(src_path)), load_file(str(dst_path))
    assert sorted(src) == sorted(dst)
    for name in src:
        assert src[name].dtype == dst[name].dtype and src[name].shape == dst[name].shape, name
        if name not in pruned:
            assert src[name].tobytes() == dst[name].tobytes(), name  # untouched: byte-identical
    return src, dst
