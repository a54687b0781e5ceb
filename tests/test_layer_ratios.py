"""OWL layer ratios and the per-layer cap: exact totals, the OWL mapping, water-filling against a
brute-force capped greedy selection."""

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.errors import InvalidArgumentError
from pruneplug.layer_ratios import (
    block_units,
    capped_counts,
    exact_counts,
    layer_caps,
    outlier_ratio,
    owl_counts,
    owl_sparsities,
    unit_outlier_ratios,
)


@pytest.mark.parametrize("seed", range(40))
def test_exact_counts_meet_the_total_within_caps(seed):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 30))
    sizes = [int(v) for v in rng.choice([1, 3, 7, 64, 1000, 4096, 65536, 1_000_003], layers)]
    target = float(rng.choice([0.0, 0.1, 0.5, 0.7, 0.9, 0.99, 1.0, rng.random()]))
    sparsities = list(np.clip(target + rng.normal(0, 0.2, layers), -0.2, 1.2))
    caps = layer_caps(sizes, float(rng.choice([1.0, 0.99, 0.95])))
    k = min(pp.count_to_prune(target, sum(sizes)), sum(caps))
    counts = exact_counts(sparsities, sizes, k, caps)
    assert sum(counts) == k
    assert all(0 <= c <= cap for c, cap in zip(counts, caps))
    assert exact_counts(sparsities, sizes, k, caps) == counts, "deterministic"


def test_uniform_sparsities_round_to_within_one_per_layer():
    rng = np.random.default_rng(1)
    sizes = [int(v) for v in rng.integers(1, 100_000, 50)]
    counts = exact_counts([0.37] * 50, sizes, pp.count_to_prune(0.37, sum(sizes)))
    assert sum(counts) == pp.count_to_prune(0.37, sum(sizes))
    assert all(abs(c - 0.37 * n) < 1.0 for c, n in zip(counts, sizes))


def test_remainders_go_to_the_largest_fraction_then_the_lower_index():
    assert exact_counts([0.45, 0.55, 1.2], [10, 10, 10], 17, caps=[10, 10, 9]) == [4, 4, 9]
    assert exact_counts([0.25, 0.26], [10, 10], 5) == [2, 3]


def test_layer_caps_use_the_decimal_written():
    assert layer_caps([100, 1, 1000, 7], 0.99) == [99, 0, 990, 6]
    assert layer_caps([5], 1.0) == [5]
    with pytest.raises(InvalidArgumentError, match="max_layer_sparsity=1.5"):
        layer_caps([5], 1.5)


def test_infeasible_caps_are_an_error():
    with pytest.raises(InvalidArgumentError, match="caps allow at most 18"):
        exact_counts([1.0, 1.0], [10, 10], 19, caps=[9, 9])


def test_owl_sparsities_mapping():
    s = owl_sparsities([0.01, 0.05, 0.02, 0.03], [100] * 4, 0.7, lam=0.08)
    assert np.mean(s) == pytest.approx(0.7)
    assert max(s) - min(s) == pytest.approx(0.16)
    assert np.argsort(s).tolist() == [1, 3, 2, 0], "more outliers, lower sparsity"
    assert owl_sparsities([0.02, 0.02], [5, 50], 0.5) == [0.5, 0.5]
    weighted = owl_sparsities([0.0, 1.0], [300, 100], 0.5, lam=0.1)
    assert (300 * weighted[0] + 100 * weighted[1]) / 400 == pytest.approx(0.5)


def test_outlier_ratios_match_concatenation():
    rng = np.random.default_rng(2)
    scores = {f"model.layers.{i // 2}.p{i}": rng.lognormal(0, 1.5, (16, 8 + i)) for i in range(6)}
    units = block_units(list(scores))
    ratios = unit_outlier_ratios(scores, units, 4.0)
    for unit in set(units.values()):
        pooled = np.concatenate([v.ravel() for n, v in scores.items() if units[n] == unit])
        assert ratios[unit] == np.count_nonzero(pooled > 4.0 * pooled.mean()) / pooled.size
    assert outlier_ratio(np.ones(10)) == 0.0
    with pytest.raises(InvalidArgumentError, match="m=0"):
        outlier_ratio(np.ones(3), m=0)
    with pytest.raises(InvalidArgumentError, match="'bad'"):
        unit_outlier_ratios({"bad": np.array([1.0, np.nan])}, {"bad": "bad"})


