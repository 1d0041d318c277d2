//! # sce_rs
//!
//! Numerically stable softmax, log-softmax, logsumexp and the cross-entropy family with their
//! gradients, for `f32` and `f64` rows, parallel and deterministic.
//!
//! The crate is a pure-Rust core with an optional Python binding (feature `python`, switched
//! on by maturin). Layers, from the bottom:
//!
//! - [`math`]: our own vectorizable `exp`.
//! - [`kernels`]: the numerics, one row at a time, over contiguous `&[T]` rows.
//! - [`strided`]: arrays of any strides and storage dtype seen as blocks of contiguous rows.
//! - [`pool`]: the thread pool and the fixed block schedule behind thread-count independent
//!   results.
//! - [`ops`]: whole-array operations on strided views (what the Python binding calls).
//! - The functions at the crate root: the same operations on contiguous slices, for Rust users
//!   and for binding other languages.
//!
//! ```
//! let x = [2.0f64, 1.0, 0.1];
//! let mut p = [0.0; 3];
//! sce_rs::softmax(&x, 3, &mut p).unwrap();
//! assert!((p[0] - 0.659).abs() < 1e-3);
//! let loss = sce_rs::cross_entropy(&x, 3, &[0], &sce_rs::CeOptions::plain(3), sce_rs::Reduction::Sum).unwrap();
//! assert!((loss - 0.417).abs() < 1e-3);
//! ```

pub mod dtype;
pub mod error;
pub mod float;
pub mod isa;
pub mod kernels;
pub mod linear;
pub mod long_rows;
pub mod math;
pub mod ops;
pub mod pool;
pub mod strided;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use float::Float;
pub use ops::{CeOptions, Reduction};
pub use pool::{num_threads, set_num_threads};

use ops::{RowMap, Src, Targets, Upstream};
use strided::{View, ViewMut};

fn check_rows(what: &str, len: usize, k: usize) -> Result<usize> {
    if k == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(Error::Shape(format!("{what}: k = 0 needs an empty slice")))
        };
    }
    if len % k != 0 {
        return Err(Error::Shape(format!(
            "{what}: length {len} is not a multiple of the row length {k}"
        )));
    }
    Ok(len / k)
}

fn check_len(what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::Shape(format!(
            "{what}: expected {want} elements, got {len}"
        )));
    }
    Ok(())
}

fn map_slice<T: Float>(map: RowMap, x: &[T], k: usize, out: &mut [T], out_k: usize) -> Result<()> {
    let n = check_rows("x", x.len(), k)?;
    check_len("out", out.len(), n * out_k)?;
    let xv = View::of_slice(x, k);
    let mut ov = ViewMut::of_slice(out, out_k);
    ops::row_map::<T>(map, Src::View(&xv), &mut ov)
}

/// Softmax of each row of `k` elements of `x` into `out` (same length).
pub fn softmax<T: Float>(x: &[T], k: usize, out: &mut [T]) -> Result<()> {
    map_slice(RowMap::Softmax, x, k, out, k)
}

/// Log-softmax of each row of `k` elements of `x` into `out` (same length).
pub fn log_softmax<T: Float>(x: &[T], k: usize, out: &mut [T]) -> Result<()> {
    map_slice(RowMap::LogSoftmax, x, k, out, k)
}

/// `log(sum(exp(row)))` of each row of `k` elements into `out` (one value per row).
pub fn logsumexp<T: Float>(x: &[T], k: usize, out: &mut [T]) -> Result<()> {
    map_slice(RowMap::LogSumExp, x, k, out, 1)
}

/// Cross-entropy of rows of `k` logits against class indices (`-100` is ignored).
pub fn cross_entropy<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
) -> Result<f64> {
    ce_slices(x, k, target, options, reduction, None, None)
}

/// Cross-entropy and its gradient with respect to `x`, written into `grad` (same length as
/// `x`); for `Reduction::None`, `losses` receives one loss per row.
pub fn cross_entropy_and_grad<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
    grad: &mut [T],
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    ce_slices(x, k, target, options, reduction, Some(grad), losses)
}

fn ce_slices<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
    grad: Option<&mut [T]>,
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    let n = check_rows("x", x.len(), k)?;
    check_len("target", target.len(), n)?;
    let xv = View::of_slice(x, k);
    let tv = View::of_indices(target);
    let mut gv = grad
        .map(|g| check_len("grad", g.len(), x.len()).map(|_| ViewMut::of_slice(g, k)))
        .transpose()?;
    let mut lv = losses
        .map(|l| check_len("losses", l.len(), n).map(|_| ViewMut::of_slice(l, 1)))
        .transpose()?;
    let targets = Targets::Index {
        view: &tv,
        ignore_index: -100,
        shape: &[n],
    };
    ops::multiclass_loss(
        ops::Loss::CrossEntropy(options),
        Src::View(&xv),
        targets,
        reduction,
        Upstream::Scalar(1.0),
        lv.as_mut(),
        gv.as_mut(),
    )
}
