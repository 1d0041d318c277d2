"""What is timed: the operations, the cases (a shape, a dtype, the operations to run on it), the
preset lists, and the inputs of a case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from numpy.typing import NDArray

SMOOTHING = 0.1

# Each operation, with the mode every library runs it in. A library without that mode has no
# row (it is named in a note) rather than a row in another mode: an allocating softmax is never
# divided by one that writes into a buffer.
OPS: dict[str, str] = {
    "cross_entropy": "mean loss over class-index targets",
    "cross_entropy_and_grad": (
        "loss and gradient, every repeat from the same logits (restored untimed); "
        "sce_rs writes the gradient over them (out=x)"
    ),
    "smoothed_cross_entropy_and_grad": (
        f"cross_entropy_and_grad with label_smoothing={SMOOTHING}, as a training loop runs it"
    ),
    "softmax_out": "into a buffer allocated once (out=buf); allocating-only libraries excluded",
    "softmax_inplace": "over its own input (out=x), the input restored untimed before each call",
    "softmax": "into a fresh array (every library allocates)",
    "log_softmax": "into a fresh array",
    "token_logprobs": (
        "scoring: the target's log-probability, greedy flag, entropy and top 5 of each row"
    ),
    "bce_with_logits": (
        "binary_cross_entropy_with_logits, mean over every element, the 0/1 labels being the "
        "one-hot of the class targets (multi-label)"
    ),
    "bce_with_logits_and_grad": "that loss and its gradient (every library allocates it)",
}
LINEAR_OPS: dict[str, str] = {
    "linear_cross_entropy": "loss of hidden @ weight.T, logits never held",
    "linear_cross_entropy_and_grad": "loss and the gradients of hidden and weight",
}
ALL_OPS = {**OPS, **LINEAR_OPS}
# Operations whose repeats each start from inputs restored outside the timed region.
RESTORED_OPS = ("cross_entropy_and_grad", "smoothed_cross_entropy_and_grad", "softmax_inplace")
# Operations whose peak extra memory is always measured: the claim is that there is none.
MEMORY_OPS = ("token_logprobs",)
TOP_K = 5

Inputs = Union[NDArray[Any], tuple[NDArray[Any], NDArray[Any]]]


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

    @property
    def per_call(self) -> bool:
        """Small enough that calls are looped inside one timing (the timer's cost vanishes)."""
        return self.elements < 4096

    def only(self, ops: tuple[str, ...]) -> Case:
        return Case(
            self.n, self.k, self.dtype, tuple(o for o in self.ops if o in ops), self.note, self.d
        )

    def inputs(self, rng: np.random.Generator) -> tuple[Inputs, NDArray[np.int64]]:
        """Logits (or hidden and weight) and class-index targets, the same for every peer."""
        t = rng.integers(0, self.k, size=self.n)
        if self.d is None:
            return (rng.standard_normal((self.n, self.k)) * 3).astype(self.dtype), t
        h = rng.standard_normal((self.n, self.d)).astype(self.dtype)
        w = (rng.standard_normal((self.k, self.d)) / np.sqrt(self.d)).astype(self.dtype)
        return (h, w), t


ROW_OPS = ("cross_entropy", "cross_entropy_and_grad", "softmax_out", "softmax", "log_softmax")
PRESETS = [
    Case(512, 128256, "float32", (*ROW_OPS, "softmax_inplace", "token_logprobs"), "LLM vocabulary"),
    Case(8192, 1000, "float32", ("cross_entropy", "softmax_out", "softmax")),
    Case(65536, 10, "float32", ("cross_entropy", "softmax_out")),
    Case(8192, 1000, "float64", ("cross_entropy",)),
    Case(
        1, 1_000_000, "float32", ("cross_entropy", "softmax_out", "softmax_inplace"), "one long row"
    ),
    Case(8, 10, "float32", ("cross_entropy", "softmax_out", "softmax"), "per call"),
    Case(2048, 32000, "float32", tuple(LINEAR_OPS), "linear", d=1024),
]
QUICK = [
    Case(
        128,
        128256,
        "float32",
        ("cross_entropy", "cross_entropy_and_grad", "softmax_out", "token_logprobs"),
    ),
    Case(8192, 1000, "float32", ("cross_entropy", "softmax")),
    Case(8, 10, "float32", ("cross_entropy", "softmax"), "per call"),
    Case(512, 16000, "float32", ("linear_cross_entropy_and_grad",), "linear", d=256),
]
