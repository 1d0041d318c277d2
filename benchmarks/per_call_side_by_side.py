"""The cost per call on a tiny array (8 x 10 float32, one thread), several builds side by side.

Each argument is `NAME=PATH` to a build's extension module (`sce_rs/_sce_rs.abi3.so` of an
installed wheel). All are loaded into this one process, each under a parent name of its own so
that each keeps its own statics (thread pool, allocator cache), and timed in alternation: R
rounds, in each one `timeit` of N calls per function and build, the builds' order reversed
every other round. On a shared machine alternation within one process puts the same load on
every build; the minimum over rounds is the figure least touched by other work, the median
(in parentheses) shows how loaded the machine was. Run it pinned to one core:

    taskset -c 1 python benchmarks/per_call_side_by_side.py old=/venv-a/.../_sce_rs.abi3.so \\
        new=/venv-b/.../_sce_rs.abi3.so
"""

import argparse
import timeit

import numpy as np
from _builds import load

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("builds", nargs="+", metavar="NAME=PATH")
ap.add_argument("--rounds", type=int, default=121)
ap.add_argument("--calls", type=int, default=5000)
args = ap.parse_args()

mods = load(args.builds)

rng = np.random.default_rng(0)
x = rng.standard_normal((8, 10), dtype=np.float32)
t = rng.integers(0, 10, 8)
o = np.empty_like(x)


def calls(m):
    """The timed calls of one build's module, each a closure over it (no extra call layer)."""
    return {
        "softmax": lambda: m.softmax(x),
        "softmax(out=)": lambda: m.softmax(x, out=o),
        "logsumexp": lambda: m.logsumexp(x),
        "cross_entropy": lambda: m.cross_entropy(x, t),
        "cross_entropy_and_grad": lambda: m.cross_entropy_and_grad(x, t),
    }


fns = {b: calls(m) for b, m in mods.items()}
names = list(mods)
times: dict[str, dict[str, list[float]]] = {c: {b: [] for b in names} for c in fns[names[0]]}
for r in range(args.rounds):
    for c in times:
        for b in names if r % 2 else names[::-1]:
            us = timeit.timeit(fns[b][c], number=args.calls) / args.calls * 1e6
            times[c][b].append(us)

first, last = names[0], names[-1]
print(f"| 8x10 float32, 1 thread, us per call | {' | '.join(names)} | {last} / {first} |")
print("| --- |" + " ---: |" * (len(names) + 1))
for c, d in times.items():
    low = {b: min(v) for b, v in d.items()}
    mid = {b: sorted(v)[len(v) // 2] for b, v in d.items()}
    cells = " | ".join(f"{low[b]:.3f} ({mid[b]:.3f})" for b in names)
    print(f"| `{c}` | {cells} | {low[last] / low[first]:.2f} |")
