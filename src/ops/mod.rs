//! Operations over whole arrays: the strategies that run the row kernels of
//! [`crate::kernels`] on strided [`View`]s, with their checks, in parallel, with the
//! fixed-order reductions that make results independent of the thread count. The slice API
//! (`lib.rs`) and the Python binding call these; nothing here knows of Python.
//!
//! The layers, bottom up: `strided` and `pool` (memory and threads) -> `kernels` (pure row
//! math) -> `ops` (strategies over views) -> the slice API and the binding. Inside `ops`, this
//! module holds what every strategy shares (reductions, the upstream gradient, where an input
//! is read, the output's pieces per block); each job has its file, and depends on this one
//! and on [`long_rows`] only, never the other way:
//!
//! - [`softmax`]: the softmax family and its backward passes (`row_map`, `softmax_backward`);
//! - [`multiclass`]: cross-entropy and NLL over class indices or probabilities;
//! - [`binary`]: the elementwise binary cross-entropies;
//! - [`long_rows`]: a few very long rows, split within each row over the threads (the
//!   strategy `softmax` and `multiclass` switch to for such shapes).
//!
//! Each function is generic over the compute type `T` (`f32` or `f64`); views of any storage
//! dtype are widened into `T` per block by [`View::load`] and results rounded once on the way
//! out by [`RowsMut::store`]. Inputs are validated here before anything is written, so an
//! error never leaves a caller's `out=` buffer half-written. The dispatched kernels take the
//! instruction set as a [`Level`](crate::isa::Level) argument: each entry point receives it
//! from its caller, which reads it once per call.

pub(crate) mod binary;
#[cfg(test)]
mod fuzz;
pub(crate) mod long_rows;
pub(crate) mod multiclass;
pub(crate) mod softmax;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::strided::{RowsMut, View, ViewMut};

pub use crate::kernels::cross_entropy::{CeOptions, Scale};
pub use binary::{binary_loss, BinaryArgs};
pub(crate) use multiclass::mean_denominator;
pub use multiclass::{multiclass_loss, Loss, Targets};
pub use softmax::{row_map, softmax_backward};

/// How per-row losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
    None,
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            other => Err(Error::Value(format!(
                "reduction must be 'mean', 'sum' or 'none', got {other:?}"
            ))),
        }
    }
}

impl Reduction {
    /// The gradient scale of every row when the upstream gradient is a scalar `g`: `g / d` for
    /// `"mean"` with denominator `d`, `g` otherwise (unused for a per-row upstream).
    fn uniform_scale(self, upstream: Upstream<'_>, denominator: f64) -> f64 {
        match (self, upstream) {
            (Reduction::Mean, Upstream::Scalar(g)) => g / denominator,
            (_, Upstream::Scalar(g)) => g,
            (_, Upstream::PerRow(_)) => f64::NAN,
        }
    }

    /// The reduced loss from the ordered total (NaN for `"none"`, whose losses are per row).
    fn finish(self, total: f64, denominator: f64) -> f64 {
        match self {
            Reduction::Mean => total / denominator,
            Reduction::Sum => total,
            Reduction::None => f64::NAN,
        }
    }
}

/// The gradient scale for rows `r0..r1`: uniform, or the upstream gradient's block read into
/// `scratch`.
fn block_scale<'s, T: Float>(
    upstream: Upstream<'s>,
    uniform: f64,
    r: Range<usize>,
    scratch: &'s mut Vec<T>,
) -> Scale<'s, T> {
    match upstream {
        Upstream::PerRow(u) => Scale::PerRow(u.load::<T>(r.start, r.end, scratch)),
        Upstream::Scalar(_) => Scale::Uniform(uniform),
    }
}

/// The upstream gradient: a scalar for `"mean"`/`"sum"`, a per-row (or per-element) view for
/// `"none"`.
#[derive(Clone, Copy, Debug)]
pub enum Upstream<'a> {
    Scalar(f64),
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    // the binding's `grad_output` for "none"
    PerRow(&'a View<'a>),
}

/// Where an operation reads its input: a view of its own, or the output it writes (`out=x`:
/// each block is read from the output piece that then overwrites it).
#[derive(Clone, Copy, Debug)]
pub enum Src<'a> {
    View(&'a View<'a>),
    Out,
}

