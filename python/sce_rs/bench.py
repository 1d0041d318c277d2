"""Benchmark sce_rs against its peers: ``python -m sce_rs.bench``.

Each case (a shape, a dtype and an operation) is timed for sce_rs and for every peer that is
installed: NumPy (``sce_rs.reference`` and a vectorized form), SciPy, PyTorch, JAX and ONNX
Runtime. A missing peer is a note, not a failure. Every figure is the median of ``--repeat``
runs after one warm-up, and every claim is a ratio measured in the same run: absolute times on
a shared machine drift from run to run, ratios much less. With ``--memory`` (Linux) each
callable's peak extra resident memory is also measured, from the kernel's high-water mark.

    python -m sce_rs.bench --quick                   # the README's short table
    python -m sce_rs.bench --threads 1 --json r.json --plot r.png
    python -m sce_rs.bench --shape 4096x50257 --ops cross_entropy,softmax_out
    python -m sce_rs.bench --linear 4096x2048x128256 --threads 2 --memory --repeat 3

``--linear NxDxV`` times the fused linear cross-entropy (hidden (N, D), weight (V, D)) against
the materialized path (a NumPy BLAS matmul, ``sce_rs.cross_entropy_and_grad`` over the logits,
two more matmuls for the gradients), one NumPy matmul of the shape, and PyTorch's
``F.linear_cross_entropy`` (chunked and reference). Its memory figure is the peak beyond the
inputs and the returned gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import sce_rs
from sce_rs import reference

OPS = (
    "cross_entropy",  # mean loss over class-index targets
    "cross_entropy_and_grad",  # loss and gradient; sce_rs writes it over the logits (out=x)
    "softmax_out",  # softmax into a reused buffer
    "softmax",  # softmax into a fresh array
    "log_softmax",
)
LINEAR_OPS = ("linear_cross_entropy", "linear_cross_entropy_and_grad")


@dataclass
class Case:
    n: int
    k: int  # classes (V for a linear case)
    dtype: str
    ops: tuple[str, ...]
    note: str = ""
    d: int | None = None  # hidden size of a linear case

    @property
    def label(self) -> str:
        if self.d is not None:
            return f"{self.dtype} N={self.n} D={self.d} V={self.k}"
        return f"{self.dtype} {self.n}x{self.k}"

    @property
    def elements(self) -> int:
        """Work in elements of logits (times D for a linear case)."""
        return self.n * self.k * (self.d or 1)


PRESETS = [
    Case(512, 128256, "float32", OPS, "LLM vocabulary"),
    Case(8192, 1000, "float32", ("cross_entropy", "softmax_out", "softmax")),
    Case(65536, 10, "float32", ("cross_entropy", "softmax_out")),
    Case(8192, 1000, "float64", ("cross_entropy",)),
    Case(1, 1_000_000, "float32", ("cross_entropy", "softmax_out"), "one long row"),
    Case(8, 10, "float32", ("cross_entropy", "softmax_out", "softmax"), "per call"),
    Case(2048, 32000, "float32", LINEAR_OPS, "linear", d=1024),
]
QUICK = [
    Case(128, 128256, "float32", ("cross_entropy", "cross_entropy_and_grad", "softmax_out")),
    Case(8192, 1000, "float32", ("cross_entropy", "softmax")),
    Case(8, 10, "float32", ("cross_entropy", "softmax"), "per call"),
    Case(512, 16000, "float32", ("linear_cross_entropy_and_grad",), "linear", d=256),
]


@dataclass
class Result:
    case: str
    op: str
    peer: str
    median_s: float
    times_s: list[float] = field(default_factory=list)
    peak_extra_bytes: int | None = None


# ---------------------------------------------------------------------------- the callables
# Each peer maps (op, x, t) to a zero-argument callable, or None when it has no such op. The
# inputs are converted once, outside the timed region; only the computation is timed.


def _numpy_vectorized(op, x, t):
    rows = np.arange(x.shape[0])

    def lse(z):
        m = z.max(axis=-1, keepdims=True)
        return np.log(np.exp(z - m).sum(axis=-1)) + m[:, 0]

    if op == "cross_entropy":
        return lambda: float(np.mean(lse(x) - x[rows, t]))
    if op in ("softmax", "softmax_out"):

        def softmax():
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            e /= e.sum(axis=-1, keepdims=True)
            return e

        return softmax
    if op == "log_softmax":
        return lambda: x - lse(x)[:, None]
    if op == "cross_entropy_and_grad":

        def both():
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            s = e.sum(axis=-1, keepdims=True)
            loss = np.mean(np.log(s[:, 0]) + x.max(axis=-1) - x[rows, t])
            e /= s
            e[rows, t] -= 1
            e /= x.shape[0]
            return loss, e

        return both
    return None


def _numpy_reference(op, x, t):
    return {
        "cross_entropy": lambda: reference.cross_entropy(x, t),
        "cross_entropy_and_grad": lambda: reference.cross_entropy_and_grad(x, t),
        "softmax": lambda: reference.softmax(x),
        "softmax_out": lambda: reference.softmax(x),
        "log_softmax": lambda: reference.log_softmax(x),
    }.get(op)


def _scipy(op, x, t):
    from scipy import special

    rows = np.arange(x.shape[0])
    return {
        "cross_entropy": lambda: float(np.mean(special.logsumexp(x, axis=-1) - x[rows, t])),
        "softmax": lambda: special.softmax(x, axis=-1),
        "softmax_out": lambda: special.softmax(x, axis=-1),
        "log_softmax": lambda: special.log_softmax(x, axis=-1),
    }.get(op)


def _torch(op, x, t, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    if op == "cross_entropy":
        return lambda: F.cross_entropy(xt, tt).item()
    if op == "cross_entropy_and_grad":
        leaf = xt.clone().requires_grad_()

        def both():
            leaf.grad = None
            loss = F.cross_entropy(leaf, tt)
            loss.backward()
            return loss.item()

        return both
    if op == "softmax_out":
        buf = torch.empty_like(xt)
        return lambda: torch._softmax(xt, -1, False, out=buf)
    if op == "softmax":
        return lambda: torch.softmax(xt, -1)
    if op == "log_softmax":
        return lambda: torch.log_softmax(xt, -1)
    return None


def _jax(op, x, t):
    import jax
    import jax.numpy as jnp

    if x.dtype == np.float64 and not jax.config.jax_enable_x64:
        return None  # JAX would compute in float32 (JAX_ENABLE_X64 was unset at its import)
    xj, tj = jax.device_put(x), jax.device_put(t)

    def ce(z, t):
        lse = jax.nn.logsumexp(z, axis=-1)
        return jnp.mean(lse - jnp.take_along_axis(z, t[:, None], axis=-1)[:, 0])

    fn = {
        "cross_entropy": jax.jit(ce),
        "cross_entropy_and_grad": jax.jit(jax.value_and_grad(ce)),
        "softmax": jax.jit(lambda z, t: jax.nn.softmax(z, axis=-1)),
        "softmax_out": jax.jit(lambda z, t: jax.nn.softmax(z, axis=-1)),
        "log_softmax": jax.jit(lambda z, t: jax.nn.log_softmax(z, axis=-1)),
    }.get(op)
    if fn is None:
        return None
    return lambda: jax.block_until_ready(fn(xj, tj))


def _onnxruntime(op, x, t, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float64"): TensorProto.DOUBLE}
    if x.dtype not in elem or op not in ("cross_entropy", "softmax_out", "softmax"):
        return None
    shape = list(x.shape)
    xin = helper.make_tensor_value_info("x", elem[x.dtype], shape)
    if op == "cross_entropy":
        node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["y"], reduction="mean")
        inputs = [xin, helper.make_tensor_value_info("t", TensorProto.INT64, shape[:1])]
        out = helper.make_tensor_value_info("y", elem[x.dtype], [])
    else:
        node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
        inputs = [xin]
        out = helper.make_tensor_value_info("y", elem[x.dtype], shape)
    graph = helper.make_graph([node], "g", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(model)
    if op == "cross_entropy":
        feeds = {"x": x, "t": t.astype(np.int64)}
        return lambda: sess.run(None, feeds)
    if op == "softmax":
        return lambda: sess.run(None, {"x": x})
    # softmax_out: the output bound to a reused buffer, as sce_rs's out=.
    buf = np.empty_like(x)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, x.dtype.type, shape, buf.ctypes.data)
    # The binding holds a raw pointer: the closure keeps `buf` alive for as long as it runs.
    return lambda buf=buf: sess.run_with_iobinding(binding)


def _sce_rs(op, x, t):
    if op == "cross_entropy":
        return lambda: sce_rs.cross_entropy(x, t)
    if op == "cross_entropy_and_grad":
        # The gradient over (a copy of) the logits: the in-place form a training step uses.
        work = x.copy()
        return lambda: sce_rs.cross_entropy_and_grad(work, t, out=work)
    if op == "softmax_out":
        buf = np.empty_like(x)
        return lambda: sce_rs.softmax(x, out=buf)
    if op == "softmax":
        return lambda: sce_rs.softmax(x)
    if op == "log_softmax":
        return lambda: sce_rs.log_softmax(x)
    return None


def _linear(peer, op, h, w, t, threads):
    """The fused linear cross-entropy and its peers; every closure returns the loss and the
    gradients, which the memory figure does not count."""
    grad = op == "linear_cross_entropy_and_grad"
    if peer == "sce_rs":
        if grad:
            return lambda: sce_rs.linear_cross_entropy_and_grad(h, w, t)
        return lambda: (sce_rs.linear_cross_entropy(h, w, t),)
    if peer == "numpy matmul":  # the yardstick: one of the products, at BLAS speed
        return lambda: (h @ w.T,)
    if peer == "numpy+sce_rs (materialized)":

        def materialized():
            logits = h @ w.T
            if not grad:
                return (sce_rs.cross_entropy(logits, t),)
            loss, g = sce_rs.cross_entropy_and_grad(logits, t, out=logits)
            return loss, g @ w, g.T @ h

        return materialized
    if peer in ("torch (chunked)", "torch (reference)"):
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        ht, wt, tt = torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(t)
        options = torch.nn.LinearCrossEntropyOptions() if "chunked" in peer else None
        if not grad:
            return lambda: (F.linear_cross_entropy(ht, wt, tt, options=options).item(),)
        hl, wl = ht.clone().requires_grad_(), wt.clone().requires_grad_()

        def both():
            hl.grad = wl.grad = None
            loss = F.linear_cross_entropy(hl, wl, tt, options=options)
            loss.backward()
            return loss.item(), hl.grad, wl.grad

        return both
    return None


def _result_bytes(result):
    """Bytes of the arrays (NumPy or PyTorch) a call returned."""
    parts = result if isinstance(result, tuple) else (result,)
    total = 0
    for p in parts:
        if hasattr(p, "nbytes") and not np.isscalar(p):
            total += int(p.nbytes)
        elif hasattr(p, "element_size"):
            total += p.element_size() * p.numel()
    return total


def _memory_passes(op, x, t):
    """What the hardware allows: one read pass (``x.max()``) and one read+write pass."""
    if op == "read pass":
        return lambda: x.max()
    buf = np.empty_like(x)
    return lambda: np.copyto(buf, x)


PEERS = ["sce_rs", "numpy", "numpy (reference)", "scipy", "torch", "jax", "onnxruntime"]
LINEAR_PEERS = [
    "numpy+sce_rs (materialized)",
    "numpy matmul",
    "torch (chunked)",
    "torch (reference)",
]


def build(peer, op, x, t, threads):
    if peer == "sce_rs":
        return _sce_rs(op, x, t)
    if peer == "numpy":
        return _numpy_vectorized(op, x, t)
    if peer == "numpy (reference)":
        return _numpy_reference(op, x, t)
    if peer == "scipy":
        return _scipy(op, x, t)
    if peer == "torch":
        return _torch(op, x, t, threads)
    if peer == "jax":
        return _jax(op, x, t)
    if peer == "onnxruntime":
        return _onnxruntime(op, x, t, threads)
    raise ValueError(peer)


# ---------------------------------------------------------------------------- measuring


def _rss_bytes(field_name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_extra_bytes(fn, exclude_result=False):
    """Resident memory the call adds at its peak, from VmHWM reset by /proc/self/clear_refs
    (less the arrays it returns, with ``exclude_result``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _rss_bytes("VmRSS")
    result = fn()
    peak = _rss_bytes("VmHWM")
    returned = _result_bytes(result) if exclude_result else 0
    del result
    return max(0, peak - before - returned)


def time_it(fn, repeat, per_call):
    """Median seconds of one call; tiny calls are looped so that the timer's cost vanishes."""
    # The previous peer's worker threads (ONNX Runtime's and OpenMP's spin after a call) go
    # idle first, so that they do not take cores from this one.
    time.sleep(0.2)
    fn()  # warm-up: compilation (JAX), caches, first touch of reused buffers
    inner = 1
    if per_call:
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        inner = max(1, min(20000, int(0.02 / max(one, 1e-7))))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times), times


