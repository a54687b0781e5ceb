"""The conformance kit over every registered backend (unavailable ones skip with their reason); the
kit itself: its checks, its public names, that it fails backends with planted defects, and that it
runs with the reference's plugin "disabled"."""

import os
import subprocess
import sys
import textwrap

import pytest

import pruneplug as pp
import pruneplug.testing as kit
import pruneplug_backends.numpy as reference
from pruneplug.errors import NonFiniteError
from pruneplug.testing import backend_checks, parametrize_backend_checks, run_check

BACKENDS = [status.name for status in pp.backends() if status.error is None]


def test_builtin_backends_are_registered():
    assert {"numpy", "cpu", "cuda"} <= set(BACKENDS), BACKENDS


@parametrize_backend_checks(*BACKENDS)
def test_conformance(backend_check):
    run_check(backend_check)


# ---------------------------------------------------------------------------------------------
# the kit itself
# ---------------------------------------------------------------------------------------------
#: Every check of the kit, in its order, with the operations it needs: a check lost, renamed or
#: reordered (each is a pytest id that plugin authors' CI knows) fails here.
EXPECTED_CHECKS = [
    ("importance", {"importance"}),
    ("importance_special_values", {"importance"}),
    ("unstructured_mask_on_scores", {"unstructured_mask"}),
    ("unstructured_mask_layouts", {"unstructured_mask"}),
    ("unstructured_exact_count_and_tie_rule", {"unstructured_mask"}),
    ("unstructured_large", {"unstructured_mask"}),
    ("prune_unstructured", {"apply_mask", "unstructured_mask"}),
    ("prune_l2_rounding_ties", {"apply_mask", "unstructured_mask"}),
    ("nm_mask", {"nm_mask"}),
    ("nm_rule_directly", {"nm_mask"}),
    ("prune_nm", {"apply_mask", "nm_mask"}),
    ("nm_layouts", {"nm_mask"}),
    ("block_row_column_masks", {"block_mask"}),
    ("block_sum_order", {"block_mask"}),
    ("prune_structured", {"apply_mask", "block_mask", "importance"}),
    ("apply_mask", {"apply_mask"}),
    ("non_finite_errors", {"block_mask", "importance", "nm_mask", "unstructured_mask"}),
    ("thread_safety", {"apply_mask", "unstructured_mask"}),
    ("compress_24", {"compress_24"}),
    ("compress_24_not_sparse", {"compress_24"}),
    ("decompress_24", {"decompress_24"}),
    ("decompress_24_invalid_nibbles", {"decompress_24"}),
    ("prune_compress_24", {"compress_24"}),
    ("prune_compress_24_nonfinite", {"compress_24"}),
    ("row_mask", {"row_mask"}),
    ("prune_rows", {"apply_mask", "row_mask"}),
    ("row_rule_directly", {"row_mask"}),
    ("row_large", {"row_mask"}),
    ("row_non_finite", {"row_mask"}),
]


def test_the_kit_has_every_check_once_in_order():
    assert [(c.name, set(c.operations)) for c in backend_checks()] == EXPECTED_CHECKS
    assert backend_checks() == kit.MASK_CHECKS + kit.SPARSE24_CHECKS + kit.ROW_CHECKS
    # extra checks come after the kit's; a name the kit has is not run twice
    mine = kit.Check("mine", lambda h: None)
    assert backend_checks([mine, kit.MASK_CHECKS[0]]) == backend_checks() + [mine]


def test_the_package_exports_its_public_names_only():
    assert all(not name.startswith("_") for name in kit.__all__)
    for name in kit.__all__:
        assert getattr(kit, name) is not None, name
    # what third-party plugin suites and this repository's tests import from pruneplug.testing
    used = {"parametrize_backend_checks", "run_check", "backend_checks", "Check", "Harness", "harness_for",
            "REFERENCE", "DTYPES", "LAYOUTS", "ARRAY_TYPES", "tricky_array", "np_dtype", "with_layout",
            "sparse_24", "SPARSE24_CHECKS", "ROW_CHECKS", "assert_same_bits", "assert_same_outcome",
            "assert_mask_properties", "stats_close"}
    assert used <= set(kit.__all__)
    modules = {"harness", "data", "assertions", "checks_masks", "checks_rows", "checks_sparse24", "collect"}
    public = {n for n in vars(kit) if not n.startswith("_")} - modules
    assert public == set(kit.__all__)


