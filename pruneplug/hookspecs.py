"""The hooks a pruneplug backend implements: the whole extension surface, documented here.

A backend is a plugin: a module or object with functions marked ``@pruneplug.hookimpl``, found
through the ``pruneplug`` entry-point group (or registered with :func:`pruneplug.register_backend`).
The built-in ``numpy``, ``cpu`` and ``cuda`` backends are plugins like any third party's.

How the core calls a backend
----------------------------
The core validates every argument (dtype, shape, sparsity, axis, ...) before it calls a hook, picks
*one* backend, and calls that backend's implementation alone (other plugins are not consulted).
So every operation hook may assume:

* array arguments are arrays of the backend's own array type (``"numpy"`` -> ``numpy.ndarray``,
  ``"cupy"`` -> ``cupy.ndarray``), C-contiguous, of a dtype the backend declared; bfloat16 arrays
  are ``ml_dtypes.bfloat16`` on NumPy and ``uint16``-backed views are the backend's business
  (the exact-selection hooks may instead receive raw bits with ``dtype=``, where they name it);
* ``k``, ``n``, ``m``, ``axis`` are in range (``axis`` is non-negative);
* ``out``, when given, is a C-contiguous ``bool`` array of the result's shape, to be filled.

Callers pass keywords only, so an implementation may accept fewer arguments than the spec names.

Scores and the ``transform`` argument
-------------------------------------
Every hook that scores (importance, masks, fused pruning, 2:4, the key histogram) receives a
``transform`` that says how to turn its input into scores (the user-facing ``method`` ``"l1"``/``"l2"``
is mapped to ``"abs"``/``"square"`` once, in the core):

* ``"abs"``: ``values`` are weights; score = ``|w|`` (magnitude L1),
* ``"square"``: ``values`` are weights; score = ``w * w`` (magnitude L2),
* ``"identity"``: ``values`` are already scores.

Scores of float16/bfloat16 weights are computed in float32 (``|w|`` and ``w*w`` are then exact for
float16); otherwise in the weights' dtype, with one IEEE round-to-nearest multiply for ``square``.
A backend may select on the magnitude bits directly instead of materialising scores, as long as the
result is the same. ``-0.0`` and ``+0.0`` are equal scores.

Weights (``abs``/``square``) that contain NaN or +-Inf, and scores (``identity``) that contain NaN,
are an error: raise ``pruneplug.errors.NonFiniteError.for_values(transform, count, first_index)``
(how many, and the first flat C-order index) *before writing anything*.

Results must be identical, bit for bit, to the ``numpy`` reference backend
(``pruneplug_backends.numpy``), which is the executable specification; ``pruneplug.testing`` checks it.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "pruneplug"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Array = Any  # numpy.ndarray or cupy.ndarray, per the backend's declared array types


@hookspec
def pruneplug_backend_info() -> "Any":
    """Declare the backend this plugin provides.

    Return a :class:`pruneplug.BackendInfo`: its ``name`` (what users pass as ``backend=``), its
    ``priority`` (``backend="auto"`` picks the highest-priority available backend that supports the
    array type, dtype and operation), the ``array_types`` it takes (``"numpy"``, ``"cupy"``), the
    ``dtypes`` (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``, ``"int8"``), the
    ``operations`` it implements (names of the hooks below without the ``pruneplug_`` prefix), and
    whether it is ``available`` here, with the ``reason`` when it is not.

    Called lazily (the first time a backend is needed) and cached, so it may import heavy
    libraries or probe a device; it must not raise: report a failure as ``available=False``.
    """


@hookspec(firstresult=True)
def pruneplug_importance(weights: Array, transform: str) -> "tuple[Array, tuple[float, float, float, float]]":
    """Magnitude importance scores of ``weights`` and their statistics.

    ``transform`` is ``"abs"`` (score ``|w|``, magnitude L1) or ``"square"`` (score ``w*w``,
    magnitude L2), as for every other hook; scores have the weights'
    shape and the score dtype described in the module docstring. Return
    ``(scores, (min, max, mean, std))`` where the statistics are Python floats over all scores
    (``std`` is the population standard deviation; mean and std accumulated in float64; all four
    NaN for an empty array). Raise ``NonFiniteError`` for NaN or Inf weights.

    Example (what the numpy reference returns)::

        scores, (lo, hi, mean, std) = impl(weights=np.array([-2.0, 1.0]), transform="abs")
        # scores == [2.0, 1.0]; lo == 1.0, hi == 2.0, mean == 1.5, std == 0.5
    """


@hookspec(firstresult=True)
def pruneplug_unstructured_mask(values: Array, k: int, transform: str, out: "Array | None") -> Array:
    """Keep-mask that prunes exactly ``k`` entries (``0 <= k <= values.size``).

    The pruned entries are the first ``k`` of a *stable* ascending sort of the scores over the
    flat C-order index: among equal scores the lower index is pruned first. Return a ``bool`` array
    of ``values``' shape, ``True`` = keep (``out`` when given). Raise ``NonFiniteError`` as
    described in the module docstring.
    """


@hookspec(firstresult=True)
def pruneplug_nm_mask(values: Array, n: int, m: int, axis: int, transform: str, out: "Array | None") -> Array:
    """N:M keep-mask: in every group of ``m`` consecutive elements along ``axis``, keep the ``n``
    largest scores; among equal scores the lower index is kept.

    ``values.shape[axis]`` is a multiple of ``m`` and ``0 <= n <= m``. Elements of a group are
    ``values.shape[axis+1:]``-strided apart in the C-contiguous array: handle the stride, do not
    transpose. Return a ``bool`` array of ``values``' shape (``out`` when given).
    """


@hookspec(firstresult=True)
def pruneplug_block_mask(
    values: Array, block_shape: "tuple[int, int]", k: int, transform: str, out: "Array | None"
) -> Array:
    """Keep-mask of a 2-D array pruned in whole ``block_shape`` blocks: exactly ``k`` blocks pruned.

    A block's score is the float64 sum of its scores, accumulated from ``0.0`` in row-major order
    inside the block (this order is part of the contract: it makes sums bit-identical everywhere).
    Blocks are ranked by a stable ascending sort of their sums over the row-major block index (a
    NaN sum ranks highest, as NumPy sorts it); the first ``k`` are pruned. Row masks are blocks of
    ``(1, columns)``, column masks blocks of ``(rows, 1)``.
    """


@hookspec(firstresult=True)
def pruneplug_row_mask(values: Array, k: int, transform: str, out: "Array | None") -> Array:
    """Per-row exact keep-mask of a 2-D array: in *every* row prune exactly ``k`` entries
    (``0 <= k <= columns``), the lowest scores of that row, among equal scores the lower column
    index first (a stable ascending sort of each row). This is the comparison group Wanda uses:
    scores are compared within an output row, never across rows. Return a ``bool`` array of
    ``values``' shape (``out`` when given). Raise ``NonFiniteError`` (flat C-order first index over
    the whole array) before writing anything.
    """


@hookspec(firstresult=True)
def pruneplug_apply_mask(weights: Array, mask: Array) -> None:
    """Set ``weights[~mask]`` to ``+0.0`` in place (NaN and ``-0.0`` included); kept entries keep
    their exact bits. ``weights`` is writable and C-contiguous; ``mask`` is a C-contiguous ``bool``
    array of the same shape."""


@hookspec(firstresult=True)
def pruneplug_prune_unstructured(weights: Array, k: int, transform: str) -> None:
    """Optional fused operation: prune ``weights`` in place to the same result as
    ``pruneplug_unstructured_mask`` followed by ``pruneplug_apply_mask``, without materialising the
    mask. Raise ``NonFiniteError`` before writing anything."""


@hookspec(firstresult=True)
def pruneplug_prune_nm(weights: Array, n: int, m: int, axis: int, transform: str) -> None:
    """Optional fused operation: prune ``weights`` in place to the same result as
    ``pruneplug_nm_mask`` followed by ``pruneplug_apply_mask``."""


@hookspec(firstresult=True)
def pruneplug_compress_24(weights: Array, layout: str) -> "tuple[Array, Array]":
    """Compress a 2-D weight that is already 2:4 sparse along its last axis (1:2 for float32)
    into ``(values, metadata)``.

    ``weights``: C-contiguous ``(m, k)`` float16, bfloat16, float32 or int8. ``layout`` is ``"ptx"``
    (logical row-major metadata) or ``"cutlass"`` (CUTLASS ``ColumnMajorInterleaved<2>``
    reordering); see ``pruneplug.sparse24`` for the exact format, which the numpy reference
    implements. Return ``values`` ``(m, k/2)`` of the weights' dtype and ``metadata`` of shape
    ``pruneplug.sparse24.metadata_shape`` (int16 words, int32 for int8), both fresh C-contiguous
    arrays of the backend's array type. The core has checked ndim, dtype and the layout's shape
    rules. ``-0.0`` counts as zero, NaN as nonzero; padded slots hold the element found there.
    If a group has more nonzeros than the pattern allows, raise
    ``pruneplug.sparse24.not_sparse_error(dtype, row, group, count)`` for the first such group in
    C order (without the optional total) before returning anything.
    """


@hookspec(firstresult=True)
def pruneplug_decompress_24(values: Array, metadata: Array, shape: "tuple[int, int]", layout: str) -> Array:
    """Inverse of ``pruneplug_compress_24``: a fresh C-contiguous dense ``shape`` array of the
    values' dtype; positions not kept are ``+0.0`` (integer 0), kept positions get the value's exact
    bits. The core has checked dtypes and shapes. Raise
    ``pruneplug.sparse24.invalid_nibble_error(dtype, layout, row, group, nibble)`` for the first
    invalid nibble (0x0, 0x5, 0xA, 0xF; for float32 anything but 0x4 and 0xE) in logical C order
    (dense row, then group along it)."""


@hookspec(firstresult=True)
def pruneplug_prune_compress_24(weights: Array, layout: str, transform: str) -> "tuple[Array, Array]":
    """Optional fused operation: the result of ``pruneplug_prune_nm`` with ``n, m = 2, 4``
    (``1, 2`` for float32) on a copy of ``weights``, then ``pruneplug_compress_24``, without
    modifying ``weights``. For int8 weights the score is the integer's absolute value (``|-128|``
    is 128) whatever ``transform`` says. Raise ``NonFiniteError`` for NaN or Inf float weights.
    ``pruneplug.prune_24`` uses it when the backend declares ``prune_compress_24`` (and needs it for
    int8); otherwise it prunes with the N:M hooks and compresses."""


@hookspec(firstresult=True)
def pruneplug_key_histogram(values: Array, transform: str, keys: str, shift: int, bits: int, prefix: int,
                            dtype: "str | None" = None, zeros: "Array | None" = None) -> Array:
    """Histogram of one digit of the selection keys of ``values`` (one chunk of weights), restricted
    to a key prefix: the only data-touching step of the exact selection over many arrays
    (:mod:`pruneplug.selection`, which documents the algorithm and drives it).

    ``transform`` is ``"abs"`` or ``"square"``. The key of a weight is an unsigned integer whose
    order is the score order (equal scores, equal keys), by ``keys``:

    * ``"mag16"`` (float16/bfloat16 values): the 15 magnitude bits (``bits & 0x7fff``); for bfloat16
      with ``square``, the smallest magnitude whose float32 square equals this weight's
      (``pruneplug.selection.bf16_square_keys()`` is that table);
    * ``"f32"`` (float16, bfloat16, float32 values): the bits of the float32 score (``|w|`` or
      ``w*w`` in float32; half-precision weights widened exactly first);
    * ``"f64"`` (any float dtype): the bits of the score (computed in the score dtype of the module
      docstring) converted exactly to float64.

    With ``hi = key >> (shift + bits)`` (0 when ``shift + bits == 64``) and
    ``digit = (key >> shift) & (2**bits - 1)``, return ``2**bits + 2`` int64 counts (a NumPy
    array, or one of the backend's array type): ``[0]`` = keys with ``hi < prefix``,
    ``[1 + d]`` = keys with ``hi == prefix`` and ``digit == d``, ``[-1]`` = keys with
    ``hi > prefix``. ``0 <= bits <= 16``. Histograms of different chunks add up. Raise
    ``NonFiniteError`` for NaN or Inf weights.

    Optional keywords (a backend that names them supports them; the core asks the registry before
    passing them): ``dtype``, when given, says that ``values`` are the raw bits of that float dtype
    (a C-contiguous ``uint16``/``uint32``/``uint64`` NumPy array: checkpoints pass bfloat16 this way,
    without importing ``ml_dtypes``); ``zeros``, an int64 NumPy array of 2, receives in the same pass
    what ``pruneplug_count_zeros`` returns.
    """


@hookspec(firstresult=True)
def pruneplug_count_zeros(values: Array, transform: "str | None", dtype: "str | None" = None) -> "tuple[int, int]":
    """Optional: ``(zeros, zero_scores)`` of ``values``: exact zeros (``-0.0`` included), and weights
    whose score under ``transform`` is zero (the zeros, plus for ``"square"`` the weights whose
    square underflows to 0; with the keys of ``pruneplug_key_histogram``, the weights of key 0).
    ``transform`` ``"abs"``/``"square"``: raise ``NonFiniteError`` for NaN or Inf; ``None``: count
    zeros only (``zero_scores == zeros``), nothing is rejected. ``dtype``: as for
    ``pruneplug_key_histogram`` (raw bits). What a checkpoint dry run reports needs only these
    counts (``pruneplug.checkpoint.prune``).
    """


@hookspec(firstresult=True)
def pruneplug_prune_below_key(values: Array, transform: str, keys: str, threshold: int, ties: int,
                              out: "Array | None", mask: "Array | None",
                              dtype: "str | None" = None) -> "tuple[int, int, int, int]":
    """Optional: apply a decided exact selection to one part in one pass (keys as in
    ``pruneplug_key_histogram``): prune every weight whose key is ``< threshold`` and the first
    ``ties`` weights (flat C order) whose key equals it. ``out`` (``None``: count only) is a
    C-contiguous array like ``values`` and distinct from it that receives the pruned weights
    (``+0.0`` where pruned, exact bits elsewhere); ``mask`` (``None``: none) a ``bool`` array that
    receives the keep-mask. ``values`` is never written. Return ``(less, equal, zeros_before,
    zeros_after)``: keys below and equal to ``threshold``, and exact zeros (``-0.0`` included) in
    ``values`` and in the result. Raise ``NonFiniteError`` for NaN or Inf weights (``out`` and
    ``mask`` are then unspecified). ``dtype`` (optional): ``values`` and ``out`` are raw bits, as
    for ``pruneplug_key_histogram``.
    """
