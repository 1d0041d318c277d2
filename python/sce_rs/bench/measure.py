"""Measuring: the timing loop, the peak-memory probe, the thread and core limits every library
gets alike, and `run`, which measures every (case, operation, peer) of a benchmark."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import sce_rs

from . import peers as registry
from .cases import LINEAR_OPS, MEMORY_OPS, Case
from .peers import Bench, Unavailable


@dataclass
class Result:
    case: str
    op: str
    peer: str
    median_s: float
    times_s: list[float] = field(default_factory=list)
    peak_extra_bytes: int | None = None


#: Seconds of untimed calls before the timed ones, for every library alike.
WARM_UP_S = 0.05


def time_it(bench: Bench, repeat: int, per_call: bool) -> tuple[float, list[float]]:
    """Median seconds of one call over `repeat` timings, after `WARM_UP_S` of untimed calls.

    `bench.reset` (if any) runs untimed before every call, so every call sees the same input.
    Tiny calls (`per_call`) are looped inside one timing so that the timer's cost vanishes;
    with a reset, each call of the loop is timed alone and the times summed."""
    # The previous peer's worker threads (ONNX Runtime's and OpenMP's spin after a call) go
    # idle first, so that they do not take cores from this one.
    time.sleep(0.2)
    # Warm-up: compilation (JAX), caches, first touch of reused buffers, and the core itself,
    # slowed by the pause: calls for WARM_UP_S (one if it takes longer). After one call, the
    # first repeats of a call of a millisecond ran 1.5x slower than the last ones (sce_rs,
    # 65536 x 10 cross_entropy, 2026-12-02), which moved the median of the fastest peer only.
    until = time.perf_counter() + WARM_UP_S
    bench()
    while time.perf_counter() < until:
        bench()
    inner = 1
    if per_call:
        if bench.reset is not None:
            bench.reset()
        t0 = time.perf_counter()
        bench.call()
        one = time.perf_counter() - t0
        inner = max(1, min(20000, int(0.02 / max(one, 1e-7))))
    times = []
    for _ in range(repeat):
        if bench.reset is None:
            t0 = time.perf_counter()
            for _ in range(inner):
                bench.call()
            total = time.perf_counter() - t0
        else:
            total = 0.0
            for _ in range(inner):
                bench.reset()
                t0 = time.perf_counter()
                bench.call()
                total += time.perf_counter() - t0
        times.append(total / inner)
    return statistics.median(times), times


def _status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def result_bytes(result: object) -> int:
    """Bytes of the arrays (NumPy or PyTorch) a call returned."""
    parts = result if isinstance(result, tuple) else (result,)
    total = 0
    for p in parts:
        if isinstance(p, np.ndarray):
            total += int(p.nbytes)
        elif hasattr(p, "element_size") and hasattr(p, "numel"):
            total += int(p.element_size() * p.numel())
    return total


def peak_extra_bytes(bench: Bench, exclude_result: bool = False) -> int | None:
    """Resident memory one call adds at its peak, from VmHWM reset by /proc/self/clear_refs
    (less the arrays it returns, with `exclude_result`); None where Linux's probe is missing.
    The reset, if any, runs before the probe starts."""
    if bench.reset is not None:
        bench.reset()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    result = bench.call()
    peak = _status_bytes("VmHWM")
    returned = result_bytes(result) if exclude_result else 0
    del result
    return max(0, peak - before - returned)


def pin_cores(threads: int) -> set[int] | None:
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


def blas_threads(threads: int) -> AbstractContextManager[Any]:
    """NumPy's BLAS (the linear peers' matmuls) at `threads` threads through threadpoolctl
    (installed by `make bench`); without it, the core pinning alone bounds it."""
    try:
        threadpoolctl = registry.optional("threadpoolctl")
    except Unavailable:
        return contextlib.nullcontext()
    limits: AbstractContextManager[Any] = threadpoolctl.threadpool_limits(
        limits=threads, user_api="blas"
    )
    return limits


class _Plain:
    """The progress line when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        print(f"\r{self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def set_description(self, _: str) -> None:
        pass

    def close(self) -> None:
        print(file=sys.stderr)


def _progress(total: int) -> Any:
    try:
        tqdm = registry.optional("tqdm")
    except Unavailable:
        return _Plain(total)
    return tqdm.tqdm(total=total, file=sys.stderr, leave=False, unit="run")


@dataclass
class Job:
    case: Case
    op: str
    peer: str
    kind: str  # "peer", "yardstick" or "linear"


def jobs(cases: list[Case], peers: list[str]) -> list[Job]:
    out = []
    for case in cases:
        for op in case.ops:
            if op in LINEAR_OPS:
                for name in registry.LINEAR_PEERS:
                    if name.startswith("torch") and "torch" not in peers:
                        continue
                    out.append(Job(case, op, name, "linear"))
                continue
            out += [Job(case, op, p, "peer") for p in peers]
            for y in registry.YARDSTICKS:
                if op in y.ops and case.n * case.k >= y.min_elements:
                    out.append(Job(case, op, y.name, "yardstick"))
    return out


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    # Per operation, the installed peers that have no form of it in its mode.
    absent: dict[str, list[str]] = field(default_factory=dict)


def run(
    cases: list[Case],
    peers: list[str],
    repeat: int,
    threads: int,
    memory: bool,
    skip_slow_reference: bool = True,
    max_memory_bytes: int | None = None,
) -> Run:
    sce_rs.set_num_threads(threads)
    out = Run()
    rng = np.random.default_rng(0)
    todo = jobs(cases, peers)
    bar = _progress(len(todo))
    current: tuple[str, Any] | None = None
    yardsticks = {y.name: y for y in registry.YARDSTICKS}
    for job in todo:
        case, op, peer = job.case, job.op, job.peer
        bar.set_description(f"{case.label} {op} {peer}")
        if current is None or current[0] != case.label:
            current = None  # one case's arrays alive at a time
            current = (case.label, case.inputs(rng))
        x, t = current[1]
        big = case.n * case.k >= 1 << 24
        bench: Bench | None = None
        try:
            if job.kind == "linear":
                assert isinstance(x, tuple)
                grad = op == "linear_cross_entropy_and_grad"
                make = registry.LINEAR_PEERS[peer].build
                bench = Bench(make(grad, x[0], x[1], t, threads, max_memory_bytes))
            elif isinstance(x, tuple):
                raise AssertionError(f"{op} is not an operation of a linear case")
            elif job.kind == "yardstick":
                bench = Bench(yardsticks[peer].make(x, t))
            elif peer == "numpy (reference)" and big and skip_slow_reference:
                out.notes.setdefault(peer, "skipped on the largest shapes in --quick mode")
            else:
                bench = registry.build(peer, op, x, t, threads)
                if bench is None:
                    out.absent.setdefault(op, [])
                    if peer not in out.absent[op]:
                        out.absent[op].append(peer)
        except Unavailable as e:
            out.notes.setdefault(peer, str(e))
        if bench is not None:
            med, times = time_it(bench, repeat, case.per_call)
            mem = None
            if (memory or op in MEMORY_OPS) and not case.per_call:
                mem = peak_extra_bytes(bench, exclude_result=op in LINEAR_OPS)
            out.results.append(Result(case.label, op, peer, med, times, mem))
        bar.update(1)
    bar.close()
    return out
