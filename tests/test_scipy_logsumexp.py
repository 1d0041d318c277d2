"""SciPy's own tests of logsumexp, softmax and log_softmax (scipy/special/tests/
test_logsumexp.py, from the installed wheel) run against sce_rs.

A thin adapter: SciPy's test classes are inherited unchanged, with the module's `logsumexp`,
`softmax` and `log_softmax` replaced by sce_rs's (given SciPy's default `axis=None`) and the
array namespace fixed to NumPy. Left out, each named below: the complex-input cases (sce_rs
computes real dtypes only) and the two that use SciPy's multi-backend `devices` machinery with
complex input. SciPy's log1p accuracy case (gh18295) runs as is.
"""

from __future__ import annotations

import itertools as it

import numpy as np
import pytest

from conftest import optional_import

optional_import("scipy")
upstream = pytest.importorskip(
    "scipy.special.tests.test_logsumexp",
    reason="this scipy build ships without its tests",
)

import sce_rs  # noqa: E402

REAL_DTYPES = ["float32", "float64", "int32", "int64"]


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    return sce_rs.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)


def softmax(x, axis=None):
    return sce_rs.softmax(x, axis=axis)


def log_softmax(x, axis=None):
    return sce_rs.log_softmax(x, axis=axis)


@pytest.fixture(autouse=True)
def sce_rs_in_place_of_scipy(monkeypatch):
    for f in (logsumexp, softmax, log_softmax):
        monkeypatch.setattr(upstream, f.__name__, f)


@pytest.fixture
def xp():
    return np


class TestLogSumExp(upstream.TestLogSumExp):
    # Complex input: not sce_rs's (a TypeError naming the dtype, as the contract says).
    test_logsumexp_complex_sign = None
    test_gh21610 = None
    test_gh21709_small_imaginary = None
    # SciPy's device propagation test takes complex input and its backends' device lists.
    test_device = None

    @pytest.mark.parametrize("dtype", REAL_DTYPES)
    def test_dtypes_a(self, dtype, xp):
        upstream.TestLogSumExp.test_dtypes_a(self, dtype, xp)

    @pytest.mark.parametrize("dtype_a", REAL_DTYPES)
    @pytest.mark.parametrize("dtype_b", REAL_DTYPES)
    def test_dtypes_ab(self, dtype_a, dtype_b, xp):
        upstream.TestLogSumExp.test_dtypes_ab(self, dtype_a, dtype_b, xp)

    @pytest.mark.parametrize("x,y", list(it.product([-np.inf, np.inf], repeat=2)))
    def test_gh22601_infinite_elements(self, x, y, xp):
        upstream.TestLogSumExp.test_gh22601_infinite_elements(self, x, y, xp)


class TestSoftmax(upstream.TestSoftmax):
    pass


class TestLogSoftmax(upstream.TestLogSoftmax):
    pass


def test_complex_input_is_a_type_error():
    with pytest.raises(TypeError, match="complex"):
        sce_rs.logsumexp(np.array([1 + 1j, 2 - 1j]), axis=None)