def _progress(total):
    try:
        from tqdm import tqdm

        return tqdm(total=total, file=sys.stderr, leave=False, unit="run")
    except ImportError:

        class Plain:
            def __init__(self):
                self.done = 0

            def update(self, n=1):
                self.done += n
                print(f"\r{self.done}/{total}", end="", file=sys.stderr, flush=True)

            def set_description(self, _):
                pass

            def close(self):
                print(file=sys.stderr)

        return Plain()


def run(cases, peers, repeat, threads, memory, skip_slow_reference=True):
    sce_rs.set_num_threads(threads)
    results, notes = [], {}
    rng = np.random.default_rng(0)
    jobs = []
    for case in cases:
        for op in case.ops:
            linear = op in LINEAR_OPS
            for peer in ["sce_rs"] + LINEAR_PEERS if linear else peers:
                if linear and peer.startswith("torch") and "torch" not in peers:
                    continue
                jobs.append((case, op, peer))
            if case.n * case.k >= 1 << 20 and op in ("cross_entropy", "softmax_out"):
                jobs.append((case, op, "read pass" if op == "cross_entropy" else "read+write pass"))
    bar = _progress(len(jobs))
    data = {}
    for case, op, peer in jobs:
        bar.set_description(f"{case.label} {op} {peer}")
        if case.label not in data:
            data = {}  # one case's arrays alive at a time
            if case.d is None:
                x = rng.standard_normal((case.n, case.k)).astype(case.dtype) * 3
            else:
                h = rng.standard_normal((case.n, case.d)).astype(case.dtype)
                w = (rng.standard_normal((case.k, case.d)) / np.sqrt(case.d)).astype(case.dtype)
                x = (h, w)
            data[case.label] = (x, rng.integers(0, case.k, size=case.n))
        x, t = data[case.label]
        big = case.n * case.k >= 1 << 24
        try:
            if op in LINEAR_OPS:
                fn = _linear(peer, op, x[0], x[1], t, threads)
            elif peer == "numpy (reference)" and big and skip_slow_reference:
                fn = None
                notes.setdefault(peer, "skipped on the largest shapes in --quick mode")
            elif peer in ("read pass", "read+write pass"):
                fn = _memory_passes(peer, x, t)
            else:
                fn = build(peer, op, x, t, threads)
        except ImportError as e:
            notes.setdefault(peer, f"not installed ({e.name})")
            fn = None
        if fn is not None:
            per_call = case.elements < 4096
            med, times = time_it(fn, repeat, per_call)
            mem = None
            if memory and not per_call:
                mem = peak_extra_bytes(fn, exclude_result=op in LINEAR_OPS)
            results.append(Result(case.label, op, peer, med, times, mem))
        bar.update(1)
    bar.close()
    return results, notes


