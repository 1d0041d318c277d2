//! Rows as lanes: rows shorter than one accumulator set ([`LANES`] elements), [`ROW_LANES`]
//! rows at a time, each row in one SIMD lane.
//!
//! A row of ten classes read as a vector is mostly padding, and its maximum and sum end in
//! horizontal reductions and scalar tails. Transposed, a block of 16 such rows is `k` vectors
//! whose `j`-th holds element `j` of every row: the maximum, the count of maxima, the exps and
//! the sums are then `k` full-width steps for 16 rows, the logarithm runs over the 16 sums at
//! once, and results per element (probabilities, log-probabilities) are formed in
//! lanes and transposed back; results per row (the logsumexp, the cross-entropy against a
//! class index, whose target logit is picked out of the columns) are formed in lanes and
//! written out 16 at a time, or, for a cross-entropy reduced to one loss, added up in the
//! lanes. The transpositions are [`Arith::rows_to_lanes`] and
//! [`Arith::lanes_to_rows`] (in registers for float32 on AVX2 and AVX-512). The cross-entropy
//! against class indices with its gradient (plain or label-smoothed) is both: losses per row,
//! the gradient per element (the target's element set row by row after the way back).
//!
//! Each lane does exactly the scalar arithmetic of the grouped short-row paths for its row,
//! in the same order (the maximum over `j`, then sums from 0 upwards in `T`), so the two are
//! bitwise equal; tests hold them to it.

use super::cross_entropy::CeOptions;
use super::online::{smoothed_loss, top_grad, unweighted_wz, Terms};
use super::softmax::lse_of;
use super::{per_column, ExpSum, LANES};
use crate::float::Float;
use crate::isa::Arith;
pub(crate) use crate::simd::ROW_LANES;
use crate::simd::{AlignedLanes, MAX_K};

/// The lanes paths take rows of `1..LIMIT` elements.
pub(crate) const LIMIT: usize = if LANES < MAX_K { LANES } else { MAX_K };

/// Each lane's maximum over the columns `cols` (the value of `row_max`: the order does not
/// matter to a maximum).
#[inline(always)]
fn lane_max<T: Float>(cols: &[[T; ROW_LANES]]) -> [T; ROW_LANES] {
    let mut m = [T::NEG_INFINITY; ROW_LANES];
    for col in cols {
        for l in 0..ROW_LANES {
            m[l] = if col[l] > m[l] { col[l] } else { m[l] };
        }
    }
    m
}

/// Each lane's sums over the columns `cols`, whose maxima are `m`, and their `ln s`, as
/// [`super::small_rows_stats`] gives them: the rest summed from 0 upwards in `T` without the
/// terms of the maxima, the count of those added in `f64`.
#[inline(always)]
fn lane_sums<T: Float, A: Arith>(
    cols: &[[T; ROW_LANES]],
    m: [T; ROW_LANES],
    a: A,
) -> ([ExpSum; ROW_LANES], [f64; ROW_LANES]) {
    let (mut count, mut rest) = ([0u32; ROW_LANES], [T::ZERO; ROW_LANES]);
    for col in cols {
        for l in 0..ROW_LANES {
            let d = col[l] - m[l];
            count[l] += u32::from(col[l] == m[l]);
            // The maximum's own term is exactly 1: left out of the rest (as in
            // small_rows_stats, an infinite maximum leaves no 0 and a NaN sum).
            let e = a.exp_nonpos(d);
            rest[l] += if d == T::ZERO { T::ZERO } else { e };
        }
    }
    let (mut sums, mut lns) = ([ExpSum::ZERO; ROW_LANES], [0.0; ROW_LANES]);
    for l in 0..ROW_LANES {
        sums[l] = ExpSum::of_ones_and_rest(count[l], rest[l].to_f64());
        lns[l] = sums[l].ln::<T>();
    }
    (sums, lns)
}

/// What [`lane_blocks`] gives for each block: each lane's maximum and `ln s`.
struct LaneStats<T> {
    m: [T; ROW_LANES],
    lns: [f64; ROW_LANES],
}

