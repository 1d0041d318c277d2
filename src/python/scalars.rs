//! Scalar arguments whose Python value may not fit the Rust type: `axis=2**70`,
//! `ignore_index=-2**64`, `label_smoothing=10**400`. PyO3's own conversions raise
//! `OverflowError`, which the contract does not name; these wrappers raise the contract's
//! `AxisError` / `ValueError` instead, and keep PyO3's `TypeError` for values of the wrong kind.

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

use super::array::axis_error_message;

/// Text of a Python value for a message, cut short (a huge int has hundreds of digits).
fn shown(obj: &Borrowed<'_, '_, PyAny>) -> String {
    let s = obj.str().map_or_else(|_| "?".into(), |s| s.to_string());
    if s.len() > 40 {
        format!("{}...({} digits)", &s[..20], s.len())
    } else {
        s
    }
}

/// The class axis: an out-of-range integer of any size is an `AxisError`.
#[derive(Clone, Copy, Debug)]
pub struct Axis(pub isize);

impl FromPyObject<'_, '_> for Axis {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        match obj.extract::<isize>() {
            Ok(a) => Ok(Axis(a)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(axis_error_message(
                obj.py(),
                &format!(
                    "axis {} is out of bounds: it does not fit in 64 bits",
                    shown(&obj)
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A 64-bit integer option (`ignore_index`, a thread count).
#[derive(Clone, Copy, Debug)]
pub struct Int(pub i64);

impl FromPyObject<'_, '_> for Int {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        match obj.extract::<i64>() {
            Ok(v) => Ok(Int(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(PyValueError::new_err(
                format!("the integer {} does not fit in 64 bits", shown(&obj)),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A float option (`label_smoothing`, `z_loss`, `softcap`).
#[derive(Clone, Copy, Debug)]
pub struct Real(pub f64);

impl FromPyObject<'_, '_> for Real {
    type Error = PyErr;
    fn extract(obj: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
        match obj.extract::<f64>() {
            Ok(v) => Ok(Real(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(PyValueError::new_err(
                format!("the number {} is out of the float64 range", shown(&obj)),
            )),
            Err(e) => Err(e),
        }
    }
}
