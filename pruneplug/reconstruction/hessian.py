"""Hessian preparation shared by the SparseGPT reconstruction and the SparseGPT saliency.

A linear layer ``y = W x`` with calibration inputs ``X`` (tokens x inputs) has the layer-wise
Hessian ``H = X^T X`` (up to a constant factor, which changes nothing below). Before it is inverted:

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


@dataclass(frozen=True)
class DampedInverse:
    """The damped inverse Hessian of one layer, in the form the caller asked for.

    ``value``: the upper Cholesky factor ``U`` of ``(H + d I)^-1`` (``U^T U = (H + d I)^-1``) for
    :func:`damped_inverse_factor`, or the diagonal of ``(H + d I)^-1`` for :func:`inverse_diagonal`.
    ``damping``: the relative damping used (a fraction of the mean diagonal), ``absolute_damping``:
    ``d`` itself, ``retries``: how many times the damping was raised, ``dead``: the boolean vector
    of dead inputs (``None`` when dead inputs were not treated).
    """

    value: Any
    damping: float
    absolute_damping: float
    retries: int
    dead: Any


def check_hessian(hessian: Any, columns: int, name: str) -> None:
    """Raise a typed error naming ``name`` unless ``hessian`` is a finite ``(columns, columns)``
    matrix."""
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


def _check_damping(damping: float, max_retries: int) -> None:
    if not (isinstance(damping, (int, float)) and damping >= 0 and damping == damping and damping != float("inf")):
        raise InvalidArgumentError(f"damping={damping!r} must be a finite number >= 0 (a fraction of the mean diagonal)")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidArgumentError(f"max_retries={max_retries!r} must be an integer >= 0")


def _damped(hessian: Any, damping: float, dtype: Any, max_retries: int, name: str, dead_inputs: bool,
            finish: Callable[[Any], "tuple[Any, bool]"]) -> DampedInverse:
    """Shared loop: treat dead inputs, damp, factor, hand ``L`` to ``finish`` (which returns the
    wanted value and whether it succeeded), raise the damping until it works."""
    import torch

    _check_damping(damping, max_retries)
    h = hessian.to(torch.float64).clone()
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
    relative = float(damping)
    for attempt in range(max_retries + 1):
        absolute = relative * mean_diag
        damped = h.clone()
        torch.diagonal(damped).add_(absolute)
        lower, info = torch.linalg.cholesky_ex(damped.to(dtype))
        if int(info) == 0:
            value, ok = finish(lower)
            if ok:
                return DampedInverse(value, relative, absolute, attempt, dead)
        if attempt < max_retries:
            relative = relative * RETRY_FACTOR if relative > 0 else 1e-6
    raise HessianError(
        f"tensor {name!r}: the Hessian is not positive definite even with relative damping {relative:g} "
        f"(x mean diagonal {mean_diag:g}) after {max_retries} increase(s) by {RETRY_FACTOR:g}x in {dtype}; "
        "check the calibration statistics of this layer"
    )


def damped_inverse_factor(hessian: Any, *, damping: float = 0.01, dtype: Any = None, max_retries: int = 4,
                          name: str = "weight") -> DampedInverse:
    """Dead inputs treated, damping added, then the upper Cholesky factor of the inverse: what the
    SparseGPT column sweep needs (its diagonal and rows are the OBS denominators and update
    directions in elimination order).

    Example::

        >>> import torch
        >>> from pruneplug.reconstruction import damped_inverse_factor
        >>> r = damped_inverse_factor(torch.eye(3, dtype=torch.float64) * 4)
        >>> round(float(r.value[0, 0]), 4), r.retries
        (0.4975, 0)
    """
    import torch

    dtype = dtype or torch.float32

    def finish(lower: Any) -> "tuple[Any, bool]":
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

    def finish(lower: Any) -> "tuple[Any, bool]":
        diag = torch.diagonal(torch.cholesky_inverse(lower)).clone()
        return diag, bool(torch.isfinite(diag).all()) and bool((diag > 0).all())

    return _damped(hessian, damping, torch.float64, max_retries, name, False, finish)
