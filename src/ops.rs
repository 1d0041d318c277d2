//! Operations over whole arrays: the layer that runs the row kernels of [`crate::kernels`] on
//! strided [`View`]s, block by block, in parallel, with the fixed-order reductions that make
//! results independent of the thread count.
//!
//! Each function is generic over the compute type `T` (`f32` or `f64`); views of any storage
//! dtype are widened into `T` per block by [`View::load`] and results rounded once on the way
//! out by [`View::store`]. Inputs are validated here before anything is written, so an error
//! never leaves a caller's `out=` buffer half-written.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::{self, binary, cross_entropy::RowTarget};
use crate::pool::{for_blocks, ordered_sum};
use crate::strided::View;

pub use crate::kernels::cross_entropy::{CeOptions, Scale};

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
///
/// # Safety
/// As for [`View::load`].
unsafe fn block_scale<'a, T: Float>(
    upstream: Upstream<'_>,
    uniform: f64,
    r0: usize,
    r1: usize,
    scratch: &'a mut Vec<T>,
) -> Scale<'a, T> {
    match upstream {
        Upstream::PerRow(u) => Scale::PerRow(unsafe { u.load::<T>(r0, r1, scratch) }),
        Upstream::Scalar(_) => Scale::Uniform(uniform),
    }
}

/// The upstream gradient: a scalar for `"mean"`/`"sum"`, a per-row (or per-element) view for
/// `"none"`.
#[derive(Clone, Copy, Debug)]
pub enum Upstream<'a> {
    Scalar(f64),
    PerRow(&'a View),
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

/// Applies `map` to every row of `x`, writing `out` (same rows; row length per [`RowMap`]).
pub fn row_map<T: Float>(map: RowMap, x: &View, out: &View) {
    let k = x.k();
    for_blocks(x.rows(), k, |r| {
        let (mut sx, mut so) = (Vec::new(), Vec::new());
        // SAFETY: the views' builder keeps the memory valid; blocks are disjoint row ranges,
        // and `out` does not alias `x` unless `x` reads through scratch (copy_on_read).
        unsafe {
            let xs = x.load::<T>(r.start, r.end, &mut sx);
            out.store::<T, _>(r.start, r.end, &mut so, |o| match map {
                RowMap::Softmax => kernels::softmax::softmax(xs, k, o),
                RowMap::LogSoftmax => kernels::softmax::log_softmax(xs, k, o),
                RowMap::SoftmaxJacobian => kernels::softmax::softmax_jacobian(xs, k, o),
                RowMap::LogSumExp => kernels::softmax::logsumexp(xs, k, o),
            });
        }
    });
}

/// The backward pass of softmax (`log = false`: `y` is the softmax output) or of log-softmax
/// (`log = true`: `y` is the log-softmax output), given the upstream gradient `g`.
pub fn softmax_backward<T: Float>(log: bool, g: &View, y: &View, out: &View) {
    let k = g.k();
    for_blocks(g.rows(), k, |r| {
        let (mut sg, mut sy, mut so) = (Vec::new(), Vec::new(), Vec::new());
        // SAFETY: as in `row_map`.
        unsafe {
            let gs = g.load::<T>(r.start, r.end, &mut sg);
            let ys = y.load::<T>(r.start, r.end, &mut sy);
            out.store::<T, _>(r.start, r.end, &mut so, |o| {
                if log {
                    kernels::softmax::log_softmax_backward(gs, ys, k, o)
                } else {
                    kernels::softmax::softmax_backward(gs, ys, k, o)
                }
            });
        }
    });
}

/// Targets of a multi-class loss.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class index per row (`k == 1` view over the rows), with the value that is skipped.
    /// `shape` is the target array's shape, for error messages.
    Index {
        view: &'a View,
        ignore_index: i64,
        shape: &'a [usize],
    },
    /// A row of class probabilities per row of the input.
    Probs(&'a View),
}

/// Which multi-class loss to compute.
#[derive(Clone, Copy, Debug)]
pub enum Loss<'a, T> {
    CrossEntropy(&'a CeOptions<T>),
    /// On log-probabilities, with optional class weights.
    Nll(Option<&'a [T]>),
}

/// Checks every class index and returns the `"mean"` denominator: the sum of the weights of
/// the rows not ignored (their count without weights), or the row count for probabilities.
fn mean_denominator<T: Float>(
    targets: &Targets<'_>,
    k: usize,
    n: usize,
    weight: Option<&[T]>,
) -> Result<f64> {
    let Targets::Index {
        view,
        ignore_index,
        shape,
    } = *targets
    else {
        return Ok(n as f64);
    };
    let mut total = 0.0;
    let mut idx = Vec::new();
    let step = crate::pool::BLOCK_ELEMS;
    for r0 in (0..n).step_by(step) {
        let r1 = (r0 + step).min(n);
        // SAFETY: the view's builder keeps its memory valid for reads.
        let block = unsafe { view.load_index(r0, r1, &mut idx) };
        for (i, &t) in block.iter().enumerate() {
            if t == ignore_index {
                continue;
            }
            if t < 0 || t as u64 >= k as u64 {
                return Err(Error::ClassIndex {
                    index: t,
                    position: View::position(r0 + i, shape),
                    classes: k,
                });
            }
            total += weight.map_or(1.0, |w| w[t as usize].to_f64());
        }
    }
    Ok(total)
}

/// A multi-class loss over the rows of `x`.
///
/// Writes per-row losses into `losses` (for `"none"`) and `scale * d loss / d x` into `grad`
/// when given; returns the reduced loss (`"mean"`/`"sum"`; NaN for `"none"`). Every target is
/// validated before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn multiclass_loss<T: Float>(
    loss: Loss<'_, T>,
    x: &View,
    targets: Targets<'_>,
    reduction: Reduction,
    upstream: Upstream<'_>,
    losses: Option<&View>,
    grad: Option<&View>,
) -> Result<f64> {
    let (n, k) = (x.rows(), x.k());
    let weight = match loss {
        Loss::CrossEntropy(o) => o.weight.as_deref(),
        Loss::Nll(w) => w,
    };
    let denominator = mean_denominator(&targets, k, n, weight)?;
    let uniform = reduction.uniform_scale(upstream, denominator);
    let parts = for_blocks(n, k, |r| {
        let (mut sx, mut st, mut si, mut su, mut sg, mut sl) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut row_losses = vec![0.0f64; r.len()];
        // SAFETY: as in `row_map`; `grad` may be `x` itself only with `x` set to copy_on_read.
        unsafe {
            let xs = x.load::<T>(r.start, r.end, &mut sx);
            let (idx, probs): (&[i64], &[T]) = match targets {
                Targets::Index { view, .. } => (view.load_index(r.start, r.end, &mut si), &[]),
                Targets::Probs(view) => (&[], view.load::<T>(r.start, r.end, &mut st)),
            };
            let ignore = match targets {
                Targets::Index { ignore_index, .. } => ignore_index,
                Targets::Probs(_) => 0,
            };
            let target = |i: usize| match targets {
                Targets::Index { .. } if idx[i] == ignore => RowTarget::Ignored,
                Targets::Index { .. } => RowTarget::Class(idx[i] as usize),
                Targets::Probs(_) => RowTarget::Probs(&probs[i * k..(i + 1) * k]),
            };
            match (loss, grad) {
                (Loss::CrossEntropy(o), Some(gv)) => {
                    let scale = block_scale(upstream, uniform, r.start, r.end, &mut su);
                    gv.store::<T, _>(r.start, r.end, &mut sg, |g| {
                        kernels::cross_entropy::cross_entropy(
                            xs,
                            k,
                            target,
                            o,
                            Some((g, scale)),
                            &mut row_losses,
                        )
                    });
                }
                (Loss::CrossEntropy(o), None) => {
                    kernels::cross_entropy::cross_entropy(xs, k, target, o, None, &mut row_losses)
                }
                (Loss::Nll(w), _) => kernels::cross_entropy::nll(xs, k, target, w, &mut row_losses),
            }
            if let Some(lv) = losses {
                lv.store::<f64, _>(r.start, r.end, &mut sl, |l| l.copy_from_slice(&row_losses));
            }
        }
        row_losses.iter().fold(0.0, |a, &b| a + b)
    });
    Ok(reduction.finish(ordered_sum(&parts), denominator))
}

/// Operands of an elementwise binary loss: all views share rows and row length (the binding
/// broadcasts `weight` and `pos_weight` by zero strides). `shape` is the input's shape.
#[derive(Clone, Copy, Debug)]
pub struct BinaryArgs<'a> {
    pub input: &'a View,
    pub target: &'a View,
    pub weight: Option<&'a View>,
    pub pos_weight: Option<&'a View>,
    pub shape: &'a [usize],
}

