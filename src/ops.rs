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
    if map != RowMap::SoftmaxJacobian && crate::long_rows::applies(x.rows(), k) {
        return crate::long_rows::row_map::<T>(map, x, out);
    }
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
    // Counted rows as an integer (the same value as summing ones, without a float chain).
    let (mut total, mut count) = (0.0, 0usize);
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
            match weight {
                Some(w) => total += w[t as usize].to_f64(),
                None => count += 1,
            }
        }
    }
    Ok(if weight.is_some() {
        total
    } else {
        count as f64
    })
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
    if let (
        Loss::CrossEntropy(o),
        Targets::Index {
            view, ignore_index, ..
        },
    ) = (loss, targets)
    {
        if crate::long_rows::applies(n, k) {
            let total = crate::long_rows::cross_entropy::<T>(
                x,
                view,
                ignore_index,
                o,
                upstream,
                uniform,
                losses,
                grad,
            );
            return Ok(reduction.finish(total, denominator));
        }
    }
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

#[cfg(test)]
mod fuzz {
    //! Property fuzzing of the core entry points over arbitrary shapes, class axes and
    //! strides (negative ones included), targets in and out of range, NaN and infinities:
    //! never a panic, an out-of-range class index is the only error and leaves the gradient
    //! untouched, and finite inputs match a textbook f64 computation. `PROPTEST_CASES` sets
    //! the number of cases (proptest's default 256).
    use super::*;
    use crate::dtype::DType;
    use proptest::prelude::*;

    const IGNORE: i64 = -1;
    const SENTINEL: f64 = 7.0;

    /// C-order byte strides of `shape` for `size`-byte elements.
    fn c_strides(shape: &[usize], size: isize) -> Vec<isize> {
        let mut strides = vec![0; shape.len()];
        let mut s = size;
        for d in (0..shape.len()).rev() {
            strides[d] = s;
            s *= shape[d].max(1) as isize;
        }
        strides
    }

    /// A view of `data` (C order) with rows along `axis`; `flip` reverses that axis through a
    /// negative stride, so logical index `i` reads storage index `len - 1 - i`.
    fn view(data: &[f64], shape: &[usize], axis: Option<usize>, flip: Option<usize>) -> View {
        let mut strides = c_strides(shape, 8);
        let mut ptr = data.as_ptr() as *mut u8;
        if let Some(d) = flip.filter(|&d| shape[d] > 1) {
            // SAFETY: the last element along `d` is inside `data`.
            ptr = unsafe { ptr.offset(strides[d] * (shape[d] as isize - 1)) };
            strides[d] = -strides[d];
        }
        // SAFETY: `data` holds the whole C-ordered array and outlives the view.
        unsafe { View::new(ptr, DType::F64, shape, &strides, axis) }
    }

    /// The logical rows along `axis` (outer indices in C order), read as `view` would.
    fn rows(data: &[f64], shape: &[usize], axis: usize, flip: Option<usize>) -> Vec<Vec<f64>> {
        let strides = c_strides(shape, 1);
        let outer: Vec<usize> = (0..shape.len()).filter(|&d| d != axis).collect();
        let n: usize = outer.iter().map(|&d| shape[d]).product();
        (0..n)
            .map(|r| {
                let mut idx = vec![0; shape.len()];
                let mut rest = r;
                for &d in outer.iter().rev() {
                    idx[d] = rest % shape[d];
                    rest /= shape[d];
                }
                (0..shape[axis])
                    .map(|j| {
                        idx[axis] = j;
                        let off: isize = (0..shape.len())
                            .map(|d| {
                                let i = if flip == Some(d) {
                                    shape[d] - 1 - idx[d]
                                } else {
                                    idx[d]
                                };
                                i as isize * strides[d]
                            })
                            .sum();
                        data[off as usize]
                    })
                    .collect()
            })
            .collect()
    }

