//! `perplexity` and `_token_logprobs` (which `sce_rs._scoring.token_logprobs` wraps into its
//! `TokenLogprobs` named tuple): argument checks and conversion for [`crate::scoring`].

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::array::{loss_scalar, Arr};
use super::call::{gathered_row, read_rows, run};
use super::convert::{arg, norm_axis, shape_without};
use super::errors::to_py;
use super::scalars::{Axis, Int, Real};
use crate::dtype::DType;
use crate::error::fmt_index;
use crate::isa::Level;
use crate::scoring::{ScoreOptions, ScoreOutputs, TargetIndex};

/// Adds this module's functions to the extension.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_token_logprobs, m)?)?;
    m.add_function(wrap_pyfunction!(perplexity, m)?)?;
    Ok(())
}

/// The class-index targets of `logits` (shape `outer`): an integer array of that shape.
fn class_targets<'py>(
    py: Python<'py>,
    f: &str,
    target: &Bound<'py, PyAny>,
    x: &Arr<'py>,
    axis: usize,
    outer: &[usize],
) -> PyResult<Arr<'py>> {
    let t = arg(py, f, target, "target")?;
    if !t.dtype.is_integer() {
        return Err(PyTypeError::new_err(format!(
            "{f}: target must hold class indices (an integer dtype), got {}",
            t.dtype.name()
        )));
    }
    if t.shape() != outer {
        return Err(PyValueError::new_err(format!(
            "{f}: target has shape {} but logits of shape {} with axis={axis} need one class index per row, shape {}",
            fmt_index(t.shape()),
            fmt_index(x.shape()),
            fmt_index(outer)
        )));
    }
    Ok(t)
}

/// A fresh zeroed integer or boolean result of `shape`.
fn zeros<'py, E: numpy::Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<E>> {
    PyArrayDyn::<E>::zeros(py, shape, false)
}

/// The array, or the NumPy scalar inside it when it is 0-d (as `Arr::into_result`).
fn scalar_or_array<'py, E: numpy::Element>(
    a: Bound<'py, PyArrayDyn<E>>,
) -> PyResult<Bound<'py, PyAny>> {
    if a.ndim() == 0 {
        a.as_any().get_item(PyTuple::empty(a.py()))
    } else {
        Ok(a.into_any())
    }
}

/// `token_logprobs` as a plain tuple `(logprob, is_greedy, rank, entropy, top_ids,
/// top_logprobs)`; use `sce_rs.token_logprobs`, which documents it and returns a
/// `TokenLogprobs`.
#[pyfunction]
#[pyo3(signature = (logits, target=None, *, axis=Axis(-1), ignore_index=Int(-100), top_k=Int(0), temperature=Real(1.0)), text_signature = "(logits, target=None, *, axis=-1, ignore_index=-100, top_k=0, temperature=1.0)")]
fn _token_logprobs<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    target: Option<&Bound<'py, PyAny>>,
    axis: Axis,
    ignore_index: Int,
    top_k: Int,
    temperature: Real,
) -> PyResult<Bound<'py, PyTuple>> {
    let f = "token_logprobs";
    let isa = Level::active();
    let x = arg(py, f, logits, "logits")?;
    let a = norm_axis(py, f, axis.0, x.ndim())?;
    let k = x.shape()[a];
    let outer = shape_without(x.shape(), a);
    let n: usize = outer.iter().product();
    let top_k = usize::try_from(top_k.0)
        .map_err(|_| PyValueError::new_err(format!("{f}: top_k must be >= 0, got {}", top_k.0)))?;
    let opts =
        ScoreOptions::new(k, top_k, temperature.0, ignore_index.0).map_err(|e| to_py(py, f, e))?;
    let t = target
        .filter(|t| !t.is_none())
        .map(|t| class_targets(py, f, t, &x, a, &outer))
        .transpose()?;

    let dt = x.dtype.result();
    let mut top_shape = outer.clone();
    top_shape.push(top_k);
    let mut entropy = Arr::empty(py, &outer, dt, &x)?;
    let mut top_lp = Arr::empty(py, &top_shape, dt, &x)?;
    let mut logprob = t
        .as_ref()
        .map(|_| Arr::empty(py, &outer, dt, &x))
        .transpose()?;
    let rank = t.as_ref().map(|_| zeros::<i64>(py, &outer));
    let greedy = t.as_ref().map(|_| zeros::<bool>(py, &outer));
    let ids = zeros::<i64>(py, &top_shape);

    let xv = x.view(Some(a));
    let tv = t.as_ref().map(|t| t.view(None));
    let err = |e| to_py(py, f, e);
    let mut ev = entropy.view_mut(None).map_err(err)?;
    let mut topv = top_lp.rows_mut(n, top_k).map_err(err)?;
    let mut lv = logprob
        .as_mut()
        .map(|l| l.view_mut(None))
        .transpose()
        .map_err(err)?;
    // SAFETY: the arrays were just made here, C-contiguous, and nothing else sees them until
    // they are returned; each slice is the only reference to its array's data.
    let (rank_s, greedy_s, ids_s) = unsafe {
        (
            rank.as_ref().map(|r| r.as_slice_mut()).transpose(),
            greedy.as_ref().map(|g| g.as_slice_mut()).transpose(),
            ids.as_slice_mut(),
        )
    };
    let (rank_s, greedy_s, ids_s) = (rank_s?, greedy_s?, ids_s?);
    let targets = tv.as_ref().map(|view| TargetIndex {
        view,
        shape: &outer,
    });
    let out = ScoreOutputs {
        logprob: lv.as_mut(),
        entropy: Some(&mut ev),
        top_logprobs: Some(&mut topv),
        rank: rank_s,
        is_greedy: greedy_s,
        top_ids: ids_s,
    };
    let row = gathered_row([read_rows(&xv, dt.compute())]);
    run(
        py,
        f,
        x.size(),
        row,
        || with_compute!(dt, T => crate::scoring::score_views::<T>(isa, &xv, targets, &opts, out)),
    )?
    .map_err(err)?;
    drop((ev, topv, lv));

    let none = || py.None().into_bound(py);
    let items = [
        logprob.map_or_else(|| Ok(none()), Arr::into_result)?,
        greedy.map_or_else(|| Ok(none()), scalar_or_array)?,
        rank.map_or_else(|| Ok(none()), scalar_or_array)?,
        entropy.into_result()?,
        ids.into_any(),
        top_lp.arr.into_any(),
    ];
    PyTuple::new(py, items)
}

