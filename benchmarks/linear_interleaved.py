"""The fused linear cross-entropy against NumPy, single calls interleaved (wall time), on any
thread count: the loss against one `h @ w.T`, twice, then (with `grad`) the loss and
gradients against the materialized path (`h @ w.T`, `cross_entropy_and_grad(out=z)`, `g @ w`,
`g.T @ h`), once. For shapes whose calls take seconds, where a table's warm-up and repeats
would take most of an hour; alternating the two sides keeps a shared machine's drift out of
the ratio.

    python benchmarks/linear_interleaved.py N D V THREADS [grad]
"""

import sys
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

import sce_rs

n, d, v, threads = (int(a) for a in sys.argv[1:5])
grad = sys.argv[5:] == ["grad"]
sce_rs.set_num_threads(threads)
rng = np.random.default_rng(0)
h = rng.standard_normal((n, d), dtype=np.float32)
w = (rng.standard_normal((v, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
t = rng.integers(0, v, n)


def seconds(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def materialized() -> object:
    z = h @ w.T
    loss, g = sce_rs.cross_entropy_and_grad(z, t, out=z)
    return loss, g @ w, g.T @ h


print(f"{n} x {d} -> {v}, {threads} thread(s), simd_backend {sce_rs.simd_backend()}")
with threadpool_limits(threads):
    for _ in range(2):
        a = seconds(lambda: sce_rs.linear_cross_entropy(h, w, t))
        b = seconds(lambda: h @ w.T)
        print(f"loss: fused {a:.2f} s, one matmul {b:.2f} s, ratio {a / b:.3f}", flush=True)
    if grad:
        a = seconds(lambda: sce_rs.linear_cross_entropy_and_grad(h, w, t))
        b = seconds(materialized)
        print(f"with gradients: fused {a:.2f} s, materialized {b:.2f} s, ratio {a / b:.3f}")
