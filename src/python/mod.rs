//! The Python binding, `sce_rs._sce_rs`: argument conversion and checking, GIL release, and
//! the mapping of core errors to Python exceptions. No numerics here: everything computes in
//! [`crate::ops`].

mod array;
mod scalars;

use pyo3::exceptions::{PyIndexError, PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::dtype::DType;
use crate::error::{fmt_index, Error};
use crate::float::Float;
use crate::ops::{self, BinaryArgs, CeOptions, Loss, Reduction, RowMap, Src, Targets, Upstream};
use crate::strided::{View, ViewMut};
use array::{axis_error, loss_scalar, Arr};
use scalars::{Axis, Int, Real};

/// Work (elements) above which the GIL is released while the kernel runs; below it the
/// release/re-acquire round trip costs more than it frees.
const GIL_RELEASE_MIN: usize = 1 << 15;

thread_local! {
    /// The exception a signal handler raised while this thread's kernel ran without the GIL.
    static INTERRUPTED: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// Runs the pending signal handlers (Python runs them on the main thread only); true if one
/// raised, typically `KeyboardInterrupt` from Ctrl-C.
fn signal_raised() -> bool {
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            INTERRUPTED.with(|slot| *slot.borrow_mut() = Some(e));
            true
        }
    })
}

/// Raises NumPy's `MemoryError` when `bytes` of scratch cannot be had, instead of letting
/// Rust abort the interpreter on a failed allocation (a zero-stride view can describe a row
/// of 2^40 elements in a few bytes, and gathering it would need terabytes).
fn ensure_allocatable(f: &str, bytes: usize) -> PyResult<()> {
    // Small amounts always succeed in practice; probing them would only cost time.
    if bytes < 1 << 26 {
        return Ok(());
    }
    Vec::<u8>::new().try_reserve_exact(bytes).map_err(|_| {
        PyMemoryError::new_err(format!(
            "{f}: cannot allocate the {bytes} bytes of scratch this input needs (a row is gathered whole when it is not contiguous)"
        ))
    })
}

/// The row length whose scratch a call may need: 0 when every view reads and writes its rows
/// in place, their row length when any of them gathers (blocks of long rows are one row).
/// Each view is given as `(row length, rows, whether its first row is used in place)`.
fn gathered_row(views: &[(usize, usize, bool)]) -> usize {
    if views
        .iter()
        .all(|&(_, rows, in_place)| rows == 0 || in_place)
    {
        0
    } else {
        views.iter().map(|v| v.0).max().unwrap_or(0)
    }
}

/// [`gathered_row`]'s description of an input view.
fn read_rows(v: &View<'_>, compute: DType) -> (usize, usize, bool) {
    (v.k(), v.rows(), v.loads_in_place(compute, 0, 1))
}

/// [`gathered_row`]'s description of an output view.
fn written_rows(v: &ViewMut<'_>, compute: DType) -> (usize, usize, bool) {
    (v.k(), v.rows(), v.stores_in_place(compute, 0, 1))
}

/// Runs `f` with the GIL released when the work is large enough to be worth it, after
/// checking that scratch for a few rows of `row` elements can be allocated. A long run
/// checks for signals between waves of blocks (see [`crate::pool::interruptible`]); if a
/// handler raised, the partial result is dropped and its exception returned.
fn run<R: Send>(
    py: Python<'_>,
    f_name: &str,
    elems: usize,
    row: usize,
    f: impl FnOnce() -> R + Send,
) -> PyResult<R> {
    // Up to four gathered rows of 8-byte values per block (input, target, upstream, output).
    ensure_allocatable(f_name, row.saturating_mul(32))?;
    if elems < GIL_RELEASE_MIN {
        return Ok(f());
    }
    let (r, stopped) = py.detach(|| crate::pool::interruptible(signal_raised, f));
    match INTERRUPTED.with(|slot| slot.borrow_mut().take()) {
        Some(e) if stopped => Err(e),
        _ => Ok(r),
    }
}

/// Calls `$body` with `$T` the compute type (`f32`/`f64`) for results of dtype `$dt`.
macro_rules! with_compute {
    ($dt:expr, $T:ident => $body:expr) => {
        if $dt.compute() == DType::F32 {
            type $T = f32;
            $body
        } else {
            type $T = f64;
            $body
        }
    };
}

// After `with_compute!`, which it uses (macros are visible to modules declared below them).
mod linear;

