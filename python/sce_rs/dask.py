"""sce_rs on Dask arrays: data chunked along rows, on one machine or a cluster.

Every function takes Dask arrays (or anything ``dask.array.asarray`` takes), returns lazy Dask
arrays, and runs sce_rs's kernel on each chunk. The class axis is gathered into one chunk
(``rechunk``) when it is split; rows may be chunked any way, and targets are rechunked to
match the input's rows.

Reductions are exact: each chunk gives its per-row losses, which are summed in float64 across
chunks, and the ``"mean"`` denominator (the sum of ``weight[target]`` over rows not ignored,
or the count of rows) is summed the same way from the targets. The mean therefore equals the
single-machine ``sce_rs`` result within float64 rounding, whatever the chunking.

Point it at a cluster with ``dask.distributed.Client("tcp://scheduler:8786")`` before calling
``.compute()``; the workers need ``sce_rs`` installed.

>>> import dask.array as da, numpy as np, sce_rs, sce_rs.dask
>>> x = da.from_array(np.arange(12.0).reshape(4, 3) % 5, chunks=(2, 3))
>>> t = da.from_array(np.array([0, 2, 1, 2]), chunks=2)
>>> loss = sce_rs.dask.cross_entropy(x, t)
>>> bool(loss.compute() == sce_rs.cross_entropy(x.compute(), t.compute()))
True
"""

from __future__ import annotations

import functools
from typing import Any

import dask.array as da
import numpy as np
from numpy.exceptions import AxisError

import sce_rs

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_and_grad",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]

_REDUCTIONS = ("mean", "sum", "none")


def _class_axis(x: da.Array, axis: int, fn: str) -> tuple[da.Array, int]:
    """The input with its class axis in one chunk, and that axis counted from the front."""
    if not -x.ndim <= axis < x.ndim:
        raise AxisError(f"{fn}: axis {axis} is out of bounds for an array of dimension {x.ndim}")
    axis %= x.ndim
    if x.numblocks[axis] > 1:
        x = x.rechunk({axis: -1})
    return x, axis