/// The blocks of [`ROW_LANES`] rows of `x`, rows of `0 < k < LIMIT` elements: `each` gets
/// the block's first row, its row count, its columns and each lane's maximum and `ln s`,
/// bitwise those [`super::small_rows_stats`] gives. Lanes past a short last block's rows
/// hold zeros or the previous block's rows: nothing they compute traps, and `each` is to
/// write out only the first `rows` lanes.
#[inline(always)]
fn lane_blocks<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    a: A,
    mut each: impl FnMut(usize, usize, &[[T; ROW_LANES]], &LaneStats<T>),
) {
    assert!(k > 0 && k < LIMIT, "rows of 1 to {} elements", LIMIT - 1);
    let mut block = AlignedLanes([[T::ZERO; ROW_LANES]; MAX_K]);
    let xt = &mut block.0;
    for (b, xb) in x.chunks(ROW_LANES * k).enumerate() {
        a.rows_to_lanes(xb, k, xt);
        let m = lane_max(&xt[..k]);
        let lns = lane_sums(&xt[..k], m, a).1;
        each(b * ROW_LANES, xb.len() / k, &xt[..k], &LaneStats { m, lns });
    }
}

/// For rows of `k` elements, `0 < k < LIMIT`, held in `x` (at most `ms.len()` rows): each
/// row's maximum into `ms`, its sums into `ss` and `ln s` into `ls`, bitwise those of
/// [`super::small_rows_stats`] (which also gives the exps; these are not kept).
#[inline(always)]
pub(crate) fn lanes_stats<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    ms: &mut [T],
    ss: &mut [ExpSum],
    ls: &mut [f64],
    a: A,
) {
    // PERF: its own loop, not `lane_blocks` with a closure: through the closure, LLVM laid
    // out the rest of the cross-entropy kernel differently, and float32 65536 x 4
    // cross_entropy_and_grad (which never comes here) took 1.05-1.12x the time.
    assert!(k > 0 && k < LIMIT, "rows of 1 to {} elements", LIMIT - 1);
    let blocks = x
        .chunks(ROW_LANES * k)
        .zip(ms.chunks_mut(ROW_LANES))
        .zip(ss.chunks_mut(ROW_LANES))
        .zip(ls.chunks_mut(ROW_LANES));
    // PERF: not an `AlignedLanes`: inlined into the row paths of the cross-entropy, it made
    // their whole frame realigned, and float64 163840 x 4 cross_entropy_and_grad (which never
    // comes here) took 1.04x the time.
    let mut block = [[T::ZERO; ROW_LANES]; MAX_K];
    let xt = &mut block;
    for (((xb, mb), sb), lb) in blocks {
        a.rows_to_lanes(xb, k, xt);
        let m = lane_max(&xt[..k]);
        let (sums, lns) = lane_sums(&xt[..k], m, a);
        let rows = xb.len() / k;
        mb[..rows].copy_from_slice(&m[..rows]);
        sb[..rows].copy_from_slice(&sums[..rows]);
        lb[..rows].copy_from_slice(&lns[..rows]);
    }
}

/// `out = logsumexp(x)` (one value per row) for rows of `0 < k < LIMIT`, bitwise
/// [`lse_of`] of the grouped path's statistics: `m + ln s` formed in lanes, and PyTorch's
/// rule for an infinite maximum taken row by row only in a block that has one.
#[inline(always)]
pub(crate) fn lanes_logsumexp<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], a: A) {
    lane_blocks(x, k, a, |first, rows, _, st| {
        let lse: [T; ROW_LANES] =
            std::array::from_fn(|l| T::from_f64(st.m[l].to_f64() + st.lns[l]));
        let infinite = (st.m.iter()).fold(false, |f, m| f | m.to_f64().is_infinite());
        let out = &mut out[first..first + rows];
        out.copy_from_slice(&lse[..rows]);
        if infinite {
            let xs = x[first * k..].chunks(k);
            for (r, (o, xr)) in out.iter_mut().zip(xs).enumerate() {
                *o = T::from_f64(lse_of(xr, st.m[r], st.lns[r]));
            }
        }
    });
}

/// A lane's class index: `IGNORED`, `OUTSIDE` `[0, k)`, or the index.
const IGNORED: i32 = -1;
const OUTSIDE: i32 = -2;

/// The class index `i` of a row as its lane holds it.
#[inline(always)]
fn lane_target(i: i64, ignore: i64, k: usize) -> i32 {
    let inside = if (i as u64) < k as u64 {
        i as i32
    } else {
        OUTSIDE
    };
    if i == ignore {
        IGNORED
    } else {
        inside
    }
}