/// Maps a core error to the Python exception the contract names, prefixed by the function.
fn to_py(py: Python<'_>, f: &str, e: Error) -> PyErr {
    match e {
        Error::Axis { axis, ndim } => axis_error(py, axis, ndim, f),
        Error::ClassIndex { .. } => PyIndexError::new_err(format!("{f}: {e}")),
        Error::Shape(_) | Error::Value(_) | Error::Domain { .. } => {
            PyValueError::new_err(format!("{f}: {e}"))
        }
    }
}

/// Prefixes the message of an argument error raised while converting, keeping its type.
fn prefixed(py: Python<'_>, f: &str, e: PyErr) -> PyErr {
    let ty = e.get_type(py);
    let msg = e
        .value(py)
        .str()
        .map_or_else(|_| String::new(), |s| s.to_string());
    if ty.is(py.get_type::<PyTypeError>()) {
        PyTypeError::new_err(format!("{f}: {msg}"))
    } else if ty.is(py.get_type::<PyValueError>()) {
        PyValueError::new_err(format!("{f}: {msg}"))
    } else {
        e
    }
}

fn arg<'py>(py: Python<'py>, f: &str, obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Arr<'py>> {
    Arr::new(obj, what).map_err(|e| prefixed(py, f, e))
}

fn norm_axis(py: Python<'_>, f: &str, axis: isize, ndim: usize) -> PyResult<usize> {
    let a = if axis < 0 { axis + ndim as isize } else { axis };
    if a < 0 || a >= ndim as isize {
        return Err(to_py(py, f, Error::Axis { axis, ndim }));
    }
    Ok(a as usize)
}

fn parse_reduction(py: Python<'_>, f: &str, r: &str) -> PyResult<Reduction> {
    r.parse().map_err(|e| to_py(py, f, e))
}

/// The dtype of a result computed from inputs of dtypes `a` and `b` (NumPy-style promotion
/// among the dtypes the core produces).
fn promote(a: DType, b: DType) -> DType {
    let (a, b) = (a.result(), b.result());
    if a == b {
        a
    } else if a == DType::F64 || b == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn shape_without(shape: &[usize], axis: usize) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter(|&(d, _)| d != axis)
        .map(|(_, &l)| l)
        .collect()
}

// ---------------------------------------------------------------- softmax family
//
// `text_signature` is spelled out where a default is a negative number, which PyO3 would
// otherwise render as `...` (and `mypy.stubtest` would flag against the stub).

fn row_map_py<'py>(
    py: Python<'py>,
    f: &str,
    map: RowMap,
    x: &Bound<'py, PyAny>,
    axis: isize,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut x = arg(py, f, x, "x")?;
    let a = norm_axis(py, f, axis, x.ndim())?;
    let dt = x.dtype.result();
    let given = out.is_some();
    let mut out = match out {
        Some(o) => Arr::out(o, &x.shape, dt).map_err(|e| prefixed(py, f, e))?,
        None => Arr::empty(py, &x.shape, dt, &x)?,
    };
    let in_place = x.guard_against(&out)?;
    let xv = (!in_place).then(|| x.view(Some(a)));
    let mut ov = out.view_mut(Some(a)).map_err(|e| to_py(py, f, e))?;
    let src = xv.as_ref().map_or(Src::Out, Src::View);
    let mut rows = vec![written_rows(&ov, dt.compute())];
    rows.extend(xv.as_ref().map(|v| read_rows(v, dt.compute())));
    run(
        py,
        f,
        x.size(),
        gathered_row(&rows),
        || with_compute!(dt, T => ops::row_map::<T>(map, src, &mut ov)),
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
/// axis : int, default -1
///     The class axis.
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
/// >>> _ = sce_rs.softmax(x, out=x)  # in place
#[pyfunction]
#[pyo3(signature = (x, axis=Axis(-1), *, out=None), text_signature = "(x, axis=-1, *, out=None)")]
fn softmax<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Axis,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    row_map_py(py, "softmax", RowMap::Softmax, x, axis.0, out)
}

/// Log-softmax along `axis`: `x - logsumexp(x)`, without forming `softmax(x)`.
///
/// Parameters
/// ----------
/// x : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes).
/// axis : int, default -1
///     The class axis.
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
#[pyo3(signature = (x, axis=Axis(-1), *, out=None), text_signature = "(x, axis=-1, *, out=None)")]
fn log_softmax<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Axis,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    row_map_py(py, "log_softmax", RowMap::LogSoftmax, x, axis.0, out)
}

