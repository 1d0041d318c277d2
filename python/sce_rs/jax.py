"""JAX drop-ins: sce_rs's fused losses as ``jax.custom_vjp`` functions, usable under
``jax.jit``, ``jax.grad`` and ``jax.vmap``.

``cross_entropy``, ``binary_cross_entropy_with_logits`` and ``linear_cross_entropy`` take the
keywords of their ``sce_rs`` namesakes (class axis ``-1`` by default, as optax has it). The
forward pass of a differentiated call runs the fused ``*_and_grad`` kernel once and keeps the
gradient for ``grad_output = 1``, so the backward pass only scales it (reduction ``'none'`` of
the linear loss excepted: its weight gradient is a sum over rows weighted by the upstream
gradient, so its backward calls the kernel again with it). JAX has no fused linear
cross-entropy of its own; this one never holds the N x V logits.

The kernels run on the CPU through ``jax.pure_callback``: XLA hands them host buffers (a copy
from a device to the host where the arrays live elsewhere) and the callbacks are opaque to
XLA's optimizer. Under ``jax.vmap`` the callback runs once per batch element
(``vmap_method="sequential"``): a reduced loss is a mean or sum over its own rows, which one
call over the stacked batch would mix. Only first derivatives exist (``jax.grad`` of
``jax.grad`` raises), and options (``reduction``, ``axis``, ...) are static Python values.

Bad input found only by the kernel (a class index out of range, say) raises inside the
callback, and JAX re-raises it as ``jax.errors.JaxRuntimeError`` carrying the kernel's message.
Importing ``sce_rs`` never imports JAX; this module does.

>>> import jax.numpy as jnp, sce_rs.jax
>>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
>>> labels = jnp.array([0, 1])
>>> loss, grad = jax.value_and_grad(sce_rs.jax.cross_entropy)(logits, labels)
>>> round(float(loss), 4), bool(jnp.abs(grad.sum(axis=1)).max() < 1e-6)
(0.3185, True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sce_rs import _sce_rs as _core

__all__ = ["binary_cross_entropy_with_logits", "cross_entropy", "linear_cross_entropy"]

_Arrays = Sequence[Any]


def cross_entropy(
    input: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> jax.Array:
    """``sce_rs.cross_entropy`` (PyTorch's cross-entropy on logits, class indices or
    probability targets) as a differentiable JAX function; the gradient is with respect to
    ``input`` only.

    >>> x = jnp.array([[1.0, 2.0, 3.0]])
    >>> round(float(cross_entropy(x, jnp.array([2]), reduction="sum")), 4)  # lse(x) - 3
    0.4076
    """
    input = jnp.asarray(input)
    if not -input.ndim <= axis < max(input.ndim, 1):
        raise np.exceptions.AxisError(axis, input.ndim)
    options = _options(
        axis=axis,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    arrays = [input, jnp.asarray(target)] + ([] if weight is None else [jnp.asarray(weight)])
    fn = _loss("cross_entropy", 1, _ce_layout, weight is not None, options)
    return fn(*arrays)


def binary_cross_entropy_with_logits(
    input: Any,
    target: Any,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
) -> jax.Array:
    """``sce_rs.binary_cross_entropy_with_logits`` as a differentiable JAX function (the
    gradient is with respect to ``input``); ``reduction='none'`` is optax's
    ``sigmoid_binary_cross_entropy``.

    >>> round(float(binary_cross_entropy_with_logits(jnp.array([0.0]), jnp.array([1.0]))), 4)
    0.6931
    """
    present = (weight is not None, pos_weight is not None)
    arrays = [jnp.asarray(input), jnp.asarray(target)]
    arrays += [jnp.asarray(a) for a in (weight, pos_weight) if a is not None]
    fn = _loss(
        "binary_cross_entropy_with_logits", 1, _bce_layout, present, _options(reduction=reduction)
    )
    return fn(*arrays)


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any = None,
    *,
    class_weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> jax.Array:
    """``sce_rs.linear_cross_entropy``: the cross-entropy of ``hidden @ weight.T (+ bias)``
    (``hidden`` (N, D), ``weight`` (V, D), ``target`` (N,) class indices) without the N x V
    logits, differentiable with respect to ``hidden``, ``weight`` and ``bias``.

    >>> h, w = jnp.ones((2, 3)), jnp.eye(4, 3)
    >>> t = jnp.array([0, 3])
    >>> bool(jnp.allclose(linear_cross_entropy(h, w, t), cross_entropy(h @ w.T, t)))
    True
    """
    options = _options(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    diff = [jnp.asarray(hidden), jnp.asarray(weight)] + (
        [] if bias is None else [jnp.asarray(bias)]
    )
    arrays = (
        diff + [jnp.asarray(target)] + ([] if class_weight is None else [jnp.asarray(class_weight)])
    )
    fn = _loss(
        "linear_cross_entropy",
        len(diff),
        _linear_layout,
        (bias is not None, class_weight is not None),
        options,
    )
    return fn(*arrays)


def _options(**kwargs: Any) -> tuple:
    if kwargs.get("reduction") not in ("mean", "sum", "none"):
        raise ValueError(
            f"reduction must be 'mean', 'sum' or 'none', got {kwargs.get('reduction')!r}"
        )
    return tuple(sorted(kwargs.items()))


# A layout turns the custom_vjp function's arrays (the differentiable ones first) into the
# kernel's positional and keyword arguments.
def _ce_layout(arrays: _Arrays, has_weight: bool) -> tuple[tuple, dict]:
    return (arrays[0], arrays[1]), {"weight": arrays[2] if has_weight else None}


def _bce_layout(arrays: _Arrays, present: tuple[bool, bool]) -> tuple[tuple, dict]:
    rest = iter(arrays[2:])
    weight, pos_weight = (next(rest) if p else None for p in present)
    return (arrays[0], arrays[1]), {"weight": weight, "pos_weight": pos_weight}


def _linear_layout(arrays: _Arrays, present: tuple[bool, bool]) -> tuple[tuple, dict]:
    has_bias, has_class_weight = present
    bias = arrays[2] if has_bias else None
    rest = arrays[2 + has_bias :]
    return (arrays[0], arrays[1], rest[0], bias), {
        "class_weight": rest[1] if has_class_weight else None
    }


def _loss_shape(name: str, x: Any, options: dict) -> tuple:
    if options["reduction"] != "none":
        return ()
    if name == "cross_entropy":
        return tuple(d for i, d in enumerate(x.shape) if i != options["axis"] % x.ndim)
    if name == "linear_cross_entropy":
        return x.shape[:1]
    return x.shape


@functools.lru_cache(maxsize=256)
def _loss(name: str, n_diff: int, layout: Callable, present: Any, options: tuple) -> Callable:
    """The custom_vjp function of `name` for one set of static options."""
    kernel, fused = getattr(_core, name), getattr(_core, name + "_and_grad")
    opts = dict(options)
    # The linear loss's weight gradient under reduction='none' weighs rows by grad_output:
    # kept gradients cannot be rescaled, so backward calls the kernel again.
    rescale = not (name == "linear_cross_entropy" and opts["reduction"] == "none")

    def run(fn: Callable, arrays: _Arrays, **extra: Any) -> Any:
        args, kwargs = layout([np.asarray(a) for a in arrays], present)
        return fn(*args, **kwargs, **opts, **extra)

    def loss_type(arrays: _Arrays) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(_loss_shape(name, arrays[0], opts), arrays[0].dtype)

    def grad_types(arrays: _Arrays) -> list:
        return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays[:n_diff]]

    def host_loss(*arrays: Any) -> np.ndarray:
        return np.asarray(run(kernel, arrays), arrays[0].dtype)

    def host_fused(*arrays: Any) -> tuple:
        loss, *grads = run(fused, arrays)
        return (np.asarray(loss, arrays[0].dtype), *grads)

    def host_grads(*arrays_and_g: Any) -> tuple:
        *arrays, g = arrays_and_g
        return tuple(run(fused, arrays, grad_output=g)[1:])

    def callback(host: Callable, types: Any, *args: Any) -> Any:
        return jax.pure_callback(host, types, *args, vmap_method="sequential")

    @jax.custom_vjp
    def f(*arrays: Any) -> jax.Array:
        return callback(host_loss, loss_type(arrays), *arrays)

    def f_fwd(*arrays: Any) -> tuple:
        if not rescale:
            return f(*arrays), arrays
        loss, *grads = callback(host_fused, (loss_type(arrays), *grad_types(arrays)), *arrays)
        return loss, tuple(grads)

    n_arrays = _n_arrays(name, present)

    def f_bwd(residuals: tuple, g: jax.Array) -> tuple:
        if rescale:
            if g.ndim and name == "cross_entropy":
                # 'none': one upstream value per row, spread along the class axis.
                g = jnp.expand_dims(g, opts["axis"] % (g.ndim + 1))
            grads = [r * g.astype(r.dtype) for r in residuals]
        else:
            grads = list(callback(host_grads, tuple(grad_types(residuals)), *residuals, g))
        return (*grads, *([None] * (n_arrays - n_diff)))

    f.defvjp(f_fwd, f_bwd)
    return f


def _n_arrays(name: str, present: Any) -> int:
    """How many arrays the custom_vjp function of `name` takes, differentiable ones included."""
    if name == "cross_entropy":
        return 2 + bool(present)
    if name == "binary_cross_entropy_with_logits":
        return 2 + sum(present)
    return 3 + sum(present)
