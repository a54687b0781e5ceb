"""The public API: argument validation, error types and messages, array types, the registry's
selection rules. Backend results themselves are covered by the conformance kit."""

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import pruneplug as pp
from pruneplug import errors
from pruneplug.registry import get_registry


@pytest.fixture
def weights():
    return np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)


# --- importance -----------------------------------------------------------------------------
def test_importance_l1_l2_values_and_stats(weights):
    l1 = pp.importance(weights, "l1")
    l2 = pp.MagnitudeImportance.l2().compute(weights)
    np.testing.assert_array_equal(l1.values, np.abs(weights))
    np.testing.assert_array_equal(l2.values, weights * weights)
    assert (l1.method, l2.method) == ("magnitude_l1", "magnitude_l2")
    assert l1.stats.min == float(np.abs(weights).min()) and l1.stats.max == float(np.abs(weights).max())
    assert math.isclose(l1.stats.std, float(np.abs(weights).astype(np.float64).std()), rel_tol=1e-12)
    assert isinstance(l1.stats.mean, float)


def test_importance_half_precision_scores_are_float32():
    for dtype in (np.float16, ml_dtypes.bfloat16):
        w = np.array([-1.5, 0.25], dtype=dtype)
        scores = pp.importance(w, "l2").values
        assert scores.dtype == np.float32
        np.testing.assert_array_equal(scores, np.array([2.25, 0.0625], dtype=np.float32))


def test_magnitude_importance_api_parity():
    imp = pp.MagnitudeImportance.l1()
    assert imp.name == "magnitude_l1" and imp.requires_calibration() is False
    assert repr(imp) == "MagnitudeImportance.l1()"


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.complex64, bool])
def test_unsupported_dtype_is_type_error_naming_it(dtype):
    with pytest.raises(TypeError, match=np.dtype(dtype).name) as info:
        pp.prune(np.ones(8, dtype=dtype), 0.5)
    assert isinstance(info.value, errors.UnsupportedDtypeError)
    assert "weights" in str(info.value)


def test_nan_weights_error_names_method_count_and_first_index(weights):
    weights[1, 3] = np.nan
    weights[5, 0] = np.inf
    with pytest.raises(errors.NonFiniteError) as info:
        pp.importance(weights, "l2")
    assert info.value.count == 2 and info.value.first_index == 19
    assert "magnitude_l2" in str(info.value) and "19" in str(info.value) and "2 non-finite" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_nan_scores_rejected_but_infinite_scores_rank_highest():
    with pytest.raises(errors.NonFiniteError, match="scores contain 1 NaN"):
        pp.generate_unstructured_mask(np.array([1.0, np.nan]), 0.5)
    mask = pp.generate_unstructured_mask(np.array([np.inf, 5.0, -np.inf, 1.0]), 0.5)
    np.testing.assert_array_equal(mask.data, [True, True, False, False])


# --- unstructured ---------------------------------------------------------------------------
def test_exact_count_uses_half_to_even_rounding():
    assert pp.count_to_prune(0.5, 5) == 2  # round(2.5) == 2
    assert pp.count_to_prune(0.5, 7) == 4  # round(3.5) == 4
    mask = pp.generate_unstructured_mask(np.ones(5), 0.5)
    assert mask.num_zeros == 2 and mask.nnz == 3
    np.testing.assert_array_equal(mask.data, [False, False, True, True, True])  # ties: lower index first


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        pp.generate_unstructured_mask(np.ones(4), sparsity)


def test_mask_object(weights):
    mask = pp.generate_unstructured_mask(pp.importance(weights), 0.25)
    assert mask.pattern == "unstructured" and mask.shape == weights.shape
    assert (mask.nnz, mask.num_zeros, mask.sparsity) == (96, 32, 0.25)
    floats = mask.to_float("float32")
    assert floats.dtype == np.float32 and set(np.unique(floats)) == {0.0, 1.0}
    assert "sparsity=0.2500" in repr(mask)


