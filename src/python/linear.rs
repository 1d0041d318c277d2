//! `linear_cross_entropy` and `linear_cross_entropy_and_grad`: argument checks and conversion
//! for [`crate::linear`]. Operands that already are C-contiguous in the compute type are read
//! in place; any other layout or dtype (float16/bfloat16, a mixed dtype, strides) is converted
//! one block of rows at a time, as the core asks for it, and `d_weight` is written back block
//! by block, so no whole copy of `hidden`, `weight` or `d_weight` is made. `d_hidden` of a
//! half dtype is accumulated in a float32 copy (the `4 x N x D` bytes API.md allows); the bias
//! (`V` values) is converted whole.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::array::{loss_scalar, Arr};
use super::call::{ensure_allocatable, run};
use super::convert::{arg, parse_reduction, promote};
use super::errors::to_py;
use super::losses::{check_options, class_weights, upstream, MultiOpts};
use super::scalars::{Int, Real};
use crate::dtype::DType;
use crate::error::fmt_index;
use crate::float::Float;
use crate::linear::{
    LinUpstream, LinearCe, LinearGrads, Operand, RowsOut, DEFAULT_MAX_MEMORY, LINEAR_MAX_COLS,
    LINEAR_MAX_ROWS,
};
use crate::ops::{CeOptions, Reduction};
use crate::strided::View;

/// The keyword arguments both functions share.
struct LinearArgs<'a, 'py> {
    bias: Option<&'a Bound<'py, PyAny>>,
    class_weight: Option<&'a Bound<'py, PyAny>>,
    ignore_index: i64,
    reduction: &'a str,
    label_smoothing: f64,
    z_loss: f64,
    softcap: Option<f64>,
    grad_output: Option<&'a Bound<'py, PyAny>>,
    max_memory_bytes: i64,
}

fn shape_error(f: &str, msg: String) -> PyErr {
    PyValueError::new_err(format!("{f}: {msg}"))
}

/// Rows `r0..r1` of `view`, converted to `T`, into `scratch` (replacing its contents).
fn load_rows<T: Float>(view: &View<'_>, r0: usize, r1: usize, scratch: &mut Vec<T>) {
    if view.loads_in_place(T::DTYPE, r0, r1) {
        let mut unused = Vec::new();
        let rows = view.load::<T>(r0, r1, &mut unused);
        scratch.clear();
        scratch.extend_from_slice(rows);
    } else {
        view.load::<T>(r0, r1, scratch); // not in place, so this fills `scratch`
    }
}

