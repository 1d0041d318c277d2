"""linear_cross_entropy(_and_grad): the fused form against the materialized float64 reference
(`hidden @ weight.T + bias`, then cross_entropy) for every option and dtype, across tile
boundaries, independent of the thread count, with the contract's errors and bounded memory."""

from __future__ import annotations

import itertools
import sys

import ml_dtypes
import numpy as np
import pytest
from test_reliability import run_child

import sce_rs
from conftest import TOLERANCE, dtype_name
from sce_rs import reference as ref

# The float32 results go through GEMMs whose inner dimension is D (logits, d_hidden's
# products), V (d_hidden) or N (d_weight, d_bias): each is a float32 dot product, off by up
# to ~sqrt(terms) * 2**-24 of the sum of |terms|. Relative to the largest magnitude of the
# result, 1e-5 covers inner dimensions up to ~10^4 at these value scales; float64 and the
# half types use the suite's tolerances (their error is dominated by the final rounding).
GEMM_TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 4e-3, "bfloat16": 3e-2}


def assert_gemm_close(got, want, dtype):
    got = np.asarray(got).astype(np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    scale = max(float(np.max(np.abs(want[~nan]), initial=0.0)), 1e-300)
    tol = GEMM_TOLERANCE[dtype_name(np.empty(0, dtype))] * scale
    np.testing.assert_allclose(got[~nan], want[~nan], rtol=0, atol=tol)


def operands(n, d, v, dtype, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)).astype(dtype)
    w = (rng.normal(size=(v, d)) / np.sqrt(max(d, 1))).astype(dtype)
    b = rng.normal(size=v).astype(dtype) if bias else None
    t = rng.integers(0, max(v, 1), size=n)
    t[::7] = -100  # some ignored rows
    return h, w, t, b


OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"class_weight": "random"},
    {"reduction": "sum", "label_smoothing": 0.1, "class_weight": "random"},
    {"reduction": "none", "softcap": 2.0, "z_loss": 1e-3},
    {"reduction": "sum", "ignore_index": 3},
    {"ignore_index": 3},  # a positive ignore_index under "mean"
    {"label_smoothing": 0.1, "class_weight": "random"},  # under "mean"
    {"softcap": 3.0, "class_weight": "random"},
]


def resolve(kw, v, seed=1):
    kw = dict(kw)
    if kw.get("class_weight") == "random":
        kw["class_weight"] = np.random.default_rng(seed).uniform(0.2, 2.0, size=v)
    return kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "defaults")
@pytest.mark.parametrize("shape", [(5, 3, 7), (600, 33, 2100), (1, 8, 1)], ids=str)
def test_matches_the_materialized_reference(dtype, kw, shape):
    """At the default budget every shape here keeps its logits (see the schedule tests for
    the recompute path and its tile boundaries)."""
    n, d, v = shape
    h, w, t, b = operands(n, d, v, dtype)
    kw = resolve(kw, v)
    if "ignore_index" in kw:
        t[t == -100] = kw["ignore_index"]
    want = ref.linear_cross_entropy_and_grad(h, w, t, b, **kw)
    got = sce_rs.linear_cross_entropy_and_grad(h, w, t, b, **kw)
    assert len(got) == 4
    for g, wnt in zip(got, want):
        assert_gemm_close(g, wnt, dtype)
    assert got[1].dtype == dtype and got[2].dtype == dtype and got[3].dtype == dtype
    loss_only = sce_rs.linear_cross_entropy(h, w, t, b, **kw)
    assert np.asarray(loss_only).tobytes() == np.asarray(got[0]).tobytes()


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_operands_accumulate_in_float32(dtype):
    h, w, t, b = operands(70, 16, 300, dtype)
    loss, dh, dw, db = sce_rs.linear_cross_entropy_and_grad(h, w, t, b, label_smoothing=0.1)
    want = ref.linear_cross_entropy_and_grad(h, w, t, b, label_smoothing=0.1)
    assert loss.dtype == np.float32
    assert dh.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    for g, wnt in zip((loss, dh, dw, db), want):
        assert_gemm_close(g, wnt, dtype)