def test_out_buffer_is_filled_and_returned(weights):
    out = np.empty(weights.shape, dtype=bool)
    mask = pp.generate_unstructured_mask(weights, 0.5, out=out)
    assert mask.data is out and out.sum() == 64
    with pytest.raises(ValueError, match="out"):
        pp.generate_unstructured_mask(weights, 0.5, out=np.empty((2, 2), dtype=bool))


# --- N:M ------------------------------------------------------------------------------------
def test_nm_errors_name_shape_axis_and_m():
    with pytest.raises(errors.ShapeError, match=r"shape \(3, 6\).*m=4.*axis=1"):
        pp.generate_nm_mask(np.ones((3, 6)), 2, 4)
    with pytest.raises(ValueError, match="n=5 must not exceed m=4"):
        pp.generate_nm_mask(np.ones((4, 4)), 5, 4)
    with pytest.raises(ValueError, match="m=0"):
        pp.generate_nm_mask(np.ones((4, 4)), 0, 0)
    with pytest.raises(ValueError, match="axis=2"):
        pp.generate_nm_mask(np.ones((4, 4)), 2, 4, axis=2)


def test_nm_conv_axis_groups_input_channels():
    w = np.random.default_rng(1).standard_normal((4, 8, 3, 3)).astype(np.float32)
    pruned = pp.prune(w, pattern="2:4", axis=1)
    assert pp.is_nm_sparse(pruned, 2, 4, axis=1)
    kept = (pruned != 0).reshape(4, 2, 4, 3, 3).sum(axis=2)
    assert np.all(kept == 2)


def test_is_nm_sparse_counts_negative_zero_as_zero_and_nan_as_nonzero():
    assert pp.is_nm_sparse(np.array([[-0.0, 1.0, -0.0, 2.0]]), 2, 4)
    assert not pp.is_nm_sparse(np.array([[np.nan, 1.0, 0.0, 2.0]]), 2, 4)


def test_prune_pattern_errors(weights):
    with pytest.raises(ValueError, match="sparsity=0.5 cannot be combined"):
        pp.prune(weights, 0.5, pattern="2:4")
    with pytest.raises(ValueError, match="needs sparsity"):
        pp.prune(weights, pattern="row")
    with pytest.raises(ValueError, match="pattern='diagonal'"):
        pp.prune(weights, 0.5, pattern="diagonal")
    with pytest.raises(ValueError, match="method='l3'"):
        pp.prune(weights, 0.5, method="l3")


# --- block / row / column -------------------------------------------------------------------
def test_block_errors():
    with pytest.raises(errors.ShapeError, match="2-D"):
        pp.generate_row_mask(np.ones(4), 0.5)
    with pytest.raises(errors.ShapeError, match=r"block_shape=\(3, 3\) does not divide"):
        pp.generate_block_mask(np.ones((4, 4)), (3, 3), 0.5)
    with pytest.raises(ValueError, match="block_shape"):
        pp.generate_block_mask(np.ones((4, 4)), (0, 2), 0.5)


def test_row_and_column_pruning_zero_whole_lines(weights):
    pruned, mask = pp.prune(weights, 0.25, pattern="row", return_mask=True)
    assert mask.pattern == "row"
    zero_rows = np.all(pruned == 0, axis=1)
    assert zero_rows.sum() == 2
    pruned = pp.prune(weights, 0.5, pattern="column")
    assert np.all(pruned == 0, axis=0).sum() == 8


# --- apply ----------------------------------------------------------------------------------
def test_apply_errors_change_nothing(weights):
    mask = pp.generate_unstructured_mask(weights, 0.5)
    before = weights.copy()
    with pytest.raises(errors.ShapeError, match="does not match"):
        pp.apply_mask(mask, weights[:4])
    readonly = weights.copy()
    readonly.flags.writeable = False
    with pytest.raises(errors.ReadOnlyError, match="read-only"):
        mask.apply(readonly)
    with pytest.raises(TypeError, match="bool"):
        pp.apply_mask(mask.data.astype(np.float32), weights)
    np.testing.assert_array_equal(weights, before)


