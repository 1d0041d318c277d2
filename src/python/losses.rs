//! The multi-class losses: `cross_entropy`, `cross_entropy_and_grad` and `nll_loss`, with
//! their targets (class indices or probabilities), options and `out=`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::array::{loss_scalar, Arr};
use super::call::{ensure_allocatable, gathered_row, read_rows, run, written_rows};
use super::convert::{arg, norm_axis, parse_reduction, shape_without};
use super::errors::{prefixed, to_py};
use super::scalars::{Axis, Int, Real};
use crate::dtype::DType;
use crate::error::fmt_index;
use crate::float::Float;
use crate::isa::Level;
use crate::ops::{self, CeOptions, Loss, Reduction, Src, Targets, Upstream};

// ---------------------------------------------------------------- multi-class losses

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    CrossEntropy,
    CrossEntropyGrad,
    Nll,
}

/// The keyword options of the multi-class losses, as received.
pub(super) struct MultiOpts<'a, 'py> {
    pub(super) axis: isize,
    pub(super) weight: Option<&'a Bound<'py, PyAny>>,
    pub(super) ignore_index: i64,
    pub(super) reduction: &'a str,
    pub(super) label_smoothing: f64,
    pub(super) z_loss: f64,
    pub(super) softcap: Option<f64>,
    pub(super) grad_output: Option<&'a Bound<'py, PyAny>>,
    pub(super) out: Option<&'a Bound<'py, PyAny>>,
}

/// The options' own checks (the core's, so a Rust caller gets the same errors).
pub(super) fn check_options(py: Python<'_>, f: &str, o: &MultiOpts<'_, '_>) -> PyResult<()> {
    CeOptions::<f64>::new(0, None, o.label_smoothing, o.z_loss, o.softcap)
        .map(drop)
        .map_err(|e| to_py(py, f, e))
}

/// A per-class weight vector of length `k`, in f64.
pub(super) fn class_weights(
    py: Python<'_>,
    f: &str,
    w: &Bound<'_, PyAny>,
    k: usize,
) -> PyResult<Vec<f64>> {
    let w = arg(py, f, w, "weight")?;
    if w.shape() != [k] {
        return Err(PyValueError::new_err(format!(
            "{f}: weight must have shape ({k},), one value per class, got {}",
            fmt_index(w.shape())
        )));
    }
    ensure_allocatable(f, k.saturating_mul(16))?; // the f64 weights and their compute-type copy
    let mut buf = Vec::new();
    Ok(w.view(None).load::<f64>(0, k, &mut buf).to_vec())
}

/// The upstream gradient: a scalar for reduced losses, an array broadcast to `loss_shape` for
/// `"none"`.
pub(super) fn upstream<'py>(
    py: Python<'py>,
    f: &str,
    g: Option<&Bound<'py, PyAny>>,
    reduction: Reduction,
    loss_shape: &[usize],
) -> PyResult<(f64, Option<Arr<'py>>)> {
    let Some(g) = g.filter(|g| !g.is_none()) else {
        return Ok((1.0, None));
    };
    if reduction != Reduction::None {
        return match g.extract::<f64>() {
            Ok(v) => Ok((v, None)),
            Err(_) => Err(PyValueError::new_err(format!(
                "{f}: grad_output must be a scalar for a reduced loss, got {}",
                g.get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
            ))),
        };
    }
    let a = arg(py, f, g, "grad_output")?;
    if crate::strided::broadcast_strides(a.shape(), a.strides(), loss_shape).is_err() {
        return Err(PyValueError::new_err(format!(
            "{f}: grad_output of shape {} does not match the per-row loss shape {}",
            fmt_index(a.shape()),
            fmt_index(loss_shape)
        )));
    }
    Ok((f64::NAN, Some(a)))
}