# ---------------------------------------------------------------------------- reporting


def _fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:8.2f} us"
    return f"{s * 1e3:8.2f} ms"


def table(results, notes):
    lines = []
    keys = list(dict.fromkeys((r.case, r.op) for r in results))
    for case, op in keys:
        rows = [r for r in results if (r.case, r.op) == (case, op)]
        ours = next((r for r in rows if r.peer == "sce_rs"), None)
        lines.append(f"\n{case}  {op}")
        for r in rows:
            if ours is None or r is ours:
                ratio = ""
            elif r.peer.endswith("pass"):
                ratio = f"sce_rs takes {ours.median_s / r.median_s:5.2f}x this"
            else:
                ratio = f"sce_rs {r.median_s / ours.median_s:7.2f}x faster"
            mem = "" if r.peak_extra_bytes is None else f"{r.peak_extra_bytes / 2**20:9.1f} MiB"
            lines.append(f"  {r.peer:<28} {_fmt_time(r.median_s)} {mem:>13}   {ratio}")
    for peer, why in notes.items():
        lines.append(f"\nnote: {peer}: {why}")
    return "\n".join(lines)


def machine(threads):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "torch", "jax", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "simd_backend": sce_rs.simd_backend(),
        "sce_rs": sce_rs.__version__,
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.case, r.op) for r in results))
    peers = [p for p in PEERS[1:] + LINEAR_PEERS if any(r.peer == p for r in results)]
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 1.2), 5))
    width = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        ys = []
        for key in keys:
            ours = next((r for r in results if (r.case, r.op, r.peer) == (*key, "sce_rs")), None)
            theirs = next((r for r in results if (r.case, r.op, r.peer) == (*key, peer)), None)
            ys.append(theirs.median_s / ours.median_s if ours and theirs else 0)
        ax.bar([j + i * width for j in range(len(keys))], ys, width, label=peer)
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speedup of sce_rs (peer time / sce_rs time)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    # A linear case's label ("float32 N=.. D=.. V=..") on two lines, so neighbours do not overlap.
    labels = [f"{c.replace(' D=', chr(10) + 'D=')}\n{o}" for c, o in keys]
    ax.set_xticklabels(labels, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_shape(s):
    n, k = s.lower().split("x")
    return int(n), int(k)


def parse_linear(s):
    n, d, v = s.lower().split("x")
    return int(n), int(d), int(v)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m sce_rs.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smaller preset shapes, fewer repeats")
    ap.add_argument(
        "--shape",
        action="append",
        type=parse_shape,
        metavar="NxK",
        help="a shape instead of the presets (repeatable)",
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="dtype for --shape (default float32)",
    )
    ap.add_argument(
        "--linear",
        action="append",
        type=parse_linear,
        metavar="NxDxV",
        help="a fused linear cross-entropy shape (repeatable; runs only these)",
    )
    ap.add_argument("--ops", help=f"comma-separated subset of {', '.join(OPS + LINEAR_OPS)}")
    ap.add_argument("--peers", help=f"comma-separated subset of {', '.join(PEERS[1:])}")
    ap.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default 7)")
    ap.add_argument("--memory", action="store_true", help="also measure peak extra memory")
    ap.add_argument("--json", metavar="FILE", help="write raw figures, machine and versions")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of the speedups (matplotlib)")
    args = ap.parse_args(argv)

    # JAX reads these when it is imported: float64 stays float64 (not silently float32).
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    pinned = _pin_cores(args.threads)
    try:
        _main(args, ap)
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