def test_inplace_prune_of_readonly_is_refused(weights):
    weights.flags.writeable = False
    with pytest.raises(errors.ReadOnlyError):
        pp.prune(weights, 0.5, inplace=True)


def test_inplace_prune_of_strided_view_writes_through(weights):
    view = weights[:, ::2]
    expected = pp.prune(np.ascontiguousarray(view), 0.5)
    result = pp.prune(view, 0.5, inplace=True)
    assert result is view
    np.testing.assert_array_equal(weights[:, ::2], expected)


def test_unsupported_array_type():
    with pytest.raises(errors.UnsupportedArrayError, match="expected a NumPy array"):
        pp.prune(object(), 0.5)


def test_lists_are_accepted_as_numpy():
    assert pp.prune([0.5, -2.0, 0.1, 3.0], 0.5).tolist() == [0.0, -2.0, 0.0, 3.0]


# --- registry selection ---------------------------------------------------------------------
def test_unknown_backend_is_lookup_error():
    with pytest.raises(errors.BackendNotFoundError, match="backend='nope' is not registered"):
        pp.prune(np.ones(4, np.float32), 0.5, backend="nope")


def test_named_unavailable_backend_says_why():
    status = {b.name: b for b in pp.backends()}["cuda"]
    if status.available:
        pytest.skip("a CUDA device is present: the cuda backend is available here")
    with pytest.raises(errors.BackendUnavailableError, match="backend='cuda' is not available here") as info:
        pp.prune(np.ones(4, np.float32), 0.5, backend="cuda")
    assert status.reason and status.reason in str(info.value)


class _LowPriorityOnlyNM:
    @pp.hookimpl
    def pruneplug_backend_info(self):
        return pp.BackendInfo(name="only-nm", priority=1000, operations={"nm_mask"}, dtypes={"float32"})

    @pp.hookimpl
    def pruneplug_nm_mask(self, values, n, m, axis, transform, out):
        raise AssertionError("should only run when selected")


@pytest.fixture
def only_nm_backend():
    pp.register_backend(_LowPriorityOnlyNM(), "only-nm-plugin")
    yield "only-nm"
    pp.unregister_backend("only-nm")


def test_auto_picks_highest_priority_supporting_backend(only_nm_backend):
    registry = get_registry()
    assert registry.select("auto", array_type="numpy", dtype="float32", operation="nm_mask") == "only-nm"
    assert registry.select("auto", array_type="numpy", dtype="float64", operation="nm_mask") != "only-nm"
    assert registry.select("auto", array_type="numpy", dtype="float32", operation="apply_mask") != "only-nm"
    with pytest.raises(errors.BackendUnavailableError, match="does not implement unstructured_mask"):
        pp.generate_unstructured_mask(np.ones(4, np.float32), 0.5, backend="only-nm")
    with pytest.raises(errors.BackendUnavailableError, match="does not support dtype float64"):
        pp.generate_nm_mask(np.ones(4), 2, 4, backend="only-nm")


def test_env_sets_default_backend(monkeypatch):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", "numpy")
    assert pp.generate_unstructured_mask(np.ones(4, np.float32), 0.5).backend == "numpy"
    monkeypatch.setenv("PRUNEPLUG_BACKEND", "nope")
    with pytest.raises(errors.BackendNotFoundError):
        pp.generate_unstructured_mask(np.ones(4, np.float32), 0.5)


def test_backends_lists_numpy_as_always_available():
    rows = {b.name: b for b in pp.backends()}
    assert rows["numpy"].available and "unstructured_mask" in rows["numpy"].operations