def test_without_bias_returns_three_values_and_grad_output_scales():
    h, w, t, _ = operands(40, 8, 50, np.float64, bias=False)
    got = sce_rs.linear_cross_entropy_and_grad(h, w, t, grad_output=2.5)
    want = ref.linear_cross_entropy_and_grad(h, w, t, grad_output=2.5)
    assert len(got) == 3
    for g, wnt in zip(got, want):
        assert_gemm_close(g, wnt, np.float64)
    up = np.linspace(-1, 1, 40)
    got = sce_rs.linear_cross_entropy_and_grad(h, w, t, reduction="none", grad_output=up)
    want = ref.linear_cross_entropy_and_grad(h, w, t, reduction="none", grad_output=up)
    for g, wnt in zip(got, want):
        assert_gemm_close(g, wnt, np.float64)


def test_any_layout_and_integer_operands():
    h, w, t, b = operands(30, 6, 20, np.float32)
    want = sce_rs.linear_cross_entropy_and_grad(h, w, t, b)
    strided = sce_rs.linear_cross_entropy_and_grad(
        np.asfortranarray(h), w.T.copy().T, t.astype(np.int8), b[::-1].copy()[::-1]
    )
    for g, wnt in zip(strided, want):
        np.testing.assert_array_equal(g, wnt)
    hi, wi = np.arange(12).reshape(4, 3) % 5, np.arange(15).reshape(5, 3) % 4
    ti = np.array([0, 4, 2, 1])
    got = sce_rs.linear_cross_entropy(hi, wi, ti)
    assert got.dtype == np.float64
    assert_gemm_close(got, ref.linear_cross_entropy(hi, wi, ti), np.float64)


def test_edge_shapes():
    # N = 0: NaN mean, zero sum, empty and zero gradients.
    h, w = np.zeros((0, 4)), np.ones((5, 4))
    loss, dh, dw = sce_rs.linear_cross_entropy_and_grad(h, w, np.zeros(0, dtype=int))
    assert np.isnan(loss) and dh.shape == (0, 4) and np.all(dw == 0)
    assert sce_rs.linear_cross_entropy(h, w, np.zeros(0, int), reduction="sum") == 0
    # D = 0: every logit is the bias.
    b = np.array([0.0, 1.0, 2.0])
    got = sce_rs.linear_cross_entropy_and_grad(np.zeros((2, 0)), np.zeros((3, 0)), [0, 2], b)
    want = ref.linear_cross_entropy_and_grad(np.zeros((2, 0)), np.zeros((3, 0)), [0, 2], b)
    for g, wnt in zip(got, want):
        assert_gemm_close(g, wnt, np.float64)
    # Every row ignored: NaN mean and zero gradients, as PyTorch gives.
    loss, dh, dw = sce_rs.linear_cross_entropy_and_grad(
        np.ones((3, 2)), np.ones((4, 2)), [-100] * 3
    )
    assert np.isnan(loss) and not dh.any() and not dw.any()


def test_results_do_not_depend_on_the_thread_count():
    h, w, t, b = operands(1100, 40, 4500, np.float32, seed=5)
    before = sce_rs.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            sce_rs.set_num_threads(n)
            r = sce_rs.linear_cross_entropy_and_grad(h, w, t, b, label_smoothing=0.1, z_loss=1e-4)
            results.append([np.asarray(x).tobytes() for x in r])
    finally:
        sce_rs.set_num_threads(before)
    assert results[0] == results[1] == results[2]


H, W, T = np.ones((4, 3)), np.ones((5, 3)), np.array([0, 1, 2, 4])


