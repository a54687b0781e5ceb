"""SparseGPT reconstruction: against a plain column-by-column OBS reference in float64, exact counts,
+0.0 at pruned positions, determinism, dead inputs, bad input, and its quality against magnitude
and Wanda-style selection on a layer with correlated inputs."""

import numpy as np
import pytest

import pruneplug.errors as errors

torch = pytest.importorskip("torch", reason="torch is not installed (pip install pruneplug[torch])")

from pruneplug.reconstruction import damped_inverse_factor, inverse_diagonal, sparsegpt_prune  # noqa: E402


def correlated_inputs(tokens, cols, seed, scale_spread=3.0):
    """Inputs with correlated features and feature scales spread over ``scale_spread`` decades."""
    rng = np.random.default_rng(seed)
    mix = np.eye(cols) + rng.standard_normal((cols, cols)) * (1.5 / np.sqrt(cols))
    scales = 10.0 ** rng.uniform(-scale_spread / 2, scale_spread / 2, cols)
    return (rng.standard_normal((tokens, cols)) @ mix) * scales


def layer(rows, cols, seed, tokens=None):
    rng = np.random.default_rng(seed + 1000)
    x = correlated_inputs(tokens or 4 * cols, cols, seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    return w, x, x.T @ x


def reference_obs(w, h, block, damping, keep_rule, mask=None):
    """SparseGPT without Cholesky or blocking, in float64: column j is fixed with the optimal brain
    surgeon update over the columns not yet fixed, ``F = {j, j+1, ...}``, using ``inv(H[F, F])``
    directly. The mask of each selection span (a block for unstructured, a group of m columns for
    N:M: ``block`` is then m) is chosen when the sweep reaches it, from the weights as they are
    then, by ``w^2 / [inv(H[F_c, F_c])]_{00}`` for each column c of the span."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * np.mean(np.diag(h)) * np.eye(cols)
    keep = np.ones((rows, cols), bool)
    for j in range(cols):
        if j % block == 0:
            j2 = min(j + block, cols)
            denom = np.array([np.linalg.inv(h[c:, c:])[0, 0] for c in range(j, j2)])
            keep[:, j:j2] = mask[:, j:j2] if mask is not None else keep_rule(w[:, j:j2] ** 2 / denom, j, j2)
        hinv = np.linalg.inv(h[j:, j:])
        q = np.where(keep[:, j], w[:, j], 0.0)
        w[:, j:] -= np.outer((w[:, j] - q) / hinv[0, 0], hinv[0, :])
        w[:, j] = q
    return w, keep


def share(total, x, cols):
    return (2 * total * x + cols) // (2 * cols)


def unstructured_rule(total, cols, per_row):
    def rule(scores, j, j2):
        k = share(total, j2, cols) - share(total, j, cols)
        keep = np.ones(scores.shape, bool)
        if per_row:
            order = np.argsort(scores, axis=1, kind="stable")[:, :k]
            np.put_along_axis(keep, order, False, axis=1)
        else:
            keep.reshape(-1)[np.argsort(scores.reshape(-1), kind="stable")[:k]] = False
        return keep
    return rule


def nm_rule(n, m):
    def rule(scores, j, j2):
        keep = np.zeros(scores.shape, bool)
        for g in range(0, scores.shape[1], m):
            part = scores[:, g:g + m]
            order = np.argsort(-part, axis=1, kind="stable")[:, :n]
            np.put_along_axis(keep[:, g:g + m], order, True, axis=1)
        return keep
    return rule


@pytest.mark.parametrize("case", ["layer", "row", "2:4", "1:4", "mask"])
@pytest.mark.parametrize("shape,block", [((12, 48), 16), ((7, 40), 16), ((5, 24), 128)])
def test_matches_unblocked_obs_reference(case, shape, block):
    rows, cols = shape
    w, _, h = layer(rows, cols, seed=cols + rows)
    kwargs, mask = {}, None
    if case in ("layer", "row"):
        total = round(0.5 * (rows * cols if case == "layer" else cols))
        rule = unstructured_rule(total, cols, case == "row")
        kwargs = dict(sparsity=0.5, groups=case)
    elif case == "mask":
        mask = np.random.default_rng(3).random((rows, cols)) > 0.6
        rule = None
        kwargs = dict(mask=mask)
    else:
        n, m = map(int, case.split(":"))
        rule = nm_rule(n, m)
        kwargs = dict(pattern=case)
    span = int(case.split(":")[1]) if ":" in case else block
    expected_w, expected_keep = reference_obs(w, h, span, 0.01, rule, mask)
    result = sparsegpt_prune(torch.from_numpy(w.astype(np.float64)), torch.from_numpy(h), block_size=block,
                             dtype="float64", **kwargs)
    np.testing.assert_array_equal(result.mask.numpy(), expected_keep)
    np.testing.assert_allclose(result.weight.numpy(), expected_w, rtol=1e-9, atol=1e-9 * np.abs(expected_w).max())
    # float32 compute: same mask on this well-conditioned data, weights to float32 round-off
    single = sparsegpt_prune(w, h, block_size=block, dtype="float32", **kwargs)
    assert isinstance(single.weight, np.ndarray) and single.weight.dtype == np.float32
    np.testing.assert_array_equal(single.mask, expected_keep)
    np.testing.assert_allclose(single.weight, expected_w, rtol=2e-3, atol=2e-4 * np.abs(expected_w).max())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("groups", ["layer", "row"])
def test_unstructured_counts_are_exact(sparsity, groups):
    w, _, h = layer(9, 300, seed=5)  # 300 columns: blocks of 128, 128, 44
    r = sparsegpt_prune(w, h, sparsity=sparsity, groups=groups)
    zeros = ~r.mask
    if groups == "layer":
        assert zeros.sum() == r.pruned == round(sparsity * w.size)
    else:
        assert (zeros.sum(axis=1) == round(sparsity * 300)).all()
    assert (r.weight[zeros] == 0).all() and not np.signbit(r.weight[zeros]).any(), "pruned positions must be +0.0"


@pytest.mark.parametrize("pattern", ["2:4", "1:2", "4:8"])
def test_nm_counts_are_exact(pattern):
    n, m = map(int, pattern.split(":"))
    w, _, h = layer(16, 256, seed=6)
    r = sparsegpt_prune(torch.from_numpy(w), torch.from_numpy(h), pattern=pattern)
    kept = r.mask.reshape(16, -1, m).sum(-1)
    assert (kept == n).all()
    nonzero = (r.weight != 0).reshape(16, -1, m).sum(-1)
    assert (nonzero <= n).all()
    assert not torch.signbit(r.weight[~r.mask]).any()


def test_deterministic_run_to_run():
    w, _, h = layer(64, 256, seed=7)
    for kwargs in (dict(sparsity=0.6), dict(pattern="2:4")):
        a = sparsegpt_prune(w, h, **kwargs)
        b = sparsegpt_prune(w, h, **kwargs)
        assert a.weight.tobytes() == b.weight.tobytes() and (a.mask == b.mask).all()


def test_dead_inputs_zero_their_columns_and_are_reported():
    rows, cols = 8, 32
    rng = np.random.default_rng(8)
    x = correlated_inputs(200, cols, 8)
    x[:, [3, 17]] = 0.0
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    r = sparsegpt_prune(w, x.T @ x, sparsity=0.25)
    assert r.dead_inputs == 2
    assert (r.weight[:, [3, 17]] == 0).all()
    assert (~r.mask[:, [3, 17]]).all(), "dead columns have zero saliency and are pruned first"
    assert (~r.mask).sum() == round(0.25 * rows * cols)


def test_input_dtype_and_type_are_kept():
    w, _, h = layer(8, 64, seed=9)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        tw = torch.from_numpy(w).to(dtype)
        r = sparsegpt_prune(tw, torch.from_numpy(h), pattern="2:4")
        assert r.weight.dtype == dtype and r.mask.dtype == torch.bool
        assert (r.weight[~r.mask] == 0).all() and not torch.signbit(r.weight[~r.mask]).any()
    assert not np.shares_memory(sparsegpt_prune(w, h, sparsity=0.5).weight, w)


def test_bad_input_is_named():
    w, _, h = layer(4, 16, seed=10)
    bad = w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(errors.NonFiniteError, match="'q_proj'.*first at flat index 18"):
        sparsegpt_prune(bad, h, sparsity=0.5, name="q_proj")
    bad_h = h.copy()
    bad_h[0, 3] = np.inf
    with pytest.raises(errors.NonFiniteError, match="'q_proj': the Hessian"):
        sparsegpt_prune(w, bad_h, sparsity=0.5, name="q_proj")
    with pytest.raises(errors.ShapeError, match=r"'q_proj'.*\(16, 16\)"):
        sparsegpt_prune(w, h[:8, :8], sparsity=0.5, name="q_proj")
    with pytest.raises(errors.ShapeError, match="groups of m=4"):
        sparsegpt_prune(w[:, :14], h[:14, :14], pattern="2:4")
    with pytest.raises(errors.InvalidArgumentError, match="sparsity="):
        sparsegpt_prune(w, h)
    with pytest.raises(errors.InvalidArgumentError, match="sparsity=1.5"):
        sparsegpt_prune(w, h, sparsity=1.5)
    with pytest.raises(errors.InvalidArgumentError, match="groups="):
        sparsegpt_prune(w, h, sparsity=0.5, groups="column")
    with pytest.raises(errors.InvalidArgumentError, match="dtype="):
        sparsegpt_prune(w, h, sparsity=0.5, dtype="float16")


def test_indefinite_hessian_gets_more_damping_or_a_named_error():
    w, _, _ = layer(4, 16, seed=11)
    x = np.random.default_rng(11).standard_normal((64, 16))  # features of one scale: see below
    h = x.T @ x
    eigvals, vecs = np.linalg.eigh(h)
    mean_diag = np.mean(np.diag(h))
    # one eigenvalue pushed to -0.05 x mean diagonal: 0.01 damping fails, 0.1 works
    eigvals[0] = -0.05 * mean_diag
    bent = (vecs * eigvals) @ vecs.T
    bent = (bent + bent.T) / 2
    assert np.diag(bent).min() > 0  # indefinite, but no negative diagonal entry (that is refused outright)
    r = sparsegpt_prune(w, bent, sparsity=0.5, dtype="float64")
    assert r.retries == 1 and r.damping == pytest.approx(0.1)
    with pytest.raises(errors.HessianError, match="'fc1'.*not positive definite"):
        # unit diagonal, off-diagonal 5: eigenvalue -4, more than damping 0.01 * 10^2 can lift
        sparsegpt_prune(w, np.eye(16) + 5 * (np.ones((16, 16)) - np.eye(16)), sparsity=0.5, name="fc1", max_retries=2)
    with pytest.raises(errors.HessianError, match="'fc1'.*mean diagonal"):
        inverse_diagonal(torch.zeros(16, 16, dtype=torch.float64), name="fc1")


def test_inverse_factor_is_the_cholesky_of_the_inverse():
    _, _, h = layer(1, 24, seed=12)
    r = damped_inverse_factor(torch.from_numpy(h), damping=0.01, dtype=torch.float64)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(24)
    assert r.scale == pytest.approx(np.mean(np.diag(h)))
    u = r.value.numpy() / np.sqrt(r.scale)  # the factor of H / scale, in H's own units
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-8, atol=1e-12 * np.abs(np.linalg.inv(damped)).max())
    assert np.allclose(u, np.triu(u))


def test_reconstruction_error_well_below_magnitude_and_wanda():
    # Inputs like a network's activations: mostly a lower-rank signal (64 of 256 dimensions) plus
    # noise, features scaled over a decade. This is where the weight update pays: a pruned input's
    # contribution can be carried by correlated inputs that stay.
    rows, cols, tokens = 64, 256, 2048
    rng = np.random.default_rng(13)
    x = rng.standard_normal((tokens, 64)) @ rng.standard_normal((64, cols)) / 8.0
    x = (x + 0.1 * rng.standard_normal((tokens, cols))) * 10.0 ** rng.uniform(-0.5, 0.5, cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    h = x.T @ x

    def error(pruned):
        return np.linalg.norm((w.astype(np.float64) - pruned) @ x.T) / np.linalg.norm(w.astype(np.float64) @ x.T)

    def keep_lowest_pruned(scores):
        keep = np.ones(scores.shape, bool)
        k = round(0.5 * cols)
        np.put_along_axis(keep, np.argsort(scores, axis=1, kind="stable")[:, :k], False, axis=1)
        return keep

    magnitude = np.where(keep_lowest_pruned(np.abs(w)), w, 0)
    wanda = np.where(keep_lowest_pruned(np.abs(w) * np.linalg.norm(x, axis=0)), w, 0)
    sgpt = sparsegpt_prune(w, h, sparsity=0.5, groups="row").weight
    e_mag, e_wanda, e_sgpt = error(magnitude), error(wanda), error(sgpt)
    assert e_sgpt < 0.7 * e_wanda and e_wanda < 0.7 * e_mag, (e_sgpt, e_wanda, e_mag)
    # the update alone helps too: Wanda's mask, SparseGPT's update
    updated = sparsegpt_prune(w, h, mask=wanda != 0).weight
    assert error(updated) < 0.8 * e_wanda