/// The class indices `idx` of a block's rows as lanes (lanes past its rows ignored).
#[inline(always)]
fn lane_targets(idx: &[i64], ignore: i64, k: usize) -> [i32; ROW_LANES] {
    let mut t = [IGNORED; ROW_LANES];
    for (tl, &i) in t.iter_mut().zip(idx) {
        *tl = lane_target(i, ignore, k);
    }
    t
}

/// Each lane's value in the column of its class index `t` (any column for the others).
// PERF: a load per lane from the columns; LLVM turned a select per column into a branch per
// lane (float32 65536 x 10 cross_entropy took 1.7 times as long).
#[inline(always)]
fn at_targets<T: Float>(cols: &[[T; ROW_LANES]], t: &[i32; ROW_LANES]) -> [T; ROW_LANES] {
    let last = cols.len() - 1;
    let mut at = [T::ZERO; ROW_LANES];
    for l in 0..ROW_LANES {
        at[l] = cols[(t[l] as usize).min(last)][l];
    }
    at
}

/// Each lane's loss `-((x_t - m) - ln s)`: 0 where ignored, NaN for an index outside the row.
#[inline(always)]
fn lane_losses<T: Float>(
    at: [T; ROW_LANES],
    st: &LaneStats<T>,
    t: &[i32; ROW_LANES],
) -> [f64; ROW_LANES] {
    let mut loss = [0.0; ROW_LANES];
    for l in 0..ROW_LANES {
        let v = -((at[l].to_f64() - st.m[l].to_f64()) - st.lns[l]);
        let v = if t[l] == OUTSIDE { f64::NAN } else { v };
        loss[l] = if t[l] == IGNORED { 0.0 } else { v };
    }
    loss
}

/// A block's losses `lse - x_t` in lanes from its columns `cols` and their statistics `st`,
/// on the block's class indices `idx` (lanes past them ignored), with each lane's index as
/// [`lane_targets`] gives it.
// PERF: written out here, not through `lane_targets`, `at_targets` and `lane_losses` as
// `lanes_class_grads` has them: through them, the kernels were laid out differently and
// float32 65536 x 4 and x 10 cross_entropy took 1.05-1.21x the time (five builds), and
// 1.11-1.17x again for the reduced one. A load per lane from the columns: LLVM turned a
// select per column into a branch per lane (65536 x 10 took 1.7 times as long).
#[inline(always)]
fn block_losses<T: Float>(
    cols: &[[T; ROW_LANES]],
    st: &LaneStats<T>,
    idx: &[i64],
    ignore: i64,
) -> ([f64; ROW_LANES], [i32; ROW_LANES]) {
    let k = cols.len();
    let mut t = [IGNORED; ROW_LANES];
    for (tl, &i) in t.iter_mut().zip(idx) {
        *tl = lane_target(i, ignore, k);
    }
    let at: [T; ROW_LANES] = std::array::from_fn(|l| cols[(t[l] as usize).min(k - 1)][l]);
    let mut loss = [0.0; ROW_LANES];
    for l in 0..ROW_LANES {
        let v = -((at[l].to_f64() - st.m[l].to_f64()) - st.lns[l]);
        let v = if t[l] == OUTSIDE { f64::NAN } else { v };
        loss[l] = if t[l] == IGNORED { 0.0 } else { v };
    }
    (loss, t)
}

/// The plain cross-entropy `lse - x_t` of rows of `0 < k < LIMIT` on the class indices `idx`
/// (one per row), bitwise the row path's: 0 where the index is `ignore`; NaN for an index
/// outside `[0, k)` (the callers check them first).
#[inline(always)]
pub(crate) fn lanes_class_losses<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    idx: &[i64],
    ignore: i64,
    losses: &mut [f64],
    a: A,
) {
    assert_eq!(idx.len() * k, x.len(), "one class index per row");
    lane_blocks(x, k, a, |first, rows, cols, st| {
        let (loss, _) = block_losses(cols, st, &idx[first..first + rows], ignore);
        losses[first..first + rows].copy_from_slice(&loss[..rows]);
    });
}

/// What a reduced cross-entropy needs of a block of rows: the sum of their losses, how many
/// rows are not ignored, and how many of those have an index outside the classes (their
/// losses, NaN, are in the sum).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tally {
    pub sum: f64,
    pub live: usize,
    pub bad: usize,
}

