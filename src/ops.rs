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
use std::ops::Range;

use crate::pool::{for_blocks_with, ordered_sum};
use crate::strided::{RowsMut, View, ViewMut};

pub use crate::kernels::cross_entropy::{CeOptions, Scale};

impl<T: Float> CeOptions<T> {
    /// Validated options of a cross-entropy over `k` classes: `weight` (one per class, or
    /// `None` for ones), `label_smoothing` in `[0, 1]`, `z_loss` finite and `>= 0`, `softcap`
    /// `None` or finite and `> 0`. The weights' total, which `"mean"` and label smoothing
    /// need, is computed here once, so it always matches them.
    pub fn new(
        k: usize,
        weight: Option<&[f64]>,
        label_smoothing: f64,
        z_loss: f64,
        softcap: Option<f64>,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::Value(format!(
                "label_smoothing must be in [0, 1], got {label_smoothing}"
            )));
        }
        if !(z_loss.is_finite() && z_loss >= 0.0) {
            return Err(Error::Value(format!(
                "z_loss must be a finite number >= 0, got {z_loss}"
            )));
        }
        if let Some(c) = softcap.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(Error::Value(format!(
                "softcap must be None or a finite number > 0, got {c}"
            )));
        }
        if let Some(w) = weight.filter(|w| w.len() != k) {
            return Err(Error::Shape(format!(
                "weight must have shape ({k},), one value per class, got ({},)",
                w.len()
            )));
        }
        Ok(CeOptions {
            weight: weight.map(|w| w.iter().map(|&v| T::from_f64(v)).collect()),
            weight_total: weight.map_or(k as f64, |w| w.iter().sum()),
            label_smoothing,
            z_loss,
            softcap,
        })
    }
}

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

/// The pieces of `v` that the blocks of `n` rows of `k` write (all `None` without `v`).
fn pieces<'v>(v: Option<&'v mut ViewMut<'_>>, n: usize, k: usize) -> Vec<Option<RowsMut<'v>>> {
    match v {
        Some(v) => v
            .split(crate::pool::block_ranges(n, k))
            .into_iter()
            .map(Some)
            .collect(),
        None => crate::pool::block_ranges(n, k).map(|_| None).collect(),
    }
}

/// Applies `map` to every row of `x`, writing `out` (same rows; row length per [`RowMap`]).
pub fn row_map<T: Float>(map: RowMap, x: Src<'_>, out: &mut ViewMut<'_>) -> Result<()> {
    let (n, k) = x.check(Some(out))?;
    check_out("out", out, n, map.out_k(k))?;
    if matches!(x, Src::Out) && map.out_k(k) != k {
        return Err(Error::Value(format!(
            "{map:?} cannot be written over its input"
        )));
    }
    if map != RowMap::SoftmaxJacobian && crate::long_rows::applies(n, k) {
        crate::long_rows::row_map::<T>(map, x, out);
        return Ok(());
    }
    for_blocks_with(n, k, pieces(Some(out), n, k), |r, piece| {
        let mut piece = piece.expect("one piece per block");
        let (mut sx, mut so) = (Vec::new(), Vec::new());
        let xs = x.load::<T>(r, Some(&piece), &mut sx);
        piece.store::<T, _>(&mut so, |o| match map {
            RowMap::Softmax => kernels::softmax::softmax(xs, k, o),
            RowMap::LogSoftmax => kernels::softmax::log_softmax(xs, k, o),
            RowMap::SoftmaxJacobian => kernels::softmax::softmax_jacobian(xs, k, o),
            RowMap::LogSumExp => kernels::softmax::logsumexp(xs, k, o),
        });
    });
    Ok(())
}

/// The backward pass of softmax (`log = false`: `y` is the softmax output) or of log-softmax
/// (`log = true`: `y` is the log-softmax output), given the upstream gradient `g`.
pub fn softmax_backward<T: Float>(
    log: bool,
    g: &View<'_>,
    y: &View<'_>,
    out: &mut ViewMut<'_>,
) -> Result<()> {
    let (n, k) = (g.rows(), g.k());
    check_out("output", out, y.rows(), y.k())?;
    check_out("out", out, n, k)?;
    for_blocks_with(n, k, pieces(Some(out), n, k), |r, piece| {
        let mut piece = piece.expect("one piece per block");
        let (mut sg, mut sy, mut so) = (Vec::new(), Vec::new(), Vec::new());
        let gs = g.load::<T>(r.start, r.end, &mut sg);
        let ys = y.load::<T>(r.start, r.end, &mut sy);
        piece.store::<T, _>(&mut so, |o| {
            if log {
                kernels::softmax::log_softmax_backward(gs, ys, k, o)
            } else {
                kernels::softmax::softmax_backward(gs, ys, k, o)
            }
        });
    });
    Ok(())
}

