"""linear_cross_entropy_and_grad against the materialized path (NumPy's BLAS h @ w.T,
cross_entropy_and_grad(out=z), g @ w and g.T @ h) on one thread, interleaved call by call,
as CPU time of the calling thread (both run on it at one thread; CPU time moves less than
wall time on a shared machine). Issue #13's target at 512 x 256 -> 16000: <= 1.2x.

    python benchmarks/linear_small_ratio.py [N D V] [ROUNDS]
"""

import json
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import sce_rs

n, d, v = (int(a) for a in sys.argv[1:4]) if len(sys.argv) > 3 else (512, 256, 16000)
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 9
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
sce_rs.set_num_threads(1)
rng = np.random.default_rng(0)
h = rng.standard_normal((n, d), dtype=np.float32)
w = rng.standard_normal((v, d), dtype=np.float32) / 16
t = rng.integers(0, v, n)


def fused():
    return sce_rs.linear_cross_entropy_and_grad(h, w, t)


def materialized():
    z = h @ w.T
    loss, g = sce_rs.cross_entropy_and_grad(z, t, out=z)
    return loss, g @ w, g.T @ h


times = {"fused": [], "materialized": []}
with threadpool_limits(limits=1, user_api="blas"):
    fused(), materialized()
    for _ in range(rounds):
        for name, f in (("fused", fused), ("materialized", materialized)):
            t0 = time.thread_time()
            f()
            times[name].append(time.thread_time() - t0)
med = {k: float(np.median(x)) for k, x in times.items()}
print(
    json.dumps(
        {
            "simd_backend": sce_rs.simd_backend(),
            "fused_ms": round(med["fused"] * 1e3, 1),
            "materialized_ms": round(med["materialized"] * 1e3, 1),
            "ratio": round(med["fused"] / med["materialized"], 3),
        }
    )
)