/// [`lanes_class_losses`] reduced, for a caller that needs only their sum: the indices
/// checked and counted here as the losses are formed, and the losses added in the order of
/// [`super::sum`] over them, so bitwise that sum (the one the paths with a gradient take):
/// each of the 16 lanes over the full blocks, the rows of a short last block apart.
// PERF: the losses in scratch, their sum and a pass that checked the indices first: float32
// cross_entropy 65536 x 10 took 1.05x the time, 163840 x 4 1.06x (BENCHMARKS.md, the
// twenty-first session).
#[inline(always)]
pub(crate) fn lanes_class_total<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    idx: &[i64],
    ignore: i64,
    a: A,
) -> Tally {
    assert_eq!(idx.len() * k, x.len(), "one class index per row");
    let (mut acc, mut live, mut bad) = ([0.0; ROW_LANES], [0u32; ROW_LANES], [0u32; ROW_LANES]);
    let (mut last, mut last_rows) = ([0.0; ROW_LANES], 0);
    lane_blocks(x, k, a, |first, rows, cols, st| {
        let (loss, t) = block_losses(cols, st, &idx[first..first + rows], ignore);
        for l in 0..ROW_LANES {
            live[l] += u32::from(t[l] != IGNORED);
            bad[l] += u32::from(t[l] == OUTSIDE);
        }
        if rows == ROW_LANES {
            for l in 0..ROW_LANES {
                acc[l] += loss[l];
            }
        } else {
            (last, last_rows) = (loss, rows);
        }
    });
    let count = |c: [u32; ROW_LANES]| c.iter().map(|&v| v as usize).sum();
    Tally {
        sum: super::lanes_total(acc, last[..last_rows].iter().sum()),
        live: count(live),
        bad: count(bad),
    }
}

