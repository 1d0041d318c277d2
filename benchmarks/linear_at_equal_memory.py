"""One `linear_cross_entropy_and_grad` call against PyTorch's chunked `F.linear_cross_entropy`
(forward and backward), each in a fresh process: seconds and peak extra resident memory
beyond the returned gradients (VmHWM reset by /proc/self/clear_refs before the call, after one
small warm-up call). Linux only. Run it once per library to compare at equal memory: first
`torch`, then `sce_rs` with `max_memory_bytes` set to what PyTorch took.

    python benchmarks/linear_at_equal_memory.py torch N D V THREADS
    python benchmarks/linear_at_equal_memory.py sce_rs N D V THREADS [MAX_MEMORY_BYTES]
"""

import json
import sys
import time

import numpy as np


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


who = sys.argv[1]
n, d, v, threads = (int(a) for a in sys.argv[2:6])
budget = int(sys.argv[6]) if len(sys.argv) > 6 else 16 << 20
rng = np.random.default_rng(0)
h = rng.standard_normal(size=(n, d), dtype=np.float32)
w = rng.standard_normal(size=(v, d), dtype=np.float32)
t = rng.integers(0, v, size=n)

if who == "torch":
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    options = torch.nn.LinearCrossEntropyOptions()

    def call(h, w, t):
        hl = torch.from_numpy(h).requires_grad_()
        wl = torch.from_numpy(w).requires_grad_()
        loss = F.linear_cross_entropy(hl, wl, torch.from_numpy(t), options=options)
        loss.backward()
        return loss.item(), hl.grad.numpy(), wl.grad.numpy()
else:
    import sce_rs

    sce_rs.set_num_threads(threads)

    def call(h, w, t):
        return sce_rs.linear_cross_entropy_and_grad(h, w, t, max_memory_bytes=budget)


call(h[:64].copy(), w[:512].copy(), t[:64] % 512)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
start = time.perf_counter()
loss, dh, dw = call(h, w, t)
seconds = time.perf_counter() - start
extra = status("VmHWM") - base - dh.nbytes - dw.nbytes
print(
    json.dumps(
        {
            "library": who,
            "shape": [n, d, v],
            "threads": threads,
            "max_memory_mib": round(budget / 2**20, 1) if who != "torch" else None,
            "seconds": round(seconds, 2),
            "extra_mib": round(extra / 2**20, 1),
        }
    )
)
