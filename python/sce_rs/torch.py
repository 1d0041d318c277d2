"""PyTorch drop-ins: sce_rs's fused kernels behind ``torch.autograd``.

``cross_entropy``, ``binary_cross_entropy_with_logits`` and ``linear_cross_entropy`` take the
signatures of their ``torch.nn.functional`` namesakes (class axis 1, every option, the legacy
``size_average``/``reduce`` too), and ``CrossEntropyLoss``, ``BCEWithLogitsLoss`` and
``LinearCrossEntropyLoss`` those of the ``torch.nn`` modules. A few keyword-only extras expose
what sce_rs adds: ``z_loss``, ``softcap`` and ``inplace``.

How the gradient is made: the forward pass calls the fused ``*_and_grad`` kernel when the input
needs a gradient, and keeps that gradient (for ``grad_output = 1``) instead of the softmax, so
backward is one multiply (or nothing when ``grad_output`` is 1, as after ``loss.backward()``).
No N x K buffer is held beyond the gradient itself; with ``inplace=True`` not even that: the
gradient is written over the logits, as Liger Kernel does on GPUs.

Tensors pass to and from the kernels without copies (CPU tensors of float32, float64, float16
and bfloat16, any strides). Importing ``sce_rs`` never imports torch; this module does.

Under ``torch.compile`` and ``torch.export`` (PyTorch >= 2.4) the same calls go through
``torch.library`` custom operators (``sce_rs._torch_ops``): no graph break with
``fullgraph=True``, the same kernels and the same results. There ``inplace=True`` is refused
(an operator may not return its input's memory as the gradient), and backward always
multiplies by ``grad_output``. With PyTorch 2.1-2.3, which lack ``torch.library.custom_op``,
the autograd Functions below run everywhere, and ``torch.compile`` breaks the graph around them.

>>> import torch, sce_rs.torch
>>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], requires_grad=True)
>>> loss = sce_rs.torch.cross_entropy(logits, torch.tensor([0, 1]))
>>> loss.backward()
>>> round(loss.item(), 4), torch.allclose(loss, torch.nn.functional.cross_entropy(logits,
...     torch.tensor([0, 1]))), logits.grad.sum(dim=1).abs().max().item() < 1e-7
(0.3185, True, True)
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sce_rs import _sce_rs as _core
from sce_rs import _torch_ops as _ops

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]

_HALF_VIEWS = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16)}


def _to_numpy(t: Tensor | None, what: str) -> np.ndarray | None:
    """A NumPy view of a CPU tensor's memory (no copy, any strides), detached from autograd."""
    if t is None:
        return None
    _check_tensor(t, what)
    t = t.detach()
    if t.dtype in _HALF_VIEWS:
        # NumPy has no bfloat16: view the bits as int16 and give them ml_dtypes' bfloat16.
        bits, np_dtype = _HALF_VIEWS[t.dtype]
        return t.view(bits).numpy().view(np_dtype)
    return t.resolve_conj().resolve_neg().numpy()


def _check_tensor(t: Any, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise TypeError(
            f"{what}: sce_rs computes on the CPU, but this tensor is on {t.device}; "
            "move it with .cpu() or use PyTorch's own function"
        )


def _to_tensor(a: Any, dtype: torch.dtype) -> Tensor:
    """The kernel's result as a tensor of `dtype`: arrays without a copy, scalars as 0-d."""
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    # A reduced loss of a half-precision input comes back as float32; PyTorch gives the
    # input's dtype.
    return torch.from_numpy(a).to(dtype)


def _reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce)
    return reduction


def _check_inplace(input: Tensor) -> None:
    if input.requires_grad and input.is_leaf:
        raise RuntimeError(
            "inplace=True writes the gradient over the logits, which a leaf tensor that "
            "requires grad cannot allow; use it on computed logits (for example a Linear "
            "layer's output) or leave inplace=False"
        )


