# Type stubs for the compiled extension; checked against it by `mypy.stubtest` in the tests.
from typing import Any, Literal, TypeAlias, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

__version__: str
__all__ = [
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "cross_entropy",
    "cross_entropy_and_grad",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "nll_loss",
    "perplexity",
    "set_num_threads",
    "simd_backend",
    "_force_simd_backend",
    "softmax",
    "softmax_backward",
    "softmax_jacobian",
    "_token_logprobs",
]

_Reduction = Literal["mean", "sum", "none"]
# A result array, or a NumPy scalar where the result is 0-d (a reduced loss, a logsumexp of a
# vector).
_Result: TypeAlias = NDArray[Any] | np.generic
# The class axis of the softmax family: one axis, all of them (None), or several together.
_Axes: TypeAlias = int | tuple[int, ...] | None

def softmax(x: ArrayLike, axis: _Axes = -1, *, out: NDArray[Any] | None = None) -> _Result: ...
def log_softmax(x: ArrayLike, axis: _Axes = -1, *, out: NDArray[Any] | None = None) -> _Result: ...
@overload
def logsumexp(
    x: ArrayLike,
    axis: _Axes = -1,
    *,
    keepdims: bool = False,
    b: ArrayLike | None = None,
    return_sign: Literal[False] = False,
) -> _Result: ...
@overload
def logsumexp(
    x: ArrayLike,
    axis: _Axes = -1,
    *,
    keepdims: bool = False,
    b: ArrayLike | None = None,
    return_sign: Literal[True],
) -> tuple[_Result, _Result]: ...
def softmax_backward(grad_output: ArrayLike, output: ArrayLike, axis: int = -1) -> _Result: ...
def log_softmax_backward(grad_output: ArrayLike, output: ArrayLike, axis: int = -1) -> _Result: ...
def softmax_jacobian(x: ArrayLike, axis: int = -1) -> _Result: ...
def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: _Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> _Result: ...
def cross_entropy_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: _Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: ArrayLike | None = None,
    out: NDArray[Any] | None = None,
) -> tuple[_Result, NDArray[Any]]: ...
def nll_loss(
    input: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: _Reduction = "mean",
) -> _Result: ...
def binary_cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    reduction: _Reduction = "mean",
) -> _Result: ...
def binary_cross_entropy_with_logits(
    input: ArrayLike,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: _Reduction = "mean",
) -> _Result: ...
def binary_cross_entropy_with_logits_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: _Reduction = "mean",
    grad_output: ArrayLike | None = None,
    out: NDArray[Any] | None = None,
) -> tuple[_Result, NDArray[Any]]: ...
def linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    target: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    class_weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: _Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    max_memory_bytes: int = 16777216,
) -> _Result: ...
def linear_cross_entropy_and_grad(
    hidden: ArrayLike,
    weight: ArrayLike,
    target: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    class_weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: _Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: ArrayLike | None = None,
    max_memory_bytes: int = 16777216,
) -> tuple[_Result, ...]: ...
def _token_logprobs(
    logits: ArrayLike,
    target: ArrayLike | None = None,
    *,
    axis: int = -1,
    ignore_index: int = -100,
    top_k: int = 0,
    temperature: float = 1.0,
) -> tuple[Any, Any, Any, Any, NDArray[Any], NDArray[Any]]: ...
def perplexity(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    ignore_index: int = -100,
    state: tuple[float, int] | None = None,
) -> tuple[np.float64, tuple[float, int]]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_backend() -> str: ...
def _force_simd_backend(name: str) -> str: ...
