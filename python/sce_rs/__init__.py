"""sce_rs: numerically stable softmax and cross-entropy for NumPy, computed in Rust.

Every function is implemented in the compiled extension ``sce_rs._sce_rs``; this package only
re-exports it. ``sce_rs.reference`` holds plain NumPy versions of the same functions (the
textbook formulas) for tests and comparisons.

>>> import sce_rs
>>> sce_rs.softmax([2.0, 1.0, 0.1]).round(3)
array([0.659, 0.242, 0.099])
>>> round(float(sce_rs.cross_entropy([2.0, 1.0, 0.1], [1, 0, 0], reduction="sum")), 3)
0.417
"""

from sce_rs._sce_rs import (
    __version__,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_and_grad,
    cross_entropy,
    cross_entropy_and_grad,
    get_num_threads,
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    nll_loss,
    perplexity,
    set_num_threads,
    simd_backend,
    softmax,
    softmax_backward,
    softmax_jacobian,
)
from sce_rs._sce_rs import (
    _force_simd_backend as _force_simd_backend,  # testing hook, not in __all__
)
from sce_rs._scoring import TokenLogprobs, token_logprobs

__all__ = [
    "TokenLogprobs",
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
    "softmax",
    "softmax_backward",
    "softmax_jacobian",
    "token_logprobs",
]