def test_block_units():
    names = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.10.output.dense.weight",
             "model.layers.2.mlp.up_proj.weight", "pooler.dense.weight", "h.3"]
    assert block_units(names) == {
        names[0]: "encoder.layer.0", names[1]: "encoder.layer.10", names[2]: "model.layers.2",
        names[3]: "pooler.dense.weight", names[4]: "h.3"}


@pytest.mark.parametrize("seed", range(10))
def test_owl_counts_exact_total_and_caps(seed):
    rng = np.random.default_rng(seed)
    scores = {}
    for block in range(int(rng.integers(2, 6))):
        for part in range(int(rng.integers(1, 4))):
            s = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40))))
            s.ravel()[: int(rng.integers(0, s.size))] *= float(rng.choice([1, 20]))
            scores[f"layers.{block}.p{part}"] = s
    target = float(rng.choice([0.5, 0.7, 0.9]))
    r = owl_counts(scores, target, m=5, lam=0.08, max_layer_sparsity=0.95)
    total = sum(v.size for v in scores.values())
    assert sum(r.counts) == pp.count_to_prune(target, total)
    assert all(c <= np.floor(0.95 * scores[n].size + 1e-9) for n, c in zip(r.names, r.counts))
    ratio = {u: r.outlier_ratios[u] for u in r.outlier_ratios}
    # ordering: a unit with more outliers never gets a clearly higher sparsity
    per_unit = {}
    for n, c in zip(r.names, r.counts):
        u = r.units[n]
        per_unit.setdefault(u, [0, 0])
        per_unit[u][0] += c
        per_unit[u][1] += scores[n].size
    for a in per_unit:
        for b in per_unit:
            if ratio[a] > ratio[b] and per_unit[a][1] > 200 and per_unit[b][1] > 200 and r.sparsity_of(
                    next(n for n in r.names if r.units[n] == a)) < 0.95:
                assert per_unit[a][0] / per_unit[a][1] <= per_unit[b][0] / per_unit[b][1] + 0.02


def brute_capped(scores, k, caps):
    """Greedy: lowest score first (ties by part, then index), skipping parts that are full."""
    order = sorted((v, p, i) for p, s in enumerate(scores) for i, v in enumerate(s))
    counts = [0] * len(scores)
    for _, p, _ in order:
        if k == 0:
            break
        if counts[p] < caps[p]:
            counts[p] += 1
            k -= 1
    return counts


@pytest.mark.parametrize("seed", range(30))
def test_capped_counts_equal_the_capped_greedy_order(seed):
    rng = np.random.default_rng(seed)
    parts = int(rng.integers(1, 7))
    # small integer scores: many ties, across and within parts; some parts on a tiny scale
    scores = [list(rng.integers(0, 6, int(rng.integers(1, 30))) * float(rng.choice([1, 0.01]))) for _ in range(parts)]
    caps = layer_caps([len(s) for s in scores], float(rng.choice([0.5, 0.8, 0.99, 1.0])))
    k = int(rng.integers(0, sum(caps) + 1))
    rounds = []

    def select(active, k_active):
        rounds.append(list(active))
        pooled = sorted((v, p, i) for p in active for i, v in enumerate(scores[p]))[:k_active]
        return [sum(1 for _, q, _ in pooled if q == p) for p in active]

    assert capped_counts(k, caps, select) == brute_capped(scores, k, caps)
    assert len(rounds) <= parts


def test_global_cap_keeps_a_small_scale_layer():
    w = {"big": np.arange(1, 101, dtype=np.float64), "pooler": np.full(10, 1e-3)}
    sizes = [100, 10]

    def select(active, k):
        names = [list(w)[p] for p in active]
        masks = pp.global_unstructured_masks({n: w[n] for n in names}, k / sum(w[n].size for n in names)) if k else None
        return [int((~masks[n].data).sum()) if masks else 0 for n in names]

    uncapped = select([0, 1], 55)
    assert uncapped == [45, 10], "without a cap the small-scale layer is removed"
    capped = capped_counts(55, layer_caps(sizes, 0.99), select)
    assert capped == [46, 9] and sum(capped) == 55
