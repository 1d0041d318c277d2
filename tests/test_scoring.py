"""token_logprobs and perplexity against the float64 references of sce_rs.reference: every float
dtype, any axis and strides, edge rows (ties, infinities, NaN, K = 1, K = 0), temperature,
ignore_index, chunked perplexity, thread-count independence, errors; the PyTorch and Dask faces.

Float fields use the one tolerance table of conftest (the kernels compute in float32 or float64
and round once). The order-based fields (is_greedy, rank, top_ids) must match exactly: they are
defined on the logits as given, which the reference sees exactly in float64.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sce_rs
from conftest import FLOAT_DTYPES, assert_close, optional_import
from sce_rs import reference as ref

FLOAT_FIELDS = ("logprob", "entropy", "top_logprobs")
ORDER_FIELDS = {"is_greedy": np.bool_, "rank": np.int64, "top_ids": np.int64}


def result_dtype(x):
    d = np.asarray(x).dtype
    return d if d.kind in "fV" else np.dtype(np.float64)


def assert_scores(got, want, x):
    """`got` (sce_rs) equals `want` (the reference) field by field."""
    assert isinstance(got, sce_rs.TokenLogprobs)
    for name in FLOAT_FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        if w is None:
            assert g is None, name
            continue
        assert np.asarray(g).dtype == result_dtype(x), name
        assert_close(g, w, dtype_like=np.asarray(g))
    for name, dtype in ORDER_FIELDS.items():
        g, w = getattr(got, name), getattr(want, name)
        if w is None:
            assert g is None, name
            continue
        assert np.asarray(g).dtype == dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)


def logits(rng, shape, dtype, grid=False):
    """Normal logits; on a coarse grid (many ties) when `grid`."""
    x = rng.normal(size=shape) * 3
    if grid:
        x = np.round(x * 2) / 2
    return x.astype(dtype)


def targets_for(rng, x, axis, ignore_index=-100):
    rows = tuple(n for i, n in enumerate(x.shape) if i != axis % x.ndim)
    t = rng.integers(0, x.shape[axis], size=rows)
    if t.size:
        t.reshape(-1)[::5] = ignore_index
    return t


LAYOUTS = {
    "contiguous": lambda a: a,
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "reversed": lambda a: a[::-1, ::-1],
    "every_other_column": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("top_k", [0, 3])
def test_random_cases_match_the_reference(dtype, layout, axis, top_k):
    rng = np.random.default_rng(7)
    x = LAYOUTS[layout](logits(rng, (37, 50), dtype, grid=dtype != np.float64))
    t = targets_for(rng, x, axis)
    got = sce_rs.token_logprobs(x, t, axis=axis, top_k=top_k)
    assert_scores(got, ref.token_logprobs(x, t, axis=axis, top_k=top_k), x)
    got = sce_rs.token_logprobs(x, axis=axis, top_k=top_k)
    assert_scores(got, ref.token_logprobs(x, axis=axis, top_k=top_k), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 15, 17, 2047, 2049, 9000])
def test_long_rows_and_odd_lengths(dtype, k):
    """Lengths around the 16 lanes and the 2048-element online steps; maxima that grow late."""
    rng = np.random.default_rng(k)
    x = logits(rng, (4, k), dtype)
    x[1] += np.linspace(0, 30, k, dtype=dtype)  # the maximum keeps moving right
    t = rng.integers(0, k, 4)
    top_k = min(k, 5)
    got = sce_rs.token_logprobs(x, t, top_k=top_k)
    assert_scores(got, ref.token_logprobs(x, t, top_k=top_k), x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("temperature", [0.3, 0.7, 2.0, 1e3])
def test_temperature(dtype, temperature):
    rng = np.random.default_rng(3)
    x = logits(rng, (20, 33), dtype)
    x[0, 5] = -np.inf
    t = targets_for(rng, x, -1)
    t[0] = 5
    got = sce_rs.token_logprobs(x, t, top_k=4, temperature=temperature)
    assert_scores(got, ref.token_logprobs(x, t, top_k=4, temperature=temperature), x)
    plain = sce_rs.token_logprobs(x, t, top_k=4)
    # The order does not depend on the temperature.
    np.testing.assert_array_equal(got.rank, plain.rank)
    np.testing.assert_array_equal(got.top_ids, plain.top_ids)


def edge_rows(dtype):
    inf, nan = np.inf, np.nan
    rows = [
        [1.0, 3.0, 3.0, 0.0, 3.0, -1.0],  # a three-way tie at the top
        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # all equal
        [-inf, 1.0, -inf, 0.5, -inf, -inf],  # -inf entries, one at a target below
        [-inf] * 6,  # only -inf: NaN floats, order by index
        [1.0, inf, 0.0, inf, -inf, 2.0],  # +inf: NaN floats, the infinities first
        [1.0, nan, 5.0, nan, -inf, 5.0],  # NaN: NaN floats, NaN first (np.argmax's order)
        [nan] * 6,
        [0.0, -0.0, 0.0, -0.0, 1e-30, -1e-30],  # signed zeros tie
        [88.0, -88.0, 80.0, 3e4, -3e4, 3e4],  # far apart
    ]
    return np.array(rows, dtype=np.float64).astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("top_k", [0, 1, 3, 6])
def test_edge_rows(dtype, top_k):
    x = edge_rows(dtype)
    for target in [np.zeros(len(x), int), np.full(len(x), 2), np.full(len(x), 5)]:
        got = sce_rs.token_logprobs(x, target, top_k=top_k)
        assert_scores(got, ref.token_logprobs(x, target, top_k=top_k), x)
        # is_greedy is np.argmax's answer, NaN rows included.
        np.testing.assert_array_equal(got.is_greedy, np.argmax(x.astype(np.float64), -1) == target)
    got = sce_rs.token_logprobs(x, top_k=top_k)
    nan_rows = [3, 4, 5, 6]
    assert np.isnan(got.entropy.astype(np.float64)[nan_rows]).all()
    assert not np.isnan(got.entropy.astype(np.float64)[[0, 1, 2, 7, 8]]).any()


def test_a_minus_inf_target_and_pytorch_conventions():
    x = np.array([[-np.inf, 0.0, 1.0], [np.inf, 0.0, 1.0]])
    r = sce_rs.token_logprobs(x, np.array([0, 1]))
    assert r.logprob[0] == -np.inf and np.isnan(r.logprob[1])
    assert r.rank.tolist() == [2, 2]
    assert r.entropy[0] == pytest.approx(ref.token_logprobs(x[:1]).entropy[0])


def test_k_one_and_k_zero():
    x = np.array([[3.0], [-np.inf], [np.nan]])
    r = sce_rs.token_logprobs(x, np.array([0, 0, -100]), top_k=1)
    assert_scores(r, ref.token_logprobs(x, np.array([0, 0, -100]), top_k=1), x)
    assert r.logprob[0] == 0.0 and r.entropy[0] == 0.0 and r.rank.tolist() == [0, 0, -1]
    empty = np.zeros((4, 0), np.float32)
    r = sce_rs.token_logprobs(empty)
    assert r.entropy.tolist() == [0.0] * 4 and r.top_ids.shape == (4, 0)
    assert r.top_logprobs.dtype == np.float32
    r = sce_rs.token_logprobs(empty, np.full(4, -100))
    assert np.isnan(r.logprob).all() and r.rank.tolist() == [-1] * 4
    with pytest.raises(IndexError, match=r"target 0 at position \(0,\)"):
        sce_rs.token_logprobs(empty, np.zeros(4, int))
    none = sce_rs.token_logprobs(np.zeros((0, 5)), np.zeros(0, int), top_k=2)
    assert none.logprob.shape == (0,) and none.top_ids.shape == (0, 2)


def test_top_k_equal_to_k_is_the_full_stable_sort():
    rng = np.random.default_rng(1)
    x = logits(rng, (9, 12), np.float32, grid=True)
    r = sce_rs.token_logprobs(x, top_k=12)
    want = np.argsort(-x.astype(np.float64), axis=-1, kind="stable")
    np.testing.assert_array_equal(r.top_ids, want)
    assert_close(r.top_logprobs, np.take_along_axis(ref.log_softmax(x), want, -1), x)


def test_one_row_gives_scalars_and_ignore_index():
    r = sce_rs.token_logprobs([2.0, 1.0, 0.1], 1, top_k=2)
    assert isinstance(r.logprob, np.float64) and isinstance(r.rank, np.int64)
    assert isinstance(r.is_greedy, np.bool_) and r.top_ids.shape == (2,)
    x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    r = sce_rs.token_logprobs(x, np.array([7, 1]), ignore_index=7)
    assert np.isnan(r.logprob[0]) and r.rank[0] == -1 and not r.is_greedy[0]
    assert r.is_greedy[1] and r.rank[1] == 0


def test_integer_logits_are_float64():
    r = sce_rs.token_logprobs(np.array([[1, 2, 3]], dtype=np.int32), np.array([2]), top_k=1)
    assert r.logprob.dtype == np.float64 and r.top_ids.tolist() == [[2]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16])
def test_perplexity_matches_the_reference_and_cross_entropy(dtype):
    rng = np.random.default_rng(5)
    x = logits(rng, (3, 40, 25), dtype)
    t = targets_for(rng, x, -1)
    ppl, (nll, count) = sce_rs.perplexity(x, t)
    want_ppl, (want_nll, want_count) = ref.perplexity(x, t)
    assert count == want_count == np.sum(t != -100)
    assert isinstance(ppl, np.float64) and isinstance(nll, float) and isinstance(count, int)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    assert nll == pytest.approx(want_nll, rel=rtol)
    assert ppl == pytest.approx(want_ppl, rel=rtol * 10)
    ce = sce_rs.cross_entropy(x.reshape(-1, 25), t.reshape(-1), reduction="sum")
    assert nll == pytest.approx(float(ce), rel=rtol)


def test_perplexity_state_chains_chunks():
    """Scoring a text chunk by chunk gives one call's sums: the count exactly, the float64
    sum within float64 rounding of the regrouped additions."""
    rng = np.random.default_rng(11)
    x = logits(rng, (1000, 50), np.float32)
    t = targets_for(rng, x, -1)
    whole_ppl, (whole_nll, whole_count) = sce_rs.perplexity(x, t)
    state = None
    for lo, hi in [(0, 1), (1, 300), (300, 301), (301, 1000)]:
        ppl, state = sce_rs.perplexity(x[lo:hi], t[lo:hi], state=state)
    assert state[1] == whole_count
    assert state[0] == pytest.approx(whole_nll, rel=1e-13)
    assert ppl == pytest.approx(whole_ppl, rel=1e-13)
    assert np.isnan(sce_rs.perplexity(x[:3], np.full(3, -100))[0])
    assert sce_rs.perplexity(x[:0], t[:0], state=(2.0, 1))[0] == pytest.approx(np.exp(2.0))


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    x = logits(rng, (64, 5000), np.float32)
    x = x[:, ::-1]  # through the gathering path too
    t = targets_for(rng, x, -1)
    before = sce_rs.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            sce_rs.set_num_threads(n)
            runs.append((sce_rs.token_logprobs(x, t, top_k=5), sce_rs.perplexity(x, t)))
    finally:
        sce_rs.set_num_threads(before)
    (a, pa), (b, pb) = runs
    for name in a._fields:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        if getattr(a, name).dtype.kind == "f":
            assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert pa[1][0].hex() == pb[1][0].hex() and pa[1][1] == pb[1][1]


def test_errors_say_what_was_wrong_and_write_nothing():
    x = np.arange(12.0).reshape(3, 4)
    keep = x.copy()
    t = np.array([0, 1, 2])
    cases = [
        (ValueError, "top_k must be at most the number of classes 4, got 5", dict(top_k=5)),
        (ValueError, "top_k must be >= 0", dict(top_k=-1)),
        (ValueError, "temperature must be a finite number > 0, got 0", dict(temperature=0.0)),
        (ValueError, "temperature must be a finite number > 0", dict(temperature=np.nan)),
        (ValueError, "temperature must be a finite number > 0", dict(temperature=-1.0)),
        (ValueError, "temperature must be a finite number > 0", dict(temperature=np.inf)),
        (ValueError, "out of range for float32 logits", dict(temperature=1e-300, dtype=np.float32)),
    ]
    for exc, msg, kw in cases:
        dtype = kw.pop("dtype", np.float64)
        with pytest.raises(exc, match=msg):
            sce_rs.token_logprobs(x.astype(dtype), t, **kw)
    with pytest.raises(IndexError, match=r"target 4 at position \(1, 0\)"):
        sce_rs.token_logprobs(np.zeros((2, 2, 4)), np.array([[0, 1], [4, 0]]))
    with pytest.raises(IndexError, match=r"target -1 at position \(2,\)"):
        sce_rs.perplexity(x, np.array([0, 1, -1]))
    with pytest.raises(TypeError, match="target must hold class indices .* got float64"):
        sce_rs.token_logprobs(x, t.astype(float))
    with pytest.raises(TypeError, match="unsupported dtype complex128"):
        sce_rs.token_logprobs(x.astype(complex), t)
    with pytest.raises(ValueError, match=r"target has shape \(2,\) but logits of shape \(3, 4\)"):
        sce_rs.token_logprobs(x, t[:2])
    with pytest.raises(np.exceptions.AxisError):
        sce_rs.token_logprobs(x, t, axis=2)
    with pytest.raises(TypeError, match="state must be a"):
        sce_rs.perplexity(x, t, state=(1.0,))
    with pytest.raises(ValueError, match="count in state must be >= 0"):
        sce_rs.perplexity(x, t, state=(1.0, -1))
    np.testing.assert_array_equal(x, keep)


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
special = st.sampled_from([-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0])


@SETTINGS
@given(st.data())
def test_property_any_values_any_axis(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    elements = st.one_of(st.floats(-50, 50, width=32), special)
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    if data.draw(st.booleans()):
        x = np.flip(x, axis)
    k = x.shape[axis]
    rows = tuple(n for i, n in enumerate(x.shape) if i != axis % x.ndim)
    t = data.draw(hnp.arrays(np.int64, rows, elements=st.integers(-1, k - 1)))
    top_k = data.draw(st.integers(0, k))
    temperature = data.draw(st.sampled_from([1.0, 0.5, 3.0]))
    got = sce_rs.token_logprobs(
        x, t, axis=axis, ignore_index=-1, top_k=top_k, temperature=temperature
    )
    want = ref.token_logprobs(
        x, t, axis=axis, ignore_index=-1, top_k=top_k, temperature=temperature
    )
    assert_scores(got, want, x)


def test_torch_token_logprobs():
    torch = optional_import("torch")
    import sce_rs.torch as st_torch

    rng = np.random.default_rng(4)
    x = logits(rng, (2, 30, 40), np.float32)
    t = targets_for(rng, x, -1)
    for tensor_dtype in (torch.float32, torch.bfloat16):
        xt = torch.from_numpy(x).to(tensor_dtype)
        r = st_torch.token_logprobs(xt, torch.from_numpy(t), top_k=3)
        assert isinstance(r, sce_rs.TokenLogprobs)
        assert r.logprob.dtype == tensor_dtype and r.top_ids.dtype == torch.int64
        assert r.is_greedy.dtype == torch.bool and r.rank.dtype == torch.int64
        want = sce_rs.token_logprobs(st_torch._to_numpy(xt, "x"), t, top_k=3)
        for name in r._fields:
            got = getattr(r, name)
            if got.dtype == torch.bfloat16:
                got = got.float()
            w = np.asarray(getattr(want, name))
            np.testing.assert_array_equal(got.numpy(), w.astype(got.numpy().dtype), name)
    # PyTorch's own sequence on float32, within float32 tolerance.
    xt = torch.from_numpy(x)
    r = st_torch.token_logprobs(xt, torch.from_numpy(t), top_k=3, dim=-1)
    lp = torch.log_softmax(xt.double(), -1)
    counted = torch.from_numpy(t != -100)
    tt = torch.from_numpy(np.where(t == -100, 0, t))
    want_lp = lp.gather(-1, tt[..., None])[..., 0]
    assert_close(r.logprob[counted].numpy(), want_lp[counted].numpy(), x)
    assert torch.equal(r.is_greedy[counted], (xt.argmax(-1) == tt)[counted])
    assert torch.equal(r.top_ids, xt.topk(3, -1).indices)
    assert_close(r.entropy.numpy(), (-(lp.exp() * lp).sum(-1)).numpy(), x)
    assert st_torch.token_logprobs(xt).logprob is None


def test_dask_token_logprobs_and_perplexity():
    da = optional_import("dask.array")
    import sce_rs.dask as sd

    rng = np.random.default_rng(6)
    x = logits(rng, (300, 21), np.float32)
    t = targets_for(rng, x, -1)
    want = sce_rs.token_logprobs(x, t, top_k=4)
    want_ppl, want_state = sce_rs.perplexity(x, t)
    for rows in (300, 64, (1, 2, 97, 200)):
        xd = da.from_array(x, chunks=(rows, 7))  # the class axis split too
        td = da.from_array(t, chunks=50)
        got = sd.token_logprobs(xd, td, top_k=4)
        assert isinstance(got, sce_rs.TokenLogprobs)
        for name in got._fields:
            g = getattr(got, name).compute()
            np.testing.assert_array_equal(g, getattr(want, name), err_msg=name)
            assert g.dtype == getattr(want, name).dtype
        ppl, (nll, count) = sd.perplexity(xd, td)
        assert int(count.compute()) == want_state[1]
        assert float(nll.compute()) == pytest.approx(want_state[0], rel=1e-14)
        assert float(ppl.compute()) == pytest.approx(want_ppl, rel=1e-14)
    assert sd.token_logprobs(da.from_array(x, chunks=50)).logprob is None
    xt = da.from_array(np.ascontiguousarray(x.T), chunks=(7, 64))
    got = sd.token_logprobs(xt, td, axis=0, top_k=2)
    np.testing.assert_array_equal(got.top_ids.compute(), want.top_ids[:, :2])