/// Stable `log(sum(exp(x)))` along `axis`.
///
/// Parameters
/// ----------
/// x : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes).
/// axis : int, default -1
///     The axis summed over.
/// keepdims : bool, default False
///     Keep `axis` with length 1, as NumPy's reductions do.
///
/// Returns
/// -------
/// ndarray or numpy scalar
///     `x`'s shape without `axis` (a NumPy scalar for a 1-d `x`), in `x`'s dtype. An empty
///     axis gives `-inf`.
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
#[pyfunction]
#[pyo3(signature = (x, axis=Axis(-1), *, keepdims=false), text_signature = "(x, axis=-1, *, keepdims=False)")]
fn logsumexp<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Axis,
    keepdims: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let f = "logsumexp";
    let x = arg(py, f, x, "x")?;
    let a = norm_axis(py, f, axis.0, x.ndim())?;
    let dt = x.dtype.result();
    let mut shape = x.shape.clone();
    if keepdims {
        shape[a] = 1;
    } else {
        shape.remove(a);
    }
    let mut out = Arr::empty(py, &shape, dt, &x)?;
    let xv = x.view(Some(a));
    let mut ov = out.view_mut(None).map_err(|e| to_py(py, f, e))?;
    run(
        py,
        f,
        x.size(),
        gathered_row(&[read_rows(&xv, dt.compute())]),
        || with_compute!(dt, T => ops::row_map::<T>(RowMap::LogSumExp, Src::View(&xv), &mut ov)),
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
fn softmax_jacobian<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    let f = "softmax_jacobian";
    let x = arg(py, f, x, "x")?;
    let a = norm_axis(py, f, axis.0, x.ndim())?;
    let dt = x.dtype.result();
    let k = x.shape[a];
    let mut shape = shape_without(&x.shape, a);
    let n: usize = shape.iter().product();
    shape.extend([k, k]);
    let mut out = Arr::empty(py, &shape, dt, &x)?;
    let xv = x.view(Some(a));
    // The result seen as n rows of k*k.
    let mut ov = out.rows_mut(n, k * k).map_err(|e| to_py(py, f, e))?;
    run(py, f, n * k * k.max(1), gathered_row(&[read_rows(&xv, dt.compute())]), || {
        with_compute!(dt, T => ops::row_map::<T>(RowMap::SoftmaxJacobian, Src::View(&xv), &mut ov))
    })?
    .map_err(|e| to_py(py, f, e))?;
    out.into_result()
}

fn backward_py<'py>(
    py: Python<'py>,
    f: &str,
    log: bool,
    g: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    let g = arg(py, f, g, "grad_output")?;
    let y = arg(py, f, y, "output")?;
    if g.shape != y.shape {
        return Err(PyValueError::new_err(format!(
            "{f}: grad_output has shape {} but output has shape {}; they must match",
            fmt_index(&g.shape),
            fmt_index(&y.shape)
        )));
    }
    let a = norm_axis(py, f, axis.0, g.ndim())?;
    let dt = promote(g.dtype, y.dtype);
    let like = if g.dtype == dt { &g } else { &y };
    let mut out = Arr::empty(py, &g.shape, dt, like)?;
    let (gv, yv) = (g.view(Some(a)), y.view(Some(a)));
    let mut ov = out.view_mut(Some(a)).map_err(|e| to_py(py, f, e))?;
    let c = dt.compute();
    let rows = [read_rows(&gv, c), read_rows(&yv, c), written_rows(&ov, c)];
    run(
        py,
        f,
        g.size(),
        gathered_row(&rows),
        || with_compute!(dt, T => ops::softmax_backward::<T>(log, &gv, &yv, &mut ov)),
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
fn softmax_backward<'py>(
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
fn log_softmax_backward<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    output: &Bound<'py, PyAny>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    backward_py(py, "log_softmax_backward", true, grad_output, output, axis)
}

// ---------------------------------------------------------------- multi-class losses

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    CrossEntropy,
    CrossEntropyGrad,
    Nll,
}

/// The keyword options of the multi-class losses, as received.
struct MultiOpts<'a, 'py> {
    axis: isize,
    weight: Option<&'a Bound<'py, PyAny>>,
    ignore_index: i64,
    reduction: &'a str,
    label_smoothing: f64,
    z_loss: f64,
    softcap: Option<f64>,
    grad_output: Option<&'a Bound<'py, PyAny>>,
    out: Option<&'a Bound<'py, PyAny>>,
}