/// [`lanes_class_losses`] with the gradient: into `grad` (laid out as `x`) each row's
/// `scale(r) * (softmax - onehot)`, bitwise the grouped path's (the exps times one over their
/// sum, then times the scale; at the target minus the scale, or `scale * top_grad` where the
/// target is the dominating maximum); with label smoothing (the only option it takes), the
/// online cross-entropy's terms for it, as the grouped path forms them. Ignored rows get 0,
/// rows whose index lies outside `[0, k)` NaN. Full blocks of [`ROW_LANES`] rows only: this
/// path only pays off where both transpositions run in registers, and a short block's are
/// copies.
// PERF: the plain and the smoothed kernel are two copies (`SMOOTH`, chosen by the caller):
// with the smoothing's branches in the one loop, float32 65536 x 4..15 plain gradients took
// 1.08-1.14x the time.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // an input, its targets, options, scales and two outputs
pub(crate) fn lanes_class_grads<const SMOOTH: bool, T: Float, A: Arith>(
    x: &[T],
    k: usize,
    (idx, ignore): (&[i64], i64),
    o: &CeOptions<T>,
    scale: impl Fn(usize) -> f64,
    grad: &mut [T],
    losses: &mut [f64],
    a: A,
) {
    assert!(k > 0 && k < LIMIT, "rows of 1 to {} elements", LIMIT - 1);
    assert!(
        o.weight.is_none() && o.z_loss == 0.0 && o.softcap.is_none(),
        "label smoothing the only option"
    );
    assert_eq!(SMOOTH, o.label_smoothing > 0.0, "SMOOTH as the options say");
    assert_eq!(idx.len() * k, x.len(), "one class index per row");
    assert!(
        grad.len() == x.len() && losses.len() == idx.len(),
        "outputs as x"
    );
    assert!(
        idx.len().is_multiple_of(ROW_LANES),
        "full blocks of {ROW_LANES} rows"
    );
    // The gradient's terms shared by every row (the online cross-entropy's); without
    // smoothing as constants, so that the plain kernel is the one it was before smoothing.
    let tm = if SMOOTH {
        Terms::new(o, k, 1.0)
    } else {
        Terms::UNIT
    };
    let eps = o.label_smoothing;
    let mut block = AlignedLanes([[T::ZERO; ROW_LANES]; MAX_K]);
    let xt = &mut block.0;
    let blocks = (x
        .chunks_exact(ROW_LANES * k)
        .zip(grad.chunks_exact_mut(ROW_LANES * k)))
    .zip(
        idx.chunks_exact(ROW_LANES)
            .zip(losses.chunks_exact_mut(ROW_LANES)),
    );
    for (b, ((xb, gb), (ib, lb))) in blocks.enumerate() {
        a.rows_to_lanes(xb, k, xt);
        let cols = &mut xt[..k];
        let t = lane_targets(ib, ignore, k);
        let m = lane_max(cols);
        let at = at_targets(cols, &t);
        // lane_sums' arithmetic, the exps kept in place.
        let (mut count, mut rest) = ([0u32; ROW_LANES], [T::ZERO; ROW_LANES]);
        for col in cols.iter_mut() {
            per_column();
            for l in 0..ROW_LANES {
                let d = col[l] - m[l];
                count[l] += u32::from(col[l] == m[l]);
                let e = a.exp_nonpos(d);
                rest[l] += if d == T::ZERO { T::ZERO } else { e };
                col[l] = e;
            }
        }
        // PERF: loops over the lanes, not `array::from_fn` (left as a call, 7% of a call).
        let (mut sums, mut lns) = ([ExpSum::ZERO; ROW_LANES], [0.0; ROW_LANES]);
        for l in 0..ROW_LANES {
            sums[l] = ExpSum::of_ones_and_rest(count[l], rest[l].to_f64());
            lns[l] = sums[l].ln::<T>();
        }
        let mut loss = lane_losses(at, &LaneStats { m, lns }, &t);
        if SMOOTH {
            for (r, (l, &tl)) in loss.iter_mut().zip(&t).enumerate() {
                if tl >= 0 {
                    let (xr, mf) = (&xb[r * k..(r + 1) * k], m[r].to_f64());
                    *l = smoothed_loss(o, k, *l, || unweighted_wz(xr, mf), lns[r]);
                }
            }
        }
        lb.copy_from_slice(&loss);
        let mut sc = [0.0; ROW_LANES];
        for (r, s) in sc.iter_mut().enumerate() {
            *s = scale(b * ROW_LANES + r);
        }
        let (mut ca, mut inv_s) = ([T::ZERO; ROW_LANES], [T::ZERO; ROW_LANES]);
        for l in 0..ROW_LANES {
            (ca[l], inv_s[l]) = (T::from_f64(sc[l] * tm.coef), T::from_f64(1.0 / sums[l].s));
        }
        if SMOOTH {
            let cb: [T; ROW_LANES] = std::array::from_fn(|l| T::from_f64(sc[l] * eps / k as f64));
            for col in cols.iter_mut() {
                per_column();
                for l in 0..ROW_LANES {
                    col[l] = ca[l] * (col[l] * inv_s[l]) - cb[l];
                }
            }
        } else {
            for col in cols.iter_mut() {
                per_column();
                for l in 0..ROW_LANES {
                    col[l] = ca[l] * (col[l] * inv_s[l]);
                }
            }
        }
        let at_grad = at_targets(cols, &t);
        let mut fix = [T::ZERO; ROW_LANES];
        for l in 0..ROW_LANES {
            let top = T::from_f64(sc[l] * top_grad(1.0, tm.extra, tm.cbw, tm.corr, sums[l]));
            let plain = at_grad[l] - T::from_f64(sc[l] * tm.corr);
            let at_top = sums[l].dominated() & (at[l] == m[l]);
            fix[l] = if at_top { top } else { plain };
        }
        a.lanes_to_rows(xt, k, gb);
        for (gr, (&tl, &f)) in gb.chunks_mut(k).zip(t.iter().zip(&fix)) {
            match tl {
                IGNORED => gr.fill(T::ZERO),
                OUTSIDE => gr.fill(T::from_f64(f64::NAN)),
                c => gr[c as usize] = f,
            }
        }
    }
}

