//! Inference scoring over whole arrays: token log-probabilities, greedy match, rank, entropy
//! and top-k ([`token_logprobs`]), and the running sums behind a perplexity ([`perplexity`]).
//!
//! The layer between strided views and the row kernel of [`crate::kernels::scoring`], shaped as
//! [`crate::ops`] is: blocks of rows from [`crate::pool::block_ranges`] (a function of the shape
//! alone), each read once through [`View::load`], float results rounded once into their
//! storage dtype by [`RowsMut::store`], sums over rows added per block in `f64` and across
//! blocks in block order, so every result is bitwise the same for any thread count. Each block gets its own pieces of
//! the outputs before the blocks run ([`for_blocks_with`]): [`RowsMut`] pieces of the float
//! results, disjoint sub-slices of the integer and boolean ones (rank, greedy flag, top-k ids),
//! so no thread writes what another may touch. Every target is checked before any block runs:
//! an error writes nothing. The public functions take contiguous slices (the crate's slice
//! API); the binding calls the view forms.
//!
//! Extra memory is a block's scratch (a gathered block when the rows are not contiguous in the
//! compute type, at most [`crate::pool::rows_per_block`] rows) plus `top_k` heap
//! entries per thread: never an `N x K` temporary.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels::scoring::{score_rows, BlockOut, Plan, RowScore};
use crate::ops::{mean_denominator, Targets};
use crate::pool::{block_ranges, for_blocks_with, ordered_sum};
use crate::strided::{RowsMut, View, ViewMut};

/// The options of a `token_logprobs` call, checked against the row length by [`ScoreOptions::new`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreOptions {
    pub ignore_index: i64,
    pub top_k: usize,
    pub temperature: f64,
}

impl ScoreOptions {
    /// Options for rows of `k` classes: `top_k <= k`, and `temperature` finite and `> 0`.
    pub fn new(k: usize, top_k: usize, temperature: f64, ignore_index: i64) -> Result<Self> {
        if top_k > k {
            return Err(Error::Value(format!(
                "top_k must be at most the number of classes {k}, got {top_k}"
            )));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Value(format!(
                "temperature must be a finite number > 0, got {temperature}"
            )));
        }
        Ok(ScoreOptions {
            ignore_index,
            top_k,
            temperature,
        })
    }

    /// `1 / temperature` in the compute type, which must be a normal number there: the logits
    /// are scaled by it, and an infinite or zero factor would turn `0 · inf` into NaN.
    fn inv_temperature<T: Float>(&self) -> Result<T> {
        let inv = T::from_f64(1.0 / self.temperature);
        let min = if T::DTYPE == crate::dtype::DType::F32 {
            f32::MIN_POSITIVE as f64
        } else {
            f64::MIN_POSITIVE
        };
        let v = inv.to_f64();
        if !(v.is_finite() && v >= min) {
            return Err(Error::Value(format!(
                "temperature {} is out of range for {} logits: its reciprocal must be a normal {} number",
                self.temperature,
                T::DTYPE.name(),
                T::DTYPE.name()
            )));
        }
        Ok(inv)
    }
}

/// Class-index targets: one per row (a view with `k == 1`), and the shape of the target array
/// for the position in an error message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TargetIndex<'a> {
    pub view: &'a View<'a>,
    pub shape: &'a [usize],
}

/// Where [`score_views`] writes. Float results are views of rows of one element
/// (`top_logprobs`: of `top_k`), any float dtype; integer results are contiguous slices with
/// one element per row (`top_ids`: `top_k` per row). `logprob`, `rank` and `is_greedy` are
/// only written with targets.
#[derive(Debug)]
pub(crate) struct ScoreOutputs<'o, 'a> {
    pub logprob: Option<&'o mut ViewMut<'a>>,
    pub entropy: Option<&'o mut ViewMut<'a>>,
    pub top_logprobs: Option<&'o mut ViewMut<'a>>,
    pub rank: Option<&'o mut [i64]>,
    pub is_greedy: Option<&'o mut [bool]>,
    pub top_ids: &'o mut [i64],
}