/// Binary cross-entropy: on probabilities (`logits = false`) or logits. Writes per-element
/// losses into `losses` (`"none"`) and, for logits, `scale * d loss / d x` into `grad`.
/// Returns the reduced loss (NaN for `"none"`).
pub fn binary_loss<T: Float>(
    logits: bool,
    a: BinaryArgs<'_>,
    reduction: Reduction,
    upstream: Upstream<'_>,
    losses: Option<&View>,
    grad: Option<&View>,
) -> Result<f64> {
    let (n, k) = (a.input.rows(), a.input.k());
    let count = (n * k) as f64;
    let uniform = reduction.uniform_scale(upstream, count);
    let parts = for_blocks(n, k, |r| -> std::result::Result<f64, (usize, f64)> {
        let mut s: [Vec<T>; 6] = Default::default();
        let mut sl = Vec::new();
        let mut out = vec![0.0f64; r.len() * k];
        // SAFETY: as in `row_map`.
        unsafe {
            let [sx, sy, sw, sp, su, sg] = &mut s;
            let xs = a.input.load::<T>(r.start, r.end, sx);
            let ys = a.target.load::<T>(r.start, r.end, sy);
            let ws = a.weight.map(|w| w.load::<T>(r.start, r.end, sw));
            let ps = a.pos_weight.map(|p| p.load::<T>(r.start, r.end, sp));
            if logits {
                match grad {
                    Some(gv) => {
                        let scale = block_scale(upstream, uniform, r.start, r.end, su);
                        gv.store::<T, _>(r.start, r.end, sg, |g| {
                            binary::bce_with_logits(xs, ys, ws, ps, &mut out, Some((g, scale)))
                        });
                    }
                    None => binary::bce_with_logits(xs, ys, ws, ps, &mut out, None),
                }
            } else if let Err(i) = binary::bce(xs, ys, ws, &mut out) {
                return Err((r.start * k + i, xs[i].to_f64()));
            }
            if let Some(lv) = losses {
                lv.store::<f64, _>(r.start, r.end, &mut sl, |l| l.copy_from_slice(&out));
            }
        }
        Ok(out.iter().fold(0.0, |a, &b| a + b))
    });
    let mut sums = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Ok(s) => sums.push(s),
            Err((flat, value)) => {
                return Err(Error::Domain {
                    what: "input probabilities must be in [0, 1]",
                    value,
                    position: View::position(flat, a.shape),
                })
            }
        }
    }
    Ok(reduction.finish(ordered_sum(&sums), count))
}
