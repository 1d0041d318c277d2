"""axis=None and tuples of axes for softmax, log_softmax and logsumexp, and logsumexp's
b=/return_sign, against float64 NumPy references written with NumPy's own tuple-axis
reductions (no moveaxis/reshape, so they share nothing with the code under test)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import sce_rs
from conftest import FLOAT_DTYPES, assert_close


def ref_lse(x, axis, keepdims=False):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    r = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return r if keepdims else np.squeeze(r, axis=axis) if axis is not None else r.reshape(())


def ref_softmax(x, axis):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def ref_log_softmax(x, axis):
    return np.asarray(x, np.float64) - ref_lse(x, axis, keepdims=True)


SHAPE = (3, 4, 5)
AXES = [None, (), (0,), (2, 0), (0, 2), (1, 2), (-1, -2), (0, 1, 2), (2, 1, 0), (-3, 1)]


def cube(dtype, seed=0):
    x = np.random.default_rng(seed).normal(size=SHAPE) * 4
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", AXES, ids=str)
def test_matches_numpy_reductions(dtype, axis):
    x = cube(dtype)
    for layout in (x, np.asfortranarray(x), x[::-1, :, ::-2]):
        x64 = np.asarray(layout, np.float64)
        s = sce_rs.softmax(layout, axis=axis)
        assert s.dtype == x.dtype and s.shape == layout.shape
        assert_close(s, ref_softmax(x64, axis), x)
        assert_close(sce_rs.log_softmax(layout, axis=axis), ref_log_softmax(x64, axis), x)
        for keepdims in (False, True):
            r = sce_rs.logsumexp(layout, axis=axis, keepdims=keepdims)
            want = ref_lse(x64, axis, keepdims)
            assert np.shape(r) == want.shape and np.asarray(r).dtype == x.dtype
            assert_close(r, want, x)


@pytest.mark.parametrize("axis", [None, (0, 2), (1, 2), (2, 0)], ids=str)
def test_out_and_in_place(axis):
    x = cube(np.float64, 1)
    want = ref_softmax(x, axis)
    for out in (np.empty_like(x), np.empty_like(x, order="F"), x.copy()):
        src = out if out is not None and np.array_equal(out, x) else x
        got = sce_rs.softmax(src, axis=axis, out=out)
        assert got is out
        assert_close(out, want)
    y = x.copy()
    assert sce_rs.log_softmax(y, axis=axis, out=y) is y
    assert_close(y, ref_log_softmax(x, axis))
    with pytest.raises(ValueError):
        sce_rs.softmax(x, axis=axis, out=np.empty((3, 4)))
    with pytest.raises(TypeError):
        sce_rs.softmax(x, axis=axis, out=np.empty(SHAPE, np.float32))


def test_scalars_and_empty():
    assert sce_rs.softmax(5.0, axis=None) == 1.0
    assert sce_rs.log_softmax(np.float32(5.0), axis=None) == 0.0
    assert sce_rs.logsumexp(2.0, axis=None) == 2.0
    assert sce_rs.logsumexp(np.empty((0, 3)), axis=None) == -np.inf
    assert sce_rs.logsumexp(np.empty((0, 3)), axis=(0,)).tolist() == [-np.inf] * 3
    assert sce_rs.softmax(np.empty((0, 3)), axis=(0, 1)).shape == (0, 3)


def test_bad_axes():
    x = cube(np.float64)
    for f in (sce_rs.softmax, sce_rs.log_softmax, sce_rs.logsumexp):
        with pytest.raises(ValueError, match="repeated axis"):
            f(x, axis=(1, 1))
        with pytest.raises(ValueError, match="repeated axis"):
            f(x, axis=(0, -3))
        with pytest.raises(np.exceptions.AxisError):
            f(x, axis=(0, 3))
        with pytest.raises(np.exceptions.AxisError):
            f(x, axis=(-4,))
        with pytest.raises(TypeError, match="axis"):
            f(x, axis=(0, 1.5))
        with pytest.raises(TypeError, match="complex"):
            f(x.astype(complex), axis=None)


def ref_scaled(x, b, axis):
    """log|sum(b exp(x))| and its sign, by the textbook formula in float64 (inputs small
    enough not to overflow)."""
    s = np.sum(np.asarray(b, np.float64) * np.exp(np.asarray(x, np.float64)), axis=axis)
    with np.errstate(divide="ignore"):
        return np.log(np.abs(s)), np.sign(s)


@pytest.mark.parametrize("axis", [-1, 0, None, (0, 2)], ids=str)
def test_b_and_return_sign(axis):
    rng = np.random.default_rng(5)
    x = rng.normal(size=SHAPE)
    for b in (
        rng.uniform(0.1, 2, SHAPE),
        rng.normal(size=SHAPE),
        rng.normal(size=5),
        rng.uniform(size=(4, 1)),
        np.float64(3.0),
        np.zeros(SHAPE),
    ):
        want, sign = ref_scaled(x, b, axis)
        lse, s = sce_rs.logsumexp(x, axis=axis, b=b, return_sign=True)
        assert_close(lse, want)
        np.testing.assert_array_equal(s, sign)
        plain = sce_rs.logsumexp(x, axis=axis, b=b)
        assert_close(plain, np.where(sign < 0, np.nan, want))
    # keepdims, and b that broadcasts x up (SciPy broadcasts both first).
    b = rng.uniform(0.5, 1, (2, 1, 4, 1))
    got = sce_rs.logsumexp(x[:, :1, :1], axis=(1, 3), b=b, keepdims=True)
    xb = np.broadcast_to(x[:, :1, :1], (2, 3, 4, 1))
    assert_close(got, ref_scaled(xb, b, (1, 3))[0].reshape(2, 1, 4, 1))


def test_b_edge_values_and_dtypes():
    lse, s = sce_rs.logsumexp([np.inf, 0.0], b=[1, 1], return_sign=True)
    assert (lse, s) == (np.inf, 1.0)
    lse, s = sce_rs.logsumexp([np.inf, np.inf], b=[1, -1], return_sign=True)
    assert np.isnan(lse) and np.isnan(s)
    assert np.isnan(sce_rs.logsumexp([1.0, 2.0], b=[1.0, np.nan]))
    assert np.isnan(sce_rs.logsumexp([np.inf, 2.0], b=[0.0, 1.0]))  # inf * 0
    assert sce_rs.logsumexp([1.0, 2.0], b=[1.0, 0.0]) == 1.0
    for xd, bd, want in [
        (np.float32, np.float32, np.float32),
        (np.float32, np.float64, np.float64),
        (np.int64, np.int32, np.float64),
        (np.float32, np.int8, np.float32),
    ]:
        r = sce_rs.logsumexp(np.array([2, 1], xd), b=np.array([1, 2], bd))
        assert r.dtype == want
        assert_close(r, np.log(np.exp(2) + 2 * np.exp(1)), np.empty(0, want))
    with pytest.raises(ValueError, match="broadcast"):
        sce_rs.logsumexp(np.ones((2, 3)), b=np.ones(2))
    with pytest.raises(TypeError, match="b must be a real"):
        sce_rs.logsumexp(np.ones(3), b=np.ones(3, complex))
    x, b = np.array([5.0, 4.0]), np.array([3.0, -2.0])
    sce_rs.logsumexp(x, b=b)
    assert x.tolist() == [5.0, 4.0] and b.tolist() == [3.0, -2.0]  # no write-back


def test_integer_axis_path_is_unchanged():
    """An int axis never reaches the Python layer (it would show in the traceback)."""
    x = cube(np.float64)
    for a, f in itertools.product(range(-3, 3), (sce_rs.softmax, sce_rs.logsumexp)):
        np.testing.assert_array_equal(f(x, a), f(x, axis=(a,)))
    with pytest.raises(np.exceptions.AxisError) as e:
        sce_rs.softmax(x, 3)
    assert not any(str(t.path).endswith("sce_rs/_axes.py") for t in e.traceback)
