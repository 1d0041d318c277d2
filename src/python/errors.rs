//! Core errors to Python exceptions, in one place: the contract's `TypeError`, `ValueError`,
//! `IndexError` and `AxisError`, each message prefixed by the function that raised it.

use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::array::axis_error;
use crate::error::Error;

/// Maps a core error to the Python exception the contract names, prefixed by the function.
pub(super) fn to_py(py: Python<'_>, f: &str, e: Error) -> PyErr {
    match e {
        Error::Axis { axis, ndim } => axis_error(py, axis, ndim, f),
        Error::ClassIndex { .. } => PyIndexError::new_err(format!("{f}: {e}")),
        Error::Shape(_) | Error::Value(_) | Error::Domain { .. } => {
            PyValueError::new_err(format!("{f}: {e}"))
        }
    }
}

/// Prefixes the message of an argument error raised while converting, keeping its type.
pub(super) fn prefixed(py: Python<'_>, f: &str, e: PyErr) -> PyErr {
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
