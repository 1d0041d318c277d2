"""The binary losses (one thread), several builds side by side in one process.

Each argument is `NAME=PATH` to a build's extension module, as for `rows_side_by_side.py`
(which says how to make one without a wheel). The builds are timed in alternation, R rounds;
each figure is the minimum over the rounds in ms per call, with the ratio to the first build.
Logits are standard normal, labels 0/1 with P(1) = 0.3, probabilities the logits' sigmoid.
Run it pinned to one core, from this folder:

    taskset -c 1 python binary_side_by_side.py before=PATH after=PATH
"""

import argparse
import time
from typing import Any, Callable

import numpy as np
from _builds import load

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("builds", nargs="+", metavar="NAME=PATH")
ap.add_argument("--rounds", type=int, default=9)
args = ap.parse_args()
mods = load(args.builds)
rng = np.random.default_rng(0)
CASES = [
    ((8192, 1000), np.float32),
    ((8_192_000,), np.float32),
    ((8192, 1000), np.float64),
    ((1024, 512), np.float32),
]


def calls(x: Any, y: Any, p: Any, w: Any) -> list[tuple[str, Callable[[Any], object]]]:
    return [
        ("logits", lambda m: m.binary_cross_entropy_with_logits(x, y)),
        ("logits+grad", lambda m: m.binary_cross_entropy_with_logits_and_grad(x, y)),
        (
            "logits pos_weight none",
            lambda m: m.binary_cross_entropy_with_logits(x, y, pos_weight=w, reduction="none"),
        ),
        ("probs", lambda m: m.binary_cross_entropy(p, y)),
    ]


for shape, dt in CASES:
    x = rng.standard_normal(shape).astype(dt)
    y = (rng.random(shape) < 0.3).astype(dt)
    p = 1 / (1 + np.exp(-x))
    w = rng.uniform(0.5, 2, size=shape[-1:]).astype(dt)
    for name, f in calls(x, y, p, w):
        best: dict[str, list[float]] = {m: [] for m in mods}
        for r in range(args.rounds):
            order = list(mods.items())
            for m, mod in order if r % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                f(mod)
                best[m].append(time.perf_counter() - t)
        base = min(best[next(iter(mods))])
        label = f"{np.dtype(dt).name} {'x'.join(map(str, shape))} {name}"
        cols = "  ".join(f"{m} {min(v) * 1e3:8.2f} ({min(v) / base:.2f}x)" for m, v in best.items())
        print(f"{label:45} {cols}", flush=True)
