//! Arguments common to every function: arrays, the class axis, the reduction, dtype
//! promotion.

use pyo3::prelude::*;

use super::array::{Arr, AXES};
use super::errors::{prefixed, to_py};
use crate::dtype::DType;
use crate::error::Error;
use crate::ops::Reduction;
use crate::strided::Dims;

pub(super) fn arg<'py>(
    py: Python<'py>,
    f: &str,
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Arr<'py>> {
    Arr::new(obj, what).map_err(|e| prefixed(py, f, e))
}

pub(super) fn norm_axis(py: Python<'_>, f: &str, axis: isize, ndim: usize) -> PyResult<usize> {
    let a = if axis < 0 { axis + ndim as isize } else { axis };
    if a < 0 || a >= ndim as isize {
        return Err(to_py(py, f, Error::Axis { axis, ndim }));
    }
    Ok(a as usize)
}

pub(super) fn parse_reduction(py: Python<'_>, f: &str, r: &str) -> PyResult<Reduction> {
    r.parse().map_err(|e| to_py(py, f, e))
}

/// The dtype of a result computed from inputs of dtypes `a` and `b` (NumPy-style promotion
/// among the dtypes the core produces).
pub(super) fn promote(a: DType, b: DType) -> DType {
    let (a, b) = (a.result(), b.result());
    if a == b {
        a
    } else if a == DType::F64 || b == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

pub(super) fn shape_without(shape: &[usize], axis: usize) -> Dims<usize, AXES> {
    shape
        .iter()
        .enumerate()
        .filter(|&(d, _)| d != axis)
        .map(|(_, &l)| l)
        .collect()
}