def test_big_endian_and_fortran_inputs_give_the_native_result(weights):
    expected = pp.prune(weights, 0.5)
    big_endian = weights.astype(">f4")
    np.testing.assert_array_equal(pp.prune(big_endian, 0.5), expected)
    np.testing.assert_array_equal(pp.generate_nm_mask(big_endian, 2, 4).data, pp.generate_nm_mask(weights, 2, 4).data)
    result = pp.prune(big_endian, 0.5, inplace=True)
    assert result is big_endian and big_endian.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(big_endian, expected)
    np.testing.assert_array_equal(pp.prune(np.asfortranarray(weights), 0.5), expected)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8", "<f4"])
@pytest.mark.parametrize("kwargs", [{"sparsity": 0.5}, {"pattern": "2:4"}, {"sparsity": 0.25, "pattern": "row"},
                                    {"sparsity": 0.5, "groups": "row"}, {"count": 7}])
def test_non_native_byte_order_comes_back_in_the_inputs_dtype(weights, backend, dtype, kwargs):
    """pp.prune returns the input's dtype, byte order included (issue 19): a big-endian array is
    pruned on a native copy and stored back big-endian, with the values of the native result."""
    native = weights.astype(np.dtype(dtype).newbyteorder("="))
    expected = pp.prune(native, backend=backend, **kwargs)
    for arr in (native.astype(dtype), native.astype(dtype)[:, ::2]):  # contiguous and strided
        before = arr.copy()
        out, mask = pp.prune(arr, backend=backend, return_mask=True, **kwargs)
        np.testing.assert_array_equal(arr, before)
        assert out.dtype == np.dtype(dtype) and out.dtype.str == np.dtype(dtype).str
        want = expected if arr.shape == native.shape else pp.prune(native[:, ::2], backend=backend, **kwargs)
        np.testing.assert_array_equal(out, want)
        assert arr.dtype == np.dtype(dtype)  # the input itself untouched


class _FewArguments:
    """A plugin whose hook takes fewer arguments than the spec names (pluggy's forward
    compatibility): the registry must pass only those."""

    @pp.hookimpl
    def pruneplug_backend_info(self):
        return pp.BackendInfo(name="few-args", priority=-1, operations={"nm_mask"}, dtypes={"float64"})

    @pp.hookimpl
    def pruneplug_nm_mask(self, values, n, m):
        return np.ones(values.shape, dtype=bool)


def test_hooks_may_accept_fewer_arguments_than_the_spec():
    pp.register_backend(_FewArguments(), "few-args-plugin")
    try:
        mask = pp.generate_nm_mask(np.ones((2, 4)), 2, 4, backend="few-args")
        assert mask.backend == "few-args" and mask.nnz == 8
    finally:
        pp.unregister_backend("few-args")


# --- issue 9: in place on what cannot be written in place (item 4) ---------------------------
@pytest.mark.parametrize("weights_like", [[1.0, -2.0, 0.5, 3.0], (1.0, -2.0, 0.5, 3.0), 2.0, np.float32(2.0)])
def test_inplace_on_a_converted_object_is_refused_naming_argument_and_type(weights_like):
    with pytest.raises(errors.ReadOnlyError, match=rf"weights: a {type(weights_like).__name__} cannot be written in place"):
        pp.prune(weights_like, sparsity=0.5, inplace=True)
    with pytest.raises(errors.ReadOnlyError, match="cannot be written in place"):
        pp.apply_mask(np.zeros(np.shape(weights_like), bool), weights_like)


class _ArrayLike:
    """An object with ``__array__``: its own storage (``copy=False``) or a fresh copy each time."""

    def __init__(self, data, copies):
        self.data, self.copies = data, copies

    def __array__(self, dtype=None, copy=None):
        return self.data.copy() if self.copies else self.data


def test_inplace_through_array_protocol_writes_through_or_is_refused():
    shares = _ArrayLike(np.array([1.0, -2.0, 0.5, 3.0], np.float32), copies=False)
    pp.prune(shares, sparsity=0.5, inplace=True)
    assert shares.data.tolist() == [0.0, -2.0, 0.0, 3.0]
    copies = _ArrayLike(np.array([1.0, -2.0, 0.5, 3.0], np.float32), copies=True)
    with pytest.raises(errors.ReadOnlyError, match="weights: a _ArrayLike cannot be written in place"):
        pp.prune(copies, sparsity=0.5, inplace=True)
    assert copies.data.tolist() == [1.0, -2.0, 0.5, 3.0]