# Backends that are the reference with one planted defect each: the kit must fail them, in the
# check named, while the same reference without the defect passes that check.
class _Planted:
    operations: frozenset = frozenset()

    def __init__(self, name: str):
        self.name = name

    @pp.hookimpl
    def pruneplug_backend_info(self):
        return pp.BackendInfo(name=self.name, priority=-100, array_types={"numpy"},
                              dtypes={"float16", "bfloat16", "float32", "float64"}, operations=self.operations)


class _Honest(_Planted):
    operations = frozenset({"unstructured_mask", "row_mask", "apply_mask"})

    @pp.hookimpl
    def pruneplug_unstructured_mask(self, values, k, transform, out):
        return reference.pruneplug_unstructured_mask(values, k, transform, out)

    @pp.hookimpl
    def pruneplug_row_mask(self, values, k, transform, out):
        return reference.pruneplug_row_mask(values, k, transform, out)

    @pp.hookimpl
    def pruneplug_apply_mask(self, weights, mask):
        reference.pruneplug_apply_mask(weights, mask)


class _OneBitFlipped(_Planted):
    operations = frozenset({"unstructured_mask"})

    @pp.hookimpl
    def pruneplug_unstructured_mask(self, values, k, transform, out):
        keep = reference.pruneplug_unstructured_mask(values, k, transform, out)
        if keep.size:
            keep.reshape(-1)[-1] ^= True
        return keep


class _NegativeZeros(_Planted):
    operations = frozenset({"apply_mask"})

    @pp.hookimpl
    def pruneplug_apply_mask(self, weights, mask):
        reference.pruneplug_apply_mask(weights, mask)
        weights[~mask] = -0.0


class _WritesOutBeforeFailing(_Planted):
    operations = frozenset({"row_mask"})

    @pp.hookimpl
    def pruneplug_row_mask(self, values, k, transform, out):
        if out is not None:
            out[...] = False
        return reference.pruneplug_row_mask(values, k, transform, out)


class _WrongFirstIndex(_Planted):
    operations = frozenset({"row_mask"})

    @pp.hookimpl
    def pruneplug_row_mask(self, values, k, transform, out):
        try:
            return reference.pruneplug_row_mask(values, k, transform, out)
        except NonFiniteError as exc:  # the same type, another message
            raise NonFiniteError.for_values(transform, exc.count, exc.first_index + 1) from None


@pytest.mark.parametrize("planted, checks", [
    (_OneBitFlipped, ["unstructured_mask_on_scores", "unstructured_exact_count_and_tie_rule"]),
    (_NegativeZeros, ["apply_mask"]),
    (_WritesOutBeforeFailing, ["row_non_finite"]),
    (_WrongFirstIndex, ["row_non_finite"]),
], ids=lambda p: p.__name__.strip("_") if isinstance(p, type) else None)
def test_the_kit_fails_a_planted_defect(planted, checks):
    by_name = {c.name: c for c in backend_checks()}
    for plugin in (_Honest("honest-reference"), planted("planted-defect")):
        pp.register_backend(plugin, plugin.name)
    try:
        for name in checks:
            run_check(("honest-reference", by_name[name], 10_007))
            with pytest.raises(AssertionError):
                run_check(("planted-defect", by_name[name], 10_007))
    finally:
        pp.unregister_backend("planted-defect")
        pp.unregister_backend("honest-reference")


def test_the_kit_runs_with_the_reference_disabled(tmp_path):
    """The reference is the specification: PRUNEPLUG_DISABLE_PLUGINS cannot remove it, so every
    check still runs (and passes) on a backend that is compared with it."""
    backend = "cpu" if {b.name: b.available for b in pp.backends()}.get("cpu") else "numpy"
    suite = tmp_path / "test_kit_without_numpy.py"
    suite.write_text(textwrap.dedent(f"""
        from pruneplug.testing import parametrize_backend_checks, run_check

        @parametrize_backend_checks({backend!r}, large_size=10_007, array_types=("native",))
        def test_kit(backend_check):
            run_check(backend_check)
    """))
    env = {**os.environ, "PRUNEPLUG_DISABLE_PLUGINS": "numpy"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert summary.startswith(f"{len(backend_checks())} passed"), summary
