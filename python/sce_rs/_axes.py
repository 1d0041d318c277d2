"""``axis=None``, tuples of axes, and ``logsumexp``'s ``b=``/``return_sign``: the calls the
binding hands over when the class axis is not one integer (src/python/axes.rs).

The classes of a tuple of axes span those axes together: they are moved last and merged into
one axis (``np.moveaxis`` + ``reshape``), the kernel runs along it, and the result is put back
in place. The merge is a view when the axes are the trailing ones in order (``axis=None``
included); any other tuple costs a whole-array copy of the input, which ``reshape`` makes.
``softmax``/``log_softmax`` write straight into their result array when NumPy can view it in
the merged layout, and through one more copy otherwise.

``b`` follows SciPy: ``log(sum(b * exp(x)))`` with ``b`` broadcast against ``x``. The sum is
split by the sign of ``b``: ``P = sum over b > 0`` and ``N = sum over b < 0`` are each a
logsumexp of ``x + log|b|`` (the kernel's, with its ``log1p`` accuracy), and ``log|P - N|`` is
``max + log1p(-exp(min - max))``. Zero entries of ``b`` drop their terms, as in SciPy.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from sce_rs import _sce_rs as _core


def _axes(axis: Any, ndim: int, f: str) -> tuple[int, ...]:
    """The class axes, each in [0, ndim), in the order given."""
    if axis is None:
        return tuple(range(ndim))
    out = []
    for a in axis:
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(
                f"{f}: axis must be an int, None or a tuple of ints, got an element of "
                f"type {type(a).__name__}"
            ) from None
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim, f"{f}: axis")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{f}: repeated axis in {tuple(axis)!r}; each axis may appear once")
    return tuple(out)


def _merged(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`x` with `axes` moved last (in the order given) and merged into one."""
    k = len(axes)
    moved = np.moveaxis(x, axes, range(x.ndim - k, x.ndim))
    return moved.reshape(moved.shape[: x.ndim - k] + (-1,))


def _as_array(x: Any) -> np.ndarray:
    # The kernels read DLPack producers in place; NumPy reads them the same way for the
    # reshape (np.asarray takes __array__/__dlpack__ producers without a copy on the CPU).
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def _row_map(f: str, x: Any, axis: Any, out: np.ndarray | None) -> np.ndarray:
    kernel = getattr(_core, f)
    x = _as_array(x)
    axes = _axes(axis, x.ndim, f)
    flat = _merged(x, axes)
    k = len(axes)
    back = (range(x.ndim - k, x.ndim), axes)
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != x.shape:
            # The kernel's own check gives the contract's message and exception.
            kernel(x.reshape(-1) if x.ndim else x, -1, out=out)
        moved = np.moveaxis(out, axes, back[0])
        target = moved.view()
        try:
            target.shape = flat.shape  # only a view, never a copy (raises if impossible)
        except AttributeError:
            # Through a buffer of out's dtype, which the kernel checks as it checks out.
            tmp = kernel(flat, -1, out=np.empty(flat.shape, out.dtype))
            np.copyto(moved, tmp.reshape(moved.shape))
            return out
        kernel(flat, -1, out=target)
        return out
    y = kernel(flat, -1)
    moved_shape = tuple(x.shape[i] for i in range(x.ndim) if i not in axes) + tuple(
        x.shape[a] for a in axes
    )
    y = np.moveaxis(y.reshape(moved_shape), *back)
    # A 0-d input gives a NumPy scalar, as NumPy's ufuncs (and SciPy's softmax) do.
    return y[()] if y.ndim == 0 else y


def softmax(x: Any, axis: Any, *, out: np.ndarray | None = None) -> np.ndarray:
    return _row_map("softmax", x, axis, out)


def log_softmax(x: Any, axis: Any, *, out: np.ndarray | None = None) -> np.ndarray:
    return _row_map("log_softmax", x, axis, out)


def logsumexp(
    x: Any, axis: Any, *, keepdims: bool = False, b: Any = None, return_sign: bool = False
) -> Any:
    f = "logsumexp"
    x = _as_array(x)
    if b is not None or return_sign:
        # SciPy broadcasts x against b first; the axes refer to the broadcast shape.
        b = np.ones((), np.int8) if b is None else np.asarray(b)
        if b.dtype.kind not in "biuf" and b.dtype.name != "bfloat16":
            raise TypeError(f"{f}: b must be a real array, got dtype {b.dtype}")
        try:
            x, b = np.broadcast_arrays(x, b)
        except ValueError:
            raise ValueError(
                f"{f}: b of shape {b.shape} does not broadcast against x of shape {x.shape}"
            ) from None
    axes = _axes(axis if isinstance(axis, (tuple, type(None))) else (axis,), x.ndim, f)
    if b is None:
        return _shaped(_core.logsumexp(_merged(x, axes), -1), x.shape, axes, keepdims)
    lse, sign = _scaled(x, b, axes)
    if not return_sign:
        return _shaped(np.where(sign < 0, np.nan, lse), x.shape, axes, keepdims)
    return _shaped(lse, x.shape, axes, keepdims), _shaped(sign, x.shape, axes, keepdims)


def _shaped(r: Any, shape: tuple, axes: tuple, keepdims: bool) -> Any:
    """A reduction's result over `axes` of an array of `shape`, NumPy's way."""
    kept = (
        (1 if i in axes else n for i, n in enumerate(shape))
        if keepdims
        else (n for i, n in enumerate(shape) if i not in axes)
    )
    r = np.asarray(r).reshape(tuple(kept))
    return r[()] if r.ndim == 0 else r


def _scaled(x: np.ndarray, b: np.ndarray, axes: tuple[int, ...]) -> tuple:
    """log|sum(b * exp(x))| and its sign (1, -1, 0 for an empty sum) over `axes`; x and b
    have one shape."""
    # NumPy's promotion of x and b (integers alone give float64), as SciPy's result; the
    # terms are formed in float32 at least, as the kernels compute half precision.
    dtype = np.result_type(x.dtype, b.dtype)
    if dtype.kind in "biu":
        dtype = np.dtype(np.float64)
    work = np.float64 if dtype == np.float64 else np.float32
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = x.astype(work) + np.log(np.abs(b.astype(work)))
    pos = _merged(np.where(b > 0, terms, -np.inf), axes)
    neg = _merged(np.where(b < 0, terms, -np.inf), axes)
    # A NaN (in x, in b, or inf * 0) must reach the result, which where() above drops.
    nan = _merged(np.isnan(terms), axes).any(axis=-1)
    lp, ln = np.asarray(_core.logsumexp(pos, -1)), np.asarray(_core.logsumexp(neg, -1))
    hi, lo = np.maximum(lp, ln), np.minimum(lp, ln)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # +inf on both sides is inf - inf: NaN, as SciPy gives.
        lse = np.where(
            hi == np.inf,
            np.where(lo == np.inf, np.nan, np.inf),
            np.where(hi == -np.inf, -np.inf, hi + np.log1p(-np.exp(lo - hi))),
        )
    sign = np.where(lp > ln, 1.0, np.where(lp < ln, -1.0, 0.0))
    lse = np.where(nan, np.nan, lse).astype(dtype, copy=False)
    sign = np.where(np.isnan(lse), np.nan, sign).astype(dtype, copy=False)
    return lse, sign