# --- issue 9: the pattern grammar (items 7, 13) -----------------------------------------------
@pytest.mark.parametrize("pattern", ["block(0,1)", "block(1,0)", "block(0, 0)", "0:0", "5:4", "２:４", "2:4\n", " 2:4",
                                     "2:4 ", "block(2,2)\n", "block(2,\t2)", "block(2,  2)", "Row", "block(２,2)",
                                     "9" * 5000 + ":4", "block(99999999999999999999,1)", "1:9223372036854775808"],
                         ids=repr)
def test_pattern_grammar_rejects_with_invalid_argument(pattern):
    from pruneplug.patterns import parse_pattern

    with pytest.raises(errors.InvalidArgumentError, match="pattern=") as info:
        pp.prune(np.ones((4, 4), np.float32), None if ":" in pattern else 0.5, pattern=pattern)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(errors.InvalidArgumentError, match="pattern="):
        parse_pattern(pattern)


@pytest.mark.parametrize("text,kind,canonical", [("unstructured", "unstructured", "unstructured"), ("row", "row", "row"),
                                                 ("column", "column", "column"), ("2:4", "nm", "2:4"),
                                                 ("0:4", "nm", "0:4"), ("block(2,3)", "block", "block(2,3)"),
                                                 ("block(2, 3)", "block", "block(2,3)")])
def test_pattern_grammar_accepts(text, kind, canonical):
    from pruneplug.patterns import parse_pattern

    spec = parse_pattern(text)
    assert (spec.kind, str(spec), spec.needs_sparsity) == (kind, canonical, kind != "nm")


def test_checkpoint_uses_the_same_grammar(tmp_path):
    np.savez(tmp_path / "in.npz", w=np.ones((4, 4), np.float32))
    for pattern in ("block(0,1)", "２:４", "2:4\n"):
        with pytest.raises(errors.InvalidArgumentError, match="pattern="):
            pp.prune_checkpoint(tmp_path / "in.npz", tmp_path / "out.npz", sparsity=None if ":" in pattern else 0.5,
                                pattern=pattern)
    assert not (tmp_path / "out.npz").exists()


