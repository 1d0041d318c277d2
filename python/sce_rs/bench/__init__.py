"""Benchmark sce_rs against its peers: ``python -m sce_rs.bench``.

Each case (a shape, a dtype and an operation) is timed for sce_rs and for every peer that is
installed: NumPy (``sce_rs.reference`` and a vectorized form), SciPy, PyTorch, JAX and ONNX
Runtime. A missing peer is a note, not a failure. Every figure is the median of ``--repeat``
runs after one warm-up, and every claim is a ratio measured in the same run: absolute times on
a shared machine drift from run to run, ratios much less. With ``--memory`` (Linux) each
callable's peak extra resident memory is also measured, from the kernel's high-water mark.

Like is compared with like: an operation is run by each library in one mode (``softmax_out``
into a buffer allocated once, ``softmax`` into a fresh array; a library without the mode has no
row), and an operation that writes over its input (``cross_entropy_and_grad``,
``softmax_inplace``) gets its input restored outside the timed region before every call, for
every library alike. Each table opens with the CPU model and the SIMD backend sce_rs ran.

    python -m sce_rs.bench --quick                   # the README's short table
    python -m sce_rs.bench --threads 1 --json r.json --plot r.png
    python -m sce_rs.bench --shape 4096x50257 --ops cross_entropy,softmax_out
    python -m sce_rs.bench --shape 512x128256 --ops token_logprobs
    python -m sce_rs.bench --linear 4096x2048x128256 --threads 2 --memory --repeat 3

``--linear NxDxV`` times the fused linear cross-entropy (hidden (N, D), weight (V, D)) against
the materialized path (a NumPy BLAS matmul, ``sce_rs.cross_entropy_and_grad`` over the logits,
two more matmuls for the gradients), one NumPy matmul of the shape, and PyTorch's
``F.linear_cross_entropy`` (chunked and reference); ``--max-memory-bytes`` is passed to sce_rs
where the installed version takes it. Its memory figure is the peak beyond the inputs and the
returned gradients.

The package: ``cases`` (what is timed), ``peers`` (one class per library, the registry),
``measure`` (timing, memory probes, thread limits), ``report`` (machine, table, JSON, plot),
``cli`` (this command line).
"""

from __future__ import annotations

from .cases import ALL_OPS, LINEAR_OPS, OPS, PRESETS, QUICK, Case
from .cli import main
from .measure import Result, Run, peak_extra_bytes, run, time_it
from .peers import LINEAR_PEERS, PEERS, Bench, Peer, Unavailable, build

__all__ = [
    "ALL_OPS",
    "LINEAR_OPS",
    "LINEAR_PEERS",
    "OPS",
    "PEERS",
    "PRESETS",
    "QUICK",
    "Bench",
    "Case",
    "Peer",
    "Result",
    "Run",
    "Unavailable",
    "build",
    "main",
    "peak_extra_bytes",
    "run",
    "time_it",
]