impl<'a> Src<'a> {
    /// Rows `r` of the input: from its view, or copied out of `piece` (the output's rows `r`)
    /// before `piece` is written. `Src::Out` without an output is a caller's bug, reported as
    /// an error by [`Src::check`] before anything runs.
    fn load<'s, T: Float>(
        self,
        r: Range<usize>,
        piece: Option<&RowsMut<'_>>,
        scratch: &'s mut Vec<T>,
    ) -> &'s [T]
    where
        'a: 's,
    {
        match (self, piece) {
            (Src::View(v), _) => v.load::<T>(r.start, r.end, scratch),
            (Src::Out, Some(p)) => p.read::<T>(scratch),
            (Src::Out, None) => unreachable!("Src::check rejects an input read from no output"),
        }
    }

    /// `(rows, k)` of the input, and an error when it is the output but there is none, or the
    /// output does not match it.
    fn check(self, out: Option<&ViewMut<'_>>) -> Result<(usize, usize)> {
        match (self, out) {
            (Src::View(v), _) => Ok((v.rows(), v.k())),
            (Src::Out, Some(o)) => Ok((o.rows(), o.k())),
            (Src::Out, None) => Err(Error::Value(
                "the input is read from the output, but no output was given".into(),
            )),
        }
    }
}

/// Which function a row-map applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowMap {
    Softmax,
    LogSoftmax,
    /// `out` has `k * k` elements per row.
    SoftmaxJacobian,
    /// `out` has one element per row.
    LogSumExp,
}

impl RowMap {
    /// The output's row length for input rows of `k`.
    fn out_k(self, k: usize) -> usize {
        match self {
            RowMap::Softmax | RowMap::LogSoftmax => k,
            RowMap::SoftmaxJacobian => k * k,
            RowMap::LogSumExp => 1,
        }
    }
}

/// Checks that `out` has `n` rows of `k` elements.
fn check_out(what: &str, out: &ViewMut<'_>, n: usize, k: usize) -> Result<()> {
    if (out.rows(), out.k()) != (n, k) && n * k != 0 {
        return Err(Error::Shape(format!(
            "{what}: expected {n} rows of {k}, got {} rows of {}",
            out.rows(),
            out.k()
        )));
    }
    Ok(())
}

/// The pieces of `v` that the blocks of `n` rows of `k` write (all `None` without `v`), made
/// as the blocks take them.
fn pieces<'v>(
    v: Option<&'v mut ViewMut<'_>>,
    n: usize,
    k: usize,
) -> impl ExactSizeIterator<Item = Option<RowsMut<'v>>> {
    let mut split = v.map(|v| v.split(crate::pool::block_ranges(n, k)));
    crate::pool::block_ranges(n, k)
        .map(move |_| split.as_mut().map(|s| s.next().expect("a piece per block")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Level;

    #[test]
    fn options_validate_themselves_and_keep_the_weight_total() {
        let ok = CeOptions::<f32>::new(3, Some(&[1.0, 2.0, 0.5]), 0.1, 1e-4, Some(30.0)).unwrap();
        assert_eq!(ok.weight_total, 3.5);
        assert_eq!(
            CeOptions::<f64>::new(4, None, 0.0, 0.0, None)
                .unwrap()
                .weight_total,
            4.0
        );
        let err = |r: Result<CeOptions<f64>>| r.unwrap_err().to_string();
        assert!(err(CeOptions::new(3, None, 1.5, 0.0, None)).contains("label_smoothing"));
        assert!(err(CeOptions::new(3, None, f64::NAN, 0.0, None)).contains("label_smoothing"));
        assert!(err(CeOptions::new(3, None, 0.0, -1.0, None)).contains("z_loss"));
        assert!(err(CeOptions::new(3, None, 0.0, 0.0, Some(0.0))).contains("softcap"));
        assert!(err(CeOptions::new(3, Some(&[1.0]), 0.0, 0.0, None)).contains("weight"));
    }

    #[test]
    fn an_input_read_from_its_output_needs_that_output() {
        let t = [0i64];
        let tv = View::of_indices(&t);
        let targets = Targets::Index {
            view: &tv,
            ignore_index: -100,
            shape: &[1],
        };
        let o = CeOptions::<f64>::plain(2);
        let r = multiclass_loss(
            Level::active(),
            Loss::CrossEntropy(&o),
            Src::Out,
            targets,
            Reduction::Sum,
            Upstream::Scalar(1.0),
            None,
            None,
        );
        assert!(matches!(r, Err(Error::Value(_))), "{r:?}");
        let mut out = [0.0f64; 2];
        let r = row_map::<f64>(
            Level::active(),
            RowMap::LogSumExp,
            Src::Out,
            &mut ViewMut::of_slice(&mut out, 2),
        );
        assert!(r.is_err(), "logsumexp cannot be written over its input");
    }
}