# --- issue 9: every API error is a pruneplug error (item 8) -----------------------------------
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_row_and_column_masks_of_empty_arrays(backend):
    row = pp.generate_row_mask(np.ones((3, 0), np.float32), 0.5, backend=backend)
    column = pp.generate_column_mask(np.ones((0, 3), np.float32), 0.5, backend=backend)
    assert (row.shape, column.shape) == ((3, 0), (0, 3))
    assert pp.prune(np.ones((3, 0), np.float32), 0.5, pattern="row", backend=backend).shape == (3, 0)
    assert pp.prune(np.ones((0, 3), np.float32), 0.5, pattern="column", backend=backend).shape == (0, 3)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_sizes_beyond_int64_are_invalid_arguments(backend):
    with pytest.raises(errors.InvalidArgumentError, match=r"m=9223372036854775808 must be an integer"):
        pp.generate_nm_mask(np.ones((2, 0)), 1, 2**63, backend=backend)
    with pytest.raises(errors.InvalidArgumentError, match="block_shape="):
        pp.generate_block_mask(np.ones((0, 0)), (2**64, 2**64), 0.5, backend=backend)
    with pytest.raises(errors.InvalidArgumentError, match="block_shape="):
        pp.generate_block_mask(np.ones((4, 4)), (2**63, 1), 0.5, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_huge_blocks_of_an_empty_array_return_at_once(backend):
    # The reference used to add bh * bw strided slices of the empty array (2**80 iterations).
    for shape, block in (((0, 0), (2**40, 2**40)), ((0, 4), (2**62, 2)), ((3, 0), (1, 2**62))):
        mask = pp.generate_block_mask(np.zeros(shape), block, 0.5, backend=backend)
        assert mask.shape == shape


@pytest.mark.parametrize("sparsity", [10**400, -(10**400), Fraction(10**400, 3), Fraction(-1, 10**400) - 1],
                         ids=["10**400", "-10**400", "Fraction(10**400,3)", "-1-Fraction(1,10**400)"])
def test_sparsity_too_large_for_a_float_is_invalid_argument(sparsity):
    with pytest.raises(errors.InvalidArgumentError, match=r"sparsity=.* must be a real number in \[0, 1\]") as info:
        pp.prune(np.ones(4), sparsity)
    assert len(str(info.value)) < 200
    with pytest.raises(errors.InvalidArgumentError, match="sparsity="):
        pp.generate_unstructured_mask(np.ones(4), sparsity)


def test_tiny_fraction_sparsity_is_accepted():
    assert pp.count_to_prune(Fraction(1, 10**400), 4) == 0


def test_messages_escape_what_the_user_passed():
    with pytest.raises(errors.InvalidArgumentError) as info:
        pp.prune(np.ones(4), 0.5, method="l1\nl2")
    assert "\n" not in str(info.value) and "'l1\\nl2'" in str(info.value)
    with pytest.raises(errors.InvalidArgumentError) as info:
        pp.prune(np.ones(4), 0.5, pattern="row\n" * 1000)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


# --- issue 9 item 12: a call uses the registry as it was when it started ----------------------
class _FastReference:
    """A high-priority backend that runs the numpy reference (so that results can be compared)."""

    def __init__(self):
        import pruneplug_backends.numpy as reference

        self.reference = reference

    @pp.hookimpl
    def pruneplug_backend_info(self):
        return pp.BackendInfo(name="hi", priority=10_000, operations={"unstructured_mask", "nm_mask", "apply_mask"})

    @pp.hookimpl
    def pruneplug_unstructured_mask(self, values, k, transform, out):
        return self.reference.pruneplug_unstructured_mask(values=values, k=k, transform=transform, out=out)

    @pp.hookimpl
    def pruneplug_nm_mask(self, values, n, m, axis, transform, out):
        return self.reference.pruneplug_nm_mask(values=values, n=n, m=m, axis=axis, transform=transform, out=out)

    @pp.hookimpl
    def pruneplug_apply_mask(self, weights, mask):
        self.reference.pruneplug_apply_mask(weights=weights, mask=mask)


def test_unregistering_while_other_threads_call_auto():
    import threading

    w = np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32)
    expected_u = pp.prune(w, 0.5, backend="numpy")
    expected_nm = pp.prune(w, pattern="2:4", backend="numpy")
    stop = threading.Event()
    failures: list[BaseException] = []
    chosen: set[str] = set()

    def caller():
        try:
            while not stop.is_set():
                got, mask = pp.prune(w, 0.5, return_mask=True)  # mask, then apply: two steps
                chosen.add(mask.backend)
                np.testing.assert_array_equal(got, expected_u)
                np.testing.assert_array_equal(pp.prune(w, pattern="2:4"), expected_nm)
                np.testing.assert_array_equal(pp.generate_nm_mask(np.abs(w), 2, 4).data, expected_nm != 0)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            if stop.is_set():
                break
            pp.register_backend(_FastReference(), "hi-plugin")
            pp.unregister_backend("hi")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, repr(failures[0])
    assert "hi" not in {b.name for b in pp.backends()}
    assert pp.prune(w, 0.5, return_mask=True)[1].backend != "hi"


