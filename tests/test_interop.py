"""Arrays of other libraries as inputs: DLPack producers (PyTorch, JAX) and `__array__`
objects give the same results as NumPy arrays, without a copy, and clear errors otherwise."""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import sce_rs
from conftest import optional_import

torch = optional_import("torch")
jnp = optional_import("jax.numpy")

TORCH_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bfloat16: ml_dtypes.bfloat16,
}


def numpy_of(t):
    """The same values as a NumPy array of the matching dtype (a copy, for the expectation)."""
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy().copy()


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_tensors_of_every_dtype_and_layout(dtype):
    base = torch.randn(9, 13, dtype=torch.float64).to(dtype)
    target = torch.randint(0, 9, (13,))
    for x in (base, base.t(), base.t()[::3], base[:1].expand(4, 13)):
        xn = numpy_of(x)
        np.testing.assert_array_equal(sce_rs.softmax(x), sce_rs.softmax(xn))
        np.testing.assert_array_equal(sce_rs.logsumexp(x, axis=0), sce_rs.logsumexp(xn, axis=0))
        if x.shape[1] == 13 and x.shape[0] <= 9:
            t = target[: x.shape[0]] % x.shape[1]
            assert sce_rs.cross_entropy(x, t) == sce_rs.cross_entropy(xn, t.numpy())
    loss, grad = sce_rs.cross_entropy_and_grad(base, target[:9])
    assert isinstance(grad, np.ndarray) and grad.dtype == TORCH_DTYPES[dtype]


def test_jax_arrays():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32))
    t = jnp.asarray([0, 1, 2, 3, 4, 0])
    xn, tn = np.asarray(x), np.asarray(t)
    np.testing.assert_array_equal(sce_rs.log_softmax(x), sce_rs.log_softmax(xn))
    assert sce_rs.cross_entropy(x, t) == sce_rs.cross_entropy(xn, tn)
    xb = x.astype(jnp.bfloat16)
    np.testing.assert_array_equal(sce_rs.softmax(xb), sce_rs.softmax(np.asarray(xb)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_copy_of_the_input(dtype):
    """A 16 MiB tensor in, a 4 KiB result out: a copy of the input would show in the peak."""
    x = torch.randn(1024, 4096).to(dtype)
    t = torch.randint(0, 4096, (1024,))
    tracemalloc.start()
    sce_rs.logsumexp(x)
    sce_rs.cross_entropy(x, t, reduction="none")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024, peak


class ArrayOnly:
    """An object that offers only `__array__`."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


class OnDevice:
    """A DLPack producer whose memory is on a GPU."""

    def __dlpack__(self, **_):
        raise AssertionError("never exported: the device is checked first")

    def __dlpack_device__(self):
        return (2, 1)


def test_array_protocol_and_errors():
    a = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(sce_rs.softmax(ArrayOnly(a)), sce_rs.softmax(a))
    with pytest.raises(TypeError, match="cuda:1.*CPU"):
        sce_rs.softmax(OnDevice())
    with pytest.raises(TypeError, match="require.*grad.*sce_rs.torch"):
        sce_rs.cross_entropy(torch.randn(2, 3, requires_grad=True), [0, 1])
    with pytest.raises(TypeError, match="target"):
        sce_rs.cross_entropy(np.zeros((2, 3)), torch.empty(2, device="meta"))
    with pytest.raises(TypeError, match="complex"):
        sce_rs.softmax(torch.zeros(3, dtype=torch.complex64))
