"""A short tour: the seed example, then one large call timed against the NumPy reference.

Run with ``python -m sce_rs.demo`` (``--quick`` uses a smaller batch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import sce_rs
from sce_rs import reference


def _median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smaller batch (64 x 32000)")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        sce_rs.set_num_threads(args.threads)

    x = [2.0, 1.0, 0.1]
    print(
        f"sce_rs {sce_rs.__version__}  (SIMD: {sce_rs.simd_backend()}, "
        f"threads: {sce_rs.get_num_threads()})"
    )
    print(f"softmax({x}) = {np.round(sce_rs.softmax(x), 3)}")
    ce = sce_rs.cross_entropy(x, [1, 0, 0], reduction="sum")
    print(f"cross_entropy({x}, one-hot [1, 0, 0]) = {ce:.3f}")

    n, k = (64, 32000) if args.quick else (512, 128256)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, k), dtype=np.float32)
    target = rng.integers(0, k, size=n)
    fast = _median_seconds(lambda: sce_rs.cross_entropy(logits, target), 7)
    slow = _median_seconds(lambda: reference.cross_entropy(logits, target), 3)
    grad_buf = np.empty_like(logits)
    fused = _median_seconds(lambda: sce_rs.cross_entropy_and_grad(logits, target, out=grad_buf), 7)
    read = _median_seconds(logits.max, 7)
    got, want = sce_rs.cross_entropy(logits, target), reference.cross_entropy(logits, target)
    print(f"\nfloat32 {n} x {k}, mean, {sce_rs.get_num_threads()} thread(s), median of repeats:")
    print(f"  sce_rs.cross_entropy                 {fast * 1e3:8.1f} ms   loss {float(got):.6f}")
    print(f"  NumPy reference cross_entropy        {slow * 1e3:8.1f} ms   loss {float(want):.6f}")
    print(f"  speedup over the reference           {slow / fast:8.1f}x")
    print(f"  sce_rs.cross_entropy_and_grad(out=)  {fused * 1e3:8.1f} ms")
    print(f"  one read pass (logits.max())         {read * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
