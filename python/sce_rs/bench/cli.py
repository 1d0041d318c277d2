"""The command line of ``python -m sce_rs.bench``: options to cases, a run, the report."""

from __future__ import annotations

import argparse
import os
import sys

from . import __doc__ as DOC
from . import peers as registry
from . import report
from .cases import ALL_OPS, LINEAR_OPS, PRESETS, QUICK, Case
from .measure import blas_threads, pin_cores, run


def parse_shape(s: str) -> tuple[int, int]:
    n, k = s.lower().split("x")
    return int(n), int(k)


def parse_linear(s: str) -> tuple[int, int, int]:
    n, d, v = s.lower().split("x")
    return int(n), int(d), int(v)


def parse_bytes(s: str) -> int:
    """`16777216`, `16M`/`16MiB` or `1G`: bytes."""
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if scale > 1 else s) * scale


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m sce_rs.bench",
        description=DOC,
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
    ap.add_argument(
        "--max-memory-bytes",
        type=parse_bytes,
        metavar="BYTES",
        help="sce_rs's max_memory_bytes for --linear (e.g. 64M; default: the library's)",
    )
    ap.add_argument("--ops", help=f"comma-separated subset of {', '.join(ALL_OPS)}")
    others = [p for p in registry.PEERS if p != "sce_rs"]
    ap.add_argument("--peers", help=f"comma-separated subset of {', '.join(others)}")
    ap.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default 7)")
    ap.add_argument("--memory", action="store_true", help="also measure peak extra memory")
    ap.add_argument("--json", metavar="FILE", help="write raw figures, machine and versions")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of the speedups (matplotlib)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    # JAX reads this when it is imported: float64 stays float64 (not silently float32).
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    pinned = pin_cores(args.threads)
    try:
        _main(args, ap, sys.argv[1:] if argv is None else argv)
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


def cases_of(args: argparse.Namespace, ap: argparse.ArgumentParser) -> list[Case]:
    ops = tuple(args.ops.split(",")) if args.ops else None
    if ops and not set(ops) <= set(ALL_OPS):
        ap.error(f"unknown op in {args.ops!r}; choose from {', '.join(ALL_OPS)}")
    if args.linear:
        linear_ops = ops or tuple(LINEAR_OPS)
        return [Case(n, v, args.dtype, linear_ops, "linear", d=d) for n, d, v in args.linear]
    if args.shape:
        row_ops = ops or ("cross_entropy", "softmax_out")
        return [Case(n, k, args.dtype, row_ops) for n, k in args.shape]
    cases = QUICK if args.quick else PRESETS
    return [c.only(ops) for c in cases] if ops else cases


def _main(args: argparse.Namespace, ap: argparse.ArgumentParser, argv: list[str]) -> None:
    cases = cases_of(args, ap)
    peers = ["sce_rs"] + (args.peers.split(",") if args.peers else list(registry.PEERS)[1:])
    unknown = set(peers) - set(registry.PEERS)
    if unknown:
        ap.error(f"unknown peer(s) {sorted(unknown)}; choose from {', '.join(registry.PEERS)}")
    repeat = args.repeat or (5 if args.quick else 7)
    if args.plot:
        # Checked before the run, which can take many minutes, not after it.
        try:
            registry.optional("matplotlib")
        except registry.Unavailable as e:
            ap.error(f"--plot needs matplotlib ({e}): pip install matplotlib, or leave --plot out")

    info = report.machine(args.threads)
    limit, note = args.max_memory_bytes, None
    if limit is not None and not registry.accepts_max_memory_bytes():
        limit, note = (
            None,
            "this build's linear_cross_entropy takes no max_memory_bytes: its default ran",
        )
    info["max_memory_bytes"] = limit
    with blas_threads(args.threads):
        result = run(cases, peers, repeat, args.threads, args.memory, args.quick, limit)
    if note:
        result.notes["sce_rs"] = note
    print(report.table(result, info, repeat))
    if args.json:
        report.write_json(args.json, result, info, argv)
    if args.plot:
        report.plot(result.results, args.plot, info)
        print(f"\nplot written to {args.plot}")
