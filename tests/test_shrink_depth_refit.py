"""Dropped blocks compensated by a least-squares map folded into the block before them
(``compensate="refit"`` with ``drop_blocks``, pruneplug.structured.depth_refit): the map is the damped
least-squares solution, it brings the hidden states after the dropped run closer to the dense ones
on the calibration tokens, it adds no parameter, the directory and in-memory paths agree, and
post-norm blocks are refused. Tiny random-weight models of tests/hf_zoo.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
pytest.importorskip("safetensors")

import pruneplug as pp  # noqa: E402
from pruneplug.errors import InvalidArgumentError  # noqa: E402
from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.structured.depth_refit import fold_matrix, runs  # noqa: E402
from pruneplug.structured.plan import find_block_list  # noqa: E402
from pruneplug.torch.hf import text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import build_model_dir, load as _load, sample_texts  # noqa: E402

pytestmark = pytest.mark.hf

LAYERS = 6


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_model_dir("llama", tmp_path_factory.mktemp("depth") / "llama", num_hidden_layers=LAYERS)


def _calibration(directory):
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    return text_batches(tok, sample_texts(16, words=24), 32, 4)


def _states(model, batches, block_index, down=False):
    """Per batch, the real tokens' output of block ``block_index`` (or of its down projection)."""
    blocks = find_block_list(model)[1]
    target = blocks[block_index].mlp.down_proj if down else blocks[block_index]
    got = []
    handle = target.register_forward_hook(lambda m, a, out: got.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    return torch.cat([g[b["attention_mask"].bool()] for g, b in zip(got, batches)]).double()


def test_runs_are_maximal():
    assert runs([5, 2, 3, 9, 8]) == [(2, 3), (5, 5), (8, 9)]
    assert runs([]) == []


def test_the_fold_is_the_damped_least_squares_map(llama):
    """T from the shrink equals the closed form computed here from the dense model's states (block
    i before the dropped run i+1..e: its MLP output M, the rest of its output A, block e's output
    H), folding it adds no parameter, and it brings block i's new output closer to H."""
    batches = _calibration(llama)
    model = _load(llama)
    report = pp.torch.shrink_model(model, drop_blocks=2, block_method="angular", calibration=batches,
                                   compensate="refit", damping=0.05)
    [(i, (first, last))] = report.folded.items()  # angular drops one run of 2
    assert (first, last) == tuple(report.dropped_blocks) and i == first - 1

    dense = _load(llama)
    m = _states(dense, batches, i, down=True)
    a = _states(dense, batches, i) - m
    h = _states(dense, batches, last)
    gram, cross = m.T @ m, m.T @ (h - a)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    d = 0.05 * float(gram.diagonal().mean())
    expected = torch.linalg.solve(gram + d * eye, cross + d * eye)
    torch.testing.assert_close(fold_matrix(gram, cross, 0.05), expected)
    w = find_block_list(dense)[1][i].mlp.down_proj.weight.detach().double()
    folded = find_block_list(model)[1][i].mlp.down_proj.weight.detach().double()
    torch.testing.assert_close(folded, (expected.T @ w).float().double(), rtol=1e-4, atol=1e-6)
    assert pp.torch.count_parameters(model) == report.params_after  # nothing added
    assert float((a + m @ expected - h).norm()) < float((a + m - h).norm())


def test_any_drop_improves_the_calibration_fit_and_paths_agree(llama, tmp_path):
    """Whatever blocks BI drops: with the fold, the hidden states leaving the block before the first
    dropped run are closer (calibration tokens) to the dense model's after the run than without;
    the directory path writes the same weights as the in-memory one."""
    batches = _calibration(llama)
    texts = sample_texts(16, words=24)
    kw = dict(drop_blocks=2, compensate="refit", damping=0.05)
    report = shrink_model_dir(llama, tmp_path / "out", ShrinkRequest(**kw), texts, samples=16, seq_len=32,
                              batch_size=4)
    assert report.folded and all(i + 1 == run[0] for i, run in report.folded.items())
    written = _load(tmp_path / "out")
    plain = _load(llama)
    pp.torch.shrink_model(plain, drop_blocks=2, calibration=batches)
    model = _load(llama)
    memory = pp.torch.shrink_model(model, calibration=batches, **kw)
    assert memory.dropped_blocks == report.dropped_blocks and memory.folded == report.folded
    for (name, a), (_, b) in zip(model.state_dict().items(), written.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    dense = _load(llama)
    kept = [i for i in range(LAYERS) if i not in report.dropped_blocks]
    i, (first, last) = min(report.folded.items())  # the first run: every block before it is the dense one
    target = _states(dense, batches, last)
    with_fold = float((_states(model, batches, kept.index(i)) - target).norm())
    without = float((_states(plain, batches, kept.index(i)) - target).norm())
    assert with_fold < without


def test_refit_of_blocks_refusals(tmp_path, llama):
    bert = build_model_dir("bert", tmp_path / "bert", num_hidden_layers=4)
    with pytest.raises(InvalidArgumentError, match="post-norm"):
        shrink_model_dir(bert, tmp_path / "never", ShrinkRequest(drop_blocks=1, compensate="refit"), sample_texts(4))
    with pytest.raises(InvalidArgumentError, match="would undo the map"):
        shrink_model_dir(llama, tmp_path / "never", ShrinkRequest(mlp=0.25, drop_blocks=1, compensate="refit"),
                         sample_texts(4), reconstruct=pp.ReconstructSettings(steps=2))
    with pytest.raises(InvalidArgumentError, match="use compensate='refit'"):
        shrink_model_dir(llama, tmp_path / "never", ShrinkRequest(drop_blocks=1, compensate="bias"), sample_texts(4))
    assert not (tmp_path / "never").exists()