    /// Textbook label-smoothed cross-entropy of one row and its gradient (unscaled).
    fn textbook(row: &[f64], c: usize, ls: f64) -> (f64, Vec<f64>) {
        let k = row.len() as f64;
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let smooth: f64 = row.iter().map(|v| lse - v).sum::<f64>() / k;
        let loss = (1.0 - ls) * (lse - row[c]) + ls * smooth;
        let grad = (row.iter().enumerate())
            .map(|(j, v)| (v - lse).exp() - ls / k - if j == c { 1.0 - ls } else { 0.0 })
            .collect();
        (loss, grad)
    }

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * (1.0 + want.abs())
    }

    proptest! {
        #[test]
        fn cross_entropy_and_softmax_on_any_layout(
            shape in prop::collection::vec(0usize..5, 1..4),
            axis_seed in any::<usize>(),
            flip_seed in any::<usize>(),
            values in prop::collection::vec(-60.0f64..60.0, 64),
            specials in prop::collection::vec(
                (any::<usize>(), prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]),
                0..3,
            ),
            target_values in prop::collection::vec(-1i64..5, 32),
            bad_target in prop_oneof![Just(None), (any::<usize>(), prop_oneof![Just(-2i64), Just(5), Just(i64::MAX), Just(i64::MIN)]).prop_map(Some)],
            ls in prop_oneof![Just(0.0), 0.0f64..=1.0],
            reduction in prop_oneof![Just(Reduction::Mean), Just(Reduction::Sum), Just(Reduction::None)],
            single in any::<bool>(),
        ) {
            let ndim = shape.len();
            let axis = axis_seed % ndim;
            let flip = Some(flip_seed % (ndim + 1)).filter(|&d| d < ndim);
            let n_elem: usize = shape.iter().product();
            let k = shape[axis];
            let outer: Vec<usize> = (0..ndim).filter(|&d| d != axis).map(|d| shape[d]).collect();
            let n: usize = outer.iter().product();

            let mut data: Vec<f64> = (0..n_elem).map(|i| values[i % values.len()]).collect();
            for &(at, v) in &specials {
                if n_elem > 0 {
                    data[at % n_elem] = v;
                }
            }
            let mut targets: Vec<i64> = (0..n).map(|i| target_values[i % target_values.len()] % (k as i64 + 1).max(1)).collect();
            targets.iter_mut().for_each(|t| if *t >= k as i64 { *t = IGNORE });
            if let (Some((at, v)), true) = (bad_target, n > 0) {
                targets[at % n] = v;
            }
            let grad = vec![SENTINEL; n_elem];
            let losses = vec![SENTINEL; n];
            let soft = vec![SENTINEL; n_elem];

            let x = view(&data, &shape, Some(axis), flip);
            // SAFETY: each buffer holds its whole C-ordered array and outlives its view.
            let (tv, gv, lv, sv) = unsafe {
                (
                    View::new(targets.as_ptr() as *mut u8, DType::I64, &outer, &c_strides(&outer, 8), None),
                    View::new(grad.as_ptr() as *mut u8, DType::F64, &shape, &c_strides(&shape, 8), Some(axis)),
                    View::new(losses.as_ptr() as *mut u8, DType::F64, &outer, &c_strides(&outer, 8), None),
                    View::new(soft.as_ptr() as *mut u8, DType::F64, &shape, &c_strides(&shape, 8), Some(axis)),
                )
            };
            let opts64 = CeOptions { label_smoothing: ls, ..CeOptions::<f64>::plain(k) };
            let opts32 = CeOptions { label_smoothing: ls, ..CeOptions::<f32>::plain(k) };
            let t = Targets::Index { view: &tv, ignore_index: IGNORE, shape: &outer };
            let lv_opt = (reduction == Reduction::None).then_some(&lv);
            let res = if single {
                row_map::<f32>(RowMap::Softmax, &x, &sv);
                multiclass_loss::<f32>(Loss::CrossEntropy(&opts32), &x, t, reduction, Upstream::Scalar(1.0), lv_opt, Some(&gv))
            } else {
                row_map::<f64>(RowMap::Softmax, &x, &sv);
                multiclass_loss::<f64>(Loss::CrossEntropy(&opts64), &x, t, reduction, Upstream::Scalar(1.0), lv_opt, Some(&gv))
            };

            let out_of_range = targets.iter().any(|&t| t != IGNORE && !(0..k as i64).contains(&t));
            if out_of_range {
                prop_assert!(matches!(res, Err(Error::ClassIndex { .. })), "{res:?}");
                prop_assert!(grad.iter().chain(&losses).all(|&g| g == SENTINEL), "written on error");
                return Ok(());
            }
            let total = res.expect("in-range targets never fail");
            if data.iter().any(|v| !v.is_finite()) {
                return Ok(()); // NaN/inf semantics are pinned by the conformance vectors
            }
            let tol = if single { 1e-5 } else { 1e-12 };
            let logical = rows(&data, &shape, axis, flip);
            let counted = targets.iter().filter(|&&t| t != IGNORE).count() as f64;
            let scale = if reduction == Reduction::Mean { 1.0 / counted } else { 1.0 };
            let got_grad = rows(&grad, &shape, axis, None);
            let got_soft = rows(&soft, &shape, axis, None);
            let mut sum = 0.0;
            for (r, row) in logical.iter().enumerate() {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for (j, v) in row.iter().enumerate() {
                    prop_assert!(close(got_soft[r][j], (v - m).exp() / z, tol), "softmax row {r}");
                }
                // An ignored row's gradient is 0 even when every row is ignored (PyTorch's).
                let (loss, g) = match targets[r] {
                    IGNORE => (0.0, vec![0.0; k]),
                    c => {
                        let (l, g) = textbook(row, c as usize, ls);
                        (l, g.iter().map(|v| v * scale).collect())
                    }
                };
                sum += loss;
                if reduction == Reduction::None {
                    prop_assert!(close(losses[r], loss, tol), "loss row {r}: {} vs {loss}", losses[r]);
                }
                for j in 0..k {
                    prop_assert!(close(got_grad[r][j], g[j], tol), "grad row {r} col {j}: {} vs {} (target {}, ls {ls}, {reduction:?}, single {single})", got_grad[r][j], g[j], targets[r]);
                }
            }
            match reduction {
                Reduction::Mean if counted == 0.0 => prop_assert!(total.is_nan()),
                Reduction::Mean => prop_assert!(close(total, sum / counted, tol)),
                Reduction::Sum => prop_assert!(close(total, sum, tol)),
                Reduction::None => {}
            }
        }
    }
}