class _FusedLoss(torch.autograd.Function):
    """A loss whose gradient with respect to `input` comes from the same kernel call.

    The gradient is kept for grad_output = 1 and scaled in backward: the losses here are
    linear in grad_output row by row. The first backward hands the kept buffer over without
    a copy; a second one (retain_graph, gradcheck) recomputes it from the saved input.
    """

    @staticmethod
    def forward(ctx, kernel, input, inplace, class_axis, args, kwargs):
        x = _to_numpy(input, "input")
        ctx.class_axis = class_axis
        ctx.input_dtype = input.dtype
        if not ctx.needs_input_grad[1]:
            loss = getattr(_core, kernel)(x, *args, **kwargs)
            return _to_tensor(loss, input.dtype)
        if inplace:
            _check_inplace(input)
        loss, grad = getattr(_core, kernel + "_and_grad")(
            x, *args, **kwargs, out=x if inplace else None
        )
        if inplace:
            ctx.grad = input.detach()
            # Anything else that saved the logits for its backward now fails loudly instead
            # of using the gradient as if it were the logits.
            torch.autograd.graph.increment_version(input)
        else:
            ctx.grad = _to_tensor(grad, input.dtype)
            ctx.recompute = (kernel, args, kwargs)
            ctx.save_for_backward(input)
        return _to_tensor(loss, input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad = ctx.grad
        if grad is None:
            grad = _FusedLoss._recompute(ctx)
        ctx.grad = None
        if grad_output.dim() > 0:
            # 'none': one grad_output per loss element, spread along the class axis (the
            # binary losses have none: their losses are element-wise).
            if ctx.class_axis is not None:
                grad_output = grad_output.unsqueeze(ctx.class_axis)
            grad.mul_(grad_output.to(grad.dtype))
        elif grad_output.item() != 1.0:
            grad.mul_(grad_output.to(grad.dtype))
        return None, grad, None, None, None, None

    @staticmethod
    def _recompute(ctx) -> Tensor:
        if not hasattr(ctx, "recompute"):
            raise RuntimeError(
                "this loss was computed with inplace=True: its gradient replaced the logits "
                "and was used by the first backward; compute the loss again to go backward again"
            )
        (input,) = ctx.saved_tensors
        kernel, args, kwargs = ctx.recompute
        _, grad = getattr(_core, kernel + "_and_grad")(_to_numpy(input, "input"), *args, **kwargs)
        return _to_tensor(grad, ctx.input_dtype)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
) -> Tensor:
    """``torch.nn.functional.cross_entropy`` (class axis 1, or 0 for an unbatched input), with
    the gradient from sce_rs's fused kernel. Targets are class indices or probabilities.

    ``z_loss`` and ``softcap`` are ``sce_rs.cross_entropy``'s options. ``inplace=True``
    writes the gradient over ``input`` during the forward pass (no second N x K buffer); the
    logits then hold the gradient, so use it only when nothing else needs them.
    """
    _check_tensor(input, "input")
    _no_target_grad(target, weight)
    axis = 1 if input.dim() >= 2 else 0
    if _ops.compiling():
        _ops.refuse_inplace(inplace)
        reduction = _reduction(size_average, reduce, reduction)
        inputs = (
            input,
            target,
            weight,
            axis,
            ignore_index,
            reduction,
            label_smoothing,
            z_loss,
            softcap,
        )
        return _ops.call("cross_entropy", inputs, input.requires_grad)
    kwargs = dict(
        axis=axis,
        weight=_to_numpy(weight, "weight"),
        ignore_index=ignore_index,
        reduction=_reduction(size_average, reduce, reduction),
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    args = (_to_numpy(target, "target"),)
    return _FusedLoss.apply("cross_entropy", input, inplace, axis, args, kwargs)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    inplace: bool = False,
) -> Tensor:
    """``torch.nn.functional.binary_cross_entropy_with_logits`` with the gradient from
    sce_rs's fused kernel; ``inplace=True`` as in ``cross_entropy``."""
    _no_target_grad(target, weight, pos_weight)
    if _ops.compiling():
        _ops.refuse_inplace(inplace)
        inputs = (input, target, weight, pos_weight, _reduction(size_average, reduce, reduction))
        return _ops.call("binary_cross_entropy_with_logits", inputs, input.requires_grad)
    kwargs = dict(
        weight=_to_numpy(weight, "weight"),
        pos_weight=_to_numpy(pos_weight, "pos_weight"),
        reduction=_reduction(size_average, reduce, reduction),
    )
    args = (_to_numpy(target, "target"),)
    return _FusedLoss.apply("binary_cross_entropy_with_logits", input, inplace, None, args, kwargs)


