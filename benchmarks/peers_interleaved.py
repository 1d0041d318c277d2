"""sce_rs and its peers called in alternation, one thread, for ratios that survive a noisy machine.

`python -m sce_rs.bench` times each library's calls in one stretch, so a neighbour's burst of
work on the shared host can fall on one library alone (2026-12-04: sce_rs's own softmax(out=) at
512 x 128256 took 29 to 55 ms from one stretch to the next in one process). Here every round
calls each library once, in an order reversed every other round, so that the load falls on all
alike; each figure is the minimum (the call least touched by other work) and the median over
the rounds, with the ratios of the peer's to sce_rs's (above 1: sce_rs is faster). The
callables are the benchmark's own (`sce_rs.bench.peers`), so like is compared with like.
Run it pinned to one core:

    taskset -c 1 python benchmarks/peers_interleaved.py --shape 512x128256 --op softmax_out \\
        --peers torch,onnxruntime --rounds 15
"""

import argparse
import statistics
import time

import numpy as np

import sce_rs
from sce_rs.bench.peers import PEERS, Unavailable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", action="append", metavar="NxK", help="default: 512x128256")
    ap.add_argument(
        "--op", action="append", help="a python -m sce_rs.bench op; default softmax_out"
    )
    ap.add_argument("--peers", default="torch,onnxruntime")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    sce_rs.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(
        f"{args.dtype}, one thread, simd_backend() = {sce_rs.simd_backend()}, {args.rounds} rounds"
    )
    for shape in args.shape or ["512x128256"]:
        n, k = map(int, shape.split("x"))
        # The benchmark's logits: standard normal times 3.
        x = (rng.standard_normal((n, k)) * 3).astype(args.dtype)
        t = rng.integers(0, k, n)
        for op in args.op or ["softmax_out"]:
            benches = {}
            for name in ["sce_rs", *args.peers.split(",")]:
                try:
                    b = PEERS[name].build(op, x, t, 1)
                except Unavailable as e:
                    print(f"  {name}: {e}")
                    continue
                if b is not None:
                    benches[name] = b
            for b in benches.values():
                b()  # warm-up: first touch of buffers, compilation
            times: dict[str, list[float]] = {name: [] for name in benches}
            for r in range(args.rounds):
                for name, b in list(benches.items())[:: 1 if r % 2 == 0 else -1]:
                    if b.reset is not None:
                        b.reset()
                    t0 = time.perf_counter()
                    b.call()
                    times[name].append(time.perf_counter() - t0)
            low, mid = min(times["sce_rs"]), statistics.median(times["sce_rs"])
            print(f"{shape} {op}: ms per call, min and median; peer / sce_rs of each")
            for name, ts in times.items():
                lo, med = min(ts), statistics.median(ts)
                ms = f"{lo * 1e3:9.2f} {med * 1e3:9.2f}"
                print(f"  {name:14s} {ms}   {lo / low:5.2f}x {med / mid:5.2f}x")


if __name__ == "__main__":
    main()
