"""sce_rs against its plain-NumPy reference on random shapes, dtypes, axes, strides and options."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

import sce_rs
from conftest import FLOAT_DTYPES, assert_close
from sce_rs import reference as ref

LAYOUTS = ["contiguous", "transposed", "reversed", "sliced"]
SHAPES = [(7,), (4, 9), (3, 1, 6), (2, 3, 4, 5), (0, 5), (5, 0), (1, 1)]


def make(rng, shape, dtype, layout, scale=4.0):
    """A random array of `shape` and `dtype` laid out in memory as `layout` says."""
    if layout == "contiguous":
        return (rng.normal(scale=scale, size=shape)).astype(dtype)
    if layout == "transposed":
        return rng.normal(scale=scale, size=shape[::-1]).astype(dtype).T
    if layout == "reversed":
        return rng.normal(scale=scale, size=shape).astype(dtype)[..., ::-1]
    big = rng.normal(scale=scale, size=tuple(2 * s for s in shape)).astype(dtype)
    return big[tuple(slice(None, None, 2) for _ in shape)]


def cases_for(shapes):
    for shape in shapes:
        for axis in range(-len(shape), len(shape)):
            yield shape, axis


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", list(cases_for(SHAPES)))
def test_softmax_family(rng, shape, axis, dtype, layout):
    x = make(rng, shape, dtype, layout)
    for fn in ("softmax", "log_softmax"):
        got = getattr(sce_rs, fn)(x, axis=axis)
        assert got.dtype == x.dtype and got.flags.c_contiguous
        assert_close(got, getattr(ref, fn)(x, axis=axis))
    for keepdims in (False, True):
        got = sce_rs.logsumexp(x, axis=axis, keepdims=keepdims)
        assert np.asarray(got).dtype == x.dtype
        assert_close(got, ref.logsumexp(x, axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_out_buffers_and_in_place(rng, fn, dtype, layout):
    x = make(rng, (6, 11), dtype, layout)
    want = getattr(ref, fn)(x, axis=0)
    out = np.full_like(x, np.nan)
    res = getattr(sce_rs, fn)(x, axis=0, out=out)
    assert res is out
    assert_close(out, want)
    y = x.copy()  # in place, over the input itself
    assert getattr(sce_rs, fn)(y, axis=0, out=y) is y
    assert_close(y, want)
    # an output that overlaps the input in another layout: the input is read before writing
    z = x.copy()
    getattr(sce_rs, fn)(z, axis=0, out=z[::-1, ::-1])
    assert_close(z[::-1, ::-1], want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((5, 8), -1), ((4, 6, 3), 1), ((9,), 0), ((3, 0), 0)])
def test_backward_and_jacobian(rng, shape, axis, dtype):
    x = make(rng, shape, dtype, "contiguous")
    g = make(rng, shape, dtype, "reversed", scale=1.0)
    s = sce_rs.softmax(x, axis=axis)
    ls = sce_rs.log_softmax(x, axis=axis)
    assert_close(sce_rs.softmax_backward(g, s, axis=axis), ref.softmax_backward(g, s, axis=axis))
    assert_close(
        sce_rs.log_softmax_backward(g, ls, axis=axis), ref.log_softmax_backward(g, ls, axis=axis)
    )
    jac = sce_rs.softmax_jacobian(x, axis=axis)
    assert jac.dtype == x.dtype
    assert_close(jac, ref.softmax_jacobian(x, axis=axis))


def test_backward_promotes_mixed_dtypes(rng):
    g = rng.normal(size=(3, 4)).astype(np.float32)
    s = sce_rs.softmax(rng.normal(size=(3, 4)))
    assert sce_rs.softmax_backward(g, s).dtype == np.float64
    assert (
        sce_rs.softmax_backward(g.astype(np.float16), s.astype(ml_dtypes.bfloat16)).dtype
        == np.float32
    )


CE_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True},
    {"weight": True, "reduction": "none"},
    {"ignore": True},
    {"ignore": True, "weight": True},
    {"ignore": True, "weight": True, "label_smoothing": 0.2},
    {"label_smoothing": 0.1},
    {"label_smoothing": 1.0, "reduction": "sum"},
    {"z_loss": 1e-2},
    {"z_loss": 1e-2, "ignore": True, "reduction": "none"},
    {"softcap": 3.0},
    {"softcap": 3.0, "label_smoothing": 0.1, "weight": True, "z_loss": 1e-3},
    {"ignore": True, "ignore_index": 1},
]
TARGET_DTYPES = [np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32, np.uint64]


def ce_inputs(rng, shape, axis, dtype, layout, opts, probs):
    x = make(rng, shape, dtype, layout)
    k = x.shape[axis]
    outer = tuple(s for d, s in enumerate(x.shape) if d != axis % x.ndim)
    kw = {"axis": axis}
    for key in ("reduction", "label_smoothing", "z_loss", "softcap"):
        if key in opts:
            kw[key] = opts[key]
    if opts.get("weight"):
        kw["weight"] = rng.uniform(0.2, 2.0, size=k)
    if probs:
        p = rng.dirichlet(np.ones(k), size=outer).reshape(outer + (k,))
        target = np.moveaxis(p, -1, axis % x.ndim).astype(dtype)
    else:
        tdtype = TARGET_DTYPES[rng.integers(len(TARGET_DTYPES))]
        target = rng.integers(0, k, size=outer)
        if opts.get("ignore"):
            ignore = opts.get("ignore_index", -100)
            if ignore < 0:
                tdtype = np.int64
            kw["ignore_index"] = ignore
            target = np.where(rng.random(outer) < 0.3, ignore, target)
        target = target.astype(tdtype)
    return x, target, kw


# ignore_index does not apply to probability targets, so those pairs are not generated.
TARGET_KINDS = [(o, p) for o in CE_OPTIONS for p in (False, True) if not (p and o.get("ignore"))]


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "reversed"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [((13, 7), -1), ((3, 7, 4), 1), ((7,), 0), ((4, 5, 6), 0)])
@pytest.mark.parametrize(
    "opts,probs",
    TARGET_KINDS,
    ids=[("-".join(o) or "plain") + ("-probs" if p else "") for o, p in TARGET_KINDS],
)
def test_cross_entropy(rng, opts, probs, shape, axis, dtype, layout):
    x, target, kw = ce_inputs(rng, shape, axis, dtype, layout, opts, probs)
    loss = sce_rs.cross_entropy(x, target, **kw)
    want = ref.cross_entropy(x, target, **kw)
    reduced = kw.get("reduction", "mean") != "none"
    if reduced:
        assert isinstance(loss, np.generic)
        low = dtype in (np.float16, ml_dtypes.bfloat16)
        assert loss.dtype == (np.float32 if low else dtype)
    assert_close(loss, want, dtype_like=x)
    for g_up in (None, 0.75):
        kwg = dict(kw)
        if g_up is not None:
            kwg["grad_output"] = g_up if reduced else rng.normal(size=np.shape(want))
        loss2, grad = sce_rs.cross_entropy_and_grad(x, target, **kwg)
        want2, wgrad = ref.cross_entropy_and_grad(x, target, **kwg)
        assert grad.dtype == x.dtype and grad.shape == x.shape
        assert_close(loss2, want2, dtype_like=x)
        assert_close(grad, wgrad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_grad_in_place_over_logits(rng, dtype):
    x = rng.normal(size=(20, 9)).astype(dtype) * 3
    t = rng.integers(0, 9, size=20)
    want_loss, want_grad = ref.cross_entropy_and_grad(x, t, label_smoothing=0.1)
    loss, grad = sce_rs.cross_entropy_and_grad(x, t, label_smoothing=0.1, out=x)
    assert grad is x
    assert_close(loss, want_loss, dtype_like=x)
    assert_close(x, want_grad)
    # strided in-place view (class axis 0)
    y = np.ascontiguousarray(rng.normal(size=(9, 20)).astype(dtype))
    want_loss, want_grad = ref.cross_entropy_and_grad(y, t, axis=0)
    loss, grad = sce_rs.cross_entropy_and_grad(y, t, axis=0, out=y)
    assert_close(loss, want_loss, dtype_like=y)
    assert_close(y, want_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True])
def test_nll_loss(rng, dtype, reduction, probs):
    x = sce_rs.log_softmax(rng.normal(size=(11, 6)).astype(dtype))
    kw = {"reduction": reduction, "weight": rng.uniform(0.5, 2, size=6)}
    if probs:
        t = rng.dirichlet(np.ones(6), size=11)
    else:
        t = np.where(rng.random(11) < 0.3, -100, rng.integers(0, 6, size=11))
    assert_close(sce_rs.nll_loss(x, t, **kw), ref.nll_loss(x, t, **kw), dtype_like=x)


BROADCASTS = [None, "full", "row", "col", "scalar"]


def weight_like(rng, shape, how):
    if how is None or not shape:
        return None if how is None else rng.uniform(0.2, 2.0)
    return {
        "full": lambda: rng.uniform(0.2, 2.0, size=shape),
        "row": lambda: rng.uniform(0.2, 2.0, size=shape[-1:]),
        "col": lambda: rng.uniform(0.2, 2.0, size=shape[:-1] + (1,)),
        "scalar": lambda: np.float64(rng.uniform(0.2, 2.0)),
    }[how]()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 5), (5,), (), (0, 3)])
@pytest.mark.parametrize("wb,pb", list(itertools.product(BROADCASTS, [None, "row", "full"])))
def test_binary_losses(rng, wb, pb, shape, dtype, reduction):
    x = make(rng, shape, dtype, "contiguous") if shape else np.asarray(1.3, dtype=dtype)
    y = rng.random(size=shape).astype(dtype)
    w = weight_like(rng, shape, wb)
    pw = weight_like(rng, shape, pb)
    kw = {"weight": w, "reduction": reduction}
    p = (
        sce_rs.softmax(np.stack([x, np.zeros_like(x)], -1))[..., 0]
        if shape
        else np.asarray(0.4, dtype=dtype)
    )
    assert_close(
        sce_rs.binary_cross_entropy(p, y, **kw), ref.binary_cross_entropy(p, y, **kw), dtype_like=x
    )
    kw["pos_weight"] = pw
    assert_close(
        sce_rs.binary_cross_entropy_with_logits(x, y, **kw),
        ref.binary_cross_entropy_with_logits(x, y, **kw),
        dtype_like=x,
    )
    g_up = 2.0 if reduction != "none" else rng.normal(size=shape)
    loss, grad = sce_rs.binary_cross_entropy_with_logits_and_grad(x, y, grad_output=g_up, **kw)
    wl, wg = ref.binary_cross_entropy_with_logits_and_grad(x, y, grad_output=g_up, **kw)
    assert_close(loss, wl, dtype_like=x)
    assert_close(grad, wg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "reversed", "2-d"])
def test_binary_losses_over_rows_longer_than_a_block(rng, dtype, layout):
    """Rows of more than a block's 16384 elements (a 1-d array of labels) are read as rows of
    one element: every layout, with weights that broadcast along them or across them."""
    n = 40_003
    base = (rng.normal(scale=6, size=2 * n)).astype(dtype)
    x = {
        "contiguous": base[:n],
        "strided": base[::2],
        "reversed": base[::-1][:n],
        "2-d": base[: 2 * 20_001].reshape(2, 20_001),
    }[layout]
    y = (rng.random(size=x.shape) < 0.3).astype(dtype)
    w = rng.uniform(0.2, 2.0, size=x.shape[-1:])
    pw = rng.uniform(0.5, 3.0, size=x.shape[:-1] + (1,)) if x.ndim == 2 else None
    p = sce_rs.softmax(np.stack([x, np.zeros_like(x)], -1))[..., 0]
    for reduction in ("mean", "none"):
        kw = {"weight": w, "reduction": reduction}
        assert_close(
            sce_rs.binary_cross_entropy(p, y, **kw),
            ref.binary_cross_entropy(p, y, **kw),
            dtype_like=x,
        )
        kw["pos_weight"] = pw
        loss, grad = sce_rs.binary_cross_entropy_with_logits_and_grad(x, y, **kw)
        wl, wg = ref.binary_cross_entropy_with_logits_and_grad(x, y, **kw)
        assert_close(loss, wl, dtype_like=x)
        assert_close(grad, wg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_confident_binary_predictions_keep_their_digits(dtype):
    """Where PyTorch's forms cancel to 0 (a right and confident prediction), the loss and the
    gradient keep their value: against log1p(exp(-|x|)) and -e / (1 + e) in float64 (the
    terms add, so 8 epsilons of the input's precision bound them)."""
    x = np.array([-40.0, -20.0, -12.0, 12.0, 20.0, 40.0], dtype=dtype)
    y = (x > 0).astype(dtype)
    e = np.exp(-np.abs(x.astype(np.float64)))
    loss, grad = sce_rs.binary_cross_entropy_with_logits_and_grad(x, y, reduction="none")
    eps = 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(loss, np.log1p(e), rtol=eps, atol=0)
    np.testing.assert_allclose(grad, np.where(x > 0, -e, e) / (1 + e), rtol=eps, atol=0)
    assert loss.min() > 0 and (grad != 0).all()
    # The reference the other tests use does not cancel either.
    ref_loss = ref.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_allclose(ref_loss, np.log1p(e), rtol=1e-15, atol=0)


def test_lists_scalars_and_integer_inputs():
    s = sce_rs.softmax([2.0, 1.0, 0.1])
    assert s.dtype == np.float64
    np.testing.assert_allclose(s, [0.659001138885968, 0.242432970704714, 0.098565890409318])
    assert sce_rs.softmax([[1, 2, 3]]).dtype == np.float64
    assert sce_rs.softmax(np.array([[True, False]])).dtype == np.float64
    lse = sce_rs.logsumexp([0.0, 0.0])
    assert isinstance(lse, np.float64) and abs(lse - np.log(2)) < 1e-15
    loss = sce_rs.cross_entropy([2.0, 1.0, 0.1], 0)
    assert isinstance(loss, np.float64) and abs(loss - 0.417030020) < 1e-8
    assert sce_rs.cross_entropy([[1, 2, 3]], [2]).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_inputs_take_the_parallel_path(rng, dtype):
    x = rng.normal(scale=5, size=(300, 1000)).astype(dtype)
    t = rng.integers(0, 1000, size=300)
    assert_close(sce_rs.softmax(x), ref.softmax(x))
    assert_close(sce_rs.logsumexp(x.T, axis=0), ref.logsumexp(x.T, axis=0))
    loss, grad = sce_rs.cross_entropy_and_grad(x, t, label_smoothing=0.05)
    wl, wg = ref.cross_entropy_and_grad(x, t, label_smoothing=0.05)
    assert_close(loss, wl, dtype_like=x)
    assert_close(grad, wg)
    row = rng.normal(scale=5, size=(2, 70001)).astype(dtype)
    assert_close(sce_rs.log_softmax(row), ref.log_softmax(row))


def test_inputs_that_are_the_gradient_buffer_are_read_before_it_is_written(rng):
    x = rng.normal(size=(8, 5))
    p = rng.dirichlet(np.ones(5), size=8)
    want_loss, want_grad = ref.cross_entropy_and_grad(x, p)
    q = p.copy()
    loss, grad = sce_rs.cross_entropy_and_grad(x, q, out=q)  # the target is overwritten
    assert grad is q
    assert_close(loss, want_loss)
    assert_close(q, want_grad)
    y = rng.random(size=(8, 5))
    want_loss, want_grad = ref.binary_cross_entropy_with_logits_and_grad(x, y, weight=y)
    y2 = y.copy()
    loss, grad = sce_rs.binary_cross_entropy_with_logits_and_grad(x, y2, weight=y2, out=y2)
    assert_close(loss, want_loss)
    assert_close(y2, want_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_whose_first_steps_are_all_minus_inf(dtype):
    """Regression: the one-pass max/exp-sum of rows over 2048 elements summed exp(-inf - -inf)
    = NaN for leading steps of only -inf, so logsumexp and cross_entropy gave NaN where
    PyTorch gives the finite answer."""
    x = np.full((5, 10_000), -np.inf, dtype=dtype)
    x[:, 5000] = 2.0
    x[0, 9000] = 1.0
    x[1, 7] = np.nan  # a NaN still poisons its row
    x[2, :] = -np.inf  # logsumexp -inf, cross-entropy NaN
    t = np.full(5, 5000)
    assert_close(sce_rs.logsumexp(x), ref.logsumexp(x), dtype_like=x)
    assert_close(sce_rs.log_softmax(x), ref.log_softmax(x))
    want_loss, want_grad = ref.cross_entropy_and_grad(x, t, reduction="none")
    loss, grad = sce_rs.cross_entropy_and_grad(x, t, reduction="none")
    assert_close(loss, want_loss)
    assert_close(grad, want_grad)
    assert sce_rs.logsumexp(x)[3] == 2.0 and sce_rs.cross_entropy(x[3:], t[3:]) == 0.0
