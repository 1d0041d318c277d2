"""token_logprobs on one and two threads (issue #17's scaling target), with sce_rs's own
cross_entropy(reduction="none") of the same rows beside it: 512 x 128256 float32 logits of
standard deviation 3, the two thread counts interleaved round by round, medians of the
per-round ratios.

    python benchmarks/thread_scaling_scoring.py [ROUNDS]
"""

import statistics
import sys
import time

import numpy as np

import sce_rs

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 9
rng = np.random.default_rng(0)
x = rng.standard_normal((512, 128256), dtype=np.float32)
x *= 3
t = rng.integers(0, 128256, 512)
fns = {
    "tl_top5": lambda: sce_rs.token_logprobs(x, t, top_k=5),
    "tl_target": lambda: sce_rs.token_logprobs(x, t),
    "ce_none": lambda: sce_rs.cross_entropy(x, t, reduction="none"),
}
times = {(k, n): [] for k in fns for n in (1, 2)}
for _ in range(reps):
    for k, f in fns.items():
        for n in (1, 2):
            sce_rs.set_num_threads(n)
            f()
            t0 = time.perf_counter()
            f()
            times[(k, n)].append(time.perf_counter() - t0)
for k in fns:
    r = statistics.median([a / b for a, b in zip(times[(k, 1)], times[(k, 2)])])
    one, two = (statistics.median(times[(k, n)]) * 1e3 for n in (1, 2))
    print(f"{k:10s} 1t {one:7.1f} ms  2t {two:7.1f} ms  speedup {r:.2f}x")