@pytest.mark.parametrize("fn", ["linear_cross_entropy", "linear_cross_entropy_and_grad"])
def test_errors(fn):
    f = getattr(sce_rs, fn)
    cases = [
        ((np.ones(3), W, T), {}, ValueError, r"hidden must have shape \(N, D\), got \(3,\)"),
        ((H, np.ones((5, 2)), T), {}, ValueError, r"weight must have shape \(V, D\) with D = 3"),
        ((H, W, T[:3]), {}, ValueError, r"target must have shape \(4,\)"),
        (
            (H, W, T * 1.0),
            {},
            ValueError,
            r"\(an integer dtype\), got float64; probability targets",
        ),
        ((H, W, [0, 1, 5, 2]), {}, IndexError, r"target 5 at position \(2,\) is out of range"),
        ((H, W, T, np.ones(4)), {}, ValueError, r"bias must have shape \(5,\), got \(4,\)"),
        ((H, W, T), {"class_weight": np.ones(4)}, ValueError, r"class_weight must have shape"),
        ((H, W, T), {"label_smoothing": 2.0}, ValueError, r"label_smoothing must be in \[0, 1\]"),
        ((H, W, T), {"reduction": "max"}, ValueError, "reduction must be"),
        ((H.astype(complex), W, T), {}, TypeError, "hidden has unsupported dtype complex128"),
        ((H, W, T), {"softcap": -1.0}, ValueError, "softcap must be None or"),
        (
            (H, W, T),
            {"max_memory_bytes": 0},
            ValueError,
            "max_memory_bytes must be a positive number of bytes, got 0",
        ),
    ]
    for args, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            f(*args, **kw)
    if fn.endswith("grad"):
        with pytest.raises(ValueError, match="grad_output must be a scalar"):
            f(H, W, T, grad_output=np.ones(4))
        with pytest.raises(ValueError, match=r"grad_output of shape \(3,\)"):
            f(H, W, T, reduction="none", grad_output=np.ones(3))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_peak_memory_stays_far_below_the_logits():
    """N x V float32 logits here are 64 MiB (and their gradient as much); the fused form's
    peak beyond its inputs and returned gradients must stay within a few tiles."""
    got = run_child(
        """
        import json, numpy as np, sce_rs
        def rss(field):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        n, d, v = 1024, 256, 16384
        rng = np.random.default_rng(0)
        h = rng.normal(size=(n, d)).astype(np.float32)
        w = rng.normal(size=(v, d)).astype(np.float32) / 16
        t = rng.integers(0, v, size=n)
        sce_rs.linear_cross_entropy_and_grad(h[:8], w[:64], t[:8] % 64)  # pool and code warm
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = rss("VmRSS")
        loss, dh, dw = sce_rs.linear_cross_entropy_and_grad(h, w, t)
        extra = rss("VmHWM") - base - dh.nbytes - dw.nbytes
        print(json.dumps({"extra_mib": extra / 2**20, "logits_mib": n * v * 4 / 2**20}))
        """,
        timeout=300,
    )
    assert got["extra_mib"] < 24, got


def test_linear_functions_are_in_the_fuzz_cases():
    from test_fuzz import CASES

    assert {"linear_cross_entropy", "linear_cross_entropy_and_grad"} <= set(CASES)


def test_option_grid_is_complete():
    """Every keyword of the signature appears in OPTIONS (or in the tests above)."""
    # max_memory_bytes: test_every_schedule_and_tile_boundary
    used = set(itertools.chain.from_iterable(OPTIONS)) | {"grad_output", "bias", "max_memory_bytes"}
    want = {"class_weight", "ignore_index", "reduction", "label_smoothing", "z_loss", "softcap"}
    want |= {"max_memory_bytes"}
    assert want <= used


assert set(TOLERANCE) == set(GEMM_TOLERANCE)


def check_all(got, want, dtypes):
    assert len(got) == len(want)
    for g, wnt, dt in zip(got, want, dtypes):
        assert_gemm_close(g, wnt, dt)


# Budgets that force each schedule at (700, 24, 9000): 64 KiB, 1 MiB and 16 MiB recompute
# (64 KiB in tiles of 85 rows x 64 classes: many row blocks and class blocks), 64 MiB keeps
# the float32 logits of two row blocks in turn (float64 recomputes), 1 GiB keeps all rows.
BUDGETS = [1 << 16, 1 << 20, 16 << 20, 64 << 20, 1 << 30]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: f"{b >> 10}KiB")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_schedule_and_tile_boundary(dtype, budget, bias):
    """V > 8192 (hundreds of class blocks at the small budgets), rows across row blocks, with
    and without bias, under label smoothing and class weights; loss and gradients against the
    float64 reference, and the loss alone equal to the loss of the gradient call when both
    take the same schedule (the recompute path's forward is shared)."""
    n, d, v = 700, 24, 9000
    h, w, t, b = operands(n, d, v, dtype, seed=3, bias=bias)
    kw = resolve({"label_smoothing": 0.1, "class_weight": "random", "z_loss": 1e-3}, v)
    want = ref.linear_cross_entropy_and_grad(h, w, t, b, **kw)
    got = sce_rs.linear_cross_entropy_and_grad(h, w, t, b, max_memory_bytes=budget, **kw)
    check_all(got, want, [dtype] * 4)
    loss = sce_rs.linear_cross_entropy(h, w, t, b, max_memory_bytes=budget, **kw)
    assert_gemm_close(loss, want[0], dtype)


