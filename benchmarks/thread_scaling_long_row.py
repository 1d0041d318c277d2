"""Thread scaling of one long row (1 x 10^6 float32): medians of 1 against 2 threads.

Calls run in blocks of 20 back to back per thread count, the blocks alternating ten times, so
both counts see the same machine load. A thread-count change rebuilds the pool, so the first
call after it is left out. `cross_entropy_and_grad(out=x)` writes the gradient over its input:
the logits are copied back before every call, outside the timed region, so each call sees the
same logits (before, every call after the first took the previous gradient as its logits).

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
work = np.empty_like(x)


def restore():
    np.copyto(work, x)


# name: (call, what runs untimed before each call)
OPS = {
    "cross_entropy": (lambda: sce_rs.cross_entropy(x, t), None),
    "softmax(out=buf)": (lambda: sce_rs.softmax(x, out=buf), None),
    "logsumexp": (lambda: sce_rs.logsumexp(x), None),
    "cross_entropy_and_grad(out=x)": (
        lambda: sce_rs.cross_entropy_and_grad(work, t, out=work),
        restore,
    ),
}
times = {(name, n): [] for name in OPS for n in (1, 2)}
for _ in range(10):
    for n in (1, 2):
        sce_rs.set_num_threads(n)
        for name, (call, reset) in OPS.items():
            if reset:
                reset()
            call()
            for _ in range(20):
                if reset:
                    reset()
                t0 = time.perf_counter()
                call()
                times[name, n].append(time.perf_counter() - t0)
for name in OPS:
    one, two = statistics.median(times[name, 1]), statistics.median(times[name, 2])
    print(f"{name:32s} 1 thread {one * 1e3:.3f} ms, 2 threads {two * 1e3:.3f} ms: {one / two:.2f}x")
