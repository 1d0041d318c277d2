"""``token_logprobs`` and its result type: the extension computes, this module names the fields."""

from __future__ import annotations

from typing import Any, NamedTuple

from sce_rs import _sce_rs

__all__ = ["TokenLogprobs", "token_logprobs"]


class TokenLogprobs(NamedTuple):
    """What ``token_logprobs`` returns: one entry per row (``logits``' shape without ``axis``).

    Attributes
    ----------
    logprob : ndarray or None
        The log-probability of the target, in the logits' dtype; NaN where the target is
        ``ignore_index``. ``None`` without a target.
    is_greedy : ndarray of bool or None
        Whether the target is the argmax (``rank == 0``); False where ignored.
    rank : ndarray of int64 or None
        The target's 0-based position in the stable descending order of the logits; -1 where
        ignored.
    entropy : ndarray
        ``-sum(p log p)`` of the row's distribution, in the logits' dtype.
    top_ids : ndarray of int64
        Shape rows + ``(top_k,)``: the ``top_k`` most likely classes, best first.
    top_logprobs : ndarray
        Their log-probabilities, in the logits' dtype.
    """

    # Any: NumPy arrays (or scalars for one row) here, tensors from sce_rs.torch, Dask arrays
    # from sce_rs.dask.
    logprob: Any
    is_greedy: Any
    rank: Any
    entropy: Any
    top_ids: Any
    top_logprobs: Any


def token_logprobs(
    logits: Any,
    target: Any = None,
    *,
    axis: int = -1,
    ignore_index: int = -100,
    top_k: int = 0,
    temperature: float = 1.0,
) -> TokenLogprobs:
    """Per-row scores of a language model's logits in one read of each row.

    Everything an evaluation harness or a serving stack asks of the logits at once, without
    the N x K ``log_softmax`` array PyTorch forms first: the target's log-probability, whether
    it is the greedy choice and its rank, the entropy, and the ``top_k`` most likely classes.

    Parameters
    ----------
    logits : array_like
        Logits (float16, bfloat16, float32 or float64; integers and bools as float64), any
        shape and strides, classes along ``axis``.
    target : array_like, optional
        Class indices, any integer dtype, of ``logits``' shape without ``axis``. Without it
        ``logprob``, ``is_greedy`` and ``rank`` are ``None``.
    axis : int, default -1
        The class axis.
    ignore_index : int, default -100
        Rows whose target equals it get ``logprob`` NaN, ``is_greedy`` False and ``rank`` -1
        (their entropy and top-k are still computed).
    top_k : int, default 0
        How many of the most likely classes to return per row, at most the number of classes.
    temperature : float, default 1.0
        The logits are divided by it first (finite, > 0). The order of the classes, hence
        ``rank``, ``is_greedy`` and ``top_ids``, does not depend on it.

    Returns
    -------
    TokenLogprobs
        A named tuple ``(logprob, is_greedy, rank, entropy, top_ids, top_logprobs)``. Float
        fields have the logits' dtype (float64 for integer logits), ``is_greedy`` is bool,
        ``rank`` and ``top_ids`` are int64; a 1-d ``logits`` (one row) gives NumPy scalars
        for the per-row fields.

        The order is descending, ties by lower index (so ``rank`` counts the classes with a
        larger logit plus those with an equal one and a lower index, and ``is_greedy`` agrees
        with ``np.argmax``). NaN and infinities follow IEEE and PyTorch: a row holding NaN or
        ``+inf``, or only ``-inf``, gives NaN in every float field (PyTorch's ``log_softmax``
        of it is all NaN), while its order stays defined with NaN above every number, as
        ``np.argmax`` and ``torch.sort(descending=True)`` place it; a ``-inf`` target gives a
        ``logprob`` of ``-inf``; ``-inf`` classes contribute nothing to the entropy.

    Raises
    ------
    IndexError
        A target outside ``[0, K)`` that is not ``ignore_index``, named with its position.
    ValueError
        ``top_k`` above the number of classes or negative, a bad ``temperature``, shapes that
        do not fit.
    TypeError
        Logits of an unsupported dtype, or targets that are not integers.

    Examples
    --------
    >>> import numpy as np, sce_rs
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> r = sce_rs.token_logprobs(logits, np.array([0, 0]), top_k=2)
    >>> r.logprob.round(4)
    array([-0.417, -2.22 ])
    >>> r.is_greedy, r.rank
    (array([ True, False]), array([0, 1]))
    >>> r.entropy.round(4)
    array([0.8467, 0.6329])
    >>> r.top_ids
    array([[0, 1],
           [1, 0]])
    >>> r.top_logprobs.round(4)
    array([[-0.417, -1.417],
           [-0.22 , -2.22 ]])
    """
    return TokenLogprobs(
        *_sce_rs._token_logprobs(
            logits,
            target,
            axis=axis,
            ignore_index=ignore_index,
            top_k=top_k,
            temperature=temperature,
        )
    )
