"""The README and docs say which consumers read each output format today (issue 8 item 8: vLLM
removed its Sparse24 compressed-tensors support, PR 36799, and compressed-tensors 0.15.0 removed
the sparse compressors, so "what vLLM loads" was no longer true)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/sparse24.md", "docs/checkpoint.md", "pruneplug/compressed_tensors.py",
        "pruneplug/checkpoint/cli.py"]


@pytest.mark.parametrize("path", DOCS)
def test_no_unqualified_claim_that_vllm_loads_the_output(path):
    text = (ROOT / path).read_text()
    for m in re.finditer(r"vLLM", text):
        context = text[max(0, m.start() - 200): m.end() + 200]
        assert re.search(r"0\.19|legacy|36799", context), f"{path}: a vLLM claim without its version bound: {context!r}"
    assert not re.search(r"(what|which|formats?) vLLM loads", text), path


@pytest.mark.parametrize("path", ["README.md", "docs/sparse24.md"])
def test_consumer_table(path):
    text = (ROOT / path).read_text()
    table = text[text.index("Who reads each output today"):]
    table = table[: table.index("\n\n", table.index("|---|"))]
    for fact in ("TensorRT-LLM", "ModelOpt", "semi-structured", "SparseSemiStructuredTensor",
                 "vLLM up to 0.19.0", "compressed-tensors up to 0.14", "PR 36799", "0.15.0"):
        assert fact in table, f"{path}: the consumer table does not name {fact!r}"
