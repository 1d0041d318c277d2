//! `axis=None` and tuples of axes for `softmax`, `log_softmax` and `logsumexp`, and SciPy's
//! `b=`/`return_sign` for `logsumexp`.
//!
//! The kernels see one class axis. Other axis specifications are rare, so they leave the
//! binding here and go to `sce_rs._axes`, which moves the class axes last and merges them
//! (NumPy's `moveaxis` + `reshape`: a view when the axes are already adjacent and in order,
//! a whole-array copy otherwise) and calls back with `axis=-1`. The plain integer axis costs
//! nothing more than before: it is extracted first, as it always was.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::scalars::Axis;

/// The `axis` argument of the softmax family: one integer (the kernels' own case), or
/// `None` / a tuple, handed on as given.
pub enum AxisArg {
    One(isize),
    Many(Py<PyAny>),
}

impl FromPyObject<'_, '_> for AxisArg {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        if obj.is_none() || obj.is_instance_of::<PyTuple>() {
            return Ok(AxisArg::Many(obj.to_owned().unbind()));
        }
        Ok(AxisArg::One(obj.extract::<Axis>()?.0))
    }
}

impl AxisArg {
    /// The axis as the Python value it came from (an int for the integer case).
    pub fn to_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            AxisArg::One(a) => Ok(a.into_pyobject(py)?.into_any().unbind()),
            AxisArg::Many(obj) => Ok(obj.clone_ref(py)),
        }
    }
}

/// Calls `sce_rs._axes.<f>(x, axis, **kwargs)`.
pub fn delegate<'py>(
    py: Python<'py>,
    f: &str,
    x: &Bound<'py, PyAny>,
    axis: &AxisArg,
    kwargs: &[(&str, Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    let kw = PyDict::new(py);
    for (k, v) in kwargs {
        kw.set_item(k, v)?;
    }
    py.import("sce_rs._axes")?
        .getattr(f)?
        .call((x, axis.to_object(py)?), Some(&kw))
}