/// The gradient buffer of an `_and_grad` call: the caller's checked `out=`, or a fresh array.
pub(super) fn grad_buffer<'py>(
    py: Python<'py>,
    f: &str,
    out: Option<&Bound<'py, PyAny>>,
    x: &Arr<'py>,
    dt: DType,
) -> PyResult<Arr<'py>> {
    match out.filter(|o| !o.is_none()) {
        Some(o) => Arr::out(o, x.shape(), dt).map_err(|e| prefixed(py, f, e)),
        None => Arr::empty(py, x.shape(), dt, x),
    }
}

/// What a loss function returns: the per-row losses (`"none"`) or the reduced scalar, paired
/// with the gradient for the `_and_grad` forms.
pub(super) fn loss_result<'py>(
    py: Python<'py>,
    losses: Option<Arr<'py>>,
    total: f64,
    input_dtype: DType,
    grad: Option<Arr<'py>>,
) -> PyResult<Bound<'py, PyAny>> {
    let loss = match losses {
        Some(l) => l.into_result()?,
        None => loss_scalar(py, total, input_dtype)?,
    };
    match grad {
        Some(g) => Ok(PyTuple::new(py, [loss, g.arr.into_any()])?.into_any()),
        None => Ok(loss),
    }
}

pub(super) fn multiclass<'py>(
    py: Python<'py>,
    f: &str,
    kind: Kind,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    o: MultiOpts<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let isa = Level::active();
    let mut x = arg(py, f, input, "input")?;
    let a = norm_axis(py, f, o.axis, x.ndim())?;
    let reduction = parse_reduction(py, f, o.reduction)?;
    check_options(py, f, &o)?;
    let k = x.shape()[a];
    let outer = shape_without(x.shape(), a);
    let dt = x.dtype.result();
    let weight = o
        .weight
        .filter(|w| !w.is_none())
        .map(|w| class_weights(py, f, w, k))
        .transpose()?;

    let mut t = arg(py, f, target, "target")?;
    let probs = if t.shape() == x.shape() {
        true
    } else if t.shape() == &*outer {
        if !t.dtype.is_integer() {
            // A float array of the index shape is a shape mismatch (probabilities need the
            // input's shape: a ValueError, as the conformance vectors ask); a bool one is of a
            // dtype no target takes, a TypeError (API.md).
            let err = if t.dtype == DType::Bool {
                PyTypeError::new_err
            } else {
                PyValueError::new_err
            };
            return Err(err(format!(
                "{f}: class-index targets must have an integer dtype, got {} (probability targets need the input's shape {})",
                t.dtype.name(),
                fmt_index(x.shape())
            )));
        }
        false
    } else {
        return Err(PyValueError::new_err(format!(
            "{f}: target has shape {} but input of shape {} with axis={} needs class indices of shape {} or probabilities of shape {}",
            fmt_index(t.shape()),
            fmt_index(x.shape()),
            o.axis,
            fmt_index(&outer),
            fmt_index(x.shape())
        )));
    };

    let (scalar_up, mut up_arr) = if kind == Kind::CrossEntropyGrad {
        upstream(py, f, o.grad_output, reduction, &outer)?
    } else {
        (1.0, None)
    };
    let mut grad = if kind == Kind::CrossEntropyGrad {
        Some(grad_buffer(py, f, o.out, &x, dt)?)
    } else {
        None
    };
    let in_place = match &grad {
        Some(g) => Arr::guard_inputs(g, &mut x, [Some(&mut t), up_arr.as_mut()])?,
        None => false,
    };
    let mut losses = if reduction == Reduction::None {
        Some(Arr::empty(py, &outer, dt, &x)?)
    } else {
        None
    };

    let xv = (!in_place).then(|| x.view(Some(a)));
    let src = xv.as_ref().map_or(Src::Out, Src::View);
    let tv = if probs { t.view(Some(a)) } else { t.view(None) };
    let uv = up_arr
        .as_ref()
        .map(|u| u.broadcast_view(&outer, None, "grad_output"))
        .transpose()?;
    let mut gv = grad
        .as_mut()
        .map(|g| g.view_mut(Some(a)))
        .transpose()
        .map_err(|e| to_py(py, f, e))?;
    let mut lv = losses
        .as_mut()
        .map(|l| l.view_mut(None))
        .transpose()
        .map_err(|e| to_py(py, f, e))?;
    let targets = if probs {
        Targets::Probs(&tv)
    } else {
        Targets::Index {
            view: &tv,
            ignore_index: o.ignore_index,
            shape: &outer,
        }
    };
    let up = match &uv {
        Some(v) => Upstream::PerRow(v),
        None => Upstream::Scalar(scalar_up),
    };
    let c = dt.compute();
    let rows = (xv.iter().map(|v| read_rows(v, c)))
        .chain(gv.as_ref().map(|g| written_rows(g, c)))
        .chain(probs.then(|| read_rows(&tv, c)));
    let total = run(py, f, x.size(), gathered_row(rows), || {
        with_compute!(dt, T => {
            match kind {
                Kind::Nll => {
                    let w: Option<Vec<T>> = weight.as_ref().map(|w| w.iter().map(|&v| T::from_f64(v)).collect());
                    ops::multiclass_loss::<T>(isa, Loss::Nll(w.as_deref()), src, targets, reduction, up, lv.as_mut(), None)
                }
                _ => {
                    let opts = CeOptions::<T>::new(k, weight.as_deref(), o.label_smoothing, o.z_loss, o.softcap)?;
                    ops::multiclass_loss::<T>(isa, Loss::CrossEntropy(&opts), src, targets, reduction, up, lv.as_mut(), gv.as_mut())
                }
            }
        })
    })