def _no_target_grad(*tensors: Tensor | None) -> None:
    names = ("target", "weight", "pos_weight")
    for t, name in zip(tensors, names):
        if isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"sce_rs.torch computes no gradient with respect to {name}; "
                f"pass {name}.detach() (PyTorch's own function differentiates it)"
            )


class _LinearLoss(torch.autograd.Function):
    """Fused linear cross-entropy. With a reduced loss the forward pass computes the
    gradients too (4 GEMMs in all, against 1 + 4 for loss now and gradients later) and keeps
    them for grad_output = 1. With reduction='none' d_weight is a sum over rows weighted by
    grad_output, which cannot be rescaled afterwards: forward computes the loss only and
    backward makes the gradients with the real grad_output."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, kwargs):
        operands = [_to_numpy(t, n) for t, n in ((hidden, "input"), (weight, "linear_weight"))]
        b = _to_numpy(bias, "linear_bias")
        dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.dtypes, ctx.kwargs, ctx.has_bias = dtypes, kwargs, bias is not None
        ctx.operands = (*operands, target, b)
        ctx.grads = None
        if any(ctx.needs_input_grad[:3]) and kwargs["reduction"] != "none":
            loss, *grads = _core.linear_cross_entropy_and_grad(*ctx.operands, **kwargs)
            ctx.grads = grads
        else:
            loss = _core.linear_cross_entropy(*ctx.operands, **kwargs)
        return _to_tensor(loss, hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            g = None if grad_output.dim() == 0 else _to_numpy(grad_output.contiguous(), "grad")
            _, *grads = _core.linear_cross_entropy_and_grad(
                *ctx.operands, **ctx.kwargs, grad_output=g
            )
            if g is None:
                grads = [a * grad_output.item() for a in grads]
        elif grad_output.item() != 1.0:
            grads = [a * grad_output.item() for a in grads]
        out = [_to_tensor(a, dt) for a, dt in zip(grads, ctx.dtypes)]
        if not ctx.has_bias:
            out.append(None)
        return (*(o if need else None for o, need in zip(out, ctx.needs_input_grad)), None, None)


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    max_memory_bytes: int = _ops.LINEAR_MAX_MEMORY_BYTES,
) -> Tensor:
    """``torch.nn.functional.linear_cross_entropy`` on sce_rs's fused kernel: the loss of
    ``input @ linear_weight.T (+ linear_bias)`` without holding the N x V logits, in the
    forward pass and in backward. ``input`` is (N, D) or (D,), ``linear_weight`` (V, D),
    ``target`` class indices (N,) or () (probability targets are not supported). ``options``
    (PyTorch's chunking strategy) is accepted and has no effect: sce_rs always works in
    blocks, within ``max_memory_bytes`` of scratch (16 MiB by default, as
    ``sce_rs.linear_cross_entropy``). ``z_loss``, ``softcap`` and ``max_memory_bytes`` are
    sce_rs's extra options."""
    _check_tensor(input, "input")
    _check_tensor(target, "target")
    _no_target_grad(target, weight)
    if target.is_floating_point():
        raise ValueError(
            "sce_rs.torch.linear_cross_entropy takes class-index targets; for probability "
            "targets compute the logits and use sce_rs.torch.cross_entropy"
        )
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.reshape(1)
    if _ops.compiling():
        ignore = -100 if ignore_index is None else ignore_index
        inputs = (
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            ignore,
            reduction,
            label_smoothing,
            z_loss,
            softcap,
            max_memory_bytes,
        )
        # reduction='none' cannot rescale gradients kept from the forward pass (see
        # _LinearLoss): its backward calls the kernel with the real grad_output.
        needs = any(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
        loss = _ops.call("linear_cross_entropy", inputs, needs and reduction != "none")
        return loss.reshape(()) if unbatched and reduction == "none" else loss
    kwargs = dict(
        class_weight=_to_numpy(weight, "weight"),
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        max_memory_bytes=max_memory_bytes,
    )
    loss = _LinearLoss.apply(input, linear_weight, linear_bias, _to_numpy(target, "target"), kwargs)
    return loss.reshape(()) if unbatched and reduction == "none" else loss


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by ``sce_rs.torch.cross_entropy``; the same
    constructor plus ``z_loss``, ``softcap`` and ``inplace``."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace: bool = False,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss, self.softcap, self.inplace = z_loss, softcap, inplace

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace=self.inplace,
        )


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` computed by
    ``sce_rs.torch.binary_cross_entropy_with_logits``; the same constructor plus ``inplace``."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
        *,
        inplace: bool = False,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        self.inplace = inplace

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input,
            target,
            self.weight,
            reduction=self.reduction,
            pos_weight=self.pos_weight,
            inplace=self.inplace,
        )


# torch.nn.LinearCrossEntropyLoss is new in PyTorch 2.13; the functions above need only 2.1.
_TorchLinearCrossEntropyLoss: Any = getattr(torch.nn, "LinearCrossEntropyLoss", torch.nn.Module)


class LinearCrossEntropyLoss(_TorchLinearCrossEntropyLoss):
    """``torch.nn.LinearCrossEntropyLoss`` computed by ``sce_rs.torch.linear_cross_entropy``:
    the same constructor (``out_features`` must be ``()``) and parameters (``self.linear``),
    so a state dict moves between the two, plus the keyword ``max_memory_bytes`` (the
    kernel's scratch budget, 16 MiB by default)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        max_memory_bytes: int = _ops.LINEAR_MAX_MEMORY_BYTES,
        **kwargs: Any,
    ) -> None:
        if _TorchLinearCrossEntropyLoss is torch.nn.Module:
            raise RuntimeError("LinearCrossEntropyLoss needs PyTorch >= 2.13")
        if tuple(kwargs.get("out_features", ())) != ():
            raise ValueError("sce_rs.torch.LinearCrossEntropyLoss supports out_features=() only")
        super().__init__(in_features, num_classes, **kwargs)
        self.max_memory_bytes = max_memory_bytes

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return linear_cross_entropy(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            max_memory_bytes=self.max_memory_bytes,
        )


# ---------------------------------------------------------------- inference scoring
# Scoring is inference: no autograd. Tensors go to the kernel and back without copies.

__all__ += ["token_logprobs"]


def token_logprobs(
    logits: Tensor,
    target: Tensor | None = None,
    *,
    dim: int = -1,
    ignore_index: int = -100,
    top_k: int = 0,
    temperature: float = 1.0,
) -> Any:
    """``sce_rs.token_logprobs`` on CPU tensors (no gradient), classes along ``dim``.

    Returns a ``sce_rs.TokenLogprobs`` of tensors: float fields in the logits' dtype,
    ``is_greedy`` bool, ``rank`` and ``top_ids`` int64 (what ``torch.topk`` gives, with ties
    by lower index); the target fields are ``None`` without ``target``. It replaces the
    ``log_softmax`` + ``gather`` + ``argmax`` + ``topk`` + entropy sequence without its
    N x K ``log_softmax`` tensor.

    >>> import torch, sce_rs.torch
    >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> r = sce_rs.torch.token_logprobs(logits, torch.tensor([0, 0]), top_k=1)
    >>> r.logprob, r.is_greedy, r.top_ids
    (tensor([-0.4170, -2.2200]), tensor([ True, False]), tensor([[0],
            [1]]))
    """
    from sce_rs._scoring import TokenLogprobs

    x: Any = _to_numpy(logits, "logits")  # an array: None only comes back for None
    t = _to_numpy(target, "target")
    fields = _core._token_logprobs(
        x, t, axis=dim, ignore_index=ignore_index, top_k=top_k, temperature=temperature
    )

    def as_tensor(a: Any, floating: bool) -> Tensor | None:
        if a is None:
            return None
        return _to_tensor(a, logits.dtype) if floating else torch.from_numpy(np.asarray(a))

    floating = (True, False, False, True, False, True)
    return TokenLogprobs(*(as_tensor(a, f) for a, f in zip(fields, floating)))
