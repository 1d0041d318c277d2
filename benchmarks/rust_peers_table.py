"""The cross-language table: sce_rs's Rust API and the Rust peers, candle-nn and burn (from the
criterion run of benches/peers; burn's column is empty unless it ran with `--features burn`),
then sce_rs from Python, PyTorch and JAX timed now on the same shapes, in the same mode (every
result allocated fresh, as the Rust peers' are), printed as Markdown.

    make bench-peers                       # cargo bench in benches/peers, then this script
    .venv/bin/python benchmarks/rust_peers_table.py [--threads 1] [--repeat 7] [--json FILE]

Run it right after the criterion run, so both halves see the same machine. Inputs: the Python
half draws normals of spread 3 and the Rust half uniforms in [-3, 3]; the kernels' time does not
depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any

import numpy as np

import sce_rs
from sce_rs.bench import measure, peers, report
from sce_rs.bench.peers import Bench, Unavailable

CRITERION = pathlib.Path(__file__).resolve().parent.parent / "benches/peers/target/criterion"
OPS = ("softmax", "log_softmax", "cross_entropy", "cross_entropy_and_grad")
SHAPES = [
    ("float32", 512, 128256),
    ("float32", 8192, 1000),
    ("float32", 65536, 10),
    ("float64", 8192, 1000),
    ("float32", 1, 1_000_000),
    ("float32", 8, 10),
]
PYTHON_PEERS = ("torch", "jax")


def criterion_medians() -> dict[tuple[str, str, str], float]:
    """(group, op, peer) -> median seconds, from criterion's latest run."""
    out = {}
    for path in CRITERION.glob("*/*/*/new/benchmark.json"):
        meta = json.loads(path.read_text())
        est = json.loads((path.parent / "estimates.json").read_text())
        op, peer = meta["function_id"], meta["value_str"]
        out[meta["group_id"], op, peer] = est["median"]["point_estimate"] * 1e-9
    return out


def sce_rs_allocating(op: str, x: np.ndarray, t: np.ndarray) -> Bench:
    return Bench(
        {
            "softmax": lambda: sce_rs.softmax(x),
            "log_softmax": lambda: sce_rs.log_softmax(x),
            "cross_entropy": lambda: sce_rs.cross_entropy(x, t),
            "cross_entropy_and_grad": lambda: sce_rs.cross_entropy_and_grad(x, t),
        }[op]
    )


def fmt(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.2f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    measure.pin_cores(args.threads)
    sce_rs.set_num_threads(args.threads)
    rust = criterion_medians()
    if not rust:
        raise SystemExit(f"no criterion results under {CRITERION}: run `make bench-peers`")
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    groups = {key[0] for key in rust}
    for dtype, n, k in SHAPES:
        group = f"{dtype} {n}x{k}"
        if group not in groups:
            continue  # not in the criterion run (a filtered `cargo bench -- ...`)
        x = (rng.standard_normal((n, k)) * 3).astype(dtype)
        t = rng.integers(0, k, size=n)
        per_call = n * k < 4096
        for op in OPS:
            row: dict[str, float | None] = {
                "sce_rs (Rust)": rust.get((group, op, "sce_rs")),
                "candle (Rust)": rust.get((group, op, "candle")),
                "burn (Rust)": rust.get((group, op, "burn")),
            }
            row["sce_rs (Python)"] = measure.time_it(
                sce_rs_allocating(op, x, t), args.repeat, per_call
            )[0]
            for peer in PYTHON_PEERS:
                try:
                    b = peers.build(peer, op, x, t, args.threads)
                except Unavailable:
                    b = None
                row[peer] = None if b is None else measure.time_it(b, args.repeat, per_call)[0]
            rows.append({"case": group, "op": op, "median_s": row})

    info = report.machine(args.threads)
    print(f"{report.heading(info, args.repeat)}; Rust: criterion medians, benches/peers\n")
    cols = ["sce_rs (Rust)", "sce_rs (Python)", "candle (Rust)", "burn (Rust)", *PYTHON_PEERS]
    print("| case | op | " + " | ".join(cols) + " |")
    print("| --- | --- |" + " ---: |" * len(cols))
    for r in rows:
        cells = " | ".join(fmt(r["median_s"][c]) for c in cols)
        print(f"| {r['case']} | `{r['op']}` | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
