//! The binary losses: `binary_cross_entropy` on probabilities and
//! `binary_cross_entropy_with_logits(_and_grad)`, with broadcast `weight` and `pos_weight`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::array::Arr;
use super::call::run;
use super::convert::{arg, parse_reduction};
use super::errors::{prefixed, to_py};
use super::losses::{grad_buffer, loss_result, upstream};
use crate::dtype::DType;
use crate::error::fmt_index;
use crate::isa::Level;
use crate::ops::{self, BinaryArgs, Reduction, Src, Upstream};
use crate::pool::BLOCK_ELEMS;

// ---------------------------------------------------------------- binary losses

#[allow(clippy::too_many_arguments)]
pub(super) fn binary<'py>(
    py: Python<'py>,
    f: &str,
    logits: bool,
    want_grad: bool,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    pos_weight: Option<&Bound<'py, PyAny>>,
    reduction: &str,
    grad_output: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let isa = Level::active();
    let mut x = arg(py, f, input, "input")?;
    let mut y = arg(py, f, target, "target")?;
    let reduction = parse_reduction(py, f, reduction)?;
    if y.shape() != x.shape() {
        return Err(PyValueError::new_err(format!(
            "{f}: target has shape {} but input has shape {}; they must be equal",
            fmt_index(y.shape()),
            fmt_index(x.shape())
        )));
    }
    let dt = x.dtype.result();
    let mut w = weight
        .filter(|w| !w.is_none())
        .map(|w| arg(py, f, w, "weight"))
        .transpose()?;
    let mut pw = pos_weight
        .filter(|w| !w.is_none())
        .map(|w| arg(py, f, w, "pos_weight"))
        .transpose()?;
    let (scalar_up, mut up_arr) = if want_grad {
        upstream(py, f, grad_output, reduction, x.shape())?
    } else {
        (1.0, None)
    };
    let mut grad = if want_grad {
        Some(grad_buffer(py, f, out, &x, dt)?)
    } else {
        None
    };
    let in_place = match &grad {
        Some(g) => Arr::guard_inputs(
            g,
            &mut x,
            [Some(&mut y), w.as_mut(), pw.as_mut(), up_arr.as_mut()],
        )?,
        None => false,
    };
    let shape = x.shape();
    // Rows along the last axis; `ops::binary_loss` cuts rows longer than a block into
    // blocks of elements itself.
    let axis = shape.len().checked_sub(1);
    let xv = (!in_place).then(|| x.view(axis));
    let yv = y.view(axis);
    let wv = w
        .as_ref()
        .map(|w| w.broadcast_view(shape, axis, "weight"))
        .transpose()
        .map_err(|e| prefixed(py, f, e))?;
    let pv = pw
        .as_ref()
        .map(|p| p.broadcast_view(shape, axis, "pos_weight"))
        .transpose()
        .map_err(|e| prefixed(py, f, e))?;
    let uv = up_arr
        .as_ref()
        .map(|u| u.broadcast_view(shape, axis, "grad_output"))
        .transpose()?;
    let mut losses = if reduction == Reduction::None {
        Some(Arr::empty(py, shape, dt, &x)?)
    } else {
        None
    };
    let mut lv = losses
        .as_mut()
        .map(|l| l.view_mut(axis))
        .transpose()
        .map_err(|e| to_py(py, f, e))?;
    let mut gv = grad
        .as_mut()
        .map(|g| g.view_mut(axis))
        .transpose()
        .map_err(|e| to_py(py, f, e))?;
    let args = BinaryArgs {
        input: xv.as_ref().map_or(Src::Out, Src::View),
        target: &yv,
        weight: wv.as_ref(),
        pos_weight: pv.as_ref(),
        shape,
    };
    let up = match &uv {
        Some(v) => Upstream::PerRow(v),
        None => Upstream::Scalar(scalar_up),
    };
    // A row's worth of scratch per operand, at most a block's (see `axis` above).
    let row = xv.as_ref().map_or(yv.k(), |v| v.k()).min(BLOCK_ELEMS);
    let total = run(py, f, x.size(), row, || {
        with_compute!(dt, T => ops::binary_loss::<T>(isa, logits, args, reduction, up, lv.as_mut(), gv.as_mut()))
    })
?
    .map_err(|e| to_py(py, f, e))?;
    loss_result(py, losses, total, x.dtype, grad)
}

