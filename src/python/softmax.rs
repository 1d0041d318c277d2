//! The softmax family: `softmax`, `log_softmax`, `logsumexp`, the Jacobian and the two
//! backward functions.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBool;

use super::array::Arr;
use super::axes::{self, AxisArg};
use super::call::{gathered_row, read_rows, run, written_rows};
use super::convert::{arg, norm_axis, promote, shape_without};
use super::errors::{prefixed, to_py};
use super::scalars::Axis;
use crate::dtype::DType;
use crate::error::fmt_index;
use crate::isa::Level;
use crate::ops::{self, RowMap, Src};

// ---------------------------------------------------------------- softmax family
//
// `text_signature` is spelled out where a default is a negative number, which PyO3 would
// otherwise render as `...` (and `mypy.stubtest` would flag against the stub).

pub(super) fn row_map_py<'py>(
    py: Python<'py>,
    f: &str,
    map: RowMap,
    x: &Bound<'py, PyAny>,
    axis: isize,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let isa = Level::active();
    let mut x = arg(py, f, x, "x")?;
    let a = norm_axis(py, f, axis, x.ndim())?;
    let dt = x.dtype.result();
    let given = out.is_some();
    let mut out = match out {
        Some(o) => Arr::out(o, x.shape(), dt).map_err(|e| prefixed(py, f, e))?,
        None => Arr::empty(py, x.shape(), dt, &x)?,
    };
    let in_place = x.guard_against(&out)?;
    let xv = (!in_place).then(|| x.view(Some(a)));
    let mut ov = out.view_mut(Some(a)).map_err(|e| to_py(py, f, e))?;
    let src = xv.as_ref().map_or(Src::Out, Src::View);
    let c = dt.compute();
    let rows = xv.as_ref().map(|v| read_rows(v, c));
    run(
        py,
        f,
        x.size(),
        gathered_row(rows.into_iter().chain([written_rows(&ov, c)])),
        || with_compute!(dt, T => ops::row_map::<T>(isa, map, src, &mut ov)),
    )?
    .map_err(|e| to_py(py, f, e))?;
    if given {
        Ok(out.arr.into_any())
    } else {
        out.into_result()
    }
}

/// Softmax along `axis`: `exp(x - max) / sum(exp(x - max))`.
///
/// Parameters
/// ----------
/// x : array_like
///     Logits: float16, bfloat16, float32 or float64 (integers and bools are computed as
///     float64), any shape and strides; DLPack producers (PyTorch, JAX) are read in place.
/// axis : int, None or tuple of ints, default -1
///     The class axis; `None` takes all elements as one row of classes, a tuple of axes
///     spans the classes over those axes together (a whole-array copy unless they are the
///     trailing axes in order).
/// out : ndarray, optional
///     A writable array of the result's shape and dtype to write into; may be `x` itself.
///
/// Returns
/// -------
/// ndarray
///     Probabilities of `x`'s shape and dtype. A row holding NaN, or only `-inf`, gives NaN.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
/// >>> sce_rs.softmax(x).round(4)
/// array([[0.659 , 0.2424, 0.0986],
///        [0.1086, 0.8025, 0.0889]])
/// >>> round(float(sce_rs.softmax(x, axis=None).sum()), 12), sce_rs.softmax(x, axis=(0, 1)).shape
/// (1.0, (2, 3))
/// >>> _ = sce_rs.softmax(x, out=x)  # in place
#[pyfunction]
#[pyo3(signature = (x, axis=AxisArg::One(-1), *, out=None), text_signature = "(x, axis=-1, *, out=None)")]
pub(super) fn softmax<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: AxisArg,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match axis {
        AxisArg::One(a) => row_map_py(py, "softmax", RowMap::Softmax, x, a, out),
        _ => axes::delegate(py, "softmax", x, &axis, &[("out", out.into_pyobject(py)?)]),
    }
}

/// Log-softmax along `axis`: `x - logsumexp(x)`, without forming `softmax(x)`.
///
/// Parameters
/// ----------
/// x : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes).
/// axis : int, None or tuple of ints, default -1
///     The class axis, all of them (`None`) or several together, as in `softmax`.
/// out : ndarray, optional
///     A writable array of the result's shape and dtype to write into; may be `x` itself.
///
/// Returns
/// -------
/// ndarray
///     Log-probabilities of `x`'s shape and dtype.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> sce_rs.log_softmax(np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])).round(4)
/// array([[-0.417, -1.417, -2.317],
///        [-2.22 , -0.22 , -2.42 ]])
#[pyfunction]
#[pyo3(signature = (x, axis=AxisArg::One(-1), *, out=None), text_signature = "(x, axis=-1, *, out=None)")]
pub(super) fn log_softmax<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: AxisArg,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match axis {
        AxisArg::One(a) => row_map_py(py, "log_softmax", RowMap::LogSoftmax, x, a, out),
        _ => axes::delegate(
            py,
            "log_softmax",
            x,
            &axis,
            &[("out", out.into_pyobject(py)?)],
        ),
    }
}

