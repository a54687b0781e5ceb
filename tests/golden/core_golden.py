"""Golden results of the array API: SHA-256 of every result (scores, statistics, masks, pruned
weights, 2:4 values and metadata, global masks, criteria) for a fixed set of seeded inputs.

``core_golden.json`` was made by the code before the one-home-per-rule refactor (commit ad0273d,
NumPy reference backend), with::

    PRUNEPLUG_BACKEND=numpy .venv/bin/python tests/golden/core_golden.py > tests/golden/core_golden.json

``tests/test_core_golden.py`` recomputes the digests with today's code on every CPU backend and
compares: a refactor must not change one bit of any result.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import ml_dtypes
import numpy as np

import pruneplug as pp

DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}


def weights(seed: int, shape: tuple[int, ...], dtype: str, levels: int | None = 13) -> np.ndarray:
    """Seeded weights with ties (``levels`` magnitudes), signed zeros and a few tiny values."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if levels:
        w = np.round(w * levels / 3) / (levels / 3)
    w.flat[:: 7] = -0.0
    w.flat[3:: 11] *= 1e-6
    return w.astype(DTYPES[dtype])


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, pp.Mask):
            part = part.data
        if isinstance(part, pp.SparseWeight24):
            part = (part.values, part.metadata)
        if isinstance(part, tuple):
            h.update(digest(*part).encode())
        elif isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.view(np.uint8).tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def cases() -> dict[str, Callable[[], Any]]:
    """Name -> a function that computes one result on the default backend."""
    out: dict[str, Callable[[], Any]] = {}
    for d in DTYPES:
        for method in ("l1", "l2"):
            def imp(d=d, method=method):
                s = pp.importance(weights(1, (37, 64), d), method)
                st = s.stats  # mean and std may differ in the last bits across backends (stats_close)
                return digest(s.values, st.min, st.max, f"{st.mean:.10g}", f"{st.std:.10g}")
            out[f"importance/{d}/{method}"] = imp
            for sparsity in (0.0, 0.3, 0.5, 0.9, 1.0):
                out[f"prune/unstructured/{d}/{method}/{sparsity}"] = (
                    lambda d=d, m=method, s=sparsity: digest(pp.prune(weights(2, (33, 48), d), s, method=m,
                                                                        return_mask=True)))
                out[f"prune/unstructured-row/{d}/{method}/{sparsity}"] = (
                    lambda d=d, m=method, s=sparsity: digest(pp.prune(weights(3, (16, 40), d), s, method=m,
                                                                        groups="row")))
            for pattern, axis in (("2:4", -1), ("1:2", -1), ("4:8", 0), ("2:4", 1), ("3:5", -1)):
                shape = (20, 40, 3) if axis == 1 else (40, 20) if axis == 0 else (12, 40)
                out[f"prune/{pattern}/axis{axis}/{d}/{method}"] = (
                    lambda d=d, m=method, p=pattern, a=axis, s=shape: digest(
                        pp.prune(weights(4, s, d), pattern=p, method=m, axis=a, return_mask=True)))
            for pattern in ("row", "column", "block(2,4)", "block(4,1)"):
                for sparsity in (0.25, 0.5):
                    out[f"prune/{pattern}/{d}/{method}/{sparsity}"] = (
                        lambda d=d, m=method, p=pattern, s=sparsity: digest(
                            pp.prune(weights(5, (16, 24), d), s, pattern=p, method=m, return_mask=True)))
        scores = lambda d=d: pp.importance(weights(6, (24, 32), d), "l1")  # noqa: E731
        out[f"mask/unstructured/{d}"] = lambda s=scores: digest(pp.generate_unstructured_mask(s(), 0.4))
        out[f"mask/unstructured-row/{d}"] = lambda s=scores: digest(pp.generate_unstructured_mask(s(), 0.4, groups="row"))
        out[f"mask/nm/{d}"] = lambda s=scores: digest(pp.generate_nm_mask(s(), 2, 4), pp.generate_nm_mask(s(), 1, 4, axis=0))
        out[f"mask/block/{d}"] = lambda s=scores: digest(pp.generate_block_mask(s(), (4, 4), 0.5))
        out[f"mask/row/{d}"] = lambda s=scores: digest(pp.generate_row_mask(s(), 0.3))
        out[f"mask/column/{d}"] = lambda s=scores: digest(pp.generate_column_mask(s(), 0.3))
        out[f"mask/identity-raw/{d}"] = lambda d=d: digest(pp.generate_unstructured_mask(weights(7, (50,), d), 0.5))
        out[f"apply/{d}"] = lambda d=d: digest(pp.apply_mask(weights(8, (30,), d) != 0.5, weights(9, (30,), d)))
        out[f"global/{d}"] = lambda d=d: digest(*(m.data for m in pp.global_unstructured_masks(
            {"a": weights(10, (16, 16), d), "b": weights(11, (8, 40), d), "c": weights(12, (64,), d)}, 0.55).values()))
        out[f"global-l2/{d}"] = lambda d=d: digest(*(m.data for m in pp.global_unstructured_masks(
            {"a": weights(13, (16, 16), d), "b": weights(14, (8, 40), d)}, 0.35, method="l2").values()))
    for d in ("float16", "bfloat16", "float32"):
        for layout in ("ptx", "cutlass"):
            shape = (64, 64) if d != "float32" else (32, 64)
            out[f"prune_24/{d}/{layout}"] = lambda d=d, lay=layout, s=shape: digest(
                pp.prune_24(weights(15, s, d), layout=lay))
            out[f"prune_24-l2/{d}/{layout}"] = lambda d=d, lay=layout, s=shape: digest(
                pp.prune_24(weights(16, s, d), layout=lay, method="l2"))
            out[f"roundtrip_24/{d}/{layout}"] = lambda d=d, lay=layout, s=shape: digest(
                pp.decompress_24(pp.prune_24(weights(17, s, d), layout=lay)))
    for layout in ("ptx", "cutlass"):
        def int8_24(layout=layout):
            w = np.random.default_rng(18).integers(-128, 128, (64, 128), dtype=np.int8)
            return digest(pp.prune_24(w, layout=layout))
        out[f"prune_24/int8/{layout}"] = int8_24
    out.update(criteria_cases())
    return out