fn linear<'py>(
    py: Python<'py>,
    f: &str,
    with_grad: bool,
    hidden: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    o: LinearArgs<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let h = arg(py, f, hidden, "hidden")?;
    let w = arg(py, f, weight, "weight")?;
    if h.ndim() != 2 {
        return Err(shape_error(
            f,
            format!(
                "hidden must have shape (N, D), got {}",
                fmt_index(h.shape())
            ),
        ));
    }
    let (n, d) = (h.shape()[0], h.shape()[1]);
    if w.ndim() != 2 || w.shape()[1] != d {
        return Err(shape_error(
            f,
            format!(
                "weight must have shape (V, D) with D = {d} as hidden of shape {} has, got {}",
                fmt_index(h.shape()),
                fmt_index(w.shape())
            ),
        ));
    }
    let v = w.shape()[0];
    let t = arg(py, f, target, "target")?;
    if t.shape() != [n] {
        return Err(shape_error(
            f,
            format!(
                "target must have shape ({n},), one class index per row of hidden, got {}",
                fmt_index(t.shape())
            ),
        ));
    }
    if !t.dtype.is_integer() {
        return Err(shape_error(
            f,
            format!(
                "target must hold class indices (an integer dtype), got {}; probability targets need the materialized cross_entropy",
                t.dtype.name()
            ),
        ));
    }
    let b = o
        .bias
        .filter(|b| !b.is_none())
        .map(|b| arg(py, f, b, "bias"))
        .transpose()?;
    if let Some(b) = &b {
        if b.shape() != [v] {
            return Err(shape_error(
                f,
                format!("bias must have shape ({v},), got {}", fmt_index(b.shape())),
            ));
        }
    }
    let max_memory = usize::try_from(o.max_memory_bytes)
        .ok()
        .filter(|&m| m > 0)
        .ok_or_else(|| {
            shape_error(
                f,
                format!(
                    "max_memory_bytes must be a positive number of bytes, got {}",
                    o.max_memory_bytes
                ),
            )
        })?;
    let reduction = parse_reduction(py, f, o.reduction)?;
    check_options(
        py,
        f,
        &MultiOpts {
            axis: -1,
            weight: None,
            ignore_index: o.ignore_index,
            reduction: o.reduction,
            label_smoothing: o.label_smoothing,
            z_loss: o.z_loss,
            softcap: o.softcap,
            grad_output: None,
            out: None,
        },
    )?;
    let class_weight = o
        .class_weight
        .filter(|w| !w.is_none())
        .map(|cw| class_weights(py, f, cw, v).map_err(|e| rename_weight(py, e)))
        .transpose()?;
    let (scalar_up, up_arr) = if with_grad {
        upstream(py, f, o.grad_output, reduction, &[n])?
    } else {
        (1.0, None)
    };

    // NumPy's promotion over every operand the logits are made of, the bias included.
    let dt = b.as_ref().map_or(promote(h.dtype, w.dtype), |b| {
        promote(promote(h.dtype, w.dtype), b.dtype)
    });
    let mut grads = if with_grad {
        let db = match &b {
            Some(b) => Some(Arr::empty(py, &[v], b.dtype.result(), b)?),
            None => None,
        };
        Some((
            Arr::empty(py, &[n, d], h.dtype.result(), &h)?,
            Arr::empty(py, &[v, d], w.dtype.result(), &w)?,
            db,
        ))
    } else {
        None
    };
    let mut losses = if reduction == Reduction::None {
        Some(Arr::empty(py, &[n], dt, &h)?)
    } else {
        None
    };

    let (hv, wv, tv) = (h.view(Some(1)), w.view(Some(1)), t.view(None));
    let bv = b.as_ref().map(|b| b.view(None));
    let uv = up_arr
        .as_ref()
        .map(|u| u.broadcast_view(&[n], None, "grad_output"))
        .transpose()?;
    let out_err = |e| to_py(py, f, e);
    let mut gv = match grads.as_mut() {
        Some((dh, dw, db)) => Some((
            dh.view_mut(Some(1)).map_err(out_err)?,
            dw.view_mut(Some(1)).map_err(out_err)?,
            db.as_mut()
                .map(|a| a.view_mut(None))
                .transpose()
                .map_err(out_err)?,
        )),
        None => None,
    };
    let mut lv = losses
        .as_mut()
        .map(|l| l.view_mut(None))
        .transpose()
        .map_err(out_err)?;
    // The only whole copies: the bias and a half-precision d_hidden's float32 accumulator.
    let compute = dt.compute();
    let copies = bv
        .as_ref()
        .filter(|b| !b.loads_in_place(compute, 0, v))
        .map_or(0, |_| v * compute.size())
        + gv.as_ref()
            .filter(|(dh, _, _)| !dh.stores_in_place(compute, 0, n))
            .map_or(0, |_| n.saturating_mul(d).saturating_mul(compute.size()));
    // Operands converted block by block: at most a block of rows of hidden, and a block of
    // weight rows with its float32 d_weight accumulator, each of D values (the plan's bounds).
    // A zero-stride view can describe a D of 2^40 in a few bytes: a MemoryError, not an abort.
    let row_bytes = d.saturating_mul(compute.size());
    let h_rows = if hv.loads_in_place(compute, 0, n) {
        0
    } else {
        n.min(LINEAR_MAX_ROWS)
    };
    let w_rows = if wv.loads_in_place(compute, 0, v) {
        0
    } else {
        2 * v.min(LINEAR_MAX_COLS)
    };
    ensure_allocatable(
        f,
        copies.saturating_add(row_bytes.saturating_mul(h_rows + w_rows)),
    )?;
    let work = n.saturating_mul(v).saturating_mul(d.max(1));
    let total = run(py, f, work, 0, || {
        with_compute!(dt, T => {
            let (mut sh, mut sw, mut sb, mut si, mut su) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let load_h = |r0: usize, r1: usize, s: &mut Vec<T>| load_rows(&hv, r0, r1, s);
            let load_w = |r0: usize, r1: usize, s: &mut Vec<T>| load_rows(&wv, r0, r1, s);
            {
                let opts = CeOptions::<T> {
                    weight: class_weight.as_ref().map(|w| w.iter().map(|&x| T::from_f64(x)).collect()),
                    weight_total: class_weight.as_ref().map_or(v as f64, |w| w.iter().sum()),
                    label_smoothing: o.label_smoothing,
                    z_loss: o.z_loss,
                    softcap: o.softcap,
                };
                let args = LinearCe {
                    hidden: if hv.loads_in_place(T::DTYPE, 0, n) {
                        Operand::Slice(hv.load::<T>(0, n, &mut sh))
                    } else {
                        Operand::Rows(&load_h)
                    },
                    weight: if wv.loads_in_place(T::DTYPE, 0, v) {
                        Operand::Slice(wv.load::<T>(0, v, &mut sw))
                    } else {
                        Operand::Rows(&load_w)
                    },
                    bias: bv.as_ref().map(|b| b.load::<T>(0, v, &mut sb)),
                    targets: tv.load_index(0, n, &mut si),
                    ignore_index: o.ignore_index,
                    n,
                    d,
                    v,
                    opts: &opts,
                    max_memory,
                };
                let up = match &uv {
                    Some(u) => LinUpstream::PerRow(u.load::<f64>(0, n, &mut su)),
                    None => LinUpstream::Scalar(scalar_up),
                };
                let mut row_losses = lv.as_ref().map(|_| vec![0.0f64; n]);
                let res = match gv.as_mut() {
                    None => crate::linear::linear_cross_entropy(&args, reduction, up, row_losses.as_deref_mut(), None),
                    Some((dhv, dwv, dbv)) => {
                        let (mut s1, mut s2, mut s3) = (Vec::new(), Vec::new(), Vec::new());
                        let mut db = dbv.as_ref().map(|_| vec![T::ZERO; v]);
                        let res = if dwv.stores_in_place(T::DTYPE, 0, v) {
                            dhv.all().store::<T, _>(&mut s1, |d_hidden| {
                                dwv.all().store::<T, _>(&mut s2, |dw| {
                                    let g = LinearGrads { d_hidden, d_weight: RowsOut::Slice(dw), d_bias: db.as_deref_mut() };
                                    crate::linear::linear_cross_entropy(&args, reduction, up, row_losses.as_deref_mut(), Some(g))
                                })
                            })
                        } else {
                            // d_weight block by block through a block-sized scratch
                            let mut dw_rows = dwv.all();
                            let mut store_w = |r0: usize, rows: &[T]| {
                                let r1 = r0 + rows.len() / d.max(1);
                                dw_rows.sub(r0..r1).store::<T, _>(&mut s2, |dst| dst.copy_from_slice(rows))
                            };
                            dhv.all().store::<T, _>(&mut s1, |d_hidden| {
                                let g = LinearGrads { d_hidden, d_weight: RowsOut::Rows(&mut store_w), d_bias: db.as_deref_mut() };
                                crate::linear::linear_cross_entropy(&args, reduction, up, row_losses.as_deref_mut(), Some(g))
                            })
                        };
                        if let (Some(dbv), Some(db)) = (dbv, &db) {
                            dbv.all().store::<T, _>(&mut s3, |out| out.copy_from_slice(db));
                        }
                        res
                    }
                };
                if let (Some(lv), Some(rl)) = (lv.as_mut(), &row_losses) {
                    let mut sl = Vec::new();
                    lv.all().store::<f64, _>(&mut sl, |l| l.copy_from_slice(rl));
                }
                res
            }
        })
    })?
    .map_err(|e| to_py(py, f, e))?;

    let loss = match losses {
        Some(l) => l.into_result()?,
        None => loss_scalar(py, total, dt)?,
    };
    match grads {
        None => Ok(loss),
        Some((dh, dw, db)) => {
            let mut items = vec![loss, dh.arr.into_any(), dw.arr.into_any()];
            if let Some(db) = db {
                items.push(db.arr.into_any());
            }
            Ok(PyTuple::new(py, items)?.into_any())
        }
    }
}