def _letters(ndim: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[:ndim]


def _float(dtype: np.dtype) -> np.dtype:
    """The kernels' result dtype for an input dtype (the contract: floats keep theirs,
    integers and bools become float64)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind in "fV" else np.dtype(np.float64)


def _reduced(dtype: np.dtype) -> type:
    """A reduced loss is float64 for float64 inputs and float32 otherwise."""
    return np.float64 if dtype == np.float64 else np.float32


def _divide(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty mean is NaN, quietly
        return np.asarray(total, np.float64) / np.asarray(count, np.float64)


def _mean(total: da.Array, count: Any, out: type) -> da.Array:
    return da.blockwise(_divide, "", total, "", da.asarray(count), "", dtype=np.float64).astype(out)


def _rowwise(fn, x: Any, axis: int, name: str) -> da.Array:
    x, axis = _class_axis(da.asarray(x), axis, name)
    return x.map_blocks(fn, axis=axis, dtype=_float(x.dtype))


def softmax(x: Any, axis: int = -1) -> da.Array:
    """``sce_rs.softmax`` chunk by chunk."""
    return _rowwise(sce_rs.softmax, x, axis, "softmax")


def log_softmax(x: Any, axis: int = -1) -> da.Array:
    """``sce_rs.log_softmax`` chunk by chunk."""
    return _rowwise(sce_rs.log_softmax, x, axis, "log_softmax")


def logsumexp(x: Any, axis: int = -1, *, keepdims: bool = False) -> da.Array:
    """``sce_rs.logsumexp`` chunk by chunk."""
    x, axis = _class_axis(da.asarray(x), axis, "logsumexp")
    ix = _letters(x.ndim)
    out = ix if keepdims else ix.replace(ix[axis], "")
    fn = functools.partial(sce_rs.logsumexp, axis=axis, keepdims=keepdims)
    # With keepdims the class axis (one chunk) comes back with length 1.
    adjust = {ix[axis]: 1} if keepdims else None
    return da.blockwise(
        fn, out, x, ix, dtype=_float(x.dtype), concatenate=True, adjust_chunks=adjust
    )


class _Loss:
    """One multi-class loss call: the input with its class axis in one chunk, the target
    rechunked to the input's rows, the blockwise indices of both, and the mean's
    denominator."""

    def __init__(self, name, input, target, axis, weight, ignore_index):
        x, self.axis = _class_axis(da.asarray(input), axis, name)
        t = da.asarray(target)
        self.ix = _letters(x.ndim)
        self.rows = self.ix.replace(self.ix[self.axis], "")
        self.soft = t.ndim == x.ndim and t.dtype.kind in "fV"
        self.it = self.ix if self.soft else self.rows
        rows_shape = tuple(n for i, n in enumerate(x.shape) if i != self.axis)
        if t.shape != (x.shape if self.soft else rows_shape):
            raise ValueError(
                f"{name}: target of shape {t.shape} does not fit input of shape {x.shape} with "
                f"axis={self.axis}: expected {rows_shape} (class indices) or {x.shape} "
                "(probabilities)"
            )
        chunks = (
            x.chunks if self.soft else tuple(c for i, c in enumerate(x.chunks) if i != self.axis)
        )
        self.x, self.t = x, t.rechunk(chunks)
        self.weight = None if weight is None else np.asarray(weight)
        self.ignore_index = ignore_index

    def map(self, fn, out: str, *extra: Any, dtype) -> da.Array:
        return da.blockwise(
            fn, out, self.x, self.ix, self.t, self.it, *extra, dtype=dtype, concatenate=True
        )

    def denominator(self) -> Any:
        """What "mean" divides by, exactly as the single-machine kernel (and PyTorch) does."""
        if self.soft:
            return float(np.prod([self.x.shape[i] for i in range(self.x.ndim) if i != self.axis]))
        counted = self.t != self.ignore_index
        if self.weight is None:
            return counted.sum(dtype=np.float64)
        w = self.weight.astype(np.float64)
        safe = da.where(counted, self.t, 0)
        per_row = safe.map_blocks(lambda b: w[b], dtype=np.float64)
        return da.where(counted, per_row, 0.0).sum()

    def reduce(self, per_row: da.Array, reduction: str) -> da.Array:
        if reduction == "none":
            return per_row
        out = _reduced(per_row.dtype)
        total = per_row.astype(np.float64).sum()
        if reduction == "sum":
            return total.astype(out)
        return _mean(total, self.denominator(), out)


def _check_reduction(reduction: str, name: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(
    input: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    **options: Any,
) -> da.Array:
    """``sce_rs.cross_entropy`` over chunks, with exact reductions; ``options`` are
    ``label_smoothing``, ``z_loss`` and ``softcap``."""
    return _multiclass(
        "cross_entropy", input, target, axis, weight, ignore_index, reduction, options
    )


def nll_loss(
    input: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> da.Array:
    """``sce_rs.nll_loss`` over chunks, with exact reductions."""
    return _multiclass("nll_loss", input, target, axis, weight, ignore_index, reduction, {})


def _multiclass(name, input, target, axis, weight, ignore_index, reduction, options):
    _check_reduction(reduction, name)
    c = _Loss(name, input, target, axis, weight, ignore_index)
    fn = functools.partial(
        getattr(sce_rs, name),
        axis=c.axis,
        weight=c.weight,
        ignore_index=ignore_index,
        reduction="none",
        **options,
    )
    per_row = c.map(fn, c.rows, dtype=_float(c.x.dtype))
    return c.reduce(per_row, reduction)


def cross_entropy_and_grad(
    input: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    grad_output: Any = None,
    **options: Any,
) -> tuple[da.Array, da.Array]:
    """``(loss, grad)`` as ``sce_rs.cross_entropy_and_grad``, both lazy. The gradient of each
    chunk is scaled by ``grad_output`` (divided by the whole mean's denominator for "mean")
    inside the fused kernel; the loss takes a second, read-only pass."""
    loss = cross_entropy(
        input,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        **options,
    )
    c = _Loss("cross_entropy_and_grad", input, target, axis, weight, ignore_index)

    def kernel(xb: Any, tb: Any, **call: Any) -> Any:
        return sce_rs.cross_entropy_and_grad(
            xb, tb, axis=c.axis, weight=c.weight, ignore_index=ignore_index, **options, **call
        )

    g = 1.0 if grad_output is None else grad_output
    if reduction == "none":
        g = da.broadcast_to(da.asarray(g), loss.shape).rechunk(loss.chunks)
        grad = c.map(
            lambda xb, tb, gb: kernel(xb, tb, reduction="none", grad_output=gb)[1],
            c.ix,
            g,
            c.rows,
            dtype=_float(c.x.dtype),
        )
        return loss, grad
    scale = da.asarray(g, dtype=np.float64)
    if reduction == "mean":
        scale = _mean(scale, c.denominator(), np.float64)
    grad = c.map(
        lambda xb, tb, s: kernel(xb, tb, reduction="sum", grad_output=s)[1],
        c.ix,
        scale,
        "",
        dtype=_float(c.x.dtype),
    )
    return loss, grad


def _elementwise(name, input, target, reduction, arrays):
    """The binary losses: element-wise, so any chunking works; weights are broadcast to the
    input's chunks."""
    _check_reduction(reduction, name)
    x, t = da.asarray(input), da.asarray(target)
    if t.shape != x.shape:
        raise ValueError(f"{name}: target of shape {t.shape} must have the input's shape {x.shape}")
    t = t.rechunk(x.chunks)
    names = [k for k, v in arrays.items() if v is not None]
    extra = [da.broadcast_to(da.asarray(arrays[k]), x.shape).rechunk(x.chunks) for k in names]
    ix = _letters(x.ndim)

    def block(xb, tb, *wb):
        return getattr(sce_rs, name)(xb, tb, reduction="none", **dict(zip(names, wb)))

    args = [a for e in extra for a in (e, ix)]
    per_elem = da.blockwise(block, ix, x, ix, t, ix, *args, dtype=_float(x.dtype))
    if reduction == "none":
        return per_elem
    out = _reduced(per_elem.dtype)
    total = per_elem.astype(np.float64).sum()
    return total.astype(out) if reduction == "sum" else _mean(total, x.size, out)


def binary_cross_entropy(
    input: Any, target: Any, *, weight: Any = None, reduction: str = "mean"
) -> da.Array:
    """``sce_rs.binary_cross_entropy`` over chunks, with exact reductions."""
    return _elementwise("binary_cross_entropy", input, target, reduction, {"weight": weight})


def binary_cross_entropy_with_logits(
    input: Any, target: Any, *, weight: Any = None, pos_weight: Any = None, reduction: str = "mean"
) -> da.Array:
    """``sce_rs.binary_cross_entropy_with_logits`` over chunks, with exact reductions."""
    return _elementwise(
        "binary_cross_entropy_with_logits",
        input,
        target,
        reduction,
        {"weight": weight, "pos_weight": pos_weight},
    )


__all__ += ["perplexity", "token_logprobs"]


def _score_rows(name: str, logits: Any, target: Any, axis: int):
    """The input with its class axis in one chunk, its row indices, and the target (or None)
    checked against the rows and rechunked to them."""
    x, axis = _class_axis(da.asarray(logits), axis, name)
    ix = _letters(x.ndim)
    rows = ix.replace(ix[axis], "")
    if target is None:
        return x, axis, ix, rows, None
    t = da.asarray(target)
    rows_shape = tuple(n for i, n in enumerate(x.shape) if i != axis)
    if t.shape != rows_shape:
        raise ValueError(
            f"{name}: target of shape {t.shape} does not fit logits of shape "
            f"{x.shape} with axis={axis}: expected {rows_shape}"
        )
    return x, axis, ix, rows, t.rechunk(tuple(c for i, c in enumerate(x.chunks) if i != axis))


def token_logprobs(
    logits: Any,
    target: Any = None,
    *,
    axis: int = -1,
    ignore_index: int = -100,
    top_k: int = 0,
    temperature: float = 1.0,
) -> sce_rs.TokenLogprobs:
    """``sce_rs.token_logprobs`` over row chunks: a ``TokenLogprobs`` of lazy Dask arrays.

    One kernel call per chunk computes every field; they travel packed in one float64 array
    (exact for every field: values of the logits' dtype, 0/1, ranks and ids below 2**53) and
    are unpacked into their own dtypes.
    """
    x, axis, ix, rows, t = _score_rows("token_logprobs", logits, target, axis)
    has_t = t is not None
    width = (4 if has_t else 1) + 2 * top_k

    def block(xb, tb=None):
        r = sce_rs.token_logprobs(
            xb, tb, axis=axis, ignore_index=ignore_index, top_k=top_k, temperature=temperature
        )
        per_row = [r.entropy] + ([r.logprob, r.is_greedy, r.rank] if has_t else [])
        cols = [np.asarray(c, np.float64)[..., None] for c in per_row]
        cols += [np.asarray(r.top_ids, np.float64), np.asarray(r.top_logprobs, np.float64)]
        return np.concatenate(cols, axis=-1)

    args = [x, ix] + ([t, rows] if has_t else [])
    packed = da.blockwise(
        block, rows + "z", *args, new_axes={"z": width}, dtype=np.float64, concatenate=True
    )
    out = _float(x.dtype)
    tops = 4 if has_t else 1
    return sce_rs.TokenLogprobs(
        logprob=packed[..., 1].astype(out) if has_t else None,
        is_greedy=packed[..., 2].astype(bool) if has_t else None,
        rank=packed[..., 3].astype(np.int64) if has_t else None,
        entropy=packed[..., 0].astype(out),
        top_ids=packed[..., tops : tops + top_k].astype(np.int64),
        top_logprobs=packed[..., tops + top_k :].astype(out),
    )


def perplexity(
    logits: Any, target: Any, *, axis: int = -1, ignore_index: int = -100, state: Any = None
) -> tuple[da.Array, tuple[da.Array, da.Array]]:
    """``sce_rs.perplexity`` over row chunks: ``(ppl, (nll_sum, count))`` as lazy 0-d arrays.

    Each chunk's ``(nll_sum, count)`` comes from the kernel in float64 and the chunks' are
    summed in float64, so the result equals the single-machine one within float64 rounding.
    ``state`` (numbers or 0-d Dask arrays) is added as in ``sce_rs.perplexity``.
    """
    x, axis, ix, rows, t = _score_rows("perplexity", logits, target, axis)

    def block(xb, tb):
        _, (nll, count) = sce_rs.perplexity(xb, tb, axis=axis, ignore_index=ignore_index)
        return np.array([nll, count], np.float64).reshape((1,) * len(rows) + (2,))

    sums = da.blockwise(
        block,
        rows + "z",
        x,
        ix,
        t,
        rows,
        new_axes={"z": 2},
        dtype=np.float64,
        concatenate=True,
        adjust_chunks={r: 1 for r in rows},
    )
    total = sums.sum(axis=tuple(range(len(rows))), dtype=np.float64)
    prev_nll, prev_count = (0.0, 0) if state is None else state
    nll = total[0] + prev_nll
    count = (total[1] + prev_count).astype(np.int64)
    return da.exp(_mean(nll, count, np.float64)), (nll, count)