?
    .map_err(|e| to_py(py, f, e))?;

    loss_result(py, losses, total, x.dtype, grad)
}

/// PyTorch's `F.cross_entropy` on logits, with the class axis chosen by `axis`.
///
/// Parameters
/// ----------
/// input : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes).
/// target : array_like
///     Class indices (any integer dtype, `input`'s shape without `axis`) or probabilities
///     (a real array of `input`'s shape).
/// axis : int, default -1
///     The class axis (`axis=1` is PyTorch's layout).
/// weight : array_like, optional
///     A weight per class, shape `(K,)`.
/// ignore_index : int, default -100
///     Rows whose class index equals it count for nothing (class-index targets only).
/// reduction : {"mean", "sum", "none"}, default "mean"
///     `"mean"` divides by the summed weights of the counted rows (PyTorch's rule).
/// label_smoothing : float, default 0.0
///     Mixes the target with the uniform distribution, in `[0, 1]`.
/// z_loss : float, default 0.0
///     Adds `z_loss * logsumexp(row)**2` per counted row (PaLM's auxiliary loss).
/// softcap : float, optional
///     Replaces the logits by `softcap * tanh(x / softcap)` first (Gemma 2).
///
/// Returns
/// -------
/// numpy scalar or ndarray
///     A reduced loss is a NumPy scalar (float32 for float32 and half inputs, else float64);
///     `"none"` gives the per-row losses.
///
/// Raises
/// ------
/// IndexError
///     A class index outside `[0, K)` that is not `ignore_index`, named with its position.
/// ValueError
///     Shapes that do not fit, an unknown reduction, an option out of range.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
/// >>> sce_rs.cross_entropy(x, np.array([0, 1])).round(4)
/// np.float64(0.3185)
/// >>> sce_rs.cross_entropy(x, np.array([0, 1]), reduction="none").round(4)
/// array([0.417, 0.22 ])
/// >>> sce_rs.cross_entropy(x, np.array([[1.0, 0, 0], [0, 1.0, 0]])).round(4)  # probabilities
/// np.float64(0.3185)
#[pyfunction]
#[pyo3(signature = (input, target, *, axis=Axis(-1), weight=None, ignore_index=Int(-100), reduction="mean", label_smoothing=Real(0.0), z_loss=Real(0.0), softcap=None), text_signature = "(input, target, *, axis=-1, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=0.0, softcap=None)")]
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    axis: Axis,
    weight: Option<&Bound<'py, PyAny>>,
    ignore_index: Int,
    reduction: &str,
    label_smoothing: Real,
    z_loss: Real,
    softcap: Option<Real>,
) -> PyResult<Bound<'py, PyAny>> {
    let o = MultiOpts {
        axis: axis.0,
        weight,
        ignore_index: ignore_index.0,
        reduction,
        label_smoothing: label_smoothing.0,
        z_loss: z_loss.0,
        softcap: softcap.map(|c| c.0),
        grad_output: None,
        out: None,
    };
    multiclass(py, "cross_entropy", Kind::CrossEntropy, input, target, o)
}

