"""Peak extra resident memory of the first linear_cross_entropy_and_grad call in a fresh
process (issue #13's target: <= 16 MiB beyond the outputs at 4096 x 2048 -> 128256 float32):
VmHWM reset by /proc/self/clear_refs before the call, minus the resident memory before it and
the returned gradients. Linux only. Each run is one process; run it several times.

    python benchmarks/linear_first_call_memory.py N D V THREADS
"""

import json
import sys

import numpy as np

import sce_rs


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


n, d, v, threads = (int(a) for a in sys.argv[1:5])
sce_rs.set_num_threads(threads)
rng = np.random.default_rng(0)
# float32 straight from the generator: no freed temporary changes malloc's state before
h = rng.standard_normal(size=(n, d), dtype=np.float32)
w = rng.standard_normal(size=(v, d), dtype=np.float32)
t = rng.integers(0, v, size=n)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
loss, dh, dw = sce_rs.linear_cross_entropy_and_grad(h, w, t)
extra = status("VmHWM") - base - dh.nbytes - dw.nbytes
print(json.dumps({"shape": [n, d, v], "threads": threads, "extra_mib": round(extra / 2**20, 2)}))