# --- issue 9 item 8: NumPy warnings never reach the user --------------------------------------
def test_square_overflow_is_defined_and_silent(tmp_path):
    import warnings

    w = np.array([[3e19, -1.0, 2e19, 0.5]], np.float32)  # w * w overflows float32: +inf scores
    np.savez(tmp_path / "in.npz", w=w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for backend in ("numpy", "cpu"):
            assert pp.importance(w, "l2", backend=backend).stats.max == math.inf
            np.testing.assert_array_equal(pp.prune(w, 0.5, method="l2", backend=backend), w * [[1, 0, 1, 0]])
        pp.prune_checkpoint(tmp_path / "in.npz", tmp_path / "out.npz", sparsity=0.5, scope="global", method="l2")
        huge = np.full((2, 4), np.finfo(np.float64).max)  # block sums beyond float64's range: +inf
        huge[1, 2:] = 1.0
        results = [pp.prune(huge, 0.5, pattern="block(1,2)", backend=b, return_mask=True)[1].data for b in ("numpy", "cpu")]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["w"], w * [[1, 0, 1, 0]])
    for mask in results:  # three +inf blocks tie (lower index pruned first), the finite one is lowest
        np.testing.assert_array_equal(mask, [[False, False, True, True], [True, True, False, False]])


# --- issue 10: structured pruning passes the transform to the block hook (no score round trip) ---
class _SpyReference:
    def __init__(self):
        import pruneplug_backends.numpy as reference

        self.reference, self.calls = reference, []

    @pp.hookimpl
    def pruneplug_backend_info(self):
        return pp.BackendInfo(name="spy", priority=10_000, operations={"importance", "block_mask", "apply_mask"})

    @pp.hookimpl
    def pruneplug_importance(self, weights, transform):
        self.calls.append(("importance", transform))
        return self.reference.pruneplug_importance(weights=weights, transform=transform)

    @pp.hookimpl
    def pruneplug_block_mask(self, values, block_shape, k, transform, out):
        self.calls.append(("block_mask", tuple(block_shape), k, transform))
        return self.reference.pruneplug_block_mask(values=values, block_shape=block_shape, k=k, transform=transform, out=out)

    @pp.hookimpl
    def pruneplug_apply_mask(self, weights, mask):
        self.calls.append(("apply_mask",))
        self.reference.pruneplug_apply_mask(weights=weights, mask=mask)


def test_structured_prune_scores_in_the_block_hook(weights):
    spy = _SpyReference()
    pp.register_backend(spy, "spy-plugin")
    try:
        expected = pp.prune(weights, 0.25, pattern="row", method="l2", backend="numpy")
        got = pp.prune(weights, 0.25, pattern="row", method="l2")
        pp.prune(weights, 0.5, pattern="block(2,4)", method="l1")
    finally:
        pp.unregister_backend("spy")
    np.testing.assert_array_equal(got, expected)
    assert spy.calls == [("block_mask", (1, 16), 2, "square"), ("apply_mask",),
                         ("block_mask", (2, 4), 8, "abs"), ("apply_mask",)]