/// One block's share of the outputs.
struct Piece<'p> {
    logprob: Option<RowsMut<'p>>,
    entropy: Option<RowsMut<'p>>,
    top: Option<RowsMut<'p>>,
    rank: Option<&'p mut [i64]>,
    greedy: Option<&'p mut [bool]>,
    ids: &'p mut [i64],
}

/// The pieces of `v` the blocks of `n` rows of `k` write (all `None` without `v`).
fn row_pieces<'v>(v: Option<&'v mut ViewMut<'_>>, n: usize, k: usize) -> Vec<Option<RowsMut<'v>>> {
    match v {
        Some(v) => v.split(block_ranges(n, k)).map(Some).collect(),
        None => block_ranges(n, k).map(|_| None).collect(),
    }
}

/// `s` cut into the blocks' shares, `width` elements per row (empty shares when `width` is 0,
/// `None` without `s`).
fn slice_pieces<U>(s: Option<&mut [U]>, width: usize, n: usize, k: usize) -> Vec<Option<&mut [U]>> {
    let mut rest = s;
    block_ranges(n, k)
        .map(|r| {
            let s = rest.take()?;
            let (head, tail) = s.split_at_mut(r.len() * width);
            rest = Some(tail);
            Some(head)
        })
        .collect()
}

/// Checks every target and returns how many rows are not ignored.
fn check_targets(
    isa: Level,
    t: &TargetIndex<'_>,
    k: usize,
    n: usize,
    ignore_index: i64,
) -> Result<u64> {
    let targets = Targets::Index {
        view: t.view,
        ignore_index,
        shape: t.shape,
    };
    Ok(mean_denominator::<f64>(isa, &targets, k, n, None)? as u64)
}

/// Runs the row kernel over every block of `x`, each block writing its own pieces; returns the
/// negative log-likelihood of the counted rows, summed per block and then in block order.
fn run_blocks<T: Float>(
    isa: Level,
    x: &View<'_>,
    targets: Option<&TargetIndex<'_>>,
    plan: &Plan<T>,
    pieces: Vec<Piece<'_>>,
) -> f64 {
    let (n, k, tk) = (x.rows(), x.k(), plan.top_k);
    let parts = for_blocks_with(n, k, pieces, |r, mut p| {
        let (mut sx, mut si, mut sl, mut se, mut st) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut rows = vec![RowScore::default(); r.len()];
        let mut lps = vec![0.0f64; r.len() * tk];
        let xs = x.load::<T>(r.start, r.end, &mut sx);
        let idx: &[i64] = match targets {
            Some(t) => t.view.load_index(r.start, r.end, &mut si),
            None => &[],
        };
        let mut out = BlockOut {
            rows: &mut rows,
            top_ids: p.ids,
            top_logprobs: &mut lps,
        };
        score_rows(isa, xs, k, idx, plan, &mut out);
        if let Some(v) = p.logprob.as_mut() {
            v.store::<f64, _>(&mut sl, |o| {
                o.iter_mut().zip(&rows).for_each(|(o, s)| *o = s.logprob)
            });
        }
        if let Some(v) = p.entropy.as_mut() {
            v.store::<f64, _>(&mut se, |o| {
                o.iter_mut().zip(&rows).for_each(|(o, s)| *o = s.entropy)
            });
        }
        if let Some(v) = p.top.as_mut() {
            v.store::<f64, _>(&mut st, |o| o.copy_from_slice(&lps));
        }
        if let Some(rank) = p.rank {
            rank.iter_mut().zip(&rows).for_each(|(o, s)| *o = s.rank);
        }
        if let Some(g) = p.greedy {
            g.iter_mut().zip(&rows).for_each(|(o, s)| *o = s.rank == 0);
        }
        // The negative log-likelihood of the counted rows (those with a rank).
        rows.iter()
            .filter(|s| s.rank >= 0)
            .fold(0.0, |a, s| a - s.logprob)
    });
    ordered_sum(parts)
}

