"""Row-wise calls on many rows (one thread), several builds side by side in one process.

Each argument is `NAME=PATH` to a build's extension module (`sce_rs/_sce_rs.abi3.so` of an
installed wheel or of an editable build). All are loaded into this one process under parent
names of their own and timed in alternation, R rounds, the builds' order reversed every other
round, so that the machine's load falls on every build alike; each figure is the minimum over
the rounds (the one least touched by other work), in ms per call, with the ratio to the first
build. Logits are standard normal times 3 (the maximum dominates its row's sum in 74% of rows
of 10 classes, at random). Run it pinned to one core:

    taskset -c 1 python benchmarks/rows_side_by_side.py before=/venv-a/.../_sce_rs.abi3.so \\
        after=python/sce_rs/_sce_rs.abi3.so --shape 65536x10 --shape 8192x1000

A build to compare needs no wheel: `cargo rustc --release --features python --lib
--crate-type cdylib` makes the library maturin makes (`target/release/libsce_rs.so`). Not
`cargo build --lib`: built beside the rlib, the cdylib is optimized differently (LLVM left
calls that the wheel's build inlines: float32 2048 x 100 label-smoothed cross_entropy took
2.1x the wheel's time there, 2026-12-02).
"""

import argparse
import timeit

import numpy as np
from _builds import load

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("builds", nargs="+", metavar="NAME=PATH")
ap.add_argument("--shape", action="append", metavar="NxK", help="default: 65536x10")
ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
ap.add_argument("--rounds", type=int, default=15)
mode = ap.add_mutually_exclusive_group()
mode.add_argument(
    "--inplace",
    action="store_true",
    help="time softmax, log_softmax and cross_entropy_and_grad over their own input (out=x); "
    "each call takes the previous one's output, so after the first the rows are no longer "
    "the standard normal ones (softmax's tend to uniform): compare builds, not modes",
)
mode.add_argument(
    "--backward",
    action="store_true",
    help="time softmax_backward and log_softmax_backward (into fresh arrays) instead",
)
mode.add_argument(
    "--options",
    action="store_true",
    help="time the cross-entropy with label smoothing and on probability targets instead",
)
args = ap.parse_args()

mods = load(args.builds)

rng = np.random.default_rng(0)
names = list(mods)
for shape in args.shape or ["65536x10"]:
    n, k = map(int, shape.split("x"))
    x = (rng.standard_normal((n, k)) * 3).astype(args.dtype)
    t = rng.integers(0, k, n)
    o = np.empty_like(x)

    g = rng.standard_normal((n, k)).astype(args.dtype)
    p, lp = mods[names[0]].softmax(x), mods[names[0]].log_softmax(x)
    q = mods[names[0]].softmax(g)

    def calls(m, x=x, t=t, o=o, g=g, p=p, lp=lp, q=q):
        """One build's timed calls, each a closure over its module and this shape's arrays."""
        if args.options:
            return {
                "cross_entropy(smoothing)": lambda: m.cross_entropy(x, t, label_smoothing=0.1),
                "cross_entropy_and_grad(smoothing)": lambda: m.cross_entropy_and_grad(
                    x, t, label_smoothing=0.1, out=o
                ),
                "cross_entropy(probs)": lambda: m.cross_entropy(x, q),
                "cross_entropy_and_grad(probs)": lambda: m.cross_entropy_and_grad(x, q, out=o),
            }
        if args.inplace:
            # Each call leaves the next its own output: the values change, the work does not.
            xi = {"softmax": x.copy(), "log_softmax": x.copy(), "grad": x.copy()}
            return {
                "softmax(out=x)": lambda: m.softmax(xi["softmax"], out=xi["softmax"]),
                "log_softmax(out=x)": lambda: m.log_softmax(
                    xi["log_softmax"], out=xi["log_softmax"]
                ),
                "cross_entropy_and_grad(out=x)": lambda: m.cross_entropy_and_grad(
                    xi["grad"], t, out=xi["grad"]
                ),
            }
        if args.backward:
            return {
                "softmax_backward": lambda: m.softmax_backward(g, p),
                "log_softmax_backward": lambda: m.log_softmax_backward(g, lp),
            }
        return {
            "logsumexp": lambda: m.logsumexp(x),
            "cross_entropy": lambda: m.cross_entropy(x, t),
            "softmax(out=)": lambda: m.softmax(x, out=o),
            "log_softmax(out=)": lambda: m.log_softmax(x, out=o),
            "cross_entropy_and_grad(out=)": lambda: m.cross_entropy_and_grad(x, t, out=o),
        }

    fns = {b: calls(m) for b, m in mods.items()}
    number = max(1, int(2e6 // (n * k)))
    times: dict[str, dict[str, list[float]]] = {c: {b: [] for b in names} for c in fns[names[0]]}
    for r in range(args.rounds):
        for c in times:
            for b in names if r % 2 else names[::-1]:
                times[c][b].append(timeit.timeit(fns[b][c], number=number) / number * 1e3)
    print(f"{args.dtype} {n}x{k}, one thread, min over {args.rounds} rounds (ms per call)")
    for c, per in times.items():
        base = min(per[names[0]])
        cells = [f"{b} {min(per[b]):8.3f} ({min(per[b]) / base:4.2f}x)" for b in names]
        print(f"  {c:30s} " + "  ".join(cells))
