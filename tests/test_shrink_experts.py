"""Removing routed MoE experts (pp.torch.shrink_model(experts=...), ``pruneplug shrink --experts``):
the smaller model computes what the original computes with the removed experts masked out of
routing, its config counts the experts left, REAP scores what the paper defines, and bad requests
are refused before anything changes. Tiny random-weight Mixtral and Qwen2-MoE models of
tests/hf_zoo.py, under whichever transformers is installed (4.x: per-expert Linears; 5.x: fused
3-D expert parameters in memory, per-expert tensors in the directory)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
pytest.importorskip("safetensors")

import pruneplug as pp  # noqa: E402
from pruneplug.cli import main  # noqa: E402
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError  # noqa: E402
from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.structured.criteria import ExpertStats, UnitCriterion, get_unit_criterion, unit_criteria  # noqa: E402
from pruneplug.structured.criteria.reap import Reap  # noqa: E402
from pruneplug.structured.experts import renumber_expert  # noqa: E402
from pruneplug.torch.hf import text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import ZooCache, build_model_dir, sample_texts  # noqa: E402

pytestmark = pytest.mark.hf

LAYERS = 3
COUNT_KEY = {"mixtral": "num_local_experts", "qwen2_moe": "num_experts"}  # 4 experts, top-2 in the zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return ZooCache(tmp_path_factory.mktemp("experts-zoo"), LAYERS).get


def _load(directory: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()


def _texts() -> list[str]:
    """Texts of different lengths, so that the batches carry padding the statistics must skip."""
    return sample_texts(4, words=5) + sample_texts(4, words=16, seed=1)


def _batches(directory: Path) -> list[dict]:
    return text_batches(transformers.AutoTokenizer.from_pretrained(str(directory)), _texts(), 16, 4)


def _ids() -> torch.Tensor:
    return torch.tensor([[2, 5, 9, 17, 33, 60, 7, 100, 11, 4], [2, 8, 8, 1, 90, 45, 6, 30, 21, 3]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _moe(block):
    return getattr(block, "block_sparse_moe", None) or block.mlp


def _blocks(model):
    return model.model.layers


def _mask_routing(router, removed: list[int]) -> None:
    """Route as if ``removed`` were not there: their router logits -inf before softmax and top-k.
    transformers 4's gate is a Linear (its output is the logits); transformers 5's router returns
    (logits, weights, indices) computed from the logits, so the hook redoes those steps (softmax,
    top-k, renormalised where the router does) from the masked logits."""
    def hook(module, args, output):
        logits = output[0] if isinstance(output, tuple) else output
        masked = logits.clone()
        masked[:, removed] = float("-inf")
        if not isinstance(output, tuple):
            return masked
        probs = torch.softmax(masked.float(), dim=-1)
        weights, indices = torch.topk(probs, module.top_k, dim=-1)
        if getattr(module, "norm_topk_prob", True):  # Mixtral's router always renormalises
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return masked, weights.to(output[1].dtype), indices
    router.register_forward_hook(hook)


def _reference(model, report):
    """The original model with the report's experts masked out of routing, the removed heads'
    o_proj columns zeroed and the dropped blocks replaced by the identity."""
    blocks = _blocks(model)
    for i, removed in report.experts_removed.items():
        _mask_routing(_moe(blocks[i]).gate, removed)
    with torch.no_grad():
        for i, heads in report.heads_removed.items():
            for h in heads:
                blocks[i].self_attn.o_proj.weight[:, h * 8:(h + 1) * 8] = 0
    for i in report.dropped_blocks:
        def identity(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        blocks[i].register_forward_hook(identity, with_kwargs=True)
    return model


CASES = [  # (kind, zoo overrides, request)
    ("mixtral", {}, dict(experts=0.25)),
    ("qwen2_moe", {}, dict(experts=0.25)),
    ("mixtral", {}, dict(experts=0.25, heads=0.5, drop_blocks=1)),
    ("qwen2_moe", {"mlp_only_layers": [1]}, dict(experts=0.5, drop_blocks=1)),  # block 1 dense
]


@pytest.mark.parametrize("kind,overrides,request_kw", CASES)
def test_directory_equals_original_with_experts_masked(zoo, tmp_path, kind, overrides, request_kw):
    """No compensation: the written model's logits are the original's with the removed experts
    masked out of routing; it loads with AutoModelForCausalLM; config.json counts the experts
    left; shared experts are untouched; the report's counts are the loaded model's."""
    src = zoo(kind, **overrides)
    report = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(**request_kw), _texts(), samples=8, seq_len=16,
                              batch_size=4)
    small = _load(tmp_path / "out")
    torch.testing.assert_close(_logits(small), _logits(_reference(_load(src), report)), rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    left = 4 - round(request_kw["experts"] * 4)
    assert config[COUNT_KEY[kind]] == getattr(small.config, COUNT_KEY[kind]) == left
    moe_blocks = [i for i in range(LAYERS) if i not in overrides.get("mlp_only_layers", [])]
    assert sorted(report.experts_removed) == [i for i in moe_blocks if i not in report.dropped_blocks]
    assert all(len(v) == 4 - left for v in report.experts_removed.values())
    assert report.params_after == pp.torch.count_parameters(small) < report.params_before
    assert report.config_changes[COUNT_KEY[kind]] == left
    if kind == "qwen2_moe":  # the shared expert and its gate stay as they were
        original = _load(src)
        kept = [i for i in range(LAYERS) if i not in report.dropped_blocks]
        for new, old in enumerate(kept):
            if old in report.experts_removed:
                torch.testing.assert_close(_blocks(small)[new].mlp.shared_expert_gate.weight,
                                           _blocks(original)[old].mlp.shared_expert_gate.weight, rtol=0, atol=0)
        if overrides.get("mlp_only_layers"):
            assert config["mlp_only_layers"] == ([] if 1 in report.dropped_blocks else [1])


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_in_memory_equals_masked_original_and_matches_directory(zoo, tmp_path, kind):
    """shrink_model on the loaded model (transformers 5: fused 3-D experts) takes the directory
    path's decisions and computes the masked original's logits; generation still runs."""
    src = zoo(kind)
    model = _load(src)
    report = pp.torch.shrink_model(model, experts=0.25, calibration=_batches(src))
    assert report.expert_method == "reap" and report.method is None
    on_disk = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(experts=0.25), _texts(), samples=8, seq_len=16,
                               batch_size=4)
    assert report.experts_removed == on_disk.experts_removed
    assert getattr(model.config, COUNT_KEY[kind]) == 3
    assert report.params_after == pp.torch.count_parameters(model) == on_disk.params_after
    torch.testing.assert_close(_logits(model), _logits(_reference(_load(src), report)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(model), _logits(_load(tmp_path / "out")), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        out = model.generate(_ids()[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


class _Recording(UnitCriterion):
    """Wraps a criterion and keeps what it was given and returned, per call (block order)."""

    units = frozenset({"expert"})
    needs_calibration = True

    def __init__(self, inner: UnitCriterion) -> None:
        self.inner, self.name = inner, inner.name
        self.stats: list[ExpertStats] = []
        self.scores: list[np.ndarray] = []

    def expert_scores(self, weights, stats):
        self.stats.append(stats)
        self.scores.append(np.asarray(self.inner.expert_scores(weights, stats)))
        return self.scores[-1]


def _expert_output(experts, j: int, x: torch.Tensor) -> torch.Tensor:
    """f_j(x) by the model's own code: the expert module (transformers 4) or the fused experts
    module with every token sent to expert j at weight 1 (transformers 5)."""
    if isinstance(experts, torch.nn.ModuleList):
        return experts[j](x)
    index = torch.full((x.shape[0], 1), j, dtype=torch.long)
    return experts(x, index, torch.ones(x.shape[0], 1, dtype=x.dtype))


def _straightforward_reap(model, batches, normalize: bool) -> list[np.ndarray]:
    """REAP per MoE block, token by token: S_j = mean over the real tokens with j in their top-k of
    weight_j(x) * ||f_j(x)||, from the inputs the MoE modules receive in the model's forward."""
    inputs: dict[int, list[torch.Tensor]] = {}
    handles = [_moe(b).register_forward_pre_hook(lambda m, a, i=i: inputs.setdefault(i, []).append(a[0].detach()))
               for i, b in enumerate(_blocks(model))]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in handles:
        h.remove()
    top_k = model.config.num_experts_per_tok
    result = []
    for i, block in enumerate(_blocks(model)):
        moe = _moe(block)
        tokens = torch.cat([x[b["attention_mask"].bool()] for x, b in zip(inputs[i], batches)])
        total = np.zeros(4)
        count = np.zeros(4)
        with torch.no_grad():
            for x in tokens:
                probs = torch.softmax(moe.gate.weight.double() @ x.double(), dim=0)
                top = torch.topk(probs, top_k).indices
                for j in top.tolist():
                    weight = probs[j] / probs[top].sum() if normalize else probs[j]
                    norm = _expert_output(moe.experts, j, x[None]).double().norm()
                    total[j] += float(weight * norm)
                    count[j] += 1
        result.append(np.where(count > 0, total / np.maximum(count, 1), 0.0))
    return result