/// The running state of a perplexity: `(nll_sum, count)` from a previous call, or zeros.
fn prior_state(f: &str, state: Option<&Bound<'_, PyAny>>) -> PyResult<(f64, u64)> {
    let Some(s) = state.filter(|s| !s.is_none()) else {
        return Ok((0.0, 0));
    };
    let bad = || {
        PyTypeError::new_err(format!(
            "{f}: state must be a (nll_sum, count) pair as a previous call returned it, got {}",
            s.repr().map_or_else(|_| "?".into(), |r| r.to_string())
        ))
    };
    let (nll, count) = s.extract::<(Real, Int)>().map_err(|_| bad())?;
    let count = u64::try_from(count.0).map_err(|_| {
        PyValueError::new_err(format!(
            "{f}: the count in state must be >= 0, got {}",
            count.0
        ))
    })?;
    Ok((nll.0, count))
}

// Python's docstring: its examples' brackets are indexing, not links.
#[allow(rustdoc::broken_intra_doc_links)]
/// Perplexity `exp(nll_sum / count)` of the targets under the logits, carried over chunks.
///
/// Parameters
/// ----------
/// logits : array_like
///     Logits (the dtypes, shapes and sources `softmax` takes), classes along `axis`.
/// target : array_like
///     Class indices, any integer dtype, of `logits`' shape without `axis`.
/// axis : int, default -1
///     The class axis.
/// ignore_index : int, default -100
///     Rows whose target equals it are left out of both sums (padding, prompt tokens).
/// state : tuple of (float, int), optional
///     The `state` a previous call returned: its sums are added to this chunk's, so a long
///     text scored chunk by chunk gives the perplexity of the whole.
///
/// Returns
/// -------
/// ppl : numpy.float64
///     `exp(nll_sum / count)` of the running state; NaN while `count` is 0.
/// state : tuple of (float, int)
///     `(nll_sum, count)`: the summed negative log-likelihood (float64, rows added in a fixed
///     order, so bitwise the same for any thread count) and the number of rows counted.
///
/// Raises
/// ------
/// IndexError
///     A target outside `[0, K)` that is not `ignore_index`, named with its position.
/// TypeError
///     A non-integer target, or a `state` that is not a `(nll_sum, count)` pair.
///
/// Examples
/// --------
/// >>> import numpy as np, sce_rs
/// >>> logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
/// >>> target = np.array([0, 1, 2])
/// >>> ppl, state = sce_rs.perplexity(logits, target)
/// >>> round(float(ppl), 4), state[1]
/// (1.6091, 3)
/// >>> _, s = sce_rs.perplexity(logits[:2], target[:2])  # the same text in two chunks
/// >>> ppl2, _ = sce_rs.perplexity(logits[2:], target[2:], state=s)
/// >>> bool(np.isclose(ppl2, ppl, rtol=1e-15))
/// True
#[pyfunction]
#[pyo3(signature = (logits, target, *, axis=Axis(-1), ignore_index=Int(-100), state=None), text_signature = "(logits, target, *, axis=-1, ignore_index=-100, state=None)")]
fn perplexity<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    axis: Axis,
    ignore_index: Int,
    state: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let f = "perplexity";
    let isa = Level::active();
    let x = arg(py, f, logits, "logits")?;
    let a = norm_axis(py, f, axis.0, x.ndim())?;
    let outer = shape_without(x.shape(), a);
    let t = class_targets(py, f, target, &x, a, &outer)?;
    let (prev_nll, prev_count) = prior_state(f, state)?;
    let dt = x.dtype.result();
    let (xv, tv) = (x.view(Some(a)), t.view(None));
    let targets = TargetIndex {
        view: &tv,
        shape: &outer,
    };
    let row = gathered_row([read_rows(&xv, dt.compute())]);
    let (nll, count) = run(
        py,
        f,
        x.size(),
        row,
        || with_compute!(dt, T => crate::scoring::perplexity_view::<T>(isa, &xv, targets, ignore_index.0)),
    )?
    .map_err(|e| to_py(py, f, e))?;
    let (nll, count) = (prev_nll + nll, prev_count + count);
    let ppl = loss_scalar(py, (nll / count as f64).exp(), DType::F64)?;
    let state = PyTuple::new(
        py,
        [
            nll.into_pyobject(py)?.into_any(),
            count.into_pyobject(py)?.into_any(),
        ],
    )?;
    PyTuple::new(py, [ppl, state.into_any()])
}