def _pin_cores(threads):
    """Restricts the process to `threads` cores, returning the former set (or None).

    Every library gets `threads` threads by its own setting, except JAX: XLA sizes its CPU
    thread pool from the process's affinity and its XLA_FLAGS thread options no longer hold
    (measured here: float32 8192 x 1000 cross_entropy 4.6 ms with them, 7.9 ms under
    `taskset -c 0`). Pinning gives every library the same cores."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if threads >= len(cores):
        return None
    os.sched_setaffinity(0, cores[:threads])
    return set(cores)


def _blas_threads(threads):
    """NumPy's BLAS (the linear peers' matmuls) at `threads` threads, through threadpoolctl
    when it is installed (the `bench` extra); without it, the core pinning alone bounds it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _main(args, ap):
    ops = tuple(args.ops.split(",")) if args.ops else None
    if ops and not set(ops) <= set(OPS + LINEAR_OPS):
        ap.error(f"unknown op in {args.ops!r}; choose from {', '.join(OPS + LINEAR_OPS)}")
    if args.linear:
        cases = [
            Case(n, v, args.dtype, ops or LINEAR_OPS, "linear", d=d) for n, d, v in args.linear
        ]
    elif args.shape:
        cases = [
            Case(n, k, args.dtype, ops or ("cross_entropy", "softmax_out")) for n, k in args.shape
        ]
    else:
        cases = QUICK if args.quick else PRESETS
        if ops:
            cases = [
                Case(c.n, c.k, c.dtype, tuple(o for o in c.ops if o in ops), c.note, c.d)
                for c in cases
            ]
    peers = ["sce_rs"] + (args.peers.split(",") if args.peers else PEERS[1:])
    unknown = set(peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peer(s) {sorted(unknown)}; choose from {', '.join(PEERS[1:])}")
    repeat = args.repeat or (5 if args.quick else 7)

    info = machine(args.threads)
    print(
        f"sce_rs {info['sce_rs']} on {info['cpu']} ({info['cores']} cores), "
        f"SIMD {info['simd_backend']}, {args.threads} thread(s), median of {repeat}"
    )
    with _blas_threads(args.threads):
        results, notes = run(cases, peers, repeat, args.threads, args.memory, args.quick)
    print(table(results, notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "results": [r.__dict__ for r in results], "notes": notes},
                f,
                indent=1,
            )
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot written to {args.plot}")


if __name__ == "__main__":
    main()
