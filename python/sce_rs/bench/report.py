"""Reporting: the machine a run was on, the text table, the JSON record and the bar chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from typing import Any

import numpy as np

import sce_rs

from . import peers as registry
from .cases import ALL_OPS
from .measure import Result, Run


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo or else lscpu (Linux), else what Python knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "torch", "jax", "onnxruntime", "threadpoolctl"):
        try:
            versions[mod] = registry.optional(mod).__version__
        except registry.Unavailable:
            pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "simd_backend": sce_rs.simd_backend(),
        "sce_rs": sce_rs.__version__,
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def heading(info: dict[str, Any], repeat: int) -> str:
    """The line that opens every table: what ran, on which CPU, with which ISA."""
    return (
        f"sce_rs {info['sce_rs']}, SIMD backend {info['simd_backend']}, CPU {info['cpu']} "
        f"({info['cores']} cores), {info['threads']} thread(s), median of {repeat}, "
        f"{info['date']}"
    )


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.2f} us"
    return f"{s * 1e3:8.2f} ms"


def _ratio(ours: Result | None, r: Result) -> str:
    if ours is None or r is ours:
        return ""
    if r.peer.endswith("pass") or r.peer.startswith("sce_rs "):
        # A yardstick: how sce_rs's time compares with it, not a race.
        return f"sce_rs takes {ours.median_s / r.median_s:5.2f}x this"
    return f"sce_rs {r.median_s / ours.median_s:7.2f}x faster"


def table(run: Run, info: dict[str, Any], repeat: int) -> str:
    lines = [heading(info, repeat)]
    keys = list(dict.fromkeys((r.case, r.op) for r in run.results))
    width = max([28, *(len(r.peer) for r in run.results)])
    for case, op in keys:
        rows = [r for r in run.results if (r.case, r.op) == (case, op)]
        ours = next((r for r in rows if r.peer == "sce_rs"), None)
        lines.append(f"\n{case}  {op}: {ALL_OPS[op]}")
        for r in rows:
            mem = "" if r.peak_extra_bytes is None else f"{r.peak_extra_bytes / 2**20:9.1f} MiB"
            line = f"  {r.peer:<{width}} {_fmt_time(r.median_s)} {mem:>13}   {_ratio(ours, r)}"
            lines.append(line.rstrip())
    for op, names in run.absent.items():
        if any(r.op == op for r in run.results):
            lines.append(f"\nno {op} row (not offered in this mode): {', '.join(names)}")
    for peer, why in run.notes.items():
        lines.append(f"\nnote: {peer}: {why}")
    return "\n".join(lines)


def write_json(path: str, run: Run, info: dict[str, Any], argv: list[str]) -> None:
    record = {
        "command": ["python", "-m", "sce_rs.bench", *argv],
        "machine": info,
        "results": [r.__dict__ for r in run.results],
        "absent": run.absent,
        "notes": run.notes,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def plot(results: list[Result], path: str, info: dict[str, Any]) -> None:
    matplotlib = registry.optional("matplotlib")
    matplotlib.use("Agg")
    plt = registry.optional("matplotlib.pyplot")

    keys = list(dict.fromkeys((r.case, r.op) for r in results))
    names = [*registry.PEERS, *registry.LINEAR_PEERS]
    shown = [p for p in names if p != "sce_rs" and any(r.peer == p for r in results)]
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 1.2), 5))
    width = 0.8 / max(1, len(shown))
    for i, peer in enumerate(shown):
        ys = []
        for key in keys:
            ours = next((r for r in results if (r.case, r.op, r.peer) == (*key, "sce_rs")), None)
            theirs = next((r for r in results if (r.case, r.op, r.peer) == (*key, peer)), None)
            ys.append(theirs.median_s / ours.median_s if ours and theirs else 0)
        ax.bar([j + i * width for j in range(len(keys))], ys, width, label=peer)
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speedup of sce_rs (peer time / sce_rs time)")
    ax.set_title(
        f"{info['cpu']}, SIMD {info['simd_backend']}, {info['threads']} thread(s)", fontsize=9
    )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    # A linear case's label ("float32 N=.. D=.. V=..") on two lines, so neighbours do not overlap.
    labels = [f"{c.replace(' D=', chr(10) + 'D=')}\n{o}" for c, o in keys]
    ax.set_xticklabels(labels, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