/// Targets of a multi-class loss.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class index per row (`k == 1` view over the rows), with the value that is skipped.
    /// `shape` is the target array's shape, for error messages.
    Index {
        view: &'a View<'a>,
        ignore_index: i64,
        shape: &'a [usize],
    },
    /// A row of class probabilities per row of the input.
    Probs(&'a View<'a>),
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
pub(crate) fn mean_denominator<T: Float>(
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
    if view.rows() != n {
        return Err(Error::Shape(format!(
            "expected {n} targets, got {}",
            view.rows()
        )));
    }
    // Counted rows as an integer (the same value as summing ones, without a float chain).
    let (mut total, mut count) = (0.0, 0usize);
    let mut idx = Vec::new();
    let step = crate::pool::BLOCK_ELEMS;
    for r0 in (0..n).step_by(step) {
        let r1 = (r0 + step).min(n);
        let block = view.load_index(r0, r1, &mut idx);
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
    x: Src<'_>,
    targets: Targets<'_>,
    reduction: Reduction,
    upstream: Upstream<'_>,
    mut losses: Option<&mut ViewMut<'_>>,
    mut grad: Option<&mut ViewMut<'_>>,
) -> Result<f64> {
    let (n, k) = x.check(grad.as_deref())?;
    if let Some(g) = grad.as_deref() {
        check_out("grad", g, n, k)?;
    }
    if let Some(l) = losses.as_deref() {
        check_out("losses", l, n, 1)?;
    }
    let weight = match loss {
        Loss::CrossEntropy(o) => o.weight.as_deref(),
        Loss::Nll(w) => w,
    };
    if let Targets::Probs(p) = targets {
        if (p.rows(), p.k()) != (n, k) {
            return Err(Error::Shape(
                "probability targets must match the input".into(),
            ));
        }
    }
    let denominator = mean_denominator(&targets, k, n, weight)?;
    if k == 0 && matches!(targets, Targets::Probs(_)) {
        // No classes: each row's loss is minus an empty sum, -0.0, and PyTorch's "mean"
        // divides by numel / K = 0 / 0. (Class indices never get here: all are out of range.)
        if let Some(l) = losses {
            l.all().store::<f64, _>(&mut Vec::new(), |l| l.fill(-0.0));
        }
        return Ok(match reduction {
            Reduction::Sum => -0.0,
            Reduction::Mean | Reduction::None => f64::NAN,
        });
    }
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
                losses.as_deref_mut(),
                grad.as_deref_mut(),
            );
            return Ok(reduction.finish(total, denominator));
        }
    }
    let blocks = pieces(grad, n, k)
        .into_iter()
        .zip(pieces(losses, n, k))
        .collect();
    let parts = for_blocks_with(n, k, blocks, |r, (mut g_piece, l_piece)| {
        let (mut sx, mut st, mut si, mut su, mut sg, mut sl) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut row_losses = vec![0.0f64; r.len()];
        let xs = x.load::<T>(r.clone(), g_piece.as_ref(), &mut sx);
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
        match (loss, g_piece.as_mut()) {
            (Loss::CrossEntropy(o), Some(gp)) => {
                let scale = block_scale(upstream, uniform, r.clone(), &mut su);
                gp.store::<T, _>(&mut sg, |g| {
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
        if let Some(mut lp) = l_piece {
            lp.store::<f64, _>(&mut sl, |l| l.copy_from_slice(&row_losses));
        }
        row_losses.iter().fold(0.0, |a, &b| a + b)
    });
    Ok(reduction.finish(ordered_sum(&parts), denominator))
}

/// Operands of an elementwise binary loss: all views share rows and row length (the binding
/// broadcasts `weight` and `pos_weight` by zero strides). `shape` is the input's shape.
#[derive(Clone, Copy, Debug)]
pub struct BinaryArgs<'a> {
    pub input: Src<'a>,
    pub target: &'a View<'a>,
    pub weight: Option<&'a View<'a>>,
    pub pos_weight: Option<&'a View<'a>>,
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
    losses: Option<&mut ViewMut<'_>>,
    grad: Option<&mut ViewMut<'_>>,
) -> Result<f64> {
    let (n, k) = a.input.check(grad.as_deref())?;
    for v in [Some(a.target), a.weight, a.pos_weight]
        .into_iter()
        .flatten()
    {
        if (v.rows(), v.k()) != (n, k) {
            return Err(Error::Shape(
                "binary loss operands must match the input".into(),
            ));
        }
    }
    for o in [grad.as_deref(), losses.as_deref()].into_iter().flatten() {
        check_out("output", o, n, k)?;
    }
    let count = (n * k) as f64;
    let uniform = reduction.uniform_scale(upstream, count);
    let blocks = pieces(grad, n, k)
        .into_iter()
        .zip(pieces(losses, n, k))
        .collect();
    let parts = for_blocks_with(
        n,
        k,
        blocks,
        |r, (mut g_piece, l_piece)| -> std::result::Result<f64, (usize, f64)> {
            let mut s: [Vec<T>; 6] = Default::default();
            let mut sl = Vec::new();
            let mut out = vec![0.0f64; r.len() * k];
            let [sx, sy, sw, sp, su, sg] = &mut s;
            let xs = a.input.load::<T>(r.clone(), g_piece.as_ref(), sx);
            let ys = a.target.load::<T>(r.start, r.end, sy);
            let ws = a.weight.map(|w| w.load::<T>(r.start, r.end, sw));
            let ps = a.pos_weight.map(|p| p.load::<T>(r.start, r.end, sp));
            if logits {
                match g_piece.as_mut() {
                    Some(gp) => {
                        let scale = block_scale(upstream, uniform, r.clone(), su);
                        gp.store::<T, _>(sg, |g| {
                            binary::bce_with_logits(xs, ys, ws, ps, &mut out, Some((g, scale)))
                        });
                    }
                    None => binary::bce_with_logits(xs, ys, ws, ps, &mut out, None),
                }
            } else if let Err(i) = binary::bce(xs, ys, ws, &mut out) {
                return Err((r.start * k + i, xs[i].to_f64()));
            }
            if let Some(mut lp) = l_piece {
                lp.store::<f64, _>(&mut sl, |l| l.copy_from_slice(&out));
            }
            Ok(out.iter().fold(0.0, |a, &b| a + b))
        },
    );
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
mod tests {
    use super::*;

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
            RowMap::LogSumExp,
            Src::Out,
            &mut ViewMut::of_slice(&mut out, 2),
        );
        assert!(r.is_err(), "logsumexp cannot be written over its input");
    }
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
    use crate::strided::c_strides;
    use proptest::prelude::*;

    const IGNORE: i64 = -1;
    const SENTINEL: f64 = 7.0;

    /// A view of `data` (C order) with rows along `axis`; `flip` reverses that axis through a
    /// negative stride, so logical index `i` reads storage index `len - 1 - i`.
    fn view<'a>(
        data: &'a [f64],
        shape: &[usize],
        axis: Option<usize>,
        flip: Option<usize>,
    ) -> View<'a> {
        let mut strides = c_strides(shape, 8);
        let mut ptr = data.as_ptr() as *const u8;
        if let Some(d) = flip.filter(|&d| shape[d] > 1) {
            // SAFETY: the last element along `d` is inside `data`.
            ptr = unsafe { ptr.offset(strides[d] * (shape[d] as isize - 1)) };
            strides[d] = -strides[d];
        }
        // SAFETY: `data` holds the whole C-ordered array, outlives the view and is not written.
        unsafe { View::from_raw(ptr, DType::F64, shape, &strides, axis) }
    }

    /// An output view of `data` (C order) with rows along `axis`.
    fn view_mut<'a>(data: &'a mut [f64], shape: &[usize], axis: Option<usize>) -> ViewMut<'a> {
        // SAFETY: `data` holds the whole C-ordered array and is borrowed for the view's life.
        unsafe {
            ViewMut::from_raw(
                data.as_mut_ptr() as *mut u8,
                DType::F64,
                shape,
                &c_strides(shape, 8),
                axis,
            )
        }
        .expect("C-ordered arrays have distinct elements")
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
            let mut grad = vec![SENTINEL; n_elem];
            let mut losses = vec![SENTINEL; n];
            let mut soft = vec![SENTINEL; n_elem];

            let x = view(&data, &shape, Some(axis), flip);
            let tv = View::of_indices(&targets);
            let (mut gv, mut lv, mut sv) = (
                view_mut(&mut grad, &shape, Some(axis)),
                view_mut(&mut losses, &outer, None),
                view_mut(&mut soft, &shape, Some(axis)),
            );
            let opts64 = CeOptions { label_smoothing: ls, ..CeOptions::<f64>::plain(k) };
            let opts32 = CeOptions { label_smoothing: ls, ..CeOptions::<f32>::plain(k) };
            let t = Targets::Index { view: &tv, ignore_index: IGNORE, shape: &outer };
            let lv_opt = (reduction == Reduction::None).then_some(&mut lv);
            let res = if single {
                row_map::<f32>(RowMap::Softmax, Src::View(&x), &mut sv).unwrap();
                multiclass_loss::<f32>(Loss::CrossEntropy(&opts32), Src::View(&x), t, reduction, Upstream::Scalar(1.0), lv_opt, Some(&mut gv))
            } else {
                row_map::<f64>(RowMap::Softmax, Src::View(&x), &mut sv).unwrap();
                multiclass_loss::<f64>(Loss::CrossEntropy(&opts64), Src::View(&x), t, reduction, Upstream::Scalar(1.0), lv_opt, Some(&mut gv))
            };
            drop((gv, lv, sv));

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