@pytest.mark.parametrize("kind,normalize", [("mixtral", True), ("qwen2_moe", False), ("qwen2_moe", True)])
def test_reap_scores_match_a_straightforward_computation(zoo, kind, normalize):
    """REAP's scores as shrink computes them (one blockwise pass, padding skipped) equal a token-
    by-token computation on the full model; frequency counts the same routed tokens."""
    src = zoo(kind, **({"norm_topk_prob": True} if kind == "qwen2_moe" and normalize else {}))
    batches = _batches(src)
    assert any(int(b["attention_mask"].sum()) < b["attention_mask"].numel() for b in batches)  # padding present
    recorder = _Recording(Reap())
    pp.torch.shrink_model(_load(src), experts=0.25, expert_method=recorder, calibration=batches)
    expected = _straightforward_reap(_load(src), batches, normalize)
    assert len(recorder.scores) == LAYERS
    for got, want, stats in zip(recorder.scores, expected, recorder.stats):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert stats.tokens.sum() == 2 * stats.total  # top-2: every token counted twice
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert recorder.stats[0].total == real_tokens
    frequency = get_unit_criterion("frequency", "expert")
    np.testing.assert_array_equal(frequency.expert_scores(None, recorder.stats[0]), recorder.stats[0].tokens)


def test_magnitude_scores_experts_without_calibration(zoo, tmp_path):
    """magnitude: the L2 norm of an expert's gate, up and down weights; the lowest goes."""
    src = zoo("mixtral")
    model = _load(src)
    recorder = _Recording(get_unit_criterion("magnitude", "expert"))
    recorder.needs_calibration = False
    report = pp.torch.shrink_model(model, experts=0.25, expert_method=recorder)
    original = _load(src).requires_grad_(False)
    for i, block in enumerate(_blocks(original)):
        experts = _moe(block).experts
        if isinstance(experts, torch.nn.ModuleList):
            norms = [float(torch.sqrt(sum((p.double() ** 2).sum() for p in e.parameters()))) for e in experts]
        else:
            norms = [float(torch.sqrt((experts.gate_up_proj[j].double() ** 2).sum()
                                      + (experts.down_proj[j].double() ** 2).sum())) for j in range(4)]
        np.testing.assert_allclose(recorder.scores[i], norms, rtol=1e-6)
        assert report.experts_removed[i] == [int(np.argmin(norms))]


