"""Threads, determinism, fork safety and the runtime introspection functions."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import sce_rs


@pytest.fixture
def threads():
    before = sce_rs.get_num_threads()
    yield
    sce_rs.set_num_threads(before)


def everything(x, t):
    """Every function (every kernel family, reductions and gradients) on one input."""
    probs = sce_rs.softmax(x[::-1] / 3)
    return [
        sce_rs.softmax(x),
        sce_rs.log_softmax(x.T, axis=0),
        sce_rs.logsumexp(x),
        sce_rs.softmax_backward(x, probs),
        sce_rs.log_softmax_backward(x, np.log(probs)),
        sce_rs.softmax_jacobian(x[:50]),
        sce_rs.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3),
        sce_rs.cross_entropy(x, t, reduction="sum", weight=np.linspace(0.5, 2, x.shape[1])),
        sce_rs.cross_entropy(x, t, softcap=5.0, reduction="none"),
        *sce_rs.cross_entropy_and_grad(x, t),
        *sce_rs.cross_entropy_and_grad(x, probs, label_smoothing=0.3),
        sce_rs.nll_loss(x, t, weight=np.linspace(0.5, 2, x.shape[1])),
        sce_rs.binary_cross_entropy(probs, (x > 0).astype(x.dtype)),
        sce_rs.binary_cross_entropy_with_logits(x, (x > 0).astype(x.dtype)),
        *sce_rs.binary_cross_entropy_with_logits_and_grad(x, probs, pos_weight=probs[0]),
        # One row longer than a block: read as rows of one element, cut into many blocks.
        *sce_rs.binary_cross_entropy_with_logits_and_grad(x.ravel(), probs.ravel()),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bitwise_identical_for_any_thread_count(threads, dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(scale=4, size=(2000, 300)).astype(dtype)
    t = rng.integers(0, 300, size=2000)
    results = {}
    for n in (1, 2, 3, 8):
        sce_rs.set_num_threads(n)
        assert sce_rs.get_num_threads() == n
        results[n] = [np.asarray(r).tobytes() for r in everything(x, t)]
        results[n, "again"] = [np.asarray(r).tobytes() for r in everything(x, t)]
    first = results[1]
    for key, res in results.items():
        assert res == first, f"results differ for {key}"


@pytest.mark.parametrize("k", [1, 4, 10, 15])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduced_loss_of_short_rows_is_the_gradients_loss_for_any_thread_count(threads, k, dtype):
    # Without outputs, rows of fewer than 16 classes are reduced inside their kernel; the loss
    # is still bitwise the one the gradient's path gives, at any thread count. The row count
    # leaves a short last block in each of many blocks.
    rng = np.random.default_rng(k)
    n = 300_007
    x = rng.normal(scale=4, size=(n, k)).astype(dtype)
    t = rng.integers(0, k, size=n)
    t[::11] = -100
    want = {}
    for n_threads in (1, 2, 3):
        sce_rs.set_num_threads(n_threads)
        for reduction in ("mean", "sum"):
            got = sce_rs.cross_entropy(x, t, reduction=reduction)
            with_grad = sce_rs.cross_entropy_and_grad(x, t, reduction=reduction)[0]
            assert np.asarray(got).tobytes() == np.asarray(with_grad).tobytes(), reduction
            assert want.setdefault(reduction, got) == got, (n_threads, reduction)


def test_environment_variable_sets_the_thread_count():
    env = dict(os.environ, SCE_RS_NUM_THREADS="3")
    out = subprocess.run(
        [sys.executable, "-c", "import sce_rs; print(sce_rs.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "3"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_child_computes_after_the_pool_ran(threads):
    sce_rs.set_num_threads(2)
    x = np.random.default_rng(1).normal(size=(1000, 500))
    want = sce_rs.softmax(x)  # starts the pool in the parent
    code = """
import os, sys, numpy as np, sce_rs
sce_rs.set_num_threads(2)
x = np.random.default_rng(1).normal(size=(1000, 500))
want = sce_rs.softmax(x)
pid = os.fork()
if pid == 0:
    ok = np.array_equal(sce_rs.softmax(x), want)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    # In a subprocess so that a hang is bounded by the timeout instead of freezing the suite.
    res = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert want.shape == x.shape