/// Checks that an output has `n` rows of `k` (`what` names it).
fn check_rows(what: &str, rows: usize, k: usize, n: usize, want_k: usize) -> Result<()> {
    if (rows, k) != (n, want_k) && n * want_k != 0 {
        return Err(Error::Shape(format!(
            "{what}: expected {n} rows of {want_k}, got {rows} rows of {k}"
        )));
    }
    Ok(())
}

/// Scores every row of `x` (rows along the class axis) into `out`; `T` is the compute type.
/// Every option and target is checked before anything is written.
pub(crate) fn score_views<T: Float>(
    isa: Level,
    x: &View<'_>,
    targets: Option<TargetIndex<'_>>,
    o: &ScoreOptions,
    out: ScoreOutputs<'_, '_>,
) -> Result<()> {
    let (n, k) = (x.rows(), x.k());
    let o = ScoreOptions::new(k, o.top_k, o.temperature, o.ignore_index)?;
    let plan = Plan {
        ignore_index: o.ignore_index,
        inv_temperature: o.inv_temperature::<T>()?,
        top_k: o.top_k,
        entropy: true,
    };
    for (what, v, want_k) in [
        ("logprob", &out.logprob, 1),
        ("entropy", &out.entropy, 1),
        ("top_logprobs", &out.top_logprobs, o.top_k),
    ] {
        if let Some(v) = v {
            check_rows(what, v.rows(), v.k(), n, want_k)?;
        }
    }
    for (what, len, want) in [
        ("rank", out.rank.as_ref().map(|s| s.len()), n),
        ("is_greedy", out.is_greedy.as_ref().map(|s| s.len()), n),
        ("top_ids", Some(out.top_ids.len()), n * o.top_k),
    ] {
        if let Some(len) = len.filter(|&l| l != want) {
            return Err(Error::Shape(format!(
                "{what}: expected {want} elements, got {len}"
            )));
        }
    }
    if let Some(t) = &targets {
        check_targets(isa, t, k, n, o.ignore_index)?;
    }
    let with_t = targets.is_some();
    let pieces = row_pieces(out.logprob.filter(|_| with_t), n, k)
        .into_iter()
        .zip(row_pieces(out.entropy, n, k))
        .zip(row_pieces(out.top_logprobs.filter(|_| o.top_k > 0), n, k))
        .zip(slice_pieces(out.rank.filter(|_| with_t), 1, n, k))
        .zip(slice_pieces(out.is_greedy.filter(|_| with_t), 1, n, k))
        .zip(slice_pieces(Some(out.top_ids), o.top_k, n, k))
        .map(|(((((logprob, entropy), top), rank), greedy), ids)| Piece {
            logprob,
            entropy,
            top,
            rank,
            greedy,
            ids: ids.unwrap_or_default(),
        })
        .collect();
    run_blocks(isa, x, targets.as_ref(), &plan, pieces);
    Ok(())
}

/// `(nll_sum, count)` of the rows of `x` against `targets` (see [`perplexity`]).
pub(crate) fn perplexity_view<T: Float>(
    isa: Level,
    x: &View<'_>,
    targets: TargetIndex<'_>,
    ignore_index: i64,
) -> Result<(f64, u64)> {
    let (n, k) = (x.rows(), x.k());
    let count = check_targets(isa, &targets, k, n, ignore_index)?;
    let plan = Plan {
        ignore_index,
        inv_temperature: T::ONE,
        top_k: 0,
        entropy: false,
    };
    let pieces = block_ranges(n, k)
        .map(|_| Piece {
            logprob: None,
            entropy: None,
            top: None,
            rank: None,
            greedy: None,
            ids: &mut [],
        })
        .collect();
    let total = run_blocks(isa, x, Some(&targets), &plan, pieces);
    Ok((total, count))
}