MIXED = [
    # (hidden, weight, bias): the loss takes NumPy's promotion of all three, each gradient
    # its operand's dtype
    (np.float32, ml_dtypes.bfloat16, None),
    (ml_dtypes.bfloat16, np.float32, np.float16),
    (np.float16, np.float64, np.float32),
    (ml_dtypes.bfloat16, ml_dtypes.bfloat16, np.float32),
    (np.float16, ml_dtypes.bfloat16, ml_dtypes.bfloat16),
]


@pytest.mark.parametrize("budget", [1 << 16, 16 << 20], ids=["64KiB", "16MiB"])
@pytest.mark.parametrize(
    "dtypes",
    MIXED,
    ids=lambda ds: "-".join(dtype_name(np.empty(0, d)) if d else "none" for d in ds),
)
def test_mixed_and_half_dtypes_follow_numpy_promotion(dtypes, budget):
    hd, wd, bd = dtypes
    n, d, v = 300, 20, 5000
    h, w, t, b = operands(n, d, v, np.float64, seed=4, bias=bd is not None)
    h, w = h.astype(hd), w.astype(wd)
    b = None if b is None else b.astype(bd)
    kw = {"label_smoothing": 0.05}
    want = ref.linear_cross_entropy_and_grad(h, w, t, b, **kw)
    got = sce_rs.linear_cross_entropy_and_grad(h, w, t, b, max_memory_bytes=budget, **kw)
    # NumPy's promotion, and float32 for the half types (NumPy has no bfloat16-float16 rule)
    loss_dtype = np.float64 if np.float64 in dtypes else np.float32
    assert got[0].dtype == loss_dtype
    assert got[1].dtype == hd and got[2].dtype == wd
    # Each result is off by its own dtype's rounding, or by the half inputs' effect on a
    # float32 computation (the loss) at most.
    half = [x for x in (hd, wd, bd) if x is not None and np.dtype(x).itemsize == 2]
    loss_tol = half[0] if half else loss_dtype
    outs = [loss_tol, hd, wd] + ([bd] if b is not None else [])
    check_all(got, want, outs)


def test_every_instruction_set():
    """Every SIMD level this CPU runs (the tile kernels; gemm picks its own at import), on
    both schedules: the same results as the float64 reference, and bitwise the same across
    levels for the GEMM part is not expected (exp differs), so each is checked on its own."""
    from test_isa import LEVELS

    h, w, t, b = operands(600, 16, 9000, np.float32, seed=6)
    kw = resolve({"softcap": 4.0, "class_weight": "random"}, 9000)
    want = ref.linear_cross_entropy_and_grad(h, w, t, b, **kw)
    before = sce_rs.simd_backend()
    seen = []
    try:
        for level in LEVELS:
            chosen = sce_rs._force_simd_backend(level)
            if chosen in seen:
                continue
            seen.append(chosen)
            for budget in (1 << 16, 16 << 20):
                got = sce_rs.linear_cross_entropy_and_grad(
                    h, w, t, b, max_memory_bytes=budget, **kw
                )
                check_all(got, want, [np.float32] * 4)
    finally:
        sce_rs._force_simd_backend(before)
    assert seen