# ---------------------------------------------------------------------------------------------
# count= : an exact number of units instead of a sparsity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, groups, shape, units", [
    ("unstructured", "layer", (6, 10), 60), ("unstructured", "row", (6, 10), 10),
    ("row", "layer", (6, 10), 6), ("column", "layer", (6, 10), 10), ("block(2,5)", "layer", (6, 10), 6),
])
def test_count_prunes_exactly_that_many_units_as_the_matching_sparsity_does(pattern, groups, shape, units):
    w = np.random.default_rng(31).standard_normal(shape).astype(np.float32)
    for k in range(units + 1):
        by_count, mask = pp.prune(w, count=k, pattern=pattern, groups=groups, return_mask=True)
        by_sparsity = pp.prune(w, k / units, pattern=pattern, groups=groups)
        assert by_count.tobytes() == by_sparsity.tobytes()
        pruned = int((~mask.data).sum())
        assert pruned == k * (w.size // units), (pattern, k, pruned)


def test_count_in_the_mask_generators():
    s = np.random.default_rng(32).random((4, 6))
    assert int((~pp.generate_unstructured_mask(s, count=5).data).sum()) == 5
    assert ((~pp.generate_unstructured_mask(s, count=2, groups="row").data).sum(axis=1) == 2).all()
    assert int((~pp.generate_row_mask(s, count=3).data).all(axis=1).sum()) == 3
    assert int((~pp.generate_column_mask(s, count=4).data).all(axis=0).sum()) == 4
    assert int((~pp.generate_block_mask(s, (2, 3), count=1).data).sum()) == 6


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=61), r"count=61 must be an integer in \[0, 60\] \(entries to prune\)"),
    (dict(count=-1), r"count=-1 must be an integer in \[0, 60\]"),
    (dict(count=True), r"count=True must be an integer"),
    (dict(count=2.0), r"count=2.0 must be an integer"),
    (dict(count=3, sparsity=0.5), r"sparsity=0.5 and count=3 are exclusive"),
    (dict(count=7, pattern="row"), r"count=7 must be an integer in \[0, 6\] \(rows to prune\)"),
    (dict(count=11, groups="row"), r"count=11 must be an integer in \[0, 10\] \(entries per row to prune\)"),
    (dict(count=1, pattern="2:4"), r"count=1 cannot be combined with pattern='2:4': N:M fixes it"),
    (dict(pattern="column"), r"pattern='column' needs sparsity= .* or count= \(an integer in \[0, 10\], the columns"),
])
def test_a_bad_count_is_refused_and_nothing_changes(kwargs, message):
    w = np.random.default_rng(33).standard_normal((6, 10)).astype(np.float32)
    before = w.copy()
    with pytest.raises(pp.errors.InvalidArgumentError, match=message):
        pp.prune(w, inplace=True, **kwargs)
    assert w.tobytes() == before.tobytes()


def test_a_hook_with_an_argument_the_spec_does_not_name_is_refused_at_registration():
    """The importance hook takes ``transform`` like every scoring hook: an implementation written
    for the old ``method`` argument is refused with a typed error naming the hook and the argument,
    and nothing is registered."""

    class OldStyle:
        @pp.hookimpl
        def pruneplug_backend_info(self):
            return pp.BackendInfo(name="oldstyle", priority=1, operations={"importance"})

        @pp.hookimpl
        def pruneplug_importance(self, weights, method):
            raise AssertionError("never called")

    with pytest.raises(pp.errors.PluginRegistrationError, match=r"pruneplug_importance.*\{'method'\}"):
        pp.register_backend(OldStyle(), "oldstyle")
    assert "oldstyle" not in [b.name for b in pp.backends()]


def test_registering_the_same_plugin_twice_is_a_typed_error():
    class Twice:
        @pp.hookimpl
        def pruneplug_backend_info(self):
            return pp.BackendInfo(name="twice", priority=1, operations=set())

    plugin = Twice()
    pp.register_backend(plugin, "twice")
    try:
        with pytest.raises(pp.errors.PluginRegistrationError, match="already registered"):
            pp.register_backend(plugin, "twice")
    finally:
        pp.unregister_backend("twice")


def test_global_masks_take_an_exact_count():
    tensors = {"a": np.random.default_rng(51).standard_normal((8, 8)), "b": np.random.default_rng(52).standard_normal(40)}
    total = 64 + 40
    for k in (0, 1, 37, total):
        by_count = pp.global_unstructured_masks(tensors, count=k)
        assert sum(int((~m.data).sum()) for m in by_count.values()) == k
        by_sparsity = pp.global_unstructured_masks(tensors, k / total)
        assert all((by_count[n].data == by_sparsity[n].data).all() for n in tensors)
    with pytest.raises(pp.errors.InvalidArgumentError, match=r"count=105 must be an integer in \[0, 104\]"):
        pp.global_unstructured_masks(tensors, count=total + 1)
    with pytest.raises(pp.errors.InvalidArgumentError, match="exclusive"):
        pp.global_unstructured_masks(tensors, 0.5, count=3)
