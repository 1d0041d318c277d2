//! The thread pool and instruction-set switches exposed to Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::errors::to_py;
use super::scalars::Int;

// ---------------------------------------------------------------- runtime

/// Sets the number of threads the kernels use (at least 1).
#[pyfunction]
pub(super) fn set_num_threads(py: Python<'_>, n: Int) -> PyResult<()> {
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
pub(super) fn get_num_threads() -> usize {
    crate::pool::num_threads()
}

/// The instruction set the kernels run on.
#[pyfunction]
pub(super) fn simd_backend() -> &'static str {
    crate::kernels::simd_backend()
}

/// Testing hook: runs the kernels with the named instruction set (`"sse2"`, `"avx2"`,
/// `"avx512"`, `"neon"`, `"scalar"`), or the best one below it that the CPU has; returns the one
/// chosen. Results never depend on it beyond the last bits (see `simd_backend`).
#[pyfunction]
pub(super) fn _force_simd_backend(name: &str) -> PyResult<&'static str> {
    let wanted = crate::isa::Isa::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown SIMD backend '{name}'; expected one of 'scalar', 'sse2', 'neon', 'avx2', 'avx512'"
        ))
    })?;
    Ok(crate::isa::force(wanted).name())
}
