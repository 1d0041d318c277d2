"""Peak extra resident memory of the first linear_cross_entropy_and_grad call in a fresh
process (issue #13's targets: <= 16 MiB beyond the outputs at 4096 x 2048 -> 128256 float32,
<= 16 MiB + 4 x N x D bytes in bfloat16):
VmHWM reset by /proc/self/clear_refs before the call, minus the resident memory before it and
the returned gradients. Linux only. Each run is one process; run it several times.

    python benchmarks/linear_first_call_memory.py N D V THREADS [DTYPE]

DTYPE is float32 (the default), float64, float16 or bfloat16 (through ml_dtypes).
"""

import json
import sys

import numpy as np

import sce_rs


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


n, d, v, threads = (int(a) for a in sys.argv[1:5])
name = sys.argv[5] if len(sys.argv) > 5 else "float32"
sce_rs.set_num_threads(threads)
rng = np.random.default_rng(0)
# float32 straight from the generator: no freed temporary changes malloc's state before
h = rng.standard_normal(size=(n, d), dtype=np.float32)
w = rng.standard_normal(size=(v, d), dtype=np.float32)
if name != "float32":
    dtype = np.dtype(getattr(__import__("ml_dtypes"), name) if name == "bfloat16" else name)
    h, w = h.astype(dtype), w.astype(dtype)
t = rng.integers(0, v, size=n)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
loss, dh, dw = sce_rs.linear_cross_entropy_and_grad(h, w, t)
extra = status("VmHWM") - base - dh.nbytes - dw.nbytes
limit = 16 << 20 if name == "float32" else (16 << 20) + 4 * n * d
print(
    json.dumps(
        {
            "shape": [n, d, v],
            "dtype": name,
            "threads": threads,
            "extra_mib": round(extra / 2**20, 2),
            "target_mib": round(limit / 2**20, 2),
        }
    )
)