def test_the_torch_wrapper_across_tiles():
    """sce_rs.torch.linear_cross_entropy at a shape whose logits do not fit the default budget
    (class blocks of the recompute path), forward and backward against PyTorch's own."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from sce_rs import torch as st

    n, d, v = 200, 16, 40000
    h, w, t, b = operands(n, d, v, np.float32, seed=7)
    hw = torch.from_numpy(h).double().requires_grad_()
    ww = torch.from_numpy(w).double().requires_grad_()
    bw = torch.from_numpy(b).double().requires_grad_()
    tt = torch.from_numpy(t)
    want = F.cross_entropy(F.linear(hw, ww, bw), tt, label_smoothing=0.1)
    want.backward()
    hs = torch.from_numpy(h).requires_grad_()
    ws = torch.from_numpy(w).requires_grad_()
    bs = torch.from_numpy(b).requires_grad_()
    got = st.linear_cross_entropy(hs, ws, tt, linear_bias=bs, label_smoothing=0.1)
    got.backward()
    pairs = [(got, want), (hs.grad, hw.grad), (ws.grad, ww.grad), (bs.grad, bw.grad)]
    for g, wnt in pairs:
        assert_gemm_close(g.detach().numpy(), wnt.detach().numpy(), np.float32)


PEAK = """
import json, numpy as np, ml_dtypes, sce_rs
def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
n, d, v, threads, dtype = {n}, {d}, {v}, {threads}, {dtype}
sce_rs.set_num_threads(threads)
rng = np.random.default_rng(0)
# float32 straight from the generator: a freed temporary under 32 MiB would raise glibc's
# mmap threshold, after which it serves every buffer from its heap and fragmentation alone
# added up to 12 MiB to a first call's peak
h = rng.standard_normal(size=(n, d), dtype=np.float32).astype(dtype, copy=False)
w = rng.standard_normal(size=(v, d), dtype=np.float32).astype(dtype, copy=False)
t = rng.integers(0, v, size=n)
for _ in range({calls} - 1):
    sce_rs.linear_cross_entropy_and_grad(h, w, t)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = rss("VmRSS")
loss, dh, dw = sce_rs.linear_cross_entropy_and_grad(h, w, t)
extra = rss("VmHWM") - base - dh.nbytes - dw.nbytes
print(json.dumps({{"extra_mib": extra / 2**20}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("threads", [2, 8])
@pytest.mark.parametrize(
    "shape", [(2048, 1024, 8192), (2048, 512, 65536)], ids=["V=8192", "V=65536"]
)
def test_peak_memory_holds_the_budget_on_any_thread_count(shape, threads):
    """A call after the first, with more threads than this machine has cores: within the
    default 16 MiB (float32 logits here are 64 and 512 MiB)."""
    n, d, v = shape
    code = PEAK.format(n=n, d=d, v=v, threads=threads, dtype="np.float32", calls=2)
    got = run_child(code, timeout=600)
    assert got["extra_mib"] <= 16, got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("threads", [2, 8])
@pytest.mark.parametrize("shape", [(1024, 2048, 16384), (512, 256, 16000)], ids=["D=2048", "D=256"])
def test_peak_memory_of_the_first_call_in_a_fresh_process(shape, threads):
    """The first call also starts the pool's threads and gemm's per-thread packing buffers,
    and meets the allocator fresh: still within the default 16 MiB, with more threads than
    this machine has cores too (the products' threads are capped by the budget). D = 2048 has
    the tiles of the issue's 4096 x 2048 -> 128256 (blocks of 512 rows, the same class
    blocks), in two row blocks and 22 class blocks; float32 logits 64 MiB. (Before gemm ran
    on our pool and large blocks were mapped, these shapes measured 5.5 to 25 MiB, by the
    heap's layout: this code passed inside pytest and failed at 8 threads from a script.)"""
    n, d, v = shape
    code = PEAK.format(n=n, d=d, v=v, threads=threads, dtype="np.float32", calls=1)
    got = run_child(code, timeout=600)
    assert got["extra_mib"] <= 16, got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_peak_memory_of_bfloat16_operands():
    """bfloat16 hidden and weight are widened block by block: beyond 16 MiB only d_hidden's
    float32 accumulator (4 x N x D bytes), nothing of the size of the weight."""
    n, d, v = 1024, 512, 65536  # bfloat16 weight 64 MiB, its float32 copy would be 128 MiB
    code = PEAK.format(n=n, d=d, v=v, threads=2, dtype="ml_dtypes.bfloat16", calls=1)
    got = run_child(code, timeout=600)
    assert got["extra_mib"] <= 16 + 4 * n * d / 2**20, got