/// PyTorch's `F.binary_cross_entropy` on probabilities, each log clamped at -100.
///
/// Parameters
/// ----------
/// input : array_like
///     Probabilities in `[0, 1]` (anything outside is a `ValueError`), any shape.
/// target : array_like
///     Targets of `input`'s shape.
/// weight : array_like, optional
///     Broadcasts against `input` as in NumPy.
/// reduction : {"mean", "sum", "none"}, default "mean"
///     `"mean"` divides by the number of elements.
///
/// Returns
/// -------
/// numpy scalar or ndarray
///     A reduced loss is a NumPy scalar; `"none"` gives `input`'s shape.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> p, y = np.array([0.9, 0.2, 0.6]), np.array([1.0, 0.0, 1.0])
/// >>> sce_rs.binary_cross_entropy(p, y).round(4)
/// np.float64(0.2798)
#[pyfunction]
#[pyo3(signature = (input, target, *, weight=None, reduction="mean"))]
pub(super) fn binary_cross_entropy<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    reduction: &str,
) -> PyResult<Bound<'py, PyAny>> {
    binary(
        py,
        "binary_cross_entropy",
        false,
        false,
        input,
        target,
        weight,
        None,
        reduction,
        None,
        None,
    )
}

/// PyTorch's `F.binary_cross_entropy_with_logits`, in the stable form.
///
/// Parameters
/// ----------
/// input : array_like
///     Logits, any shape.
/// target : array_like
///     Targets of `input`'s shape.
/// weight : array_like, optional
///     Broadcasts against `input` as in NumPy.
/// pos_weight : array_like, optional
///     The weight of positive targets, broadcast along the last axis (one per class).
/// reduction : {"mean", "sum", "none"}, default "mean"
///     `"mean"` divides by the number of elements.
///
/// Returns
/// -------
/// numpy scalar or ndarray
///     A reduced loss is a NumPy scalar; `"none"` gives `input`'s shape.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> z, y = np.array([2.0, -1.0, 0.5]), np.array([1.0, 0.0, 1.0])
/// >>> sce_rs.binary_cross_entropy_with_logits(z, y).round(4)
/// np.float64(0.3048)
/// >>> sce_rs.binary_cross_entropy_with_logits(z, y, pos_weight=[2.0]).round(4)
/// np.float64(0.5051)
#[pyfunction]
#[pyo3(signature = (input, target, *, weight=None, pos_weight=None, reduction="mean"))]
pub(super) fn binary_cross_entropy_with_logits<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    pos_weight: Option<&Bound<'py, PyAny>>,
    reduction: &str,
) -> PyResult<Bound<'py, PyAny>> {
    binary(
        py,
        "binary_cross_entropy_with_logits",
        true,
        false,
        input,
        target,
        weight,
        pos_weight,
        reduction,
        None,
        None,
    )
}

// Python's docstring: its examples' brackets are indexing, not links.
#[allow(rustdoc::broken_intra_doc_links)]
/// `(loss, grad)` of `binary_cross_entropy_with_logits`, in one pass.
///
/// Parameters
/// ----------
/// input, target, weight, pos_weight, reduction
///     As in `binary_cross_entropy_with_logits`.
/// grad_output : array_like, optional
///     The upstream gradient: a scalar for a reduced loss, `input`'s shape for `"none"`.
/// out : ndarray, optional
///     Where to write the gradient; may be `input` itself.
///
/// Returns
/// -------
/// loss : numpy scalar or ndarray
/// grad : ndarray
///     `d loss / d input`, of `input`'s shape and dtype.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> z, y = np.array([2.0, -1.0, 0.5]), np.array([1.0, 0.0, 1.0])
/// >>> sce_rs.binary_cross_entropy_with_logits_and_grad(z, y)[1].round(4)
/// array([-0.0397,  0.0896, -0.1258])
#[pyfunction]
#[pyo3(signature = (input, target, *, weight=None, pos_weight=None, reduction="mean", grad_output=None, out=None))]
#[allow(clippy::too_many_arguments)]
pub(super) fn binary_cross_entropy_with_logits_and_grad<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    pos_weight: Option<&Bound<'py, PyAny>>,
    reduction: &str,
    grad_output: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    binary(
        py,
        "binary_cross_entropy_with_logits_and_grad",
        true,
        true,
        input,
        target,
        weight,
        pos_weight,
        reduction,
        grad_output,
        out,
    )
}
