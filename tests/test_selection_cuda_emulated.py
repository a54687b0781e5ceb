"""The CUDA backend's key histogram (keyhist.cu) run by the CPU emulator, against the NumPy
reference: every key kind, dtype and transform, prefix-restricted requests, several blocks and
thread schedules, non-finite weights. None of this ran on a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_helpers import EMU_NAME, emulator_available, register_emulated  # noqa: E402

_REASON = emulator_available()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

import pruneplug.selection as sel  # noqa: E402
from pruneplug.errors import NonFiniteError  # noqa: E402
from pruneplug.testing import np_dtype  # noqa: E402

PLUGIN, BACKEND = register_emulated()
KINDS = {"mag16": ("float16", "bfloat16"), "f32": ("float16", "bfloat16", "float32"),
         "f64": ("float16", "bfloat16", "float32", "float64")}


def weights(n: int, dtype: str, seed: int) -> np.ndarray:
    """Spread-out values, heavy ties, zeros of both signs, and bf16 magnitudes whose float32
    squares underflow or overflow."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)
    x[::5] = rng.integers(-3, 4, x[::5].size) / 2.0
    x[3::17] = -0.0
    if dtype == "bfloat16":
        x[7::23] *= 1e-25
        x[11::29] *= 1e21
    return x.astype(np_dtype(dtype))


@pytest.mark.parametrize("keys", list(KINDS))
@pytest.mark.parametrize("transform", ["abs", "square"])
def test_histograms_match_the_reference(keys, transform):
    for dtype in KINDS[keys]:
        x = weights(9_000, dtype, seed=len(dtype))
        top_bits = sel.DIGITS[keys][0]
        first = sel.HistogramRequest(keys, sel.KEY_BITS[keys] - top_bits, top_bits, 0)
        ref = sel.chunk_histogram(x, transform, first, backend="numpy")
        np.testing.assert_array_equal(sel.chunk_histogram(x, transform, first, backend=EMU_NAME), ref)
        # a prefix-restricted request (the second digit under the busiest first digit) and a count
        busiest = int(np.argmax(ref[1:-1]))
        shift = max(0, first.shift - 12)
        second = sel.HistogramRequest(keys, shift, first.shift - shift, busiest)
        np.testing.assert_array_equal(sel.chunk_histogram(x, transform, second, backend=EMU_NAME),
                                      sel.chunk_histogram(x, transform, second, backend="numpy"))


@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_full_selection_under_schedules(schedule):
    _, backend = register_emulated(EMU_NAME + "-" + schedule, schedule=schedule, seed=3)
    parts = [weights(5_000, "bfloat16", 1), weights(3_001, "float32", 2), weights(4_000, "float16", 3)]
    for transform in ("abs", "square"):
        got = sel.select_exact(parts, 6_000, transform, backend=EMU_NAME + "-" + schedule)
        ref = sel.select_exact(parts, 6_000, transform, backend="numpy")
        assert (got.threshold_key, got.below, got.ties, got.passes) == (ref.threshold_key, ref.below, ref.ties, ref.passes)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_nonfinite_count_and_first_index(dtype):
    x = weights(6_000, dtype, seed=9)
    x[[4_321, 100, 5_999]] = [np.nan, np.inf, -np.inf]
    request = sel.HistogramRequest("f64", 47, 16, 0)
    with pytest.raises(NonFiniteError) as err:
        sel.chunk_histogram(x, "abs", request, backend=EMU_NAME)
    assert (err.value.count, err.value.first_index) == (3, 100)


def test_empty_input():
    hist = sel.chunk_histogram(np.empty(0, np.float32), "abs", sel.HistogramRequest("f32", 15, 16, 0), backend=EMU_NAME)
    assert hist.shape == ((1 << 16) + 2,)
    assert not hist.any()