/// `(loss, grad)`: the cross-entropy and its gradient with respect to `input`, in one pass.
///
/// Parameters
/// ----------
/// input, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss, softcap
///     As in `cross_entropy`.
/// grad_output : array_like, optional
///     The upstream gradient: a scalar for a reduced loss, the per-row shape for `"none"`.
///     Default 1.
/// out : ndarray, optional
///     Where to write the gradient (`input`'s shape and dtype). `out=input` overwrites the
///     logits with their gradient: no second N x K buffer.
///
/// Returns
/// -------
/// loss : numpy scalar or ndarray
///     As `cross_entropy` returns it.
/// grad : ndarray
///     `d loss / d input`, of `input`'s shape and dtype.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
/// >>> loss, grad = sce_rs.cross_entropy_and_grad(x, np.array([0, 1]))
/// >>> grad.round(4)
/// array([[-0.1705,  0.1212,  0.0493],
///        [ 0.0543, -0.0988,  0.0445]])
/// >>> _, _ = sce_rs.cross_entropy_and_grad(x, np.array([0, 1]), out=x)  # x now holds grad
#[pyfunction]
#[pyo3(signature = (input, target, *, axis=Axis(-1), weight=None, ignore_index=Int(-100), reduction="mean", label_smoothing=Real(0.0), z_loss=Real(0.0), softcap=None, grad_output=None, out=None), text_signature = "(input, target, *, axis=-1, weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=None, out=None)")]
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy_and_grad<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    axis: Axis,
    weight: Option<&Bound<'py, PyAny>>,
    ignore_index: Int,
    reduction: &str,
    label_smoothing: Real,
    z_loss: Real,
    softcap: Option<Real>,
    grad_output: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let o = MultiOpts {
        axis: axis.0,
        weight,
        ignore_index: ignore_index.0,
        reduction,
        label_smoothing: label_smoothing.0,
        z_loss: z_loss.0,
        softcap: softcap.map(|c| c.0),
        grad_output,
        out,
    };
    multiclass(
        py,
        "cross_entropy_and_grad",
        Kind::CrossEntropyGrad,
        input,
        target,
        o,
    )
}

/// PyTorch's `F.nll_loss` on log-probabilities: minus the target's entry, weighted.
///
/// Parameters
/// ----------
/// input : array_like
///     Log-probabilities, such as `log_softmax` returns.
/// target, axis, weight, ignore_index, reduction
///     As in `cross_entropy` (class indices only).
///
/// Returns
/// -------
/// numpy scalar or ndarray
///     As `cross_entropy` returns it.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> logp = sce_rs.log_softmax(np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]))
/// >>> sce_rs.nll_loss(logp, np.array([0, 1])).round(4)
/// np.float64(0.3185)
#[pyfunction]
#[pyo3(signature = (input, target, *, axis=Axis(-1), weight=None, ignore_index=Int(-100), reduction="mean"), text_signature = "(input, target, *, axis=-1, weight=None, ignore_index=-100, reduction='mean')")]
pub(super) fn nll_loss<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    axis: Axis,
    weight: Option<&Bound<'py, PyAny>>,
    ignore_index: Int,
    reduction: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let o = MultiOpts {
        axis: axis.0,
        weight,
        ignore_index: ignore_index.0,
        reduction,
        label_smoothing: 0.0,
        z_loss: 0.0,
        softcap: None,
        grad_output: None,
        out: None,
    };
    multiclass(py, "nll_loss", Kind::Nll, input, target, o)
}