def test_introspection():
    assert sce_rs.simd_backend() in {"avx512", "avx2", "sse2", "neon", "scalar"}
    assert isinstance(sce_rs.__version__, str) and sce_rs.__version__.count(".") == 2
    assert set(sce_rs.__all__) <= set(dir(sce_rs))


def test_importing_does_not_import_heavy_peers():
    heavy = ("torch", "jax", "scipy", "dask")
    code = f"import sys, sce_rs; print(any(m in sys.modules for m in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_few_long_rows_are_split_within_the_row(threads, dtype):
    """1 to 3 rows of 2^16+ classes run in fixed segments on all threads: the reference's
    answer, the same bits for any thread count, special values included, in place too."""
    from conftest import assert_close
    from sce_rs import reference as ref

    rng = np.random.default_rng(11)
    x = (rng.normal(size=(3, 300_001)) * 4).astype(dtype)
    x[1, :] = -np.inf  # softmax NaN, logsumexp -inf
    x[1, 123_456] = 2.0  # ... but one finite logit makes it a one-hot row
    x[2, 200_000] = np.inf  # softmax NaN, logsumexp +inf
    results = {}
    for n in (1, 2, 3):
        sce_rs.set_num_threads(n)
        got = [sce_rs.softmax(x), sce_rs.log_softmax(x.T, axis=0), sce_rs.logsumexp(x[:1])]
        results[n] = [g.tobytes() for g in got]
        # Written over the input: each segment in place on its own thread, the same bits.
        for f, want in ((sce_rs.softmax, got[0]), (sce_rs.log_softmax, None)):
            inplace = x.copy()
            f(inplace, out=inplace)
            assert inplace.tobytes() == (f(x) if want is None else want).tobytes()
    assert results[1] == results[2] == results[3]
    assert_close(got[0], ref.softmax(x))
    assert_close(got[1], ref.log_softmax(x.T, axis=0))
    assert_close(got[2], ref.logsumexp(x[:1]), dtype_like=x)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"label_smoothing": 0.2, "weight": "random"},
        {"z_loss": 1e-3, "softcap": 5.0, "reduction": "sum"},
        {"reduction": "none", "grad_output": "random"},
    ],
    ids=lambda kw: ",".join(kw) or "defaults",
)
def test_cross_entropy_of_few_long_rows_is_split_within_the_row(threads, kw):
    from conftest import assert_close
    from sce_rs import reference as ref

    rng = np.random.default_rng(12)
    k = 200_003
    x = (rng.normal(size=(3, k)) * 3).astype(np.float32)
    t = np.array([5, -100, k - 1])
    kw = dict(kw)
    if kw.get("weight") == "random":
        kw["weight"] = rng.uniform(0.5, 2.0, size=k)
    if kw.get("grad_output") == "random":
        kw["grad_output"] = np.array([0.5, 2.0, -1.0])
    results = {}
    for n in (1, 2, 3):
        sce_rs.set_num_threads(n)
        loss, grad = sce_rs.cross_entropy_and_grad(x, t, **kw)
        # Written over the logits, each segment in place on its own thread.
        inplace = x.copy()
        sce_rs.cross_entropy_and_grad(inplace, t, out=inplace, **kw)
        assert inplace.tobytes() == grad.tobytes()
        results[n] = (np.asarray(loss).tobytes(), grad.tobytes())
    assert results[1] == results[2] == results[3]
    want_loss, want_grad = ref.cross_entropy_and_grad(x, t, **kw)
    assert_close(loss, want_loss, dtype_like=x)
    assert_close(grad, want_grad)
    fwd = {k: v for k, v in kw.items() if k != "grad_output"}
    assert np.asarray(sce_rs.cross_entropy(x, t, **fwd)).tobytes() == np.asarray(loss).tobytes()


def test_python_dash_m_sce_rs_reports_the_installation():
    env = dict(os.environ, SCE_RS_NUM_THREADS="3")
    out = subprocess.run(
        [sys.executable, "-m", "sce_rs"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"sce_rs {sce_rs.__version__}" in text
    assert f"SIMD backend: {sce_rs.simd_backend()}" in text
    assert "threads:      3 (SCE_RS_NUM_THREADS" in text
    assert "numpy:" in text and "torch" in text and "scipy" in text
    assert "sce_rs.torch" in text and "sce_rs.dask" in text
