"""Thread scaling of one long row (1 x 10^6 float32): medians of 1 against 2 threads.

Calls run in blocks of 20 back to back per thread count, the blocks alternating ten times, so
both counts see the same machine load. A thread-count change rebuilds the pool, so the first
call after it is left out.

    .venv/bin/python benchmarks/thread_scaling_long_row.py
"""

import statistics
import time

import numpy as np

import sce_rs

rng = np.random.default_rng(0)
x = (rng.standard_normal((1, 1_000_000)) * 3).astype(np.float32)
t = np.array([5])
buf = np.empty_like(x)
work = x.copy()
OPS = {
    "cross_entropy": lambda: sce_rs.cross_entropy(x, t),
    "softmax(out=buf)": lambda: sce_rs.softmax(x, out=buf),
    "logsumexp": lambda: sce_rs.logsumexp(x),
    "cross_entropy_and_grad(out=x)": lambda: sce_rs.cross_entropy_and_grad(work, t, out=work),
}
times = {(name, n): [] for name in OPS for n in (1, 2)}
for _ in range(10):
    for n in (1, 2):
        sce_rs.set_num_threads(n)
        for name, call in OPS.items():
            call()
            for _ in range(20):
                t0 = time.perf_counter()
                call()
                times[name, n].append(time.perf_counter() - t0)
for name in OPS:
    one, two = statistics.median(times[name, 1]), statistics.median(times[name, 2])
    print(f"{name:32s} 1 thread {one * 1e3:.3f} ms, 2 threads {two * 1e3:.3f} ms: {one / two:.2f}x")