/// Stable `log(sum(exp(x)))` along `axis`.
///
/// Parameters
/// ----------
/// x : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes).
/// axis : int, None or tuple of ints, default -1
///     The axis summed over; `None` sums all elements, a tuple several axes together.
/// keepdims : bool, default False
///     Keep `axis` with length 1, as NumPy's reductions do.
/// b : array_like, optional
///     Scale factors, broadcast against `x` (SciPy's): `log(sum(b * exp(x)))`. Negative
///     values are allowed; a negative sum gives NaN unless `return_sign`.
/// return_sign : bool, default False
///     Return `(log(abs(s)), sign(s))` for the sum `s` (sign 0 for an empty or zero sum).
///
/// Returns
/// -------
/// ndarray or numpy scalar
///     `x`'s shape without `axis` (a NumPy scalar for a 1-d `x`), in `x`'s dtype (with `b`,
///     NumPy's promotion of both, integers as float64). An empty axis gives `-inf`.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
/// >>> sce_rs.logsumexp(x).round(4)
/// array([2.417, 2.72 ])
/// >>> sce_rs.logsumexp(x, keepdims=True).shape
/// (2, 1)
/// >>> float(sce_rs.logsumexp([1000.0, 1000.0]))  # no overflow
/// 1000.6931471805599
/// >>> bool(np.isclose(sce_rs.logsumexp(x, axis=None), np.log(np.exp(x).sum())))
/// True
/// >>> lse, sign = sce_rs.logsumexp([1.0, 1.0, 1.0], b=[1, -1, -1], return_sign=True)
/// >>> round(float(lse), 12), float(sign)  # log|e - 2e| = 1, negative
/// (1.0, -1.0)
#[pyfunction]
#[pyo3(
    signature = (x, axis=AxisArg::One(-1), *, keepdims=false, b=None, return_sign=false),
    text_signature = "(x, axis=-1, *, keepdims=False, b=None, return_sign=False)"
)]
pub(super) fn logsumexp<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: AxisArg,
    keepdims: bool,
    b: Option<&Bound<'py, PyAny>>,
    return_sign: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let f = "logsumexp";
    let isa = Level::active();
    let axis = match axis {
        AxisArg::One(a) if b.is_none() && !return_sign => a,
        _ => {
            let flag = |v: bool| PyBool::new(py, v).to_owned().into_any();
            let kw = [
                ("keepdims", flag(keepdims)),
                ("b", b.into_pyobject(py)?),
                ("return_sign", flag(return_sign)),
            ];
            return axes::delegate(py, f, x, &axis, &kw);
        }
    };
    let x = arg(py, f, x, "x")?;
    let a = norm_axis(py, f, axis, x.ndim())?;
    let dt = x.dtype.result();
    let mut shape = crate::strided::Dims::from(x.shape());
    if keepdims {
        shape[a] = 1;
    } else {
        shape = shape_without(x.shape(), a);
    }
    let mut out = Arr::empty(py, &shape, dt, &x)?;
    let xv = x.view(Some(a));
    let mut ov = out.view_mut(None).map_err(|e| to_py(py, f, e))?;
    run(
        py,
        f,
        x.size(),
        gathered_row([read_rows(&xv, dt.compute())]),
        || with_compute!(dt, T => ops::row_map::<T>(isa, RowMap::LogSumExp, Src::View(&xv), &mut ov)),
    )?
    .map_err(|e| to_py(py, f, e))?;
    out.into_result()
}

