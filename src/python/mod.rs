//! The Python binding, `sce_rs._sce_rs`: it converts arguments, releases the GIL and maps
//! errors; everything computes in [`crate::ops`] and [`crate::linear`]. One file per job:
//!
//! - `array.rs`, `scalars.rs`, `convert.rs`: NumPy arrays, Python numbers and the common
//!   arguments in and out;
//! - `call.rs`: running an operation (GIL release, Ctrl-C, scratch checks);
//! - `errors.rs`: core errors to the contract's exceptions;
//! - `softmax.rs`, `losses.rs`, `binary.rs`, `linear.rs`: the public functions, by family;
//!   `axes.rs`: the softmax family's `axis=None`/tuples and `logsumexp`'s `b=`, handed on;
//! - `runtime.rs`: threads and the instruction set;
//! - `alloc.rs`: the extension's allocator (large blocks mapped, not kept in malloc's heap).
//!
//! Each public function reads the instruction set once, first thing
//! (`crate::isa::Level::active`, which honours `SCE_RS_FORCE_ISA` and `_force_simd_backend`),
//! and passes it down, so one call never mixes levels; `linear_cross_entropy` reads it in
//! [`crate::linear`].

use pyo3::prelude::*;

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

mod alloc;
mod array;
mod axes;

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;
mod binary;
mod call;
mod convert;
mod errors;
mod linear;
mod losses;
mod runtime;
mod scalars;
mod scoring;
mod softmax;

#[pymodule]
fn _sce_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(softmax::softmax, m)?)?;
    m.add_function(wrap_pyfunction!(softmax::log_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(softmax::logsumexp, m)?)?;
    m.add_function(wrap_pyfunction!(softmax::softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax::log_softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax::softmax_jacobian, m)?)?;
    m.add_function(wrap_pyfunction!(losses::cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(losses::cross_entropy_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(losses::nll_loss, m)?)?;
    m.add_function(wrap_pyfunction!(binary::binary_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(
        binary::binary_cross_entropy_with_logits,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(
        binary::binary_cross_entropy_with_logits_and_grad,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(linear::linear_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(linear::linear_cross_entropy_and_grad, m)?)?;
    scoring::register(m)?;
    m.add_function(wrap_pyfunction!(runtime::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::simd_backend, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_force_simd_backend, m)?)?;
    Ok(())
}
