"""Every instruction-set path the machine has, against the reference and against each other.

The kernels are compiled once per instruction set from one generic source; these tests force
each path in turn (`_force_simd_backend`) so a machine with AVX-512 tests all three x86 paths.
Row lengths straddle the vector widths, the 256-element summation chunks and the 2048-element
steps of the one-pass max/sum, so every loop's remainder handling runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sce_rs
from conftest import assert_close
from sce_rs import reference as ref

LEVELS = ["sse2", "avx2", "avx512"] if sce_rs.simd_backend() in {"sse2", "avx2", "avx512"} else []
LEVELS = LEVELS or [sce_rs.simd_backend()]


@pytest.fixture
def restore_isa():
    before = sce_rs.simd_backend()
    yield
    sce_rs._force_simd_backend(before)


def available():
    """The distinct levels this CPU runs (forcing a missing one falls back to a lower one)."""
    before = sce_rs.simd_backend()
    got = []
    for name in LEVELS:
        chosen = sce_rs._force_simd_backend(name)
        if chosen not in got:
            got.append(chosen)
    sce_rs._force_simd_backend(before)
    return got


def compute(lib, x, t, q, s, ls):
    """Every kernel through `lib` (sce_rs or its reference, which share signatures); the
    backward passes take the same `s` and `ls` for both."""
    k = x.shape[-1]
    g = np.cos(x).astype(x.dtype)
    out = {
        "softmax": lib.softmax(x),
        "log_softmax": lib.log_softmax(x),
        "logsumexp": lib.logsumexp(x),
        "softmax_backward": lib.softmax_backward(g, s),
        "log_softmax_backward": lib.log_softmax_backward(g, ls),
        "ce": lib.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3),
        "ce_none": lib.cross_entropy(x, t, reduction="none", weight=np.linspace(0.5, 2, k)),
        "ce_probs": lib.cross_entropy(x, q, reduction="none", softcap=30.0),
    }
    out["ce_and_grad_loss"], out["ce_and_grad"] = lib.cross_entropy_and_grad(
        x, t, label_smoothing=0.05
    )
    if k <= 64:
        out["jacobian"] = lib.softmax_jacobian(x)
    return out


SHAPES = [
    (5, 1),
    (9, 7),
    (6, 16),
    (4, 33),
    (7, 100),
    (3, 300),
    (2, 2048),
    (3, 2049),
    (2, 5000),
    (1, 70001),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_path_matches_the_reference_and_the_others(restore_isa, dtype, shape):
    rng = np.random.default_rng(shape[1])
    n, k = shape
    x = rng.normal(scale=6, size=shape).astype(dtype)
    x[0, -1] = -200  # an exp that underflows
    t = rng.integers(0, k, size=n)
    q = rng.dirichlet(np.ones(k), size=n).astype(dtype)
    s, ls = sce_rs.softmax(x), sce_rs.log_softmax(x)
    want = compute(ref, x, t, q, s, ls)
    by_level = {}
    for level in available():
        sce_rs._force_simd_backend(level)
        got = compute(sce_rs, x, t, q, s, ls)
        for name, value in got.items():
            assert_close(value, want[name], dtype_like=x)
        by_level[level] = got
    # AVX2 and AVX-512 run the same fused arithmetic in the same order: bitwise equal.
    if "avx2" in by_level and "avx512" in by_level:
        for name in by_level["avx2"]:
            assert (
                np.asarray(by_level["avx2"][name]).tobytes()
                == np.asarray(by_level["avx512"][name]).tobytes()
            ), name
    # The unfused baseline differs from the fused paths by rounding only: a few ULP of exp,
    # relative to the largest value of the result (gradients cancel: p - onehot, g - sum).
    if "sse2" in by_level and "avx2" in by_level:
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        for name in by_level["sse2"]:
            base = np.asarray(by_level["sse2"][name], dtype=np.float64)
            fused = np.asarray(by_level["avx2"][name], dtype=np.float64)
            scale = np.max(np.abs(fused[np.isfinite(fused)]), initial=0.0)
            np.testing.assert_allclose(base, fused, rtol=rtol, atol=rtol * scale, err_msg=name)


def test_each_path_is_deterministic_across_thread_counts(restore_isa):
    rng = np.random.default_rng(3)
    x = rng.normal(scale=4, size=(300, 3000)).astype(np.float32)
    t = rng.integers(0, 3000, size=300)
    before = sce_rs.get_num_threads()
    try:
        for level in available():
            sce_rs._force_simd_backend(level)
            seen = set()
            for n in (1, 2, 3):
                sce_rs.set_num_threads(n)
                loss, grad = sce_rs.cross_entropy_and_grad(x, t)
                seen.add((np.asarray(loss).tobytes(), grad.tobytes(), sce_rs.softmax(x).tobytes()))
            assert len(seen) == 1, level
    finally:
        sce_rs.set_num_threads(before)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown SIMD backend 'avx9'"):
        sce_rs._force_simd_backend("avx9")


def test_environment_variable_forces_the_baseline():
    env = dict(os.environ, SCE_RS_FORCE_ISA="scalar")
    out = subprocess.run(
        [sys.executable, "-c", "import sce_rs; print(sce_rs.simd_backend())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() in {"sse2", "neon", "scalar"}


def test_no_kernel_is_compiled_without_its_instruction_set():
    """A closure or function value that LLVM leaves as a call inside a kernel is compiled
    apart from the kernel's instruction-set copy, without its target features, and each of
    its `mul_add`s becomes a call of the software `fmaf` or `fma` (twice on 2026-12-03, at 23
    and 25 times the time). The baseline copy never fuses, so while every kernel is compiled
    as meant, the library links neither."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(
        [nm, "-a", sce_rs._sce_rs.__file__], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    if not names:
        pytest.skip("the extension's symbols are stripped")
    assert not names & {"fmaf", "fma"}, "a kernel's arithmetic runs without its ISA"
