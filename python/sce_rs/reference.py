"""Plain NumPy versions of every sce_rs function: the textbook formulas, float64 inside.

They are written for clarity, not speed, and serve as the oracle of the test suite and as the
"NumPy" column of the benchmark. Semantics (options, edge cases, reductions) are those of
``sce_rs`` and of PyTorch, which ``sce_rs`` follows; results are always float64 (reduced
losses as ``np.float64``), whatever the input dtype.

>>> from sce_rs import reference as ref
>>> ref.softmax([2.0, 1.0, 0.1]).round(3)
array([0.659, 0.242, 0.099])
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "cross_entropy",
    "cross_entropy_and_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "nll_loss",
    "perplexity",
    "softmax",
    "softmax_backward",
    "softmax_jacobian",
    "token_logprobs",
]


def _f64(a):
    a = np.asarray(a)
    if a.dtype.kind == "V":  # ml_dtypes.bfloat16
        a = a.astype(np.float32)
    return a.astype(np.float64)


def _shifted(x, axis):
    """x - max(x) along axis, with the maximum kept for the caller."""
    with np.errstate(invalid="ignore"):
        m = (
            np.max(x, axis=axis, keepdims=True)
            if x.shape[axis]
            else np.full_like(np.sum(x, axis=axis, keepdims=True), -np.inf)
        )
        return x - m, m


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along axis."""
    x = _f64(x)
    with np.errstate(invalid="ignore", over="ignore"):
        z, _ = _shifted(x, axis)
        e = np.exp(z)
        return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """(x - max) - log(sum(exp(x - max))) along axis."""
    x = _f64(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z, _ = _shifted(x, axis)
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def logsumexp(x, axis=-1, keepdims=False):
    """log(sum(exp(x))) along axis, shifted by the maximum unless it is infinite (then by 0)."""
    x = _f64(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if x.shape[axis]:
            m = np.max(x, axis=axis, keepdims=True)
            m = np.where(np.isinf(m), 0.0, m)
        else:
            m = np.zeros_like(np.sum(x, axis=axis, keepdims=True))
        r = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return r if keepdims else np.squeeze(r, axis=axis)


def softmax_backward(grad_output, output, axis=-1):
    """s * (g - sum(g * s)) along axis."""
    g, s = _f64(grad_output), _f64(output)
    return s * (g - np.sum(g * s, axis=axis, keepdims=True))


def log_softmax_backward(grad_output, output, axis=-1):
    """g - exp(output) * sum(g) along axis."""
    g, ls = _f64(grad_output), _f64(output)
    return g - np.exp(ls) * np.sum(g, axis=axis, keepdims=True)


def softmax_jacobian(x, axis=-1):
    """diag(s) - s s^T for every row, the class axis moved last: shape x.shape + (K,)."""
    s = np.moveaxis(softmax(x, axis), axis, -1)
    eye = np.eye(s.shape[-1])
    return s[..., :, None] * eye - s[..., :, None] * s[..., None, :]


def _reduce(losses, reduction, denominator):
    if reduction == "none":
        return losses
    total = np.sum(losses, dtype=np.float64)
    if reduction == "sum":
        return np.float64(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total / denominator)


def _targets(x, target, axis):
    """Class-axis-last logits, and either (indices, None) or (None, probabilities)."""
    t = np.asarray(target)
    xl = np.moveaxis(x, axis, -1)
    if t.shape == x.shape:
        return xl, None, np.moveaxis(_f64(t), axis, -1)
    return xl, t.astype(np.int64), None


def _class_weight(weight, k):
    return np.ones(k) if weight is None else _f64(weight)


def cross_entropy(
    input,
    target,
    *,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
):
    """PyTorch's F.cross_entropy, plus z_loss * lse**2 per counted row and an optional soft cap.

    With class indices t, weights w, smoothing eps over K classes and log-probabilities lp:
    loss = (1 - eps) * -w[t] * lp[t] + eps / K * -sum(w * lp) + z_loss * lse**2, 0 where
    t == ignore_index; "mean" divides the sum by sum(w[t]) over counted rows. With
    probabilities q: loss = -sum(w * q' * lp), q' = (1 - eps) q + eps / K, "mean" divides by
    the number of rows.
    """
    return _ce(
        input,
        target,
        axis,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        want_grad=False,
        grad_output=None,
    )


def cross_entropy_and_grad(
    input,
    target,
    *,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    grad_output=None,
):
    """(loss, d loss / d input) of cross_entropy; grad_output scales the gradient."""
    return _ce(
        input,
        target,
        axis,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        want_grad=True,
        grad_output=grad_output,
    )


def _ce(
    input,
    target,
    axis,
    weight,
    ignore_index,
    reduction,
    eps,
    z_loss,
    softcap,
    want_grad,
    grad_output,
):
    x = _f64(input)
    xl, idx, probs = _targets(x, target, axis)
    k = xl.shape[-1]
    w = _class_weight(weight, k)
    z = softcap * np.tanh(xl / softcap) if softcap is not None else xl
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lp = log_softmax(z, -1)
        p = softmax(z, -1)
        lse = logsumexp(z, -1)
        if probs is None:
            counted = idx != ignore_index
            safe = np.where(counted, idx, 0)
            wt = np.where(counted, w[safe], 0.0)
            lp_t = np.take_along_axis(lp, safe[..., None], -1)[..., 0]
            loss = -wt * lp_t
            onehot = np.zeros_like(lp)
            np.put_along_axis(onehot, safe[..., None], 1.0, -1)
            q = onehot
            if eps > 0:
                loss = (1 - eps) * loss + eps / k * np.where(counted, -np.sum(w * lp, -1), 0.0)
                q = (1 - eps) * onehot + eps / k
            denominator = np.sum(wt)
            wq = np.where(counted[..., None], w * q, 0.0)
            if eps == 0:
                wq = wt[..., None] * onehot
        else:
            counted = np.ones(xl.shape[:-1], dtype=bool)
            q = (1 - eps) * probs + eps / k
            wq = w * q
            loss = -np.sum(wq * lp, -1)
            denominator = float(np.prod(xl.shape[:-1]))
        if z_loss:
            loss = loss + np.where(counted, z_loss * lse**2, 0.0)
        result = _reduce(loss, reduction, denominator)
        if not want_grad:
            return result
        # d loss_row / d z = p * sum(wq) - wq + 2 z_loss lse p   (rows not counted: 0)
        dz = p * np.sum(wq, -1, keepdims=True) - wq
        if z_loss:
            dz = dz + 2 * z_loss * lse[..., None] * p
        if softcap is not None:
            dz = dz * (1 - (z / softcap) ** 2)
        if reduction == "none":
            up = np.ones(loss.shape) if grad_output is None else _f64(grad_output)
            dz = dz * np.broadcast_to(up, loss.shape)[..., None]
        else:
            g = 1.0 if grad_output is None else float(grad_output)
            dz = dz * (g / denominator if reduction == "mean" else g)
        # Rows not counted have a zero gradient, even when the mean's denominator is 0.
        dz = np.where(counted[..., None], dz, 0.0)
    return result, np.moveaxis(dz, -1, axis)


def nll_loss(input, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean"):
    """PyTorch's F.nll_loss on log-probabilities: -w[t] * input[t] (or -sum(w * q * input))."""
    x = _f64(input)
    xl, idx, probs = _targets(x, target, axis)
    w = _class_weight(weight, xl.shape[-1])
    with np.errstate(invalid="ignore"):
        if probs is None:
            counted = idx != ignore_index
            safe = np.where(counted, idx, 0)
            wt = np.where(counted, w[safe], 0.0)
            loss = -wt * np.take_along_axis(xl, safe[..., None], -1)[..., 0]
            loss = np.where(counted, loss, 0.0)
            return _reduce(loss, reduction, np.sum(wt))
        loss = -np.sum(w * probs * xl, -1)
        return _reduce(loss, reduction, float(np.prod(xl.shape[:-1])))


def binary_cross_entropy(input, target, *, weight=None, reduction="mean"):
    """-w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100)); mean over elements."""
    p, y = _f64(input), _f64(target)
    w = 1.0 if weight is None else _f64(weight)
    with np.errstate(divide="ignore"):
        loss = -w * (y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    return _reduce(np.broadcast_to(loss, p.shape), reduction, p.size)


def _bce_logits(x, y, weight, pos_weight):
    """PyTorch's loss and gradient, their terms gathered so that nothing cancels for labels in
    [0, 1] and positive weights (PyTorch's own forms give 0 for a loss of 4.2e-18 at x = -40,
    y = 0); PyTorch's form where x is infinite, NaN where it gives NaN."""
    w = 1.0 if weight is None else _f64(weight)
    pw = 1.0 if pos_weight is None else _f64(pos_weight)
    lw = 1 + (pw - 1) * y
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(-np.abs(x))
        softplus = np.log1p(e)
        gathered = np.where(x >= 0, (1 - y) * x, -pw * y * x) + lw * softplus
        pytorch = (1 - y) * x - lw * (np.minimum(x, 0) - softplus)
        loss = w * np.where(np.isfinite(x), gathered, pytorch)
        grad = w * np.where(x >= 0, (1 - y) - pw * y * e, (1 - y) * e - pw * y) / (1 + e)
    return np.broadcast_to(loss, x.shape), np.broadcast_to(grad, x.shape)


def binary_cross_entropy_with_logits(
    input, target, *, weight=None, pos_weight=None, reduction="mean"
):
    """(1 - y) x - l log(sigmoid(x)), l = 1 + (pos_weight - 1) y, times weight."""
    x = _f64(input)
    loss, _ = _bce_logits(x, _f64(target), weight, pos_weight)
    return _reduce(loss, reduction, x.size)


def binary_cross_entropy_with_logits_and_grad(
    input, target, *, weight=None, pos_weight=None, reduction="mean", grad_output=None
):
    """(loss, grad) of binary_cross_entropy_with_logits; grad = w (l sigmoid(x) - pos_weight y)."""
    x = _f64(input)
    loss, grad = _bce_logits(x, _f64(target), weight, pos_weight)
    if reduction == "none":
        up = 1.0 if grad_output is None else np.broadcast_to(_f64(grad_output), x.shape)
        grad = grad * up
    else:
        g = 1.0 if grad_output is None else float(grad_output)
        with np.errstate(divide="ignore", invalid="ignore"):
            grad = grad * (np.float64(g) / x.size if reduction == "mean" else g)
    return _reduce(loss, reduction, x.size), grad


def linear_cross_entropy(
    hidden,
    weight,
    target,
    bias=None,
    *,
    class_weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
):
    """cross_entropy of the materialized logits hidden @ weight.T (+ bias)."""
    logits = _f64(hidden) @ _f64(weight).T + (0.0 if bias is None else _f64(bias))
    return cross_entropy(
        logits,
        target,
        weight=class_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


def linear_cross_entropy_and_grad(
    hidden,
    weight,
    target,
    bias=None,
    *,
    class_weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    grad_output=None,
):
    """(loss, d_hidden, d_weight[, d_bias]) through the materialized logits."""
    h, w = _f64(hidden), _f64(weight)
    logits = h @ w.T + (0.0 if bias is None else _f64(bias))
    loss, g = cross_entropy_and_grad(
        logits,
        target,
        weight=class_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        grad_output=grad_output,
    )
    grads = (g @ w, g.T @ h) + (() if bias is None else (g.sum(axis=0),))
    return (loss, *grads)


def _order(x, axis):
    """The stable descending order of x along axis (the last axis of the result), NaN first:
    the order of np.argmax and torch.sort(descending=True, stable=True)."""
    x = np.moveaxis(x, axis, -1)
    idx = np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    nan = np.isnan(x)
    # lexsort sorts by its last key first: NaN-ness, then the negated value, then the index.
    return np.lexsort((idx, np.where(nan, 0.0, -x), ~nan), axis=-1)


def token_logprobs(logits, target=None, *, axis=-1, ignore_index=-100, top_k=0, temperature=1.0):
    """Per-row log-probability of the target, greedy match, rank, entropy and top-k.

    Textbook float64: ``log_softmax(x / temperature)``, the full stable descending sort of the
    logits (NaN first), ``-sum(p log p)`` with ``0 log 0 = 0``. Returns a
    ``sce_rs.TokenLogprobs``; ignored rows have ``logprob`` NaN, ``rank`` -1.
    """
    from sce_rs._scoring import TokenLogprobs

    x = _f64(logits)
    axis %= x.ndim
    k = x.shape[axis]
    if not 0 <= top_k <= k:
        raise ValueError(f"top_k must be in [0, {k}], got {top_k}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = x / temperature
        lp = np.moveaxis(log_softmax(z, axis=axis), axis, -1)
        p = np.moveaxis(softmax(z, axis=axis), axis, -1)
        entropy = -np.sum(np.where(p == 0, 0.0, p * lp), axis=-1)
    order = _order(x, axis)
    top_ids = order[..., :top_k].astype(np.int64)
    top_lp = np.take_along_axis(lp, top_ids, axis=-1)
    if target is None:
        return TokenLogprobs(None, None, None, entropy, top_ids, top_lp)
    t = np.asarray(target).astype(np.int64)
    ignored = t == ignore_index
    if np.any(~ignored & ((t < 0) | (t >= k))):
        raise IndexError("target out of range")
    safe = np.where(ignored, 0, t)
    logprob = np.where(ignored, np.nan, np.take_along_axis(lp, safe[..., None], -1)[..., 0])
    rank = np.argsort(order, axis=-1)  # the inverse permutation: each class's position
    rank = np.where(ignored, -1, np.take_along_axis(rank, safe[..., None], -1)[..., 0])
    return TokenLogprobs(logprob, rank == 0, rank.astype(np.int64), entropy, top_ids, top_lp)


def perplexity(logits, target, *, axis=-1, ignore_index=-100, state=None):
    """``(exp(nll_sum / count), (nll_sum, count))`` over the rows not ignored, the sums
    carried on from ``state``."""
    r = token_logprobs(logits, target, axis=axis, ignore_index=ignore_index)
    counted = r.rank >= 0
    nll, count = (0.0, 0) if state is None else state
    nll = nll + float(-np.sum(r.logprob[counted]))
    count = count + int(np.sum(counted))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(np.exp(np.float64(nll) / count)), (nll, count)
