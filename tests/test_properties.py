"""Property tests (hypothesis): arbitrary shapes, axes, strides and values, against the reference.

The default run is short; set SCE_RS_HYPOTHESIS_EXAMPLES for a longer one.
"""

from __future__ import annotations

import os

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sce_rs
from conftest import FLOAT_DTYPES, assert_close
from sce_rs import reference as ref

EXAMPLES = int(os.environ.get("SCE_RS_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

values = st.one_of(
    st.floats(-300, 300, allow_nan=False, width=32),
    st.sampled_from([-np.inf, 0.0, 1e-40, -88.7, 88.7]),
)


@st.composite
def arrays_with_axis(draw, dtype):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=7))
    a = draw(hnp.arrays(dtype, shape, elements=values))
    # a random strided view of it: each axis reversed, or taken every other element from a
    # twice-as-long copy, or left alone; then maybe transposed
    for ax in range(a.ndim):
        how = draw(st.sampled_from(["keep", "reverse", "step"]))
        if how == "reverse":
            a = np.flip(a, ax)
        elif how == "step":
            a = np.repeat(a, 2, axis=ax)[(slice(None),) * ax + (slice(None, None, 2),)]
    if draw(st.booleans()):
        a = a.T
    axis = draw(st.integers(-a.ndim, a.ndim - 1))
    return a, axis


@SETTINGS
@given(st.sampled_from([np.float32, np.float64]).flatmap(arrays_with_axis))
def test_softmax_family_matches_reference(case):
    x, axis = case
    assert_close(sce_rs.softmax(x, axis=axis), ref.softmax(x, axis=axis))
    assert_close(sce_rs.log_softmax(x, axis=axis), ref.log_softmax(x, axis=axis))
    assert_close(sce_rs.logsumexp(x, axis=axis), ref.logsumexp(x, axis=axis), dtype_like=x)


@SETTINGS
@given(
    st.sampled_from([np.float32, np.float64]).flatmap(arrays_with_axis),
    st.data(),
)
def test_cross_entropy_matches_reference(case, data):
    x, axis = case
    k = x.shape[axis]
    if k == 0:
        return
    x = np.where(np.isinf(x), -30.0, x).astype(x.dtype)  # keep every loss finite
    outer = tuple(s for d, s in enumerate(x.shape) if d != axis % x.ndim)
    t = data.draw(hnp.arrays(np.int64, outer, elements=st.integers(-1, k - 1)))
    kw = {
        "axis": axis,
        "ignore_index": -1,
        "reduction": data.draw(st.sampled_from(["mean", "sum", "none"])),
        "label_smoothing": data.draw(st.sampled_from([0.0, 0.1, 1.0])),
        "z_loss": data.draw(st.sampled_from([0.0, 1e-3])),
        "softcap": data.draw(st.sampled_from([None, 5.0])),
    }
    if data.draw(st.booleans()):
        kw["weight"] = data.draw(hnp.arrays(np.float64, (k,), elements=st.floats(0.1, 3)))
    loss, grad = sce_rs.cross_entropy_and_grad(x, t, **kw)
    want_loss, want_grad = ref.cross_entropy_and_grad(x, t, **kw)
    assert_close(loss, want_loss, dtype_like=x)
    assert_close(grad, want_grad)


@settings(max_examples=max(EXAMPLES // 5, 5), deadline=None)
@given(
    n=st.integers(1, 3),
    k=st.one_of(st.integers(1, 300), st.integers(2049, 10**6)),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1.0, 30.0]),
)
def test_rows_of_up_to_a_million_classes_in_every_dtype(n, k, dtype, seed, scale):
    """Long rows take the online (one-pass) max/sum path; every storage dtype."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, k)) * scale).astype(dtype)
    t = rng.integers(0, k, size=n)
    assert_close(sce_rs.softmax(x), ref.softmax(x))
    assert_close(sce_rs.log_softmax(x), ref.log_softmax(x))
    assert_close(sce_rs.logsumexp(x), ref.logsumexp(x), dtype_like=x)
    kw = {"label_smoothing": 0.1, "reduction": "sum"}
    loss, grad = sce_rs.cross_entropy_and_grad(x, t, **kw)
    want_loss, want_grad = ref.cross_entropy_and_grad(x, t, **kw)
    assert_close(loss, want_loss, dtype_like=x)
    assert_close(grad, want_grad, dtype_like=x)
