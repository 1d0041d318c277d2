"""Bad input: the contract's exception, a message that says what was wrong, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.exceptions import AxisError

import sce_rs

X = np.arange(20, dtype=np.float64).reshape(4, 5) / 7
T = np.array([0, 1, 2, 4])

AXIS_FUNCTIONS = [
    lambda a: sce_rs.softmax(X, axis=a),
    lambda a: sce_rs.log_softmax(X, axis=a),
    lambda a: sce_rs.logsumexp(X, axis=a),
    lambda a: sce_rs.softmax_jacobian(X, axis=a),
    lambda a: sce_rs.softmax_backward(X, X, axis=a),
    lambda a: sce_rs.log_softmax_backward(X, X, axis=a),
    lambda a: sce_rs.cross_entropy(X, T, axis=a),
    lambda a: sce_rs.cross_entropy_and_grad(X, T, axis=a),
    lambda a: sce_rs.nll_loss(X, T, axis=a),
]


@pytest.mark.parametrize("axis", [2, -3, 100])
@pytest.mark.parametrize("call", AXIS_FUNCTIONS)
def test_axis_out_of_range(call, axis):
    with pytest.raises(AxisError, match=f"axis {axis} is out of bounds for array of dimension 2"):
        call(axis)


def test_zero_dimensional_input_has_no_class_axis():
    with pytest.raises(AxisError):
        sce_rs.softmax(3.0)


@pytest.mark.parametrize(
    "bad",
    [
        X.astype(np.complex128),
        np.array([["a", "b"]]),
        np.array([[object()]]),
        X.astype(np.longdouble),
    ],
)
@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp", "softmax_jacobian"])
def test_unsupported_dtypes_are_type_errors(fn, bad):
    if bad.dtype == np.float64:  # longdouble is float64 on some platforms
        return
    with pytest.raises(TypeError, match=f"unsupported dtype {bad.dtype}"):
        getattr(sce_rs, fn)(bad)


def test_unsupported_dtype_in_other_arguments():
    with pytest.raises(TypeError, match="target has unsupported dtype complex128"):
        sce_rs.cross_entropy(X, T.astype(np.complex128))
    with pytest.raises(TypeError, match="weight has unsupported dtype"):
        sce_rs.cross_entropy(X, T, weight=np.ones(5, dtype=np.complex64))
    with pytest.raises(TypeError, match="pos_weight has unsupported dtype"):
        sce_rs.binary_cross_entropy_with_logits(X, X, pos_weight=np.array(["x"] * 5))


def test_ragged_lists_raise_value_error():
    with pytest.raises(ValueError):
        sce_rs.softmax([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("fn", ["cross_entropy", "cross_entropy_and_grad", "nll_loss"])
def test_target_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"target has shape \(3,\) but input of shape \(4, 5\)"):
        getattr(sce_rs, fn)(X, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer dtype, got float64"):
        getattr(sce_rs, fn)(X, T.astype(np.float64))
    with pytest.raises(TypeError, match="integer dtype, got bool"):
        getattr(sce_rs, fn)(X, T.astype(bool))


@pytest.mark.parametrize("fn", ["cross_entropy", "cross_entropy_and_grad", "nll_loss"])
@pytest.mark.parametrize("bad,pos", [(5, "(3,)"), (-1, "(1,)"), (-101, "(0,)")])
def test_class_index_out_of_range(fn, bad, pos):
    t = np.array([0, 1, 2, 3])
    t[{"(3,)": 3, "(1,)": 1, "(0,)": 0}[pos]] = bad
    with pytest.raises(
        IndexError, match=rf"target {bad} at position \{pos[:-1]}\) is out of range.*\[0, 5\)"
    ):
        getattr(sce_rs, fn)(X, t)


@pytest.mark.parametrize("k", [3, 10, 40])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_class_index_out_of_range_in_a_later_block_names_the_first(k, reduction):
    # Rows of fewer than 16 classes reduced to one loss check their indices inside each
    # block's kernel, blocks in parallel; the error still names the first index out of range.
    # Rows of 40 classes, checked in a pass of their own first, are the control.
    n = 200_000
    x = np.zeros((n, k), np.float32)
    t = np.zeros(n, np.int64)
    t[150_001], t[190_000] = k, -5
    with pytest.raises(IndexError, match=rf"target {k} at position \(150001,\) is out of range"):
        sce_rs.cross_entropy(x, t, reduction=reduction)


def test_class_index_position_is_a_multi_index():
    x = np.zeros((2, 5, 3))
    t = np.zeros((2, 3), dtype=np.int32)
    t[1, 2] = 9
    with pytest.raises(IndexError, match=r"target 9 at position \(1, 2\)"):
        sce_rs.cross_entropy(x, t, axis=1)


def test_empty_class_axis_has_no_valid_index():
    with pytest.raises(IndexError):
        sce_rs.cross_entropy(np.zeros((3, 0)), np.zeros(3, dtype=np.int64))
    assert sce_rs.cross_entropy(np.zeros((3, 0)), np.full(3, -100), reduction="sum") == 0.0


def test_empty_class_axis_with_probabilities_follows_pytorch():
    # Each row's loss is minus an empty sum (-0.0); "mean" divides by numel / K = 0 / 0.
    x = np.zeros((3, 0))
    assert np.isnan(sce_rs.cross_entropy(x, x))
    total = sce_rs.cross_entropy(x, x, reduction="sum")
    assert total == 0.0 and np.signbit(total)
    rows = sce_rs.cross_entropy(x, x, reduction="none")
    assert rows.shape == (3,) and np.all(rows == 0.0) and np.all(np.signbit(rows))
    loss, grad = sce_rs.cross_entropy_and_grad(x, x, reduction="sum")
    assert np.signbit(loss) and grad.shape == (3, 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"reduction": "avg"}, "reduction must be 'mean', 'sum' or 'none', got \"avg\""),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\], got 1.5"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 1\]"),
        ({"label_smoothing": float("nan")}, r"label_smoothing must be in \[0, 1\]"),
        ({"z_loss": -1.0}, "z_loss must be a finite number >= 0"),
        ({"z_loss": float("inf")}, "z_loss must be a finite number >= 0"),
        ({"softcap": 0.0}, "softcap must be None or a finite number > 0"),
        ({"softcap": -2.0}, "softcap must be None or a finite number > 0"),
        ({"weight": np.ones(4)}, r"weight must have shape \(5,\), one value per class, got \(4,\)"),
        ({"weight": np.ones((1, 5))}, r"weight must have shape \(5,\)"),
    ],
)
@pytest.mark.parametrize("fn", ["cross_entropy", "cross_entropy_and_grad"])
def test_option_values(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(sce_rs, fn)(X, T, **kwargs)


def test_grad_output_shapes():
    with pytest.raises(ValueError, match="grad_output must be a scalar for a reduced loss"):
        sce_rs.cross_entropy_and_grad(X, T, grad_output=np.ones(4))
    with pytest.raises(
        ValueError,
        match=r"grad_output of shape \(3,\) does not match the per-row loss shape \(4,\)",
    ):
        sce_rs.cross_entropy_and_grad(X, T, reduction="none", grad_output=np.ones(3))
    with pytest.raises(ValueError, match="grad_output"):
        sce_rs.binary_cross_entropy_with_logits_and_grad(
            X, X, reduction="none", grad_output=np.ones(3)
        )


def test_backward_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"grad_output has shape \(4, 5\) but output has shape \(5, 4\)"
    ):
        sce_rs.softmax_backward(X, X.T)


def test_binary_errors():
    with pytest.raises(
        ValueError,
        match=r"binary_cross_entropy: input probabilities must be in \[0, 1\], "
        r"got 1.5 at position \(1,\)",
    ):
        sce_rs.binary_cross_entropy(np.array([0.5, 1.5]), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"got -0.25 at position \(1, 0\)"):
        sce_rs.binary_cross_entropy(np.array([[0.5], [-0.25]]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="got NaN"):
        sce_rs.binary_cross_entropy(np.array([np.nan]), np.array([1.0]))
    for fn in (
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "binary_cross_entropy_with_logits_and_grad",
    ):
        with pytest.raises(
            ValueError, match=r"target has shape \(5, 4\) but input has shape \(4, 5\)"
        ):
            getattr(sce_rs, fn)(X / 10, X.T / 10)
        with pytest.raises(
            ValueError,
            match=r"weight of shape \(4,\) does not broadcast to the input shape \(4, 5\)",
        ):
            getattr(sce_rs, fn)(X / 10, X / 10, weight=np.ones(4))
    with pytest.raises(ValueError, match="pos_weight of shape"):
        sce_rs.binary_cross_entropy_with_logits(X, X, pos_weight=np.ones(3))
    with pytest.raises(ValueError, match="reduction must be"):
        sce_rs.binary_cross_entropy_with_logits(X, X, reduction="max")


OUT_FUNCTIONS = [
    lambda out: sce_rs.softmax(X, out=out),
    lambda out: sce_rs.log_softmax(X, out=out),
    lambda out: sce_rs.cross_entropy_and_grad(X, T, out=out),
    lambda out: sce_rs.binary_cross_entropy_with_logits_and_grad(X, X / 20, out=out),
]


@pytest.mark.parametrize("call", OUT_FUNCTIONS)
def test_bad_out_buffers_are_rejected_untouched(call):
    for bad, exc, match in [
        (
            np.full((4, 5), 7.0, dtype=np.float32),
            TypeError,
            "out has dtype float32 but the result is float64",
        ),
        (
            np.full((5, 4), 7.0),
            ValueError,
            r"out has shape \(5, 4\) but the result has shape \(4, 5\)",
        ),
        (np.full((4, 6), 7.0)[:, :5], None, None),  # a valid strided view: accepted
    ]:
        if exc is None:
            call(bad)
            assert not np.any(bad == 7.0)
            continue
        with pytest.raises(exc, match=match):
            call(bad)
        assert np.all(bad == 7.0)
    ro = np.full((4, 5), 7.0)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        call(ro)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        call([[0.0] * 5] * 4)
    zero_stride = np.lib.stride_tricks.as_strided(np.full(5, 7.0), shape=(4, 5), strides=(0, 8))
    with pytest.raises(ValueError, match="zero stride"):
        call(zero_stride)
    # Rows that overlap each other (each starts one element after the last): threads writing
    # different rows would write the same memory, so the buffer is refused untouched.
    base = np.full(8, 7.0)
    overlapping = np.lib.stride_tricks.as_strided(base, shape=(4, 5), strides=(8, 8))
    with pytest.raises(ValueError, match="share memory"):
        call(overlapping)
    assert np.all(base == 7.0)


@pytest.mark.parametrize("shape", [(3, 0), (0, 3), (0, 0), (2, 0, 4)])
def test_an_empty_out_is_accepted_whatever_its_strides(shape):
    """NumPy gives an empty array zero strides ((3, 0) -> (0, 0)): no elements, nothing shared."""
    x = np.empty(shape, dtype=np.float32)
    for f in (sce_rs.softmax, sce_rs.log_softmax):
        out = np.empty_like(x)
        assert f(x, out=out) is out
        np.testing.assert_array_equal(out, f(x))


def test_failed_call_leaves_in_place_buffer_untouched():
    x = X.copy()
    with pytest.raises(IndexError):
        sce_rs.cross_entropy_and_grad(x, np.array([0, 1, 7, 2]), out=x)
    np.testing.assert_array_equal(x, X)
    with pytest.raises(ValueError):
        sce_rs.cross_entropy_and_grad(x, T, out=x, label_smoothing=2.0)
    np.testing.assert_array_equal(x, X)


def test_read_only_inputs_are_accepted_and_untouched():
    x = X.copy()
    x.flags.writeable = False
    sce_rs.softmax(x)
    sce_rs.cross_entropy_and_grad(x, T)
    np.testing.assert_array_equal(x, X)


def test_thread_count_must_be_positive_and_bounded():
    with pytest.raises(ValueError, match="at least 1 and at most 4096, got 0"):
        sce_rs.set_num_threads(0)
    with pytest.raises(ValueError):
        sce_rs.set_num_threads(-3)
    with pytest.raises(ValueError, match="got 1000000"):
        sce_rs.set_num_threads(10**6)
    with pytest.raises(ValueError, match="does not fit in 64 bits"):
        sce_rs.set_num_threads(2**70)
    with pytest.raises(TypeError):
        sce_rs.set_num_threads("2")


@pytest.mark.parametrize("fn", ["cross_entropy", "cross_entropy_and_grad", "nll_loss"])
def test_integers_beyond_64_bits_are_contract_errors_not_overflow(fn):
    """PyO3 alone would raise OverflowError, which the contract does not name."""
    for axis in (2**70, -(2**70)):
        with pytest.raises(AxisError, match=f"axis {axis} is out of bounds"):
            getattr(sce_rs, fn)(X, T, axis=axis)
    with pytest.raises(ValueError, match=r"the integer 1180591620717411303424 does not fit"):
        getattr(sce_rs, fn)(X, T, ignore_index=2**70)


@pytest.mark.parametrize("option", ["label_smoothing", "z_loss", "softcap"])
def test_floats_beyond_float64_are_value_errors(option):
    with pytest.raises(ValueError, match=r"the number 1000.*\(401 digits\) is out of the float64"):
        sce_rs.cross_entropy(X, T, **{option: 10**400})