/// `class_weight` is this function's name for `cross_entropy`'s `weight` (here `weight` is the
/// linear layer's); say so in the messages.
fn rename_weight(py: Python<'_>, e: PyErr) -> PyErr {
    let msg = e.value(py).to_string().replace("weight", "class_weight");
    if e.is_instance_of::<PyValueError>(py) {
        PyValueError::new_err(msg)
    } else {
        pyo3::exceptions::PyTypeError::new_err(msg)
    }
}

/// The cross-entropy of `hidden @ weight.T (+ bias)` against class indices, without ever
/// holding the N x V logits: they are made block by block and folded into the loss.
///
/// Parameters
/// ----------
/// hidden : array_like
///     `(N, D)` activations.
/// weight : array_like
///     `(V, D)` output projection, as in `nn.Linear`.
/// target : array_like
///     `(N,)` class indices (probability targets are not supported).
/// bias : array_like, optional
///     `(V,)`.
/// class_weight : array_like, optional
///     A weight per class, shape `(V,)` (`cross_entropy`'s `weight`).
/// ignore_index, reduction, label_smoothing, z_loss, softcap
///     As in `cross_entropy`.
/// max_memory_bytes : int, optional
///     The scratch the call may use (16 MiB by default): blocks of logits, float16/bfloat16
///     operands widened block by block, the GEMMs' packing. It never grows with `V` nor with
///     the thread count; a larger budget lets a row block's logits be kept (three products
///     instead of four for the gradients).
///
/// Returns
/// -------
/// numpy scalar or ndarray
///     As `cross_entropy` returns it on the materialized logits.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> h = np.array([[1.0, 0.0], [0.0, 1.0]])
/// >>> w = np.array([[2.0, 1.0], [1.0, 2.5], [0.1, 0.3]])
/// >>> sce_rs.linear_cross_entropy(h, w, np.array([0, 1])).round(4)
/// np.float64(0.3526)
#[pyfunction]
#[pyo3(signature = (hidden, weight, target, bias=None, *, class_weight=None, ignore_index=Int(-100), reduction="mean", label_smoothing=Real(0.0), z_loss=Real(0.0), softcap=None, max_memory_bytes=Int(DEFAULT_MAX_MEMORY as i64)), text_signature = "(hidden, weight, target, bias=None, *, class_weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=0.0, softcap=None, max_memory_bytes=16777216)")]
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy<'py>(
    py: Python<'py>,
    hidden: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    class_weight: Option<&Bound<'py, PyAny>>,
    ignore_index: Int,
    reduction: &str,
    label_smoothing: Real,
    z_loss: Real,
    softcap: Option<Real>,
    max_memory_bytes: Int,
) -> PyResult<Bound<'py, PyAny>> {
    let o = LinearArgs {
        bias,
        class_weight,
        ignore_index: ignore_index.0,
        reduction,
        label_smoothing: label_smoothing.0,
        z_loss: z_loss.0,
        softcap: softcap.map(|c| c.0),
        grad_output: None,
        max_memory_bytes: max_memory_bytes.0,
    };
    linear(py, "linear_cross_entropy", false, hidden, weight, target, o)
}

