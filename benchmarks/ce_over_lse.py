"""cross_entropy against logsumexp of the same rows, one thread, for a range of row lengths.

Issue #16's target: a class-index cross-entropy should cost at most 1.1x the logsumexp of
its rows at any K (it is that logsumexp plus one gather per row). Each K gets about the
same number of elements (2.6 MB of float32 by default, in L2/L3), logits standard normal
times 3; the two calls alternate R times and each figure is the minimum (the call least
touched by other work). Run it pinned to one core:

    taskset -c 1 python benchmarks/ce_over_lse.py --rounds 41
"""

import argparse
import time

import numpy as np

import sce_rs

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--k", type=int, action="append", help="default: 4 10 15 40 100 1000 16384")
ap.add_argument("--elements", type=int, default=655360)
ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
ap.add_argument("--rounds", type=int, default=41)
args = ap.parse_args()

sce_rs.set_num_threads(1)
rng = np.random.default_rng(0)
print(f"{args.dtype}, one thread, simd_backend() = {sce_rs.simd_backend()}, min of {args.rounds}")
for k in args.k or [4, 10, 15, 40, 100, 1000, 16384]:
    n = max(1, args.elements // k)
    x = (rng.standard_normal((n, k)) * 3).astype(args.dtype)
    t = rng.integers(0, k, n)
    lse, ce = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        sce_rs.logsumexp(x, axis=1)
        t1 = time.perf_counter()
        sce_rs.cross_entropy(x, t)
        ce.append(time.perf_counter() - t1)
        lse.append(t1 - t0)
    a, b = min(lse) * 1e3, min(ce) * 1e3
    print(f"  {n:7d} x {k:<6d} logsumexp {a:8.3f} ms  cross_entropy {b:8.3f} ms  ratio {b / a:.2f}")