/// The options' own checks (the core's, so a Rust caller gets the same errors).
fn check_options(py: Python<'_>, f: &str, o: &MultiOpts<'_, '_>) -> PyResult<()> {
    CeOptions::<f64>::new(0, None, o.label_smoothing, o.z_loss, o.softcap)
        .map(drop)
        .map_err(|e| to_py(py, f, e))
}

/// A per-class weight vector of length `k`, in f64.
fn class_weights(py: Python<'_>, f: &str, w: &Bound<'_, PyAny>, k: usize) -> PyResult<Vec<f64>> {
    let w = arg(py, f, w, "weight")?;
    if w.shape != [k] {
        return Err(PyValueError::new_err(format!(
            "{f}: weight must have shape ({k},), one value per class, got {}",
            fmt_index(&w.shape)
        )));
    }
    ensure_allocatable(f, k.saturating_mul(16))?; // the f64 weights and their compute-type copy
    let mut buf = Vec::new();
    Ok(w.view(None).load::<f64>(0, k, &mut buf).to_vec())
}

/// The upstream gradient: a scalar for reduced losses, an array broadcast to `loss_shape` for
/// `"none"`.
fn upstream<'py>(
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
    if crate::strided::broadcast_strides(&a.shape, &a.strides, loss_shape).is_err() {
        return Err(PyValueError::new_err(format!(
            "{f}: grad_output of shape {} does not match the per-row loss shape {}",
            fmt_index(&a.shape),
            fmt_index(loss_shape)
        )));
    }
    Ok((f64::NAN, Some(a)))
}

/// The gradient buffer of an `_and_grad` call: the caller's checked `out=`, or a fresh array.
fn grad_buffer<'py>(
    py: Python<'py>,
    f: &str,
    out: Option<&Bound<'py, PyAny>>,
    x: &Arr<'py>,
    dt: DType,
) -> PyResult<Arr<'py>> {
    match out.filter(|o| !o.is_none()) {
        Some(o) => Arr::out(o, &x.shape, dt).map_err(|e| prefixed(py, f, e)),
        None => Arr::empty(py, &x.shape, dt, x),
    }
}

/// What a loss function returns: the per-row losses (`"none"`) or the reduced scalar, paired
/// with the gradient for the `_and_grad` forms.
fn loss_result<'py>(
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