/// `(loss, d_hidden, d_weight[, d_bias])` of `linear_cross_entropy`, without the logits.
///
/// Parameters
/// ----------
/// hidden, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap, max_memory_bytes
///     As in `linear_cross_entropy`.
/// grad_output : array_like, optional
///     The upstream gradient: a scalar for a reduced loss, `(N,)` for `"none"`.
///
/// Returns
/// -------
/// tuple
///     The loss, then the gradients of `hidden`, `weight` and (when given) `bias`, each in its
///     operand's shape and dtype (accumulated in float32 for float16/bfloat16).
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> h = np.array([[1.0, 0.0], [0.0, 1.0]])
/// >>> w = np.array([[2.0, 1.0], [1.0, 2.5], [0.1, 0.3]])
/// >>> loss, d_h, d_w = sce_rs.linear_cross_entropy_and_grad(h, w, np.array([0, 1]))
/// >>> d_h.round(4)
/// array([[-0.2149,  0.1473],
///        [ 0.0463, -0.2168]])
#[pyfunction]
#[pyo3(signature = (hidden, weight, target, bias=None, *, class_weight=None, ignore_index=Int(-100), reduction="mean", label_smoothing=Real(0.0), z_loss=Real(0.0), softcap=None, grad_output=None, max_memory_bytes=Int(DEFAULT_MAX_MEMORY as i64)), text_signature = "(hidden, weight, target, bias=None, *, class_weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=None, max_memory_bytes=16777216)")]
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_and_grad<'py>(
    py: Python<'py>,
    hidden: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    class_weight: Option<&Bound<'py, PyAny>>,
    ignore_index: Int,
    reduction: &str,
    label_smoothing: Real,
    z_loss: Real,
    softcap: Option<Real>,
    grad_output: Option<&Bound<'py, PyAny>>,
    max_memory_bytes: Int,
) -> PyResult<Bound<'py, PyAny>> {
    let o = LinearArgs {
        bias,
        class_weight,
        ignore_index: ignore_index.0,
        reduction,
        label_smoothing: label_smoothing.0,
        z_loss: z_loss.0,
        softcap: softcap.map(|c| c.0),
        grad_output,
        max_memory_bytes: max_memory_bytes.0,
    };
    linear(
        py,
        "linear_cross_entropy_and_grad",
        true,
        hidden,
        weight,
        target,
        o,
    )
}