/// `out = softmax(x)` for rows of `0 < k < LIMIT`, bitwise the grouped path's
/// ([`super::small_rows_exp`], then each row's exps times one over their sum in `T`).
#[inline(always)]
pub(crate) fn lanes_softmax<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], a: A) {
    assert!(k > 0 && k < LIMIT, "rows of 1 to {} elements", LIMIT - 1);
    let mut block = AlignedLanes([[T::ZERO; ROW_LANES]; MAX_K]);
    let xt = &mut block.0;
    for (xb, ob) in x.chunks(ROW_LANES * k).zip(out.chunks_mut(ROW_LANES * k)) {
        a.rows_to_lanes(xb, k, xt);
        let m = lane_max(&xt[..k]);
        for col in xt[..k].iter_mut() {
            per_column();
            for l in 0..ROW_LANES {
                col[l] = a.exp_nonpos(col[l] - m[l]);
            }
        }
        let mut sum = [T::ZERO; ROW_LANES];
        for col in &xt[..k] {
            per_column();
            for l in 0..ROW_LANES {
                sum[l] += col[l];
            }
        }
        let inv = sum.map(|s| T::from_f64(1.0 / s.to_f64()));
        for col in xt[..k].iter_mut() {
            per_column();
            for l in 0..ROW_LANES {
                col[l] *= inv[l];
            }
        }
        a.lanes_to_rows(xt, k, ob);
    }
}

