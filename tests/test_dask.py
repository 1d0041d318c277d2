"""sce_rs.dask: the same results as single-machine sce_rs for any chunking, reductions exact
within float64 rounding, and the whole thing on a dask.distributed LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

import sce_rs
from conftest import assert_close, optional_import

da = optional_import("dask.array")
distributed = optional_import("dask.distributed")
import sce_rs.dask as sd  # noqa: E402  (after the skip: it imports dask)

# Row chunkings of a 300-row input: one chunk, even, uneven, one row per chunk at the start.
CHUNKS = [300, 64, (1, 2, 97, 200)]
# The reductions sum per-row losses in float64 across chunks, in another order than the
# single-machine kernel: float64 results agree to a few ULP of the sum; float32 ones are the
# same float64 value rounded once, so they agree to one float32 ULP.
REDUCED_RTOL = {np.float64: 1e-14, np.float32: 2**-23}


def data(dtype, soft=False, k=11, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, k)) * 3).astype(dtype)
    if soft:
        t = rng.dirichlet(np.ones(k), size=n).astype(dtype)
    else:
        t = rng.integers(0, k, size=n)
        t[::7] = -100
    return x, t


def chunked(a, rows):
    return da.from_array(a, chunks=(rows,) + a.shape[1:])


def assert_reduced(got, want):
    got = got.compute()
    assert type(got) is type(want), (type(got), type(want))
    np.testing.assert_allclose(got, want, rtol=REDUCED_RTOL[type(want)], atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", CHUNKS, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_cross_entropy_equals_single_machine(weighted, soft, reduction, rows, dtype):
    x, t = data(dtype, soft)
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    if weighted:
        kw["weight"] = np.linspace(0.5, 2.0, 11)
    want = sce_rs.cross_entropy(x, t, **kw)
    got = sd.cross_entropy(chunked(x, rows), chunked(t, rows), **kw)
    if reduction == "none":
        np.testing.assert_array_equal(got.compute(), want)
    else:
        assert_reduced(got, want)
    loss, grad = sd.cross_entropy_and_grad(chunked(x, rows), chunked(t, rows), **kw)
    want_loss, want_grad = sce_rs.cross_entropy_and_grad(x, t, **kw)
    assert_close(grad.compute(), want_grad)
    if reduction != "none":
        assert_reduced(loss, want_loss)


def test_class_axis_and_chunks_along_it():
    """axis=1 of a 3-d input whose class axis is split in chunks: gathered, same result."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 9, 5))
    t = rng.integers(0, 9, size=(40, 5))
    dx = da.from_array(x, chunks=(7, 4, 2))
    dt = da.from_array(t, chunks=(13, 3))
    np.testing.assert_array_equal(sd.softmax(dx, axis=1).compute(), sce_rs.softmax(x, axis=1))
    np.testing.assert_array_equal(sd.log_softmax(dx, 1).compute(), sce_rs.log_softmax(x, 1))
    for keep in (False, True):
        got = sd.logsumexp(dx, axis=-2, keepdims=keep)
        want = sce_rs.logsumexp(x, axis=-2, keepdims=keep)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.compute(), want)
    assert_reduced(sd.cross_entropy(dx, dt, axis=1), sce_rs.cross_entropy(x, t, axis=1))
    logp = sce_rs.log_softmax(x, axis=1)
    assert_reduced(
        sd.nll_loss(da.from_array(logp, chunks=(3, 9, 5)), dt, axis=1, weight=np.arange(1.0, 10.0)),
        sce_rs.nll_loss(logp, t, axis=1, weight=np.arange(1.0, 10.0)),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_losses(reduction):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.random(size=(50, 6)).astype(np.float32)
    w, pw = np.linspace(0.5, 1.5, 6), np.linspace(0.1, 4.0, 6)
    dx, dy = da.from_array(x, chunks=(9, 4)), da.from_array(y, chunks=(20, 6))
    got = sd.binary_cross_entropy_with_logits(dx, dy, weight=w, pos_weight=pw, reduction=reduction)
    want = sce_rs.binary_cross_entropy_with_logits(
        x, y, weight=w, pos_weight=pw, reduction=reduction
    )
    p = sce_rs.softmax(x)
    got_p = sd.binary_cross_entropy(da.from_array(p, chunks=7), dy, reduction=reduction)
    want_p = sce_rs.binary_cross_entropy(p, y, reduction=reduction)
    if reduction == "none":
        np.testing.assert_array_equal(got.compute(), want)
        np.testing.assert_array_equal(got_p.compute(), want_p)
    else:
        assert_reduced(got, want)
        assert_reduced(got_p, want_p)


def test_edges_and_errors():
    empty = da.zeros((0, 4), chunks=2)
    no_rows = da.zeros((0,), dtype=np.int64, chunks=2)
    assert np.isnan(sd.cross_entropy(empty, no_rows).compute())
    assert sd.cross_entropy(empty, no_rows, reduction="sum").compute() == 0
    x, t = data(np.float64)
    everything_ignored = np.full_like(t, -100)
    assert np.isnan(sd.cross_entropy(chunked(x, 64), everything_ignored).compute())
    with pytest.raises(ValueError, match="does not fit"):
        sd.cross_entropy(chunked(x, 64), t[:10])
    with pytest.raises(ValueError, match="reduction"):
        sd.cross_entropy(chunked(x, 64), t, reduction="avg")
    with pytest.raises(np.exceptions.AxisError, match="axis 2"):
        sd.softmax(chunked(x, 64), axis=2)
    bad = t.copy()
    bad[150] = 11
    with pytest.raises(IndexError, match="11"):  # raised by the chunk's kernel at compute
        sd.cross_entropy(chunked(x, 64), bad).compute()


def test_on_a_local_cluster():
    """Two worker processes on loopback, as a real cluster would run it: the mean over 8 row
    chunks equals the single-machine mean, and the gradient is the same array."""
    x, t = data(np.float32, n=4000, k=300, seed=3)
    weight = np.linspace(0.1, 3.0, 300)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        dx, dt = chunked(x, 500), chunked(t, 500)
        loss, grad = sd.cross_entropy_and_grad(dx, dt, weight=weight, label_smoothing=0.05)
        loss, grad = client.compute([loss, grad], sync=True)
        workers = client.run(lambda: __import__("os").getpid())
        assert len(set(workers.values())) == 2
    want_loss, want_grad = sce_rs.cross_entropy_and_grad(x, t, weight=weight, label_smoothing=0.05)
    np.testing.assert_allclose(loss, want_loss, rtol=REDUCED_RTOL[np.float32], atol=0)
    assert_close(grad, want_grad)