def test_bad_expert_requests_are_refused_and_change_nothing(zoo, tmp_path):
    src = zoo("mixtral")
    model = _load(src)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        (dict(experts=0.75, expert_method="magnitude"), r"leaves 1 of the 4 experts .*num_experts_per_tok=2"),
        (dict(experts=1.0), "expected a fraction"),
        (dict(experts=-0.25), "expected a fraction"),
        (dict(experts=0.25, expert_method="activation"), "does not score experts"),
        (dict(experts=0.25, expert_method="nonesuch"), "not a registered unit criterion"),
        (dict(experts=0.25, compensate="bias", expert_method="magnitude"), "nothing to fold into"),
        (dict(mlp=0.25, method="magnitude"), "no dense MLP"),
    ]
    for kw, words in cases:
        with pytest.raises(InvalidArgumentError, match=words):
            pp.torch.shrink_model(model, **kw)
    with pytest.raises(CalibrationRequiredError, match="reap"):
        pp.torch.shrink_model(model, experts=0.25)  # REAP needs calibration: refused before any change
    after = model.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.num_local_experts == 4
    llama = build_model_dir("llama", tmp_path / "llama")
    with pytest.raises(InvalidArgumentError, match="no MoE blocks"):
        shrink_model_dir(llama, tmp_path / "never", ShrinkRequest(experts=0.25, expert_method="magnitude"))
    with pytest.raises(CalibrationRequiredError, match="reap"):
        shrink_model_dir(src, tmp_path / "never", ShrinkRequest(experts=0.25))
    with pytest.raises(InvalidArgumentError, match="num_experts_per_tok=2"):
        shrink_model_dir(src, tmp_path / "never", ShrinkRequest(experts=0.7, expert_method="magnitude"))
    assert not (tmp_path / "never").exists()