/// The full softmax Jacobian `diag(s) - s s^T` of every row.
///
/// Parameters
/// ----------
/// x : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes).
/// axis : int, default -1
///     The class axis.
///
/// Returns
/// -------
/// ndarray
///     Shape `x.shape + (K,)` with the class axis moved last: `J[..., i, j] = d s_i / d z_j`.
///     It holds K times the input's elements; prefer `softmax_backward` for gradients.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> sce_rs.softmax_jacobian(np.array([0.0, np.log(3.0)])).round(4)
/// array([[ 0.1875, -0.1875],
///        [-0.1875,  0.1875]])
#[pyfunction]
#[pyo3(signature = (x, axis=Axis(-1)), text_signature = "(x, axis=-1)")]
pub(super) fn softmax_jacobian<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    let f = "softmax_jacobian";
    let isa = Level::active();
    let x = arg(py, f, x, "x")?;
    let a = norm_axis(py, f, axis.0, x.ndim())?;
    let dt = x.dtype.result();
    let k = x.shape()[a];
    let mut shape = shape_without(x.shape(), a);
    let n: usize = shape.iter().product();
    shape.extend([k, k]);
    let mut out = Arr::empty(py, &shape, dt, &x)?;
    let xv = x.view(Some(a));
    // The result seen as n rows of k*k.
    let mut ov = out.rows_mut(n, k * k).map_err(|e| to_py(py, f, e))?;
    run(py, f, n * k * k.max(1), gathered_row([read_rows(&xv, dt.compute())]), || {
        with_compute!(dt, T => ops::row_map::<T>(isa, RowMap::SoftmaxJacobian, Src::View(&xv), &mut ov))
    })?
    .map_err(|e| to_py(py, f, e))?;
    out.into_result()
}

pub(super) fn backward_py<'py>(
    py: Python<'py>,
    f: &str,
    log: bool,
    g: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    let isa = Level::active();
    let g = arg(py, f, g, "grad_output")?;
    let y = arg(py, f, y, "output")?;
    if g.shape() != y.shape() {
        return Err(PyValueError::new_err(format!(
            "{f}: grad_output has shape {} but output has shape {}; they must match",
            fmt_index(g.shape()),
            fmt_index(y.shape())
        )));
    }
    let a = norm_axis(py, f, axis.0, g.ndim())?;
    let dt = promote(g.dtype, y.dtype);
    let like = if g.dtype == dt { &g } else { &y };
    let mut out = Arr::empty(py, g.shape(), dt, like)?;
    let (gv, yv) = (g.view(Some(a)), y.view(Some(a)));
    let mut ov = out.view_mut(Some(a)).map_err(|e| to_py(py, f, e))?;
    let c = dt.compute();
    let rows = [read_rows(&gv, c), read_rows(&yv, c), written_rows(&ov, c)];
    run(
        py,
        f,
        g.size(),
        gathered_row(rows),
        || with_compute!(dt, T => ops::softmax_backward::<T>(isa, log, &gv, &yv, &mut ov)),
    )?
    .map_err(|e| to_py(py, f, e))?;
    out.into_result()
}

/// Vector-Jacobian product of softmax: `s * (g - sum(g * s))`, from its output `s`.
///
/// Parameters
/// ----------
/// grad_output : array_like
///     The upstream gradient `g`, of `output`'s shape.
/// output : array_like
///     What `softmax` returned.
/// axis : int, default -1
///     The class axis used by `softmax`.
///
/// Returns
/// -------
/// ndarray
///     The gradient with respect to the logits, of `output`'s shape.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> s = sce_rs.softmax(np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]))
/// >>> sce_rs.softmax_backward(np.array([[1.0, 0, 0], [0, 0, 1.0]]), s).round(4)
/// array([[ 0.2247, -0.1598, -0.065 ],
///        [-0.0097, -0.0714,  0.081 ]])
#[pyfunction]
#[pyo3(signature = (grad_output, output, axis=Axis(-1)), text_signature = "(grad_output, output, axis=-1)")]
pub(super) fn softmax_backward<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    output: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    backward_py(py, "softmax_backward", false, grad_output, output, axis)
}

/// Vector-Jacobian product of log-softmax: `g - exp(output) * sum(g)`, from its output.
///
/// Parameters
/// ----------
/// grad_output : array_like
///     The upstream gradient `g`, of `output`'s shape.
/// output : array_like
///     What `log_softmax` returned.
/// axis : int, default -1
///     The class axis used by `log_softmax`.
///
/// Returns
/// -------
/// ndarray
///     The gradient with respect to the logits, of `output`'s shape.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> logp = sce_rs.log_softmax(np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]))
/// >>> sce_rs.log_softmax_backward(np.array([[1.0, 0, 0], [0, 0, 1.0]]), logp).round(4)
/// array([[ 0.341 , -0.2424, -0.0986],
///        [-0.1086, -0.8025,  0.9111]])
#[pyfunction]
#[pyo3(signature = (grad_output, output, axis=Axis(-1)), text_signature = "(grad_output, output, axis=-1)")]
pub(super) fn log_softmax_backward<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    output: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    backward_py(py, "log_softmax_backward", true, grad_output, output, axis)
}
