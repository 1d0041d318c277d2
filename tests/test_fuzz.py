"""Fuzzing the Python entry points (hypothesis): arbitrary objects, dtypes, shapes, strides,
options, targets and `out=` buffers, mostly near-valid so that calls get past the first check.

The contract allows exactly TypeError, ValueError, IndexError (and AxisError, a subclass of
the last two); anything else, a crash or a hang, is a failure. A call that raises leaves every
input and `out=` buffer byte-for-byte as it was; one that succeeds leaves its inputs untouched
unless an input was also passed as `out=`.

Each function gets SCE_RS_FUZZ_EXAMPLES examples (default 200, a few seconds in all); set it
to 20000 or more for a long run.
"""

from __future__ import annotations

import os

import hypothesis.extra.numpy as hnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sce_rs

EXAMPLES = int(os.environ.get("SCE_RS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
CONTRACT_ERRORS = (TypeError, ValueError, IndexError)

FLOATS = [np.float16, np.float32, np.float64, ml_dtypes.bfloat16]
OTHERS = [np.int8, np.int64, np.uint8, np.uint64, np.bool_, np.complex64, np.str_, object]
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45, 700.0, -700.0])


@st.composite
def arrays(draw, shape=None, dtypes=None, min_dims=0):
    """An array of any dtype and layout: values from a seeded generator with special values
    sprinkled in, then flipped, transposed, strided or broadcast (zero strides)."""
    if shape is None:
        shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=0, max_side=6))
    dtype = draw(st.sampled_from(dtypes or FLOATS * 3 + OTHERS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.normal(scale=rng.choice([1.0, 30.0, 1e4]), size=shape)
    if base.size and draw(st.booleans()):
        pick = rng.random(shape) < 0.2
        base[pick] = rng.choice(SPECIALS, size=int(pick.sum()))
    if dtype is np.str_:
        a = base.astype(str)
    elif dtype is object:
        a = base.astype(object)
    elif np.issubdtype(np.dtype(dtype), np.integer) or dtype is np.bool_:
        a = rng.integers(-3, 12, size=shape).astype(dtype)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            a = base.astype(dtype)
    layout = draw(st.sampled_from(["c", "flip", "transpose", "step", "broadcast", "fortran"]))
    if a.ndim and layout == "flip":
        a = a[..., ::-1]
    elif layout == "transpose":
        a = np.ascontiguousarray(a.T).T
    elif a.ndim and layout == "step":
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif a.ndim and layout == "broadcast" and a.shape[0] > 0:
        a = np.broadcast_to(a[:1], a.shape)
    elif layout == "fortran":
        a = np.asfortranarray(a)
    if draw(st.integers(0, 9)) == 0 and a.flags.writeable:
        a.flags.writeable = False
    return a


JUNK = st.sampled_from([None, "x", 3, 2.5, [1.0, 2.0], [[1.0], [2.0, 3.0]], object(), b"ab"])


def anything(like=None):
    """A value for an array argument: usually a float array (shaped after `like` if given),
    sometimes any array, sometimes junk."""
    shape = like.shape if like is not None else None
    pick = st.integers(0, 7)
    floats = arrays(shape=shape, dtypes=FLOATS, min_dims=1)
    return pick.flatmap(lambda i: floats if i > 1 else arrays() if i else JUNK)


def targets(x, axis):
    """Class indices of the input's shape without the axis (often near the valid range),
    probabilities of the input's shape, or anything."""
    nd = getattr(x, "ndim", 0)
    if not nd or not -nd <= axis < nd:
        return anything(x if isinstance(x, np.ndarray) else None)
    outer = x.shape[: axis % nd] + x.shape[axis % nd + 1 :]
    k = x.shape[axis]
    index_dtypes = [np.int64, np.int32, np.uint8, np.uint64, np.int8]

    def near_range(t):
        with np.errstate(over="ignore"):  # unsigned -1 wraps: one more out-of-range value
            return t % max(k + 2, 1) - 1

    indices = arrays(shape=outer, dtypes=index_dtypes).map(near_range)
    return st.one_of(indices, arrays(shape=x.shape), anything(x))


BAD_AXES = st.one_of(st.integers(-6, 5), st.sampled_from([-(2**70), 2**63, 2**70, 1.0, "0"]))
REALS = st.one_of(
    st.sampled_from([0.0, 0.1, 1.0, 0.5, 3.0, 1e-3]),
    st.sampled_from([0.0, 0.1, 1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 10**400, "0.1", None, 1j]),
)
OPTION_VALUES = {
    "reduction": st.one_of(
        st.sampled_from(["mean", "sum", "none"]), st.sampled_from(["avg", "", None, 0])
    ),
    "ignore_index": st.one_of(
        st.integers(-101, 8), st.just(-100), st.sampled_from([2**63, -(2**70), 1.5])
    ),
    "label_smoothing": REALS,
    "z_loss": REALS,
    "softcap": REALS,
    "keepdims": st.sampled_from([True, False, 0, "yes", None]),
    "top_k": st.one_of(st.integers(-2, 8), st.sampled_from([2**70, 1.5, None, "3"])),
    "temperature": REALS,
}


def fuzz_call(data, fn, second=None, options=(), out=False, grad_output=False):
    """Draws the arguments of one call of `fn` and checks the contract on its outcome."""
    if second == "linear":  # mostly (N, D) hidden states
        matrices = arrays(shape=data.draw(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6)))
        x = data.draw(st.one_of(matrices, matrices, anything()), label="hidden")
    else:
        x = data.draw(anything(), label="x")
    nd = getattr(x, "ndim", 0)
    often_valid = nd and data.draw(st.integers(0, 4)) > 0
    axes = st.integers(-nd, nd - 1) if often_valid else BAD_AXES
    axis = data.draw(axes, label="axis") if "axis" in options else -1
    args = [x]
    if second == "same":
        args.append(data.draw(anything(x if isinstance(x, np.ndarray) else None), label="y"))
    elif second == "target":
        args.append(data.draw(targets(x, axis if isinstance(axis, int) else -1), label="t"))
    elif second == "linear":
        n, d = x.shape if nd == 2 else (1, 2)
        v = data.draw(st.integers(0, 6), label="classes")
        weight = arrays(shape=(v, d), dtypes=FLOATS)
        args.append(data.draw(st.one_of(weight, weight, anything()), label="weight"))

        def near_range(t):
            with np.errstate(over="ignore"):
                return t % (v + 2) - 1

        indices = arrays(shape=(n,), dtypes=[np.int64, np.int32, np.uint8]).map(near_range)
        args.append(data.draw(st.one_of(indices, indices, anything()), label="target"))
    kwargs = {}
    for name in options:
        if name == "axis":
            kwargs["axis"] = axis
        elif name in ("weight", "pos_weight", "bias", "class_weight"):
            if not data.draw(st.booleans()):
                continue
            valid = isinstance(axis, int) and -nd <= axis < nd
            k = x.shape[axis] if valid else 3
            if second == "linear":
                k = getattr(args[1], "shape", (3,))[0] if getattr(args[1], "ndim", 0) else 3
            weights = arrays(shape=(k,), dtypes=FLOATS + [np.int64])
            kwargs[name] = data.draw(st.one_of(weights, weights, anything()), label=name)
        elif data.draw(st.booleans()):
            kwargs[name] = data.draw(OPTION_VALUES[name], label=name)
    if grad_output and data.draw(st.booleans()):
        kwargs["grad_output"] = data.draw(st.one_of(st.floats(), anything()), label="grad_output")
    if out and isinstance(x, np.ndarray):
        kind = data.draw(st.sampled_from(["none", "fresh", "fresh", "input", "junk"]), label="out")
        if kind == "fresh":
            dt = data.draw(st.sampled_from([x.dtype, np.float64, np.float32, np.int64]))
            shape = data.draw(st.sampled_from([x.shape, x.shape[::-1], x.shape + (1,)]))
            kwargs["out"] = np.full(shape, 7, dtype=dt)
        elif kind == "input":
            kwargs["out"] = x
        elif kind == "junk":
            kwargs["out"] = data.draw(anything())

    def snapshot(v):
        return (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else None

    operands = [*args, *kwargs.values()]
    before = [snapshot(v) for v in operands]
    try:
        fn(*args, **kwargs)
    except CONTRACT_ERRORS:
        after = [snapshot(v) for v in operands]
        assert after == before, "a failed call modified an argument or its out= buffer"
        return
    written = kwargs.get("out")
    for v, b in zip(operands, before):
        if v is not written and isinstance(v, np.ndarray) and not np.shares_memory(v, written):
            assert snapshot(v) == b, "a successful call modified an input"


CASES = {
    "softmax": dict(options=("axis",), out=True),
    "log_softmax": dict(options=("axis",), out=True),
    "logsumexp": dict(options=("axis", "keepdims")),
    "softmax_jacobian": dict(options=("axis",)),
    "softmax_backward": dict(second="same", options=("axis",)),
    "log_softmax_backward": dict(second="same", options=("axis",)),
    "cross_entropy": dict(
        second="target",
        options=("axis", "weight", "ignore_index", "reduction", "label_smoothing", "z_loss")
        + ("softcap",),
    ),
    "cross_entropy_and_grad": dict(
        second="target",
        options=("axis", "weight", "ignore_index", "reduction", "label_smoothing", "z_loss")
        + ("softcap",),
        out=True,
        grad_output=True,
    ),
    "nll_loss": dict(second="target", options=("axis", "weight", "ignore_index", "reduction")),
    "token_logprobs": dict(
        second="target", options=("axis", "ignore_index", "top_k", "temperature")
    ),
    "perplexity": dict(second="target", options=("axis", "ignore_index")),
    "binary_cross_entropy": dict(second="same", options=("weight", "reduction")),
    "binary_cross_entropy_with_logits": dict(
        second="same", options=("weight", "pos_weight", "reduction")
    ),
    "linear_cross_entropy": dict(
        second="linear",
        options=("bias", "class_weight", "ignore_index", "reduction", "label_smoothing")
        + ("z_loss", "softcap"),
    ),
    "linear_cross_entropy_and_grad": dict(
        second="linear",
        options=("bias", "class_weight", "ignore_index", "reduction", "label_smoothing")
        + ("z_loss", "softcap"),
        grad_output=True,
    ),
    "binary_cross_entropy_with_logits_and_grad": dict(
        second="same", options=("weight", "pos_weight", "reduction"), out=True, grad_output=True
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzz_entry_point(name):
    fn = getattr(sce_rs, name)

    @FUZZ
    @given(st.data())
    def run(data):
        fuzz_call(data, fn, **CASES[name])

    run()


def test_fuzz_cases_cover_every_public_function():
    # Not functions of arrays: the runtime's switches, and the scoring result's type.
    tools = {"get_num_threads", "set_num_threads", "simd_backend", "__version__", "TokenLogprobs"}
    assert set(CASES) == set(sce_rs.__all__) - tools


def test_found_by_fuzzing_reduced_float32_loss_beyond_range_is_inf_without_a_warning():
    """float16 inputs reduce to a float32 scalar; NumPy warned when it cast the float64 total
    of 1.3e41 down (the suite turns warnings into errors)."""
    x = np.array(-1321.0, dtype=np.float16)
    y = np.array(-1e38, dtype=np.float32)
    loss = sce_rs.binary_cross_entropy_with_logits(x, y)
    assert loss.dtype == np.float32 and loss == -np.inf