/// `out = log_softmax(x)` for rows of `0 < k < LIMIT`: `(x - m) - ln s`, bitwise the
/// grouped path's.
#[inline(always)]
pub(crate) fn lanes_log_softmax<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], a: A) {
    assert!(k > 0 && k < LIMIT, "rows of 1 to {} elements", LIMIT - 1);
    let mut block = AlignedLanes([[T::ZERO; ROW_LANES]; MAX_K]);
    let xt = &mut block.0;
    for (xb, ob) in x.chunks(ROW_LANES * k).zip(out.chunks_mut(ROW_LANES * k)) {
        a.rows_to_lanes(xb, k, xt);
        let m = lane_max(&xt[..k]);
        let ln_s = lane_sums(&xt[..k], m, a).1.map(T::from_f64);
        for col in xt[..k].iter_mut() {
            per_column();
            for l in 0..ROW_LANES {
                col[l] = (col[l] - m[l]) - ln_s[l];
            }
        }
        a.lanes_to_rows(xt, k, ob);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{isa_dispatch, Level};
    use crate::kernels::softmax::tests::small_rows_cases;
    use crate::kernels::{small_row_sum, small_rows_exp, small_rows_stats, SMALL_ROWS};
    use crate::simd::{lanes_to_rows, rows_to_lanes, Lanes};

    #[inline(always)]
    fn transpose_with<T: Float, A: Arith>(block: &[T], k: usize, cols: &mut Lanes<T>, a: A) {
        a.rows_to_lanes(block, k, cols);
    }

    /// Both paths' `(maxima, sums, logarithms)` of one group of rows.
    type Stats<T> = (Vec<T>, Vec<ExpSum>, Vec<f64>);

    #[inline(always)]
    fn both_with<T: Float, A: Arith>(x: &[T], k: usize, a: A) -> [Stats<T>; 2] {
        let n = x.len() / k;
        let fresh = || (vec![T::ZERO; n], vec![ExpSum::ZERO; n], vec![0.0; n]);
        let (mut lanes, mut rows) = (fresh(), fresh());
        lanes_stats(x, k, &mut lanes.0, &mut lanes.1, &mut lanes.2, a);
        let mut exps = vec![T::ZERO; x.len()];
        let (ms, ss, ls) = (&mut rows.0, &mut rows.1, &mut rows.2);
        small_rows_stats(x, k, ms, &mut exps, None, ss, ls, a);
        [lanes, rows]
    }

    /// Both paths' logsumexp: [`lanes_logsumexp`], and [`lse_of`] of the grouped statistics.
    #[inline(always)]
    fn lse_both_with<T: Float, A: Arith>(x: &[T], k: usize, a: A) -> [Vec<T>; 2] {
        let mut lanes = vec![T::ZERO; x.len() / k];
        lanes_logsumexp(x, k, &mut lanes, a);
        let mut grouped = Vec::new();
        for group in x.chunks(SMALL_ROWS * k) {
            let [_, (ms, _, ls)] = both_with(group, k, a);
            let rows = group.chunks(k).enumerate();
            grouped.extend(rows.map(|(r, xr)| T::from_f64(lse_of(xr, ms[r], ls[r]))));
        }
        [lanes, grouped]
    }

    #[inline(always)]
    fn back_with<T: Float, A: Arith>(cols: &Lanes<T>, k: usize, block: &mut [T], a: A) {
        a.lanes_to_rows(cols, k, block);
    }

    /// Softmax and log-softmax of rows, rows as lanes and by the grouped path.
    #[inline(always)]
    fn per_element_with<T: Float, A: Arith>(x: &[T], k: usize, a: A) -> [[Vec<T>; 2]; 2] {
        let mut lanes = [vec![T::ZERO; x.len()], vec![T::ZERO; x.len()]];
        lanes_softmax(x, k, &mut lanes[0], a);
        lanes_log_softmax(x, k, &mut lanes[1], a);
        let mut grouped = lanes.clone();
        let mut ms = [T::ZERO; SMALL_ROWS];
        let (mut ss, mut ls) = ([ExpSum::ZERO; SMALL_ROWS], [0.0; SMALL_ROWS]);
        let mut exps = vec![T::ZERO; SMALL_ROWS * k];
        for (gi, xg) in x.chunks(SMALL_ROWS * k).enumerate() {
            let span = gi * SMALL_ROWS * k..gi * SMALL_ROWS * k + xg.len();
            // Softmax: small_rows_exp, then each row times one over its sum.
            let og = &mut grouped[0][span.clone()];
            small_rows_exp(xg, k, &mut ms, og, a);
            for or in og.chunks_mut(k) {
                let inv = T::from_f64(1.0 / small_row_sum(or, a));
                or.iter_mut().for_each(|o| *o *= inv);
            }
            // Log-softmax: small_rows_stats, then (x - m) - ln s.
            let ex = &mut exps[..xg.len()];
            small_rows_stats(xg, k, &mut ms, ex, None, &mut ss, &mut ls, a);
            let og = &mut grouped[1][span];
            for (r, (or, xr)) in og.chunks_mut(k).zip(xg.chunks(k)).enumerate() {
                let ln_s = T::from_f64(ls[r]);
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = (v - ms[r]) - ln_s;
                }
            }
        }
        [lanes, grouped]
    }

    isa_dispatch! {
        pub fn transpose[T: Float](block: &[T], k: usize, cols: &mut Lanes<T>) = transpose_with;
        pub fn back[T: Float](cols: &Lanes<T>, k: usize, block: &mut [T]) = back_with;
        pub fn both[T: Float](x: &[T], k: usize) -> [Stats<T>; 2] = both_with;
        pub fn lse_both[T: Float](x: &[T], k: usize) -> [Vec<T>; 2] = lse_both_with;
        pub fn per_element[T: Float](x: &[T], k: usize) -> [[Vec<T>; 2]; 2] = per_element_with;
    }

    /// Softmax and log-softmax, rows as lanes, are bitwise the grouped path's at every level
    /// (NaN matching NaN).
    fn per_element_results_are_the_grouped_ones<T: Float>() {
        for (k, x) in small_rows_cases().into_iter().filter(|(k, _)| *k < LIMIT) {
            let x: Vec<T> = x.iter().map(|&v| T::from_f64(v.into())).collect();
            for level in Level::supported() {
                let [lanes, grouped] = per_element(level, &x, k);
                for (what, (l, g)) in ["softmax", "log_softmax"]
                    .iter()
                    .zip(lanes.iter().zip(&grouped))
                {
                    let bad = l
                        .iter()
                        .zip(g)
                        .position(|(a, b)| !same(a.to_f64(), b.to_f64()));
                    assert!(bad.is_none(), "{what} {level:?} k={k} at {bad:?}");
                }
            }
        }
    }

    /// Logsumexp, rows as lanes, is bitwise the grouped path's at every level, on rows with
    /// infinite maxima (PyTorch's rule) and NaN, over full blocks and a short last one.
    fn logsumexp_is_the_grouped_one<T: Float>() {
        for (k, x) in small_rows_cases().into_iter().filter(|(k, _)| *k < LIMIT) {
            let x: Vec<T> = x.iter().map(|&v| T::from_f64(v.into())).collect();
            for level in Level::supported() {
                let [lanes, grouped] = lse_both(level, &x, k);
                let bad =
                    (lanes.iter().zip(&grouped)).position(|(a, b)| !same(a.to_f64(), b.to_f64()));
                assert!(bad.is_none(), "{level:?} k={k} row {bad:?}");
            }
        }
    }

    #[test]
    fn logsumexp_is_the_grouped_one_f32() {
        logsumexp_is_the_grouped_one::<f32>();
    }

    #[test]
    fn logsumexp_is_the_grouped_one_f64() {
        logsumexp_is_the_grouped_one::<f64>();
    }

    #[test]
    fn per_element_results_are_the_grouped_ones_f32() {
        per_element_results_are_the_grouped_ones::<f32>();
    }

    #[test]
    fn per_element_results_are_the_grouped_ones_f64() {
        per_element_results_are_the_grouped_ones::<f64>();
    }

    /// Every level's way back from lanes is the scalar one.
    fn transposes_back_like_the_scalar_copy<T: Float>() {
        for level in Level::supported() {
            for k in 1..MAX_K {
                for rows in [ROW_LANES, ROW_LANES - 1, 1] {
                    let mut cols = [[T::ZERO; ROW_LANES]; MAX_K];
                    for (j, col) in cols.iter_mut().enumerate() {
                        for (l, v) in col.iter_mut().enumerate() {
                            *v = T::from_f64((l * MAX_K + j) as f64);
                        }
                    }
                    let (mut got, mut want) = (vec![T::ZERO; rows * k], vec![T::ZERO; rows * k]);
                    back(level, &cols, k, &mut got);
                    lanes_to_rows(&cols, k, &mut want);
                    let g: Vec<f64> = got.iter().map(|v| v.to_f64()).collect();
                    let w: Vec<f64> = want.iter().map(|v| v.to_f64()).collect();
                    assert_eq!(g, w, "{level:?} k={k} rows={rows}");
                }
            }
        }
    }

    #[test]
    fn transposes_back_like_the_scalar_copy_f32() {
        transposes_back_like_the_scalar_copy::<f32>();
    }

    #[test]
    fn transposes_back_like_the_scalar_copy_f64() {
        transposes_back_like_the_scalar_copy::<f64>();
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Every level's transposition (in registers for full float32 blocks on AVX2 and
    /// AVX-512) is the scalar one, for every row length it takes, full blocks and short.
    fn transposes_like_the_scalar_copy<T: Float>() {
        for level in Level::supported() {
            for k in 1..MAX_K {
                for rows in [ROW_LANES, ROW_LANES - 1, 1] {
                    let block: Vec<T> = (0..rows * k).map(|i| T::from_f64(i as f64)).collect();
                    let (mut got, mut want) =
                        ([[T::ZERO; ROW_LANES]; MAX_K], [[T::ZERO; ROW_LANES]; MAX_K]);
                    transpose(level, &block, k, &mut got);
                    rows_to_lanes(&block, k, &mut want);
                    for j in 0..k {
                        let (g, w) = (&got[j][..rows], &want[j][..rows]);
                        assert!(
                            g.iter().zip(w).all(|(a, b)| a.to_f64() == b.to_f64()),
                            "{level:?} k={k} rows={rows} column {j}: {g:?} != {w:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transposes_like_the_scalar_copy_f32() {
        transposes_like_the_scalar_copy::<f32>();
    }

    #[test]
    fn transposes_like_the_scalar_copy_f64() {
        transposes_like_the_scalar_copy::<f64>();
    }

    /// Bitwise the grouped small-row statistics at every level, on groups with infinities, a
    /// NaN, a value near the float32 limit, rows whose maximum dominates, full blocks and a
    /// short last one.
    fn stats_are_the_small_row_path<T: Float>() {
        for (k, x) in small_rows_cases().into_iter().filter(|(k, _)| *k < MAX_K) {
            let x: Vec<T> = x.iter().map(|&v| T::from_f64(v.into())).collect();
            for level in Level::supported() {
                for group in x.chunks(SMALL_ROWS * k) {
                    let [(lm, ls, ll), (rm, rs, rl)] = both(level, group, k);
                    for r in 0..group.len() / k {
                        let at = format!("{level:?} k={k} row {r}");
                        assert!(same(lm[r].to_f64(), rm[r].to_f64()), "max, {at}");
                        assert!(
                            same(ls[r].s, rs[r].s) && same(ls[r].rest, rs[r].rest),
                            "sums, {at}"
                        );
                        assert!(same(ll[r], rl[r]), "ln, {at}: {} != {}", ll[r], rl[r]);
                    }
                }
            }
        }
    }

    #[test]
    fn stats_are_the_small_row_path_f32() {
        stats_are_the_small_row_path::<f32>();
    }

    #[test]
    fn stats_are_the_small_row_path_f64() {
        stats_are_the_small_row_path::<f64>();
    }
}