fn multiclass<'py>(
    py: Python<'py>,
    f: &str,
    kind: Kind,
    input: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    o: MultiOpts<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut x = arg(py, f, input, "input")?;
    let a = norm_axis(py, f, o.axis, x.ndim())?;
    let reduction = parse_reduction(py, f, o.reduction)?;
    check_options(py, f, &o)?;
    let k = x.shape[a];
    let outer = shape_without(&x.shape, a);
    let dt = x.dtype.result();
    let weight = o
        .weight
        .filter(|w| !w.is_none())
        .map(|w| class_weights(py, f, w, k))
        .transpose()?;

    let mut t = arg(py, f, target, "target")?;
    let probs = if t.shape == x.shape {
        true
    } else if t.shape == outer {
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
                fmt_index(&x.shape)
            )));
        }
        false
    } else {
        return Err(PyValueError::new_err(format!(
            "{f}: target has shape {} but input of shape {} with axis={} needs class indices of shape {} or probabilities of shape {}",
            fmt_index(&t.shape),
            fmt_index(&x.shape),
            o.axis,
            fmt_index(&outer),
            fmt_index(&x.shape)
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
    let mut rows: Vec<_> = xv.iter().map(|v| read_rows(v, c)).collect();
    rows.extend(gv.as_ref().map(|g| written_rows(g, c)));
    if probs {
        rows.push(read_rows(&tv, c));
    }
    let total = run(py, f, x.size(), gathered_row(&rows), || {
        with_compute!(dt, T => {
            match kind {
                Kind::Nll => {
                    let w: Option<Vec<T>> = weight.as_ref().map(|w| w.iter().map(|&v| T::from_f64(v)).collect());
                    ops::multiclass_loss::<T>(Loss::Nll(w.as_deref()), src, targets, reduction, up, lv.as_mut(), None)
                }
                _ => {
                    let opts = CeOptions::<T>::new(k, weight.as_deref(), o.label_smoothing, o.z_loss, o.softcap)?;
                    ops::multiclass_loss::<T>(Loss::CrossEntropy(&opts), src, targets, reduction, up, lv.as_mut(), gv.as_mut())
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
fn cross_entropy<'py>(
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
fn cross_entropy_and_grad<'py>(
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
fn nll_loss<'py>(
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

// ---------------------------------------------------------------- binary losses

#[allow(clippy::too_many_arguments)]
fn binary<'py>(
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
    let mut x = arg(py, f, input, "input")?;
    let mut y = arg(py, f, target, "target")?;
    let reduction = parse_reduction(py, f, reduction)?;
    if y.shape != x.shape {
        return Err(PyValueError::new_err(format!(
            "{f}: target has shape {} but input has shape {}; they must be equal",
            fmt_index(&y.shape),
            fmt_index(&x.shape)
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
        upstream(py, f, grad_output, reduction, &x.shape)?
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
    let shape = x.shape.clone();
    let axis = if shape.is_empty() {
        None
    } else {
        Some(shape.len() - 1)
    };
    let xv = (!in_place).then(|| x.view(axis));
    let yv = y.view(axis);
    let wv = w
        .as_ref()
        .map(|w| w.broadcast_view(&shape, axis, "weight"))
        .transpose()
        .map_err(|e| prefixed(py, f, e))?;
    let pv = pw
        .as_ref()
        .map(|p| p.broadcast_view(&shape, axis, "pos_weight"))
        .transpose()
        .map_err(|e| prefixed(py, f, e))?;
    let uv = up_arr
        .as_ref()
        .map(|u| u.broadcast_view(&shape, axis, "grad_output"))
        .transpose()?;
    let mut losses = if reduction == Reduction::None {
        Some(Arr::empty(py, &shape, dt, &x)?)
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
        shape: &shape,
    };
    let up = match &uv {
        Some(v) => Upstream::PerRow(v),
        None => Upstream::Scalar(scalar_up),
    };
    // Always a row's worth: the kernel keeps each block's losses in f64.
    let row = shape.last().copied().unwrap_or(1);
    let total = run(py, f, x.size(), row, || {
        with_compute!(dt, T => ops::binary_loss::<T>(logits, args, reduction, up, lv.as_mut(), gv.as_mut()))
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
fn binary_cross_entropy<'py>(
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
fn binary_cross_entropy_with_logits<'py>(
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
fn binary_cross_entropy_with_logits_and_grad<'py>(
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

// ---------------------------------------------------------------- runtime

/// Sets the number of threads the kernels use (at least 1).
#[pyfunction]
fn set_num_threads(py: Python<'_>, n: Int) -> PyResult<()> {
    // A bound keeps a typo (10**6) from spawning a million threads.
    const MAX_THREADS: i64 = 4096;
    let n = n.0;
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(PyValueError::new_err(format!(
            "set_num_threads: n must be at least 1 and at most {MAX_THREADS}, got {n}"
        )));
    }
    crate::pool::set_num_threads(n as usize).map_err(|e| to_py(py, "set_num_threads", e))
}

/// The number of threads the kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::pool::num_threads()
}

/// The instruction set the kernels run on.
#[pyfunction]
fn simd_backend() -> &'static str {
    crate::kernels::simd_backend()
}

/// Testing hook: runs the kernels with the named instruction set (`"sse2"`, `"avx2"`,
/// `"avx512"`, `"neon"`, `"scalar"`), or the best one below it that the CPU has; returns the one
/// chosen. Results never depend on it beyond the last bits (see `simd_backend`).
#[pyfunction]
fn _force_simd_backend(name: &str) -> PyResult<&'static str> {
    let wanted = crate::isa::Isa::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown SIMD backend '{name}'; expected one of 'scalar', 'sse2', 'neon', 'avx2', 'avx512'"
        ))
    })?;
    Ok(crate::isa::force(wanted).name())
}

#[pymodule]
fn _sce_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_jacobian, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(nll_loss, m)?)?;
    m.add_function(wrap_pyfunction!(binary_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(binary_cross_entropy_with_logits, m)?)?;
    m.add_function(wrap_pyfunction!(
        binary_cross_entropy_with_logits_and_grad,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(linear::linear_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(linear::linear_cross_entropy_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_backend, m)?)?;
    m.add_function(wrap_pyfunction!(_force_simd_backend, m)?)?;
    Ok(())
}