def test_cli_experts_report(zoo, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(_texts()) + "\n")
    out, report = tmp_path / "small", tmp_path / "report.json"
    assert main(["shrink", str(zoo("qwen2_moe")), "-o", str(out), "--experts", "0.25", "--calibration", str(texts),
                 "--samples", "8", "--seq-len", "16", "--report", str(report), "--progress", "never"]) == 0
    data = json.loads(report.read_text())
    assert data["config_changes"] == {"num_experts": 3} and data["expert_method"] == "reap"
    assert sorted(data["experts_removed"]) == ["0", "1", "2"] and all(len(v) == 1 for v in data["experts_removed"].values())
    assert data["params_after"] < data["params_before"]
    assert "1 routed experts from each of 3 MoE blocks" in capsys.readouterr().out
    assert main(["shrink", str(zoo("qwen2_moe")), "-o", str(tmp_path / "bad"), "--experts", "0.75",
                 "--expert-method", "frequency", "--calibration", str(texts)]) != 0
    assert "num_experts_per_tok=2" in capsys.readouterr().err


def test_expert_criteria_and_renumbering_on_numbers():
    assert {"reap", "frequency", "magnitude"} <= set(unit_criteria())
    stats = ExpertStats(tokens=np.array([4, 0, 2]), gate_sum=np.array([2.0, 0.0, 1.0]),
                        reap_sum=np.array([8.0, 0.0, 3.0]), total=3)
    np.testing.assert_allclose(get_unit_criterion("reap", "expert").expert_scores(None, stats), [2.0, 0.0, 1.5])
    np.testing.assert_allclose(get_unit_criterion("frequency", "expert").expert_scores(None, stats), [4, 0, 2])
    with pytest.raises(CalibrationRequiredError):
        get_unit_criterion("reap", "expert").expert_scores(None, None)
    keep = np.array([0, 2, 3])
    assert renumber_expert("block_sparse_moe.experts.2.w1.weight", keep) == "block_sparse_moe.experts.1.w1.weight"
    assert renumber_expert("mlp.experts.1.down_proj.weight", keep) is None
    assert renumber_expert("experts.3.w2.weight", keep) == "experts.2.w2.weight"
    assert renumber_expert("mlp.shared_expert.up_proj.weight", keep) == "mlp.shared_expert.up_proj.weight"
    assert renumber_expert("mlp.gate.weight", keep) == "mlp.gate.weight"