/// Where [`token_logprobs`] writes, one element per row (`top_*`: `top_k` per row, best
/// first). `logprob`, `rank` and `is_greedy` are only written with targets.
#[derive(Debug)]
pub struct ScoreSlices<'o, T> {
    pub logprob: Option<&'o mut [T]>,
    pub is_greedy: Option<&'o mut [bool]>,
    pub rank: Option<&'o mut [i64]>,
    pub entropy: &'o mut [T],
    pub top_ids: &'o mut [i64],
    pub top_logprobs: &'o mut [T],
}

/// Scores the rows of `k` logits in `x` (as many rows as `out.entropy` has elements): the
/// target's log-probability, whether it is the argmax and its rank in the stable descending
/// order (NaN first), the entropy `-Σ p log p`, and the `top_k` most likely classes, all of
/// `x / temperature` (see `sce_rs.token_logprobs` in the package docs). `target` holds one
/// class index per row, or `ignore_index`; `k` must be at least 1. Nothing is written on
/// error.
///
/// ```
/// use sce_rs::scoring::{token_logprobs, ScoreOptions, ScoreSlices};
/// let x = [2.0f64, 1.0, 0.1, 0.5, 2.5, 0.3];
/// let (mut lp, mut h, mut rank, mut ids, mut top) = ([0.0; 2], [0.0; 2], [0i64; 2], [0i64; 2], [0.0; 2]);
/// let out = ScoreSlices { logprob: Some(&mut lp), is_greedy: None, rank: Some(&mut rank),
///     entropy: &mut h, top_ids: &mut ids, top_logprobs: &mut top };
/// token_logprobs(&x, 3, Some(&[0, 0]), &ScoreOptions::new(3, 1, 1.0, -100).unwrap(), out).unwrap();
/// assert_eq!((rank, ids), ([0, 1], [0, 1]));
/// assert!((lp[1] + 2.22).abs() < 1e-3);
/// ```
pub fn token_logprobs<T: Float>(
    x: &[T],
    k: usize,
    target: Option<&[i64]>,
    o: &ScoreOptions,
    out: ScoreSlices<'_, T>,
) -> Result<()> {
    let n = out.entropy.len();
    if x.len() != n * k || target.is_some_and(|t| t.len() != n) {
        return Err(Error::Shape(format!(
            "x must hold {n} rows of {k} (one per entropy) and target {n} indices, got {} and {}",
            x.len(),
            target.map_or(n, |t| t.len())
        )));
    }
    let xv = View::of_slice(x, k.max(1));
    let xv = if k == 0 {
        View::of_slice(&x[..0], 0)
    } else {
        xv
    };
    let tv = target.map(View::of_indices);
    let mut lv = out.logprob.map(|l| ViewMut::of_slice(l, 1));
    let mut ev = ViewMut::of_slice(out.entropy, 1);
    let mut topv = ViewMut::of_slice(out.top_logprobs, o.top_k.max(1));
    let shape = [n];
    let outs = ScoreOutputs {
        logprob: lv.as_mut(),
        entropy: Some(&mut ev),
        top_logprobs: (o.top_k > 0).then_some(&mut topv),
        rank: out.rank,
        is_greedy: out.is_greedy,
        top_ids: out.top_ids,
    };
    let targets = tv.as_ref().map(|view| TargetIndex {
        view,
        shape: &shape,
    });
    score_views::<T>(Level::active(), &xv, targets, o, outs)
}

