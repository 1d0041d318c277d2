"""sce_rs's losses as ``torch.library`` custom operators: what ``torch.compile`` and
``torch.export`` see instead of the NumPy calls they cannot trace.

Each loss is three operators. ``sce_rs::<loss>`` gives the loss alone; its backward calls
``sce_rs::<loss>_grad`` (``grad_output`` first, then the loss's arguments), the kernel again
with the real ``grad_output`` (reduction ``'none'`` of
the linear loss needs that: its weight gradient is a sum over rows weighted by
``grad_output``). ``sce_rs::<loss>_and_grad`` gives the loss and the gradients of one fused
kernel call for ``grad_output = 1`` (an empty tensor stands for a missing bias's gradient);
its backward only scales them. ``sce_rs.torch`` calls ``_and_grad`` when a gradient will be
needed, the loss alone otherwise. The fake (meta) functions give the shapes and dtypes from the
inputs alone, so the compiler never runs a kernel while tracing.

The kernels read and write the tensors' memory through NumPy views: no copy in, none out
(``sce_rs.torch._to_numpy`` / ``_to_tensor``). An operator may not return a view of its
inputs, so ``inplace=True`` (the gradient written over the logits) has no operator here:
``sce_rs.torch`` refuses it under ``torch.compile``/``torch.export``.

``torch.library.custom_op`` is new in PyTorch 2.4; with an older torch this module defines
nothing (``AVAILABLE`` is False) and ``sce_rs.torch`` keeps to its autograd Functions, which
run eagerly (a graph break under ``torch.compile``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from sce_rs import _sce_rs as _core

AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")

# sce_rs.linear_cross_entropy's default budget (DEFAULT_MAX_MEMORY in src/linear.rs; a test
# holds the two equal): the operators' default too, so a call without it keeps working.
LINEAR_MAX_MEMORY_BYTES = 16 << 20

_CE = (
    "Tensor input, Tensor target, Tensor? weight, int axis, int ignore_index, str reduction, "
    "float label_smoothing, float z_loss, float? softcap"
)
_BCE = "Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, str reduction"
_LINEAR = (
    "Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, Tensor? weight, "
    "int ignore_index, str reduction, float label_smoothing, float z_loss, float? softcap, "
    f"int max_memory_bytes={LINEAR_MAX_MEMORY_BYTES}"
)


def compiling() -> bool:
    """True while torch.compile or torch.export traces (and the operators exist)."""
    return AVAILABLE and torch.compiler.is_compiling()


def call(name: str, inputs: tuple, with_grad: bool) -> Tensor:
    """The loss through sce_rs::name, or through sce_rs::name_and_grad (its gradients kept
    for backward) when they will be needed."""
    if with_grad and torch.is_grad_enabled():
        return getattr(torch.ops.sce_rs, name + "_and_grad")(*inputs)[0]
    return getattr(torch.ops.sce_rs, name)(*inputs)


def refuse_inplace(inplace: bool) -> None:
    if inplace:
        raise RuntimeError(
            "inplace=True runs eagerly only: under torch.compile/torch.export the loss is a "
            "custom operator, and an operator may not hand back its input's memory as the "
            "gradient; leave inplace=False in compiled code"
        )


def _np(t: Tensor | None, what: str) -> Any:
    from sce_rs.torch import _to_numpy

    return _to_numpy(t, what)


def _tensor(a: Any, dtype: torch.dtype) -> Tensor:
    from sce_rs.torch import _to_tensor

    return _to_tensor(a, dtype)


# What each loss's arguments become in its NumPy kernel's call: (positional, keywords, the
# differentiable tensors).
def _ce_call(
    input, target, weight, axis, ignore_index, reduction, label_smoothing, z_loss, softcap
):
    kwargs = dict(
        axis=axis,
        weight=_np(weight, "weight"),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    return (_np(input, "input"), _np(target, "target")), kwargs, (input,)


def _bce_call(input, target, weight, pos_weight, reduction):
    kwargs = dict(
        weight=_np(weight, "weight"), pos_weight=_np(pos_weight, "pos_weight"), reduction=reduction
    )
    return (_np(input, "input"), _np(target, "target")), kwargs, (input,)


def _linear_call(
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    softcap,
    max_memory_bytes=LINEAR_MAX_MEMORY_BYTES,  # a call may leave the schema's default out
):
    kwargs = dict(
        class_weight=_np(weight, "weight"),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        max_memory_bytes=max_memory_bytes,
    )
    args = (
        _np(input, "input"),
        _np(linear_weight, "linear_weight"),
        _np(target, "target"),
        _np(linear_bias, "linear_bias"),
    )
    return args, kwargs, (input, linear_weight, linear_bias)


def _loss_shape(name: str, input: Tensor, reduction: str, axis: int | None) -> Any:
    if reduction != "none":
        return ()
    if name == "linear_cross_entropy":
        return input.shape[:1]
    if name == "cross_entropy" and axis is not None:
        return input.shape[:axis] + input.shape[axis + 1 :] if input.dim() >= 2 else ()
    return input.shape


def _define(name: str, schema: str, call: Callable, reduction_at: int) -> None:
    """Registers sce_rs::name and sce_rs::name_and_grad with their fake and autograd
    functions. `reduction_at` is the reduction's position among the operator's arguments."""
    n_grads = 3 if name == "linear_cross_entropy" else 1

    def call_wrt(args):  # the differentiable arguments (the linear loss's bias may be None)
        return [args[0], args[1], args[2]] if n_grads == 3 else [args[0]]

    def grads_of(args, grad_output):
        arrays, kwargs, wrt = call(*args)
        g = None if grad_output is None else _np(grad_output.contiguous(), "grad_output")
        # Looked up per call, so a test can watch the arrays that pass.
        loss, *grads = getattr(_core, name + "_and_grad")(*arrays, **kwargs, grad_output=g)
        if len(grads) < n_grads:  # no bias: an empty stand-in (an operator returns tensors)
            grads.append(None)
        loss = _tensor(loss, wrt[0].dtype)
        out = [
            torch.empty(0, dtype=wrt[0].dtype) if a is None else _tensor(a, t.dtype)
            for a, t in zip(grads, wrt)
        ]
        return (loss, *out)

    def loss_impl(*args):
        arrays, kwargs, wrt = call(*args)
        return _tensor(getattr(_core, name)(*arrays, **kwargs), wrt[0].dtype)

    def fused_impl(*args):
        return grads_of(args, None)

    def single(grads):  # a schema "-> (Tensor)" is one Tensor, not a tuple of one
        return grads[0] if n_grads == 1 else grads

    # grad_output comes first in sce_rs::<loss>_grad: an argument with a default (the linear
    # loss's max_memory_bytes) must be the last
    def grad_impl(grad_output, *args):
        return single(grads_of(args, grad_output)[1:])

    def fake_loss(*args):
        input, reduction = args[0], args[reduction_at]
        axis = args[3] if name == "cross_entropy" else None
        return input.new_empty(_loss_shape(name, input, reduction, axis))

    def fake_fused(*args):
        grads = [
            args[0].new_empty(0) if t is None else args[0].new_empty(t.shape, dtype=t.dtype)
            for t in call_wrt(args)
        ]  # contiguous, as the kernels' arrays are
        return (fake_loss(*args), *grads)

    def fake_grad(grad_output, *args):
        return single(fake_fused(*args)[1:])

    def op(suffix, impl, first_args, n_out):
        outs = "Tensor" if n_out == 1 else f"({', '.join(['Tensor'] * n_out)})"
        return torch.library.custom_op(
            f"sce_rs::{name}{suffix}",
            impl,
            mutates_args=(),
            schema=f"({first_args}{schema}) -> {outs}",
        )

    loss_op = op("", loss_impl, "", 1)
    fused_op = op("_and_grad", fused_impl, "", 1 + n_grads)
    grad_op = op("_grad", grad_impl, "Tensor grad_output, ", n_grads)
    loss_op.register_fake(fake_loss)
    fused_op.register_fake(fake_fused)
    grad_op.register_fake(fake_grad)

    def save_inputs(ctx, inputs, output):
        # Tensors through save_for_backward, so that one changed in place before backward
        # fails PyTorch's version check instead of giving the gradient of other values.
        ctx.tensor_at = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.others = [None if isinstance(a, Tensor) else a for a in inputs]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_at))

    def loss_backward(ctx, grad_output):
        inputs = list(ctx.others)
        for i, t in zip(ctx.tensor_at, ctx.saved_tensors):
            inputs[i] = t
        # The kernel again, with the real upstream gradient.
        grads = grad_op(grad_output, *inputs)
        grads = (grads,) if n_grads == 1 else grads
        no_bias = n_grads == 3 and inputs[2] is None
        return _grads_for(len(inputs), n_grads, no_bias, grads)

    def save_grads(ctx, inputs, output):
        ctx.n_inputs, ctx.no_bias = len(inputs), n_grads == 3 and inputs[2] is None
        ctx.reduction = inputs[reduction_at]
        ctx.axis = inputs[3] if name == "cross_entropy" else None
        ctx.save_for_backward(*output[1:])

    def fused_backward(ctx, grad_output, *_unused):
        # The losses are linear in grad_output row by row: the gradient kept for
        # grad_output = 1 only needs scaling.
        if ctx.reduction == "none" and n_grads == 3:
            raise RuntimeError(
                "sce_rs::linear_cross_entropy_and_grad with reduction='none' "
                "cannot be scaled afterwards; use sce_rs::linear_cross_entropy"
            )
        if grad_output.dim() > 0 and ctx.axis is not None:
            grad_output = grad_output.unsqueeze(ctx.axis)
        grads = [g * grad_output.to(g.dtype) for g in ctx.saved_tensors]
        return _grads_for(ctx.n_inputs, n_grads, ctx.no_bias, grads)

    loss_op.register_autograd(loss_backward, setup_context=save_inputs)
    fused_op.register_autograd(fused_backward, setup_context=save_grads)


def _grads_for(n_inputs: int, n_grads: int, no_bias: bool, grads) -> tuple:
    """One gradient per operator input: the differentiable ones first, None for the rest."""
    grads = list(grads)
    if no_bias:
        grads[2] = None
    return (*grads, *([None] * (n_inputs - n_grads)))


if AVAILABLE:
    _define("cross_entropy", _CE, _ce_call, reduction_at=5)
    _define("binary_cross_entropy_with_logits", _BCE, _bce_call, reduction_at=4)
    _define("linear_cross_entropy", _LINEAR, _linear_call, reduction_at=6)
