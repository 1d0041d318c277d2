//! Multi-class losses over whole arrays: cross-entropy (class indices or probabilities, with
//! class weights, label smoothing, z-loss and soft cap; [`CeOptions::new`] validates them) and
//! the negative log-likelihood, with the gradient when asked. Every class index is checked
//! before anything is written; blocks of rows then run in parallel on the kernels of
//! [`crate::kernels::cross_entropy`], per-block sums added in block order. Where only the
//! reduced loss of short plain rows is asked for, the blocks' kernel checks their indices
//! itself (`total_in_lanes`). A few very long rows on class indices go to
//! [`super::long_rows`].

use super::{block_scale, check_out, long_rows, pieces, CeOptions, Reduction, Src, Upstream};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels::{self, cross_entropy::RowTarget};
use crate::pool::{block_ranges, for_blocks_with, ordered_sum};
use crate::strided::{View, ViewMut};

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
    isa: Level,
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
    one_index_per_row(view, n)?;
    // Counted rows as an integer (the same value as summing ones, without a float chain).
    let (mut total, mut count) = (0.0, 0usize);
    let mut idx = Vec::new();
    let step = crate::pool::BLOCK_ELEMS;
    for r0 in (0..n).step_by(step) {
        let r1 = (r0 + step).min(n);
        let block = view.load_index(r0, r1, &mut idx);
        let (live, bad) = kernels::cross_entropy::count_classes(isa, block, ignore_index, k);
        if bad > 0 {
            let (i, &t) = (block.iter().enumerate())
                .find(|&(_, &t)| t != ignore_index && t as u64 >= k as u64)
                .expect("a target out of range was counted");
            return Err(Error::ClassIndex {
                index: t,
                position: View::position(r0 + i, shape),
                classes: k,
            });
        }
        match weight {
            Some(w) => {
                for &t in block.iter().filter(|&&t| t != ignore_index) {
                    total += w[t as usize].to_f64();
                }
            }
            None => count += live,
        }
    }
    Ok(if weight.is_some() {
        total
    } else {
        count as f64
    })
}

fn one_index_per_row(view: &View<'_>, n: usize) -> Result<()> {
    if view.rows() != n {
        return Err(Error::Shape(format!(
            "expected {n} targets, got {}",
            view.rows()
        )));
    }
    Ok(())
}

/// The plain cross-entropy of short rows on the class indices `view` (`targets`) reduced
/// (`"mean"` or `"sum"`; NaN for `"none"`, whose losses go to an output this path does not
/// take), where nothing else is written: each block's kernel checks and counts its indices as
/// it forms the losses and adds them up ([`kernels::cross_entropy::class_total`]). Where a
/// block found an index out of range, the error is the one [`mean_denominator`] gives (the
/// first such index).
// PERF: through `multiclass_loss`'s blocks, float32 cross_entropy 65536 x 10 took 1.05x the
// time and 163840 x 4 1.06x (BENCHMARKS.md, the twenty-first session).
fn total_in_lanes<T: Float>(
    isa: Level,
    x: Src<'_>,
    (targets, view, ignore_index): (&Targets<'_>, &View<'_>, i64),
    n: usize,
    k: usize,
    reduction: Reduction,
) -> Result<f64> {
    one_index_per_row(view, n)?;
    let parts = for_blocks_with(n, k, block_ranges(n, k), |r, _| {
        let (mut sx, mut si) = (Vec::new(), Vec::new());
        let xs = x.load::<T>(r.clone(), None, &mut sx);
        let idx = view.load_index(r.start, r.end, &mut si);
        kernels::cross_entropy::class_total(isa, xs, k, idx, ignore_index)
    });
    if parts.iter().any(|t| t.bad > 0) {
        mean_denominator::<T>(isa, targets, k, n, None)?;
    }
    let live: usize = parts.iter().map(|t| t.live).sum();
    let total = ordered_sum(parts.iter().map(|t| t.sum));
    Ok(reduction.finish(total, live as f64))
}

/// A multi-class loss over the rows of `x`.
///
/// Writes per-row losses into `losses` (for `"none"`) and `scale * d loss / d x` into `grad`
/// when given; returns the reduced loss (`"mean"`/`"sum"`; NaN for `"none"`). Every target is
/// validated before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn multiclass_loss<T: Float>(
    isa: Level,
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
    if let (
        Loss::CrossEntropy(o),
        Targets::Index {
            view, ignore_index, ..
        },
        None,
        None,
    ) = (loss, targets, losses.as_deref(), grad.as_deref())
    {
        if kernels::cross_entropy::totals_in_lanes(k, o) {
            let indices = (&targets, view, ignore_index);
            return total_in_lanes::<T>(isa, x, indices, n, k, reduction);
        }
    }
    let denominator = mean_denominator(isa, &targets, k, n, weight)?;
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
        if long_rows::applies(n, k) {
            let total = long_rows::cross_entropy::<T>(
                isa,
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
    // The input and the gradient (or the one array written over itself), and the
    // probability targets.
    let arrays = if matches!(x, Src::Out) { 1 } else { 2 };
    let probs = usize::from(matches!(targets, Targets::Probs(_)));
    let fetch = kernels::fetches_out::<T>(arrays + probs, n, k);
    let blocks = pieces(grad, n, k).zip(pieces(losses, n, k));
    let parts = for_blocks_with(n, k, blocks, |r, (mut g_piece, l_piece)| {
        let (mut sx, mut st, mut si, mut su, mut sg, mut sl) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        // PERF: a small block's losses on the stack: a calloc/free pair is a twentieth of a
        // call on a tiny array (see BENCHMARKS.md, the cost per call).
        let (mut on_stack, mut on_heap) = ([0.0f64; 64], Vec::new());
        let row_losses = kernels::scratch(r.len(), &mut on_stack, &mut on_heap);
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
        let by_index = matches!(targets, Targets::Index { .. });
        match (loss, g_piece.as_mut()) {
            (Loss::CrossEntropy(o), Some(gp)) => {
                let scale = block_scale(upstream, uniform, r.clone(), &mut su);
                gp.store::<T, _>(&mut sg, |g| {
                    if by_index {
                        let (t, g) = ((idx, ignore), (g, scale));
                        kernels::cross_entropy::class_grads(isa, xs, k, t, o, g, row_losses, fetch)
                    } else {
                        let g = Some((g, scale));
                        kernels::cross_entropy::cross_entropy(
                            isa, xs, k, target, o, g, row_losses, fetch,
                        )
                    }
                });
            }
            (Loss::CrossEntropy(o), None) if by_index => {
                kernels::cross_entropy::class_losses(isa, xs, k, idx, ignore, o, row_losses)
            }
            (Loss::CrossEntropy(o), None) => kernels::cross_entropy::cross_entropy(
                isa, xs, k, target, o, None, row_losses, false,
            ),
            (Loss::Nll(w), _) => kernels::cross_entropy::nll(xs, k, target, w, row_losses),
        }
        if let Some(mut lp) = l_piece {
            lp.store::<f64, _>(&mut sl, |l| l.copy_from_slice(row_losses));
        }
        // PERF: in independent lanes, not one chain of dependent adds (float32 65536 x 10
        // cross_entropy: 5% of a call).
        kernels::sum(row_losses)
    });
    Ok(reduction.finish(ordered_sum(parts), denominator))
}