/// `(nll_sum, count)` of the rows of `k` logits in `x` against `target` (one class index per
/// row, or `ignore_index`): the sum of `-log p(target)` over the rows not ignored (in `f64`,
/// block order: the same for any thread count) and their number. The perplexity is
/// `exp(nll_sum / count)`; sums of consecutive chunks add up to the whole text's.
pub fn perplexity<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    ignore_index: i64,
) -> Result<(f64, u64)> {
    if x.len() != target.len() * k {
        return Err(Error::Shape(format!(
            "x must hold one row of {k} per target ({} targets), got {} elements",
            target.len(),
            x.len()
        )));
    }
    let xv = View::of_slice(x, k);
    let tv = View::of_indices(target);
    let shape = [target.len()];
    perplexity_view::<T>(
        Level::active(),
        &xv,
        TargetIndex {
            view: &tv,
            shape: &shape,
        },
        ignore_index,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// logprob, entropy, rank, is_greedy, top_ids, top_logprobs.
    type Scores = (Vec<f32>, Vec<f32>, Vec<i64>, Vec<bool>, Vec<i64>, Vec<f32>);

    fn scores(x: &[f32], k: usize, t: &[i64], top_k: usize) -> Scores {
        let n = t.len();
        let (mut lp, mut en, mut tl) = (vec![0f32; n], vec![0f32; n], vec![0f32; n * top_k]);
        let (mut rank, mut greedy, mut ids) =
            (vec![0i64; n], vec![false; n], vec![0i64; n * top_k]);
        let out = ScoreSlices {
            logprob: Some(&mut lp),
            is_greedy: Some(&mut greedy),
            rank: Some(&mut rank),
            entropy: &mut en,
            top_ids: &mut ids,
            top_logprobs: &mut tl,
        };
        let o = ScoreOptions::new(k, top_k, 1.0, -100).unwrap();
        token_logprobs(x, k, Some(t), &o, out).unwrap();
        (lp, en, rank, greedy, ids, tl)
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (n, k) = (300, 1000);
        let x: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let t: Vec<i64> = (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    -100
                } else {
                    (i * 31 % k) as i64
                }
            })
            .collect();
        let before = crate::pool::num_threads();
        let run = |threads| {
            crate::pool::set_num_threads(threads).unwrap();
            (scores(&x, k, &t, 4), perplexity(&x, k, &t, -100).unwrap())
        };
        let ((one, p1), (two, p2)) = (run(1), run(2));
        crate::pool::set_num_threads(before).unwrap();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            (bits(&one.0), bits(&one.1), bits(&one.5)),
            (bits(&two.0), bits(&two.1), bits(&two.5))
        );
        assert_eq!((one.2, one.3, one.4), (two.2, two.3, two.4));
        assert_eq!(p1.0.to_bits(), p2.0.to_bits());
        assert_eq!(p1.1, (n - n.div_ceil(7)) as u64);
        // The nll sum is the sum of the counted rows' -logprob.
        let want: f64 = one
            .0
            .iter()
            .zip(&t)
            .filter(|(_, &t)| t != -100)
            .map(|(l, _)| -(*l as f64))
            .sum();
        assert!((p1.0 - want).abs() < 1e-5 * want.abs());
    }

    #[test]
    fn a_bad_target_or_option_writes_nothing() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let (mut lp, mut en, mut rank) = ([7f32; 2], [7f32; 2], [7i64; 2]);
        let out = ScoreSlices {
            logprob: Some(&mut lp),
            is_greedy: None,
            rank: Some(&mut rank),
            entropy: &mut en,
            top_ids: &mut [],
            top_logprobs: &mut [],
        };
        let o = ScoreOptions::new(2, 0, 1.0, -100).unwrap();
        let e = token_logprobs(&x, 2, Some(&[0, 2]), &o, out).unwrap_err();
        assert!(matches!(e, Error::ClassIndex { index: 2, .. }), "{e:?}");
        assert_eq!((lp, en, rank), ([7.0; 2], [7.0; 2], [7; 2]));
        assert!(ScoreOptions::new(2, 3, 1.0, -100).is_err());
        assert!(ScoreOptions::new(2, 1, 0.0, -100).is_err());
        let tiny = ScoreOptions::new(2, 1, 1e-300, -100).unwrap();
        assert!(tiny.inv_temperature::<f32>().is_err() && tiny.inv_temperature::<f64>().is_ok());
        assert!(perplexity(&x, 3, &[0], -100).is_err());
    }
}
