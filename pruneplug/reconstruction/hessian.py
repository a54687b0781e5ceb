"""Hessian preparation shared by the SparseGPT reconstruction and the SparseGPT saliency.

A linear layer ``y = W x`` with calibration inputs ``X`` (tokens x inputs) has the layer-wise
Hessian ``H = X^T X`` (up to a constant factor, which changes nothing below). Before it is inverted:

* **checks**: the diagonal (sums of squares) must be ``>= 0`` and ``H`` symmetric within
  :data:`SYMMETRY_RTOL` (``max |H - H^T| <= SYMMETRY_RTOL * max |H|``): a negative diagonal entry
  or a larger asymmetry means corrupt statistics and raises :class:`~pruneplug.errors.HessianError`
  naming the tensor; an asymmetry within the tolerance (round-off of another runtime's
  accumulation) is removed by using ``(H + H^T) / 2``, so that the result does not depend on which
  triangle the factorisation reads,
* **scale**: ``H`` is divided by the mean of its diagonal in float64 (:attr:`DampedInverse.scale`)
  before anything is cast to the compute dtype: a Hessian scaled by 1e-45 or 1e+45 would otherwise
  underflow or overflow float32. SparseGPT's masks and updates do not depend on the scale,
* **dead inputs** (``H_jj == 0``: the input was zero on every calibration token) get ``H_jj = 1``
  (the SparseGPT reference does this; the caller also zeroes those weight columns, which never
  contributed to the output),
* **damping**: ``damping * mean(diag(H))`` is added to the diagonal (relative damping, 0.01 by
  default as in the SparseGPT and Aprender code),
* when the Cholesky factorisation still fails (a Hessian that is not positive definite, or float32
  round-off), the relative damping is multiplied by 10 and the factorisation retried, up to
  ``max_retries`` times; the damping actually used and the number of retries are returned, so the
  caller can report them. After that a :class:`~pruneplug.errors.HessianError` names the tensor.

Everything runs on torch tensors on the Hessian's device: the same code on the CPU and on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pruneplug.errors import HessianError, InvalidArgumentError, NonFiniteError, ShapeError

#: Relative damping multiplier between retries.
RETRY_FACTOR = 10.0
#: Largest accepted asymmetry of a Hessian, relative to its largest absolute entry: about 100
#: float32 rounding steps, far above the round-off of any accumulation of ``X^T X`` and far below
#: what a wrong or mixed-up matrix shows.
SYMMETRY_RTOL = 1e-5


@dataclass(frozen=True)
class DampedInverse:
    """The damped inverse Hessian of one layer, in the form the caller asked for.

    ``value``: the upper Cholesky factor ``U`` of ``(H / scale + d I)^-1`` (the *normalised*
    Hessian: ``U^T U = (H / scale + d I)^-1``, whose entries stay near 1 whatever the scale of
    ``H``) for :func:`damped_inverse_factor`, or the diagonal of ``(H + d * scale * I)^-1`` (in
    ``H``'s own units) for :func:`inverse_diagonal`. ``damping``: the relative damping ``d`` used (a
    fraction of the mean diagonal), ``absolute_damping``: ``d * scale``, ``retries``: how many times
    the damping was raised, ``dead``: the boolean vector of dead inputs (``None`` when dead inputs
    were not treated), ``scale``: the mean diagonal ``H`` was divided by (after the dead-input
    treatment).
    """

    value: Any
    damping: float
    absolute_damping: float
    retries: int
    dead: Any
    scale: float = 1.0


def check_hessian(hessian: Any, columns: int, name: str) -> None:
    """Raise a typed error naming ``name`` unless ``hessian`` is a finite, symmetric
    ``(columns, columns)`` matrix (within :data:`SYMMETRY_RTOL`) with a diagonal ``>= 0``: every
    check the factorisation makes before its first step, for a caller that checks all its layers
    before it prunes the first."""
    import torch

    if hessian.ndim != 2 or tuple(hessian.shape) != (columns, columns):
        raise ShapeError(
            f"tensor {name!r}: the Hessian has shape {tuple(hessian.shape)}, expected "
            f"({columns}, {columns}) (in_features x in_features of the weight)"
        )
    if not hessian.dtype.is_floating_point:
        raise InvalidArgumentError(f"tensor {name!r}: the Hessian has dtype {hessian.dtype}, expected a float dtype")
    bad = ~torch.isfinite(hessian)
    if bool(bad.any()):
        flat = torch.nonzero(bad.reshape(-1))
        raise NonFiniteError(
            f"tensor {name!r}: the Hessian contains {int(bad.sum())} non-finite value(s) (NaN or Inf), "
            f"first at flat index {int(flat[0])}; calibration statistics must be finite",
            count=int(bad.sum()), first_index=int(flat[0]),
        )
    _check_symmetric_nonnegative(hessian.to(torch.float64), name)


def _check_symmetric_nonnegative(h: Any, name: str) -> Any:
    """``h`` (float64) symmetrised, after checking its diagonal is ``>= 0`` and its asymmetry within
    :data:`SYMMETRY_RTOL`; a :class:`HessianError` naming the tensor otherwise."""
    import torch

    diag = torch.diagonal(h)
    negative = torch.nonzero(diag < 0)
    if negative.numel():
        j = int(negative[0, 0])
        raise HessianError(
            f"tensor {name!r}: the Hessian's diagonal entry {j} is {float(diag[j]):g} (and {negative.numel() - 1} "
            "more are negative); a diagonal entry is a sum of squares (X^T X) and cannot be negative: the "
            "calibration statistics of this layer are corrupt")
    largest = float(h.abs().max()) if h.numel() else 0.0
    asymmetry = float((h - h.T).abs().max()) if h.numel() else 0.0
    if asymmetry > SYMMETRY_RTOL * largest:
        raise HessianError(
            f"tensor {name!r}: the Hessian is not symmetric (max |H - H^T| = {asymmetry:g}, "
            f"{asymmetry / largest:.3g} of its largest entry; accepted: {SYMMETRY_RTOL:g}); X^T X is symmetric: "
            "the calibration statistics of this layer are corrupt")
    return (h + h.T) / 2


def _check_damping(damping: float, max_retries: int) -> None:
    if not (isinstance(damping, (int, float)) and damping >= 0 and damping == damping and damping != float("inf")):
        raise InvalidArgumentError(f"damping={damping!r} must be a finite number >= 0 (a fraction of the mean diagonal)")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidArgumentError(f"max_retries={max_retries!r} must be an integer >= 0")


def _damped(hessian: Any, damping: float, dtype: Any, max_retries: int, name: str, dead_inputs: bool,
            finish: Callable[[Any, float], "tuple[Any, bool]"]) -> DampedInverse:
    """Shared loop: check, treat dead inputs, normalise the scale, damp, factor, hand ``L`` (of the
    normalised Hessian) and the scale to ``finish`` (which returns the wanted value and whether it
    succeeded), raise the damping until it works."""
    import torch

    _check_damping(damping, max_retries)
    h = _check_symmetric_nonnegative(hessian.to(torch.float64), name)
    diag = torch.diagonal(h)
    dead = None
    if dead_inputs:
        dead = diag == 0
        diag[dead] = 1.0
    mean_diag = float(diag.mean()) if diag.numel() else 0.0
    if not mean_diag > 0:
        raise HessianError(
            f"tensor {name!r}: the Hessian's mean diagonal is {mean_diag}; relative damping needs a "
            "positive diagonal (were any calibration tokens seen by this layer?)"
        )
    h /= mean_diag  # in float64, before any cast: the factorisation sees entries near 1 at any scale
    relative = float(damping)
    for attempt in range(max_retries + 1):
        damped = h.clone()
        torch.diagonal(damped).add_(relative)  # relative * mean diagonal, which is now 1
        lower, info = torch.linalg.cholesky_ex(damped.to(dtype))
        if int(info) == 0:
            value, ok = finish(lower, mean_diag)
            if ok:
                return DampedInverse(value, relative, relative * mean_diag, attempt, dead, mean_diag)
        if attempt < max_retries:
            relative = relative * RETRY_FACTOR if relative > 0 else 1e-6
    raise HessianError(
        f"tensor {name!r}: the Hessian is not positive definite even with relative damping {relative:g} "
        f"(x mean diagonal {mean_diag:g}) after {max_retries} increase(s) by {RETRY_FACTOR:g}x in {dtype}; "
        "check the calibration statistics of this layer"
    )


def damped_inverse_factor(hessian: Any, *, damping: float = 0.01, dtype: Any = None, max_retries: int = 4,
                          name: str = "weight") -> DampedInverse:
    """Dead inputs treated, scale normalised, damping added, then the upper Cholesky factor of the
    inverse: what the SparseGPT column sweep needs (its diagonal and rows are the OBS denominators
    and update directions in elimination order; the Hessian's scale cancels in both, so the factor
    is that of ``H / scale``: multiply by ``scale ** -0.5`` for ``H``'s own units).

    Example::

        >>> import torch
        >>> from pruneplug.reconstruction import damped_inverse_factor
        >>> r = damped_inverse_factor(torch.eye(3, dtype=torch.float64) * 4)
        >>> round(float(r.value[0, 0]), 4), r.scale, r.retries
        (0.995, 4.0, 0)
    """
    import torch

    dtype = dtype or torch.float32

    def finish(lower: Any, scale: float) -> "tuple[Any, bool]":
        inverse = torch.cholesky_inverse(lower)
        upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
        return upper, int(info) == 0 and bool(torch.isfinite(upper).all())

    return _damped(hessian, damping, dtype, max_retries, name, True, finish)


def inverse_diagonal(hessian: Any, *, damping: float = 0.01, max_retries: int = 4, name: str = "weight") -> DampedInverse:
    """``diag((H + damping * mean(diag(H)) * I)^-1)`` in float64 by a Cholesky inverse, with no
    dead-input treatment (Aprender's ``SparseGPTImportance`` denominator).

    Example::

        >>> import torch
        >>> from pruneplug.reconstruction import inverse_diagonal
        >>> inverse_diagonal(torch.eye(2, dtype=torch.float64), damping=0.0).value.tolist()
        [1.0, 1.0]
    """
    import torch

    def finish(lower: Any, scale: float) -> "tuple[Any, bool]":
        diag = torch.diagonal(torch.cholesky_inverse(lower)).clone() / scale  # (H / s)^-1 = s H^-1
        return diag, bool(torch.isfinite(diag).all()) and bool((diag > 0).all())

    return _damped(hessian, damping, torch.float64, max_retries, name, False, finish)
