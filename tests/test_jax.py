"""sce_rs.jax against optax and jax.numpy: the losses and their gradients under jit, grad and
vmap, check_grads in float64, and the fused linear loss against its materialized form."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close, optional_import

jax = optional_import("jax")
optax = optional_import("optax")
jnp = jax.numpy
from jax.test_util import check_grads  # noqa: E402

import sce_rs.jax as sj  # noqa: E402  (after the skip: it imports jax)


@pytest.fixture(autouse=True)
def float64():
    """float64 arrays, so check_grads' finite differences mean something."""
    with jax.enable_x64(True):
        yield


# optax's documented cases (the examples in its docstrings), then random ones.
DOC_LOGITS = [[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]


def random_case(seed, shape=(7, 5)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 3
    return jnp.asarray(x), rng


def test_equals_optax_on_its_documented_cases():
    logits = jnp.array(DOC_LOGITS)
    soft = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    idx = jnp.array([0, 1])
    for ours, theirs in (
        (
            sj.cross_entropy(logits, soft, reduction="none"),
            optax.softmax_cross_entropy(logits, soft),
        ),
        (
            sj.cross_entropy(logits, idx, reduction="none"),
            optax.softmax_cross_entropy_with_integer_labels(logits, idx),
        ),
        (
            sj.binary_cross_entropy_with_logits(logits, soft, reduction="none"),
            optax.sigmoid_binary_cross_entropy(logits, soft),
        ),
    ):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert_close(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_equals_optax_with_gradients(axis):
    x, rng = random_case(1, (4, 6, 5))
    k = x.shape[axis]
    tshape = tuple(n for i, n in enumerate(x.shape) if i != axis % 3)
    idx = jnp.asarray(rng.integers(0, k, tshape))
    soft = jax.nn.softmax(jnp.asarray(rng.normal(size=x.shape)), axis=axis)
    probs = jnp.asarray(rng.uniform(size=x.shape))
    pairs = [
        (
            lambda x: sj.cross_entropy(x, idx, axis=axis, reduction="none"),
            lambda x: optax.softmax_cross_entropy_with_integer_labels(x, idx, axis=axis),
        ),
        (
            lambda x: sj.cross_entropy(x, soft, axis=axis, reduction="none"),
            lambda x: optax.softmax_cross_entropy(x, soft, axis=axis),
        ),
        (
            lambda x: sj.binary_cross_entropy_with_logits(x, probs, reduction="none"),
            lambda x: optax.sigmoid_binary_cross_entropy(x, probs),
        ),
    ]
    for ours, theirs in pairs:
        assert_close(np.asarray(jax.jit(ours)(x)), np.asarray(theirs(x)))
        # Squared, so the upstream gradient differs from row to row.
        g_ours = jax.jit(jax.grad(lambda x, f=ours: (f(x) ** 2).sum()))
        g_theirs = jax.grad(lambda x, f=theirs: (f(x) ** 2).sum())
        assert_close(np.asarray(g_ours(x)), np.asarray(g_theirs(x)))


def test_reductions_and_options_equal_the_numpy_kernels():
    """jit/grad of every reduction equals sce_rs's NumPy *_and_grad call (its own tests hold
    it to PyTorch)."""
    import sce_rs

    x, rng = random_case(2)
    t = jnp.asarray(rng.integers(0, 5, 7)).at[3].set(-100)
    cw = jnp.asarray(rng.uniform(0.5, 1.5, 5))
    for reduction in ("mean", "sum", "none"):
        opts = dict(weight=cw, reduction=reduction, label_smoothing=0.1, z_loss=0.01, softcap=4.0)
        loss, grad = sce_rs.cross_entropy_and_grad(
            np.asarray(x), np.asarray(t), **{**opts, "weight": np.asarray(cw)}
        )
        f = jax.jit(lambda x, opts=opts: sj.cross_entropy(x, t, **opts).sum())
        assert_close(np.asarray(f(x)), np.sum(loss))
        assert_close(np.asarray(jax.grad(f)(x)), grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_check_grads_float64(reduction):
    x, rng = random_case(3)
    t = jnp.asarray(rng.integers(0, 5, 7))
    soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(7, 5))))
    h = jnp.asarray(rng.normal(size=(7, 3)))
    w = jnp.asarray(rng.normal(size=(5, 3)))
    b = jnp.asarray(rng.normal(size=5))
    kw = dict(reduction=reduction)
    check_grads(
        lambda x: sj.cross_entropy(x, t, label_smoothing=0.1, **kw), (x,), order=1, modes=["rev"]
    )
    check_grads(
        lambda x: sj.cross_entropy(x, soft, z_loss=0.01, **kw), (x,), order=1, modes=["rev"]
    )
    check_grads(
        lambda x: sj.binary_cross_entropy_with_logits(x, soft, pos_weight=b, **kw),
        (x,),
        order=1,
        modes=["rev"],
    )
    check_grads(
        lambda h, w, b: sj.linear_cross_entropy(h, w, t, b, softcap=3.0, **kw),
        (h, w, b),
        order=1,
        modes=["rev"],
    )
    check_grads(
        lambda h, w: sj.linear_cross_entropy(h, w, t, class_weight=b**2, **kw),
        (h, w),
        order=1,
        modes=["rev"],
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_equals_the_materialized_logits(reduction):
    x, rng = random_case(4, (6, 4))
    w = jnp.asarray(rng.normal(size=(9, 4)))
    b = jnp.asarray(rng.normal(size=9))
    t = jnp.asarray(rng.integers(0, 9, 6))

    def fused(x, w, b):
        return (sj.linear_cross_entropy(x, w, t, b, reduction=reduction) ** 2).sum()

    def plain(x, w, b):
        return (sj.cross_entropy(x @ w.T + b, t, reduction=reduction) ** 2).sum()

    assert_close(np.asarray(jax.jit(fused)(x, w, b)), np.asarray(plain(x, w, b)))
    for a, e in zip(
        jax.jit(jax.grad(fused, (0, 1, 2)))(x, w, b), jax.grad(plain, (0, 1, 2))(x, w, b)
    ):
        assert_close(np.asarray(a), np.asarray(e))


def test_vmap_keeps_each_batch_element_apart():
    """A mean under vmap is one mean per batch element, gradients too."""
    x, rng = random_case(5, (3, 4, 5))
    t = jnp.asarray(rng.integers(0, 5, (3, 4)))

    def per_batch(x, t):
        return optax.softmax_cross_entropy_with_integer_labels(x, t).mean()

    ours = jax.vmap(lambda x, t: sj.cross_entropy(x, t))
    assert_close(np.asarray(ours(x, t)), np.asarray(jax.vmap(per_batch)(x, t)))
    g = jax.vmap(jax.grad(lambda x, t: sj.cross_entropy(x, t)))(x, t)
    assert_close(np.asarray(g), np.asarray(jax.vmap(jax.grad(per_batch))(x, t)))
    h = jnp.asarray(rng.normal(size=(3, 4, 2)))
    w = jnp.asarray(rng.normal(size=(5, 2)))
    lin = jax.vmap(lambda h, t: sj.linear_cross_entropy(h, w, t), in_axes=(0, 0))(h, t)
    assert_close(np.asarray(lin), np.asarray(jax.vmap(per_batch)(h @ w.T, t)))


def test_float32_half_and_errors():
    """Results in the input's dtype (reduced losses too, as optax's), within its tolerance of
    the float64 result."""
    x64 = jnp.asarray(DOC_LOGITS)
    t = jnp.array([0, 1])
    want = jax.value_and_grad(sj.cross_entropy)(x64, t)
    with jax.enable_x64(False):
        for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
            x = x64.astype(dtype)
            loss, g = jax.jit(jax.value_and_grad(sj.cross_entropy))(x, t)
            assert loss.dtype == g.dtype == dtype
            like = np.empty(0, dtype)
            assert_close(np.asarray(loss), np.asarray(want[0]), like)
            assert_close(np.asarray(g), np.asarray(want[1]), like)
    with pytest.raises(ValueError, match="reduction"):
        sj.cross_entropy(jnp.ones((2, 3)), jnp.array([0, 1]), reduction="avg")
    with pytest.raises(np.exceptions.AxisError):
        sj.cross_entropy(jnp.ones((2, 3)), jnp.array([0, 1]), axis=2)
    # The kernel's own check runs in the callback; JAX re-raises what a callback raised as
    # its runtime error, with the message.
    with pytest.raises(jax.errors.JaxRuntimeError, match="target 3 .* out of range"):
        jax.block_until_ready(sj.cross_entropy(jnp.ones((2, 3)), jnp.array([0, 3])))
