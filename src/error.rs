//! The core's error type. Each variant maps to exactly one Python exception in the binding
//! (`python/mod.rs`), so the kind of a failure is decided here, once. (Wrong kinds of objects
//! and dtypes never reach the core: the binding raises their `TypeError` while converting.)

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// Shapes that do not fit together (Python: `ValueError`).
    Shape(String),
    /// An option outside its domain, e.g. `label_smoothing=1.5` (Python: `ValueError`).
    Value(String),
    /// A class index outside `[0, K)` that is not `ignore_index` (Python: `IndexError`).
    ClassIndex {
        index: i64,
        position: Vec<usize>,
        classes: usize,
    },
    /// An input outside the function's domain, e.g. a probability of 1.5 (Python: `ValueError`).
    Domain {
        what: &'static str,
        value: f64,
        position: Vec<usize>,
    },
    /// `axis` out of range (Python: `numpy.exceptions.AxisError`).
    Axis { axis: isize, ndim: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn fmt_index(pos: &[usize]) -> String {
    match pos {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            pos.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) | Error::Value(m) => f.write_str(m),
            Error::ClassIndex {
                index,
                position,
                classes,
            } => write!(
                f,
                "target {index} at position {} is out of range: class indices must be in [0, {classes}) or equal ignore_index",
                fmt_index(position)
            ),
            Error::Domain {
                what,
                value,
                position,
            } => write!(f, "{what}, got {value} at position {}", fmt_index(position)),
            Error::Axis { axis, ndim } => write!(
                f,
                "axis {axis} is out of bounds for array of dimension {ndim}"
            ),
        }
    }
}

impl std::error::Error for Error {}