def criteria_cases() -> dict[str, Callable[[], Any]]:
    def calibration(seed: int, cols: int) -> pp.ActivationStats:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((64, cols))
        return pp.ActivationStats(np.sqrt((x * x).sum(axis=0)), 64, hessian=x.T @ x)

    def wanda(pattern: str, sparsity: float | None):
        w = weights(19, (24, 32), "float32", levels=None)
        pp.criteria.prune_scored(w, "wanda", sparsity=sparsity, pattern=pattern, calibration=calibration(20, 32))
        return digest(w)

    def sparsegpt(pattern: str, sparsity: float | None):
        w = weights(21, (16, 32), "float32", levels=None)
        pp.criteria.prune_scored(w, "sparsegpt", sparsity=sparsity, pattern=pattern, calibration=calibration(22, 32))
        return digest(np.round(w.astype(np.float64), 4))  # reconstruction is floating point: compare to 1e-4

    def counted(groups: str):
        w = weights(23, (12, 20), "float32", levels=None)
        pp.criteria.prune_scored(w, "wanda", count=101, groups=groups, calibration=calibration(24, 20))
        return digest(w)

    return {
        "wanda/unstructured": lambda: wanda("unstructured", 0.5),
        "wanda/2:4": lambda: wanda("2:4", None),
        "wanda/row": lambda: wanda("row", 0.25),
        "wanda/count-layer": lambda: counted("layer"),
        "wanda/count-row": lambda: counted("row"),
        "sparsegpt/unstructured": lambda: sparsegpt("unstructured", 0.5),
        "sparsegpt/2:4": lambda: sparsegpt("2:4", None),
        "magnitude-count": lambda: (lambda w: (pp.criteria.prune_scored(w, "l1", count=77), digest(w))[1])(
            weights(25, (10, 30), "float32")),
    }


def digests() -> dict[str, str]:
    return {name: compute() for name, compute in cases().items()}


if __name__ == "__main__":
    assert os.environ.get("PRUNEPLUG_BACKEND") == "numpy", "make the golden digests with the NumPy reference"
    print(json.dumps(digests(), indent=1, sort_keys=True))
