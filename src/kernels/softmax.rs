//! Softmax, log-softmax, logsumexp, their backward passes and the softmax Jacobian, row by
//! row (short rows as lanes or in groups, the logarithms of longer rows eight at a time).
//!
//! Stability: every row is shifted by its maximum `m` before `exp`, and the results are formed
//! as `exp(x - m) / sum` and `(x - m) - ln(sum)`, never as `exp(x - lse)`: near the float32
//! limit `lse = m + ln(sum)` rounds back to `m` and `exp(x - lse)` would lose the answer.
//! `logsumexp` follows PyTorch in shifting by 0 instead of an infinite maximum, so a row of
//! `-inf` gives `-inf` and a row holding `+inf` gives `+inf` (softmax of such rows is NaN,
//! as in PyTorch). `ln(sum)` is `log1p` of the sum's rest beside the maximum's exact 1
//! ([`ExpSum::ln`]), so where the maximum dominates, `logsumexp([0, -40]) = 4.25e-18` and not 0.

use super::lanes::{lanes_log_softmax, lanes_logsumexp, lanes_softmax, LIMIT, ROW_LANES};
use super::{
    dot, exp_store_sum, max_exp_sum_with, row_max, rows, rows_mut, segment_max_exp_sum, short_rows,
    small_row_sum, small_rows_exp, small_rows_stats, sum, Ahead, ExpSum, GroupStats, RowsAhead,
    LN_GROUP, ONLINE_STEP, SMALL_K, SMALL_ROWS, STACK_SCRATCH,
};
use crate::dtype::DType;
use crate::float::Float;
use crate::isa::{isa_dispatch, Arith};

/// `out = softmax(x)` for one row: the maximum, then `exp(x - max)` stored while summed, then
/// one scaling pass over `out`; float32 rows of more than [`ONE_PASS_K`] elements read `x`
/// once ([`softmax_long_row`]).
// PERF: for long rows, recomputing exp in a second pass instead of storing it was slower
// (float32 128 x 128256 softmax(out=): 26.7 ms against ONNX Runtime's 14.3 ms, which stores):
// exp is the bottleneck, and the extra pass over `out` mostly hits L2.
#[inline(always)]
pub fn softmax_row<T: Float, A: Arith>(x: &[T], out: &mut [T], ahead: Ahead<'_, T>, a: A) {
    if T::DTYPE == DType::F32 && x.len() > ONE_PASS_K {
        return softmax_long_row(x, out, a);
    }
    let m = row_max(x);
    let inv = T::from_f64(1.0 / exp_store_sum(x, m, out, ahead, a));
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// Float32 rows longer than this take [`softmax_long_row`].
// PERF: float32 softmax(out=), one thread (AMD EPYC, AVX-512), against the two-pass time: from
// memory, rows of 65536 0.70-0.85x, 512 x 128256 0.79-0.82x, 4096 x 8192 0.85-0.92x; rows of
// 4096 (two steps) 1.00-1.02x; 64 x 8192 in cache 1.02-1.04x. float64, whose exp costs more
// beside the wait, gained nothing: 256 x 128256 1.06x, 512 x 32768 0.99x. Log-softmax stored
// the same way (x - m_j, then minus the shift and ln s): 0.94-1.00x from memory, 1.03x in
// cache, not kept. (BENCHMARKS.md, 2026-12-04, eighteenth session.)
pub(crate) const ONE_PASS_K: usize = 2 * ONLINE_STEP;

/// `out = softmax(x)` for a long row, `x` read once from memory: each step of
/// [`ONLINE_STEP`] elements has its maximum taken while it is in L1 and its exps stored over
/// the running maximum `m_j` (summed, the sum rescaled as the maximum grows, as
/// [`super::max_exp_sum`] does), then a pass over `out` (in L2) scales each step by
/// `exp(m_j - m) / s` (`1 / s` for the steps taken over the row's maximum). The sum adds the
/// same chunk totals as the two-pass path in another order (in `f64`), and the steps before
/// the maximum round once more (the stored exp, then the product): within a few ULP of the
/// two-pass values, not bitwise.
// PERF: the two passes read a row that does not stay in L2 beside its output twice from
// memory, the maximum's pass with nothing to overlap the wait (see ONE_PASS_K). Not kept: the
// exps in a row-long scratch and `out` written by streaming stores (no read for ownership),
// 512 x 128256 1.63-1.71x the time; the next step prefetched (input 1.07-1.20x, output
// 1.16-1.22x); the scaling pass from the row's end back, 0.99-1.01x (AMD EPYC, BENCHMARKS.md,
// 2026-12-04, twentieth session).
#[inline(always)]
fn softmax_long_row<T: Float, A: Arith>(x: &[T], out: &mut [T], a: A) {
    let (mut stack, mut heap) = ([T::ZERO; 64], Vec::new());
    let shifts = super::scratch(x.len().div_ceil(ONLINE_STEP), &mut stack, &mut heap);
    let (mut m, mut s) = (T::NEG_INFINITY, 0.0f64);
    let steps = x.chunks(ONLINE_STEP).zip(out.chunks_mut(ONLINE_STEP));
    for ((xs, os), shift) in steps.zip(shifts.iter_mut()) {
        let sm = row_max(xs);
        if sm == T::NEG_INFINITY && m == T::NEG_INFINITY {
            // No finite element yet: exp(-inf - -inf) would be NaN where a later maximum
            // makes these terms 0. A NaN must still poison the row (and a row of only -inf
            // ends NaN below, as in the two-pass path).
            os.fill(T::ZERO);
            if xs.iter().any(|v| v.is_nan()) {
                s = f64::NAN;
            }
        } else {
            if sm > m {
                s *= (m.to_f64() - sm.to_f64()).exp();
                m = sm;
            }
            s += exp_store_sum(xs, m, os, Ahead::NONE, a);
        }
        *shift = m;
    }
    let inv = 1.0 / s;
    for (os, &shift) in out.chunks_mut(ONLINE_STEP).zip(shifts.iter()) {
        let f = if shift == m {
            T::from_f64(inv)
        } else {
            T::from_f64((shift.to_f64() - m.to_f64()).exp() * inv)
        };
        for o in os.iter_mut() {
            *o *= f;
        }
    }
}

/// `out = log_softmax(x)` for one row.
#[inline(always)]
pub fn log_softmax_row<T: Float, A: Arith>(x: &[T], out: &mut [T], ahead: Ahead<'_, T>, a: A) {
    // The second pass reads the row again: no step ahead (see `STEPS_AHEAD_MIN`).
    let (m, s) = max_exp_sum_with(x, ahead, false, a);
    let ln_s = T::from_f64(s.ln::<T>());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - m) - ln_s;
    }
}

/// `log(sum(exp(x)))` for one row, in `f64`: the tests' per-row reference (the kernels take
/// rows in groups, [`GroupStats`]).
#[cfg(test)]
#[inline(always)]
pub fn logsumexp_row<T: Float, A: Arith>(x: &[T], a: A) -> f64 {
    let (m, s) = super::max_exp_sum(x, Ahead::NONE, a);
    lse_of(x, m, s.ln::<T>())
}

/// `m + ln_s`, or PyTorch's answer where the maximum `m` of the row `x` is infinite: it shifts
/// by 0 there, which gives the infinite maximum itself (every other term is finite or -inf)
/// unless a NaN is present. Rare, so the second pass over `x` is fine.
#[inline(always)]
pub(crate) fn lse_of<T: Float>(x: &[T], m: T, ln_s: f64) -> f64 {
    if m.to_f64().is_infinite() {
        return if x.iter().any(|v| v.is_nan()) {
            f64::NAN
        } else {
            m.to_f64()
        };
    }
    m.to_f64() + ln_s
}

/// Vector-Jacobian product of softmax: `out = s * (g - sum(g * s))`.
#[inline(always)]
pub fn softmax_backward_row<T: Float>(g: &[T], s: &[T], out: &mut [T]) {
    let gs = T::from_f64(dot(g, s));
    for ((o, &gi), &si) in out.iter_mut().zip(g).zip(s) {
        *o = si * (gi - gs);
    }
}

/// Vector-Jacobian product of log-softmax: `out = g - exp(ls) * sum(g)`.
#[inline(always)]
pub fn log_softmax_backward_row<T: Float, A: Arith>(g: &[T], ls: &[T], out: &mut [T], a: A) {
    let sg = T::from_f64(sum(g));
    for ((o, &gi), &li) in out.iter_mut().zip(g).zip(ls) {
        *o = gi - a.exp(li) * sg;
    }
}

/// The `k x k` Jacobian `J[i][j] = d s_i / d x_j = s_i (δ_ij - s_j)` of one row, row-major
/// into `out`; `s` is scratch of length `k`.
#[inline(always)]
pub fn softmax_jacobian_row<T: Float, A: Arith>(x: &[T], s: &mut [T], out: &mut [T], a: A) {
    let k = x.len();
    softmax_row(x, s, Ahead::NONE, a);
    for (i, jrow) in rows_mut(out, k).enumerate() {
        let si = s[i];
        for (j, o) in jrow.iter_mut().enumerate() {
            *o = -si * s[j];
        }
        jrow[i] += si;
    }
}

/// Row-block forms: `x` and `out` hold whole rows of length `k`.
#[inline(always)]
fn softmax_rows<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], fetch_out: bool, a: A) {
    let (x, out) = lanes_first(x, k, out, a, lanes_softmax);
    if k < SMALL_K {
        let mut ms = [T::ZERO; SMALL_ROWS];
        for (xg, og) in groups(x, k).zip(groups_mut(out, k)) {
            small_rows_exp(xg, k, &mut ms, og, a);
            for or in rows_mut(og, k) {
                let inv = T::from_f64(1.0 / small_row_sum(or, a));
                for o in or.iter_mut() {
                    *o *= inv;
                }
            }
        }
        return;
    }
    let mut rows = RowsAhead::new(x, k, out, fetch_out);
    while let Some((_, xr, or, ahead)) = rows.next() {
        softmax_row(xr, or, ahead, a);
    }
}

/// Where both transpositions run in registers, the full blocks of [`ROW_LANES`] rows of `x`
/// through `lanes` (a per-element lanes path); returns the rest of `x` and `out` for the
/// grouped path (the two are bitwise equal row by row).
// PERF: only in registers, and only full blocks. With both transpositions scalar copies,
// float64 65536 x 10 softmax took 1.29x the grouped path's time and log-softmax 1.05-1.09x
// (BENCHMARKS.md); a short block is transposed that way too: float32 8 x 10 softmax took
// 0.59 us per call through lanes, 0.49 us grouped (benchmarks/per_call_side_by_side.py).
#[inline(always)]
fn lanes_first<'x, 'o, T: Float, A: Arith>(
    x: &'x [T],
    k: usize,
    out: &'o mut [T],
    a: A,
    lanes: impl FnOnce(&[T], usize, &mut [T], A),
) -> (&'x [T], &'o mut [T]) {
    if !(k > 0 && k < LIMIT && a.lanes_in_registers::<T>()) {
        return (x, out);
    }
    let full = x.len() / (ROW_LANES * k) * (ROW_LANES * k);
    let ((xf, x), (of, out)) = (x.split_at(full), out.split_at_mut(full));
    lanes(xf, k, of, a);
    (x, out)
}

/// Groups of [`SMALL_ROWS`] rows (the last may be shorter) for the small-row path.
fn groups<T>(x: &[T], k: usize) -> std::slice::Chunks<'_, T> {
    x.chunks((SMALL_ROWS * k).max(1))
}

fn groups_mut<T>(x: &mut [T], k: usize) -> std::slice::ChunksMut<'_, T> {
    x.chunks_mut((SMALL_ROWS * k).max(1))
}

#[inline(always)]
fn log_softmax_rows<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], fetch_out: bool, a: A) {
    if k == 1 {
        // `(x - m) - ln s` with `m = x`: `ln s` is 0 where `x` is finite and NaN where the
        // difference is, so `x - x`, bitwise, without the per-block work of a sum of one.
        // PERF: float32 655360 x 1: 1.12x the time of the lanes path before it was aligned.
        #[allow(clippy::eq_op)] // `x - x` is the result: 0, or NaN where `x` is not finite
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v - v;
        }
        return;
    }
    let (x, out) = lanes_first(x, k, out, a, lanes_log_softmax);
    if k < SMALL_K {
        let mut ms = [T::ZERO; SMALL_ROWS];
        let (mut ss, mut ls) = ([ExpSum::ZERO; SMALL_ROWS], [0.0; SMALL_ROWS]);
        for (xg, og) in groups(x, k).zip(groups_mut(out, k)) {
            // The exps go through `out`, overwritten below.
            small_rows_stats(xg, k, &mut ms, og, None, &mut ss, &mut ls, a);
            for (((xr, or), &m), &l) in rows(xg, k).zip(rows_mut(og, k)).zip(&ms).zip(&ls) {
                let ln_s = T::from_f64(l);
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = (v - m) - ln_s;
                }
            }
        }
        return;
    }
    // PERF: each row written one row late, after the next row's sums (so that its `ln s`
    // would run beside them): float32 8192 x 1000 and 2048 x 2048 took 1.13x the time, 256 x
    // 1000 1.06x (AMD EPYC, 2026-12-04).
    let mut rows = RowsAhead::new(x, k, out, fetch_out);
    while let Some((_, xr, or, ahead)) = rows.next() {
        log_softmax_row(xr, or, ahead, a);
    }
}

/// One value per row; an empty class axis (`k == 0`) gives `-inf`, the log of an empty sum.
#[inline(always)]
fn logsumexp_rows<T: Float, A: Arith, const SHORT: bool>(x: &[T], k: usize, out: &mut [T], a: A) {
    if k == 0 {
        out.fill(T::NEG_INFINITY);
        return;
    }
    if !SHORT && k < LIMIT {
        return lanes_logsumexp(x, k, out, a);
    }
    if !SHORT && k < SMALL_K {
        let mut ms = [T::ZERO; SMALL_ROWS];
        let (mut ss, mut ls) = ([ExpSum::ZERO; SMALL_ROWS], [0.0; SMALL_ROWS]);
        // Sized to the input: a call of a few rows should not clear a whole group's worth.
        let (mut stack, mut heap) = ([T::ZERO; STACK_SCRATCH], Vec::new());
        let exps = super::scratch(x.len().min(SMALL_ROWS * k), &mut stack, &mut heap);
        for (xg, og) in groups(x, k).zip(out.chunks_mut(SMALL_ROWS)) {
            let exps = &mut exps[..xg.len()];
            small_rows_stats(xg, k, &mut ms, exps, None, &mut ss, &mut ls, a);
            for (((xr, &m), &l), o) in rows(xg, k).zip(&ms).zip(&ls).zip(og) {
                *o = T::from_f64(lse_of(xr, m, l));
            }
        }
        return;
    }
    let mut st = GroupStats::new();
    for (g, (xg, og)) in x
        .chunks(LN_GROUP * k)
        .zip(out.chunks_mut(LN_GROUP))
        .enumerate()
    {
        if SHORT {
            st.fill_short(xg, k, a);
        } else {
            st.fill(x, g, k, a);
        }
        for ((xr, o), (&m, &l)) in rows(xg, k).zip(og).zip(st.ms.iter().zip(&st.ls)) {
            *o = T::from_f64(lse_of(xr, m, l));
        }
    }
}

#[inline(always)]
fn softmax_backward_rows<T: Float, A: Arith>(g: &[T], s: &[T], k: usize, out: &mut [T], _: A) {
    for ((gr, sr), or) in rows(g, k).zip(rows(s, k)).zip(rows_mut(out, k)) {
        softmax_backward_row(gr, sr, or);
    }
}

#[inline(always)]
fn log_softmax_backward_rows<T: Float, A: Arith>(g: &[T], ls: &[T], k: usize, out: &mut [T], a: A) {
    if k > 0 && k < SMALL_K {
        // PERF: the exps as one flat map over a group of rows, then each row's sum and
        // update: per row, a map of a few elements ran mostly in its loop's scalar remainder
        // (float32 65536 x 10: see BENCHMARKS.md). The same operations as the row path.
        let groups = groups(g, k).zip(groups(ls, k)).zip(groups_mut(out, k));
        for ((gg, lg), og) in groups {
            for (o, &l) in og.iter_mut().zip(lg) {
                *o = a.exp(l);
            }
            for (gr, or) in rows(gg, k).zip(rows_mut(og, k)) {
                let sg = T::from_f64(sum(gr));
                for (o, &gi) in or.iter_mut().zip(gr) {
                    *o = gi - *o * sg;
                }
            }
        }
        return;
    }
    for ((gr, lr), or) in rows(g, k).zip(rows(ls, k)).zip(rows_mut(out, k)) {
        log_softmax_backward_row(gr, lr, or, a);
    }
}

/// `out` holds `k * k` values per row.
#[inline(always)]
fn softmax_jacobian_rows<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], a: A) {
    let mut s = vec![T::ZERO; k];
    for (xr, or) in rows(x, k).zip(rows_mut(out, k * k)) {
        softmax_jacobian_row(xr, &mut s, or, a);
    }
}

/// `out = exp(x - shift) * scale` for `shift >= max(x)`: a segment of a softmax row whose
/// maximum and sum come from the whole row.
#[inline(always)]
fn segment_exp_scaled<T: Float, A: Arith>(x: &[T], shift: T, scale: T, out: &mut [T], a: A) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = a.exp_nonpos(v - shift) * scale;
    }
}

/// One value per row; an empty class axis (`k == 0`) gives `-inf`.
pub fn logsumexp<T: Float>(isa: crate::isa::Level, x: &[T], k: usize, out: &mut [T]) {
    if short_rows(k) {
        logsumexp_short(isa, x, k, out)
    } else {
        logsumexp_any(isa, x, k, out)
    }
}

isa_dispatch! {
    /// `fetch_out`: whether to prefetch the output's rows ([`super::fetches_out`]).
    pub fn softmax[T: Float](x: &[T], k: usize, out: &mut [T], fetch_out: bool) = softmax_rows;
    /// `(max, Σ exp(x - max))` of one segment of a long row.
    pub fn segment_sums[T: Float](x: &[T]) -> (T, ExpSum) = segment_max_exp_sum;
    /// `out = exp(x - shift) * scale`: one segment of a long softmax row.
    pub fn exp_scaled[T: Float](x: &[T], shift: T, scale: T, out: &mut [T]) = segment_exp_scaled;
    pub fn log_softmax[T: Float](x: &[T], k: usize, out: &mut [T], fetch_out: bool) =
        log_softmax_rows;
    pub fn logsumexp_any[T: Float](x: &[T], k: usize, out: &mut [T]) =
        logsumexp_rows::<T, _, false>;
    pub fn logsumexp_short[T: Float](x: &[T], k: usize, out: &mut [T]) =
        logsumexp_rows::<T, _, true>;
    pub fn softmax_backward[T: Float](g: &[T], s: &[T], k: usize, out: &mut [T]) = softmax_backward_rows;
    pub fn log_softmax_backward[T: Float](g: &[T], ls: &[T], k: usize, out: &mut [T]) =
        log_softmax_backward_rows;
    /// `out` holds `k * k` values per row.
    pub fn softmax_jacobian[T: Float](x: &[T], k: usize, out: &mut [T]) = softmax_jacobian_rows;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::isa::Level;
    use crate::isa::Unfused;

    /// Rows of every length below SMALL_K, over more than one group, with the special rows
    /// (all -inf, +inf, NaN, one huge value, a dominating maximum) mixed in.
    pub(crate) fn small_rows_cases() -> Vec<(usize, Vec<f32>)> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
        };
        (1..SMALL_K)
            .map(|k| {
                let n = SMALL_ROWS + 7;
                let mut x: Vec<f32> = (0..n * k).map(|_| next()).collect();
                x[..k].fill(f32::NEG_INFINITY);
                x[k] = f32::INFINITY;
                x[2 * k + k / 2] = f32::NAN;
                x[3 * k] = 3e38;
                // Rows whose maximum dominates, at the class the cross-entropy tests target
                // there ((i * 3) % k), so that its gradient takes `top_grad`.
                x[4 * k..5 * k].fill(-30.0);
                x[4 * k + 12 % k] = 5.0;
                x[5 * k..6 * k].fill(-12.0);
                x[5 * k + 15 % k] = 0.0;
                (k, x)
            })
            .collect()
    }

    /// The small-row path against the row path, whose values come from the same terms but
    /// whose sum `s` is rounded apart: the small path adds the maxima's exact ones to the sum
    /// of the other terms in `f64`, the row path adds them among the terms in `T`. Each rounds
    /// at most `k` times in `T`, so `s`, `ln s` and what is formed with them may differ by
    /// `k + 2` epsilons of `T` relative to `max(1, |value|)` (2 more for `ln` and the last
    /// rounding). NaN matches NaN, an infinity only itself.
    pub(crate) fn close_to_row_path(a: f64, b: f64, k: usize, eps: f64) -> bool {
        if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
            return a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        }
        (a - b).abs() <= (k as f64 + 2.0) * eps * a.abs().max(b.abs()).max(1.0)
    }

    fn close(a: f32, b: f32, k: usize) -> bool {
        close_to_row_path(a.into(), b.into(), k, f32::EPSILON.into())
    }

    /// The grouped small-row path gives what the per-row functions give: softmax bitwise
    /// (its sum adds the 1 among the terms, as the row path does), the others within
    /// [`close_to_row_path`].
    #[test]
    fn small_rows_match_the_row_path() {
        for (k, x) in small_rows_cases() {
            let n = x.len() / k;
            let (mut got, mut want) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            softmax_rows(&x, k, &mut got, true, Unfused);
            for (xr, wr) in rows(&x, k).zip(rows_mut(&mut want, k)) {
                softmax_row(xr, wr, Ahead::NONE, Unfused);
            }
            let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(
                got.iter().zip(&want).all(|(&a, &b)| same(a, b)),
                "softmax k={k}"
            );
            log_softmax_rows(&x, k, &mut got, true, Unfused);
            for (xr, wr) in rows(&x, k).zip(rows_mut(&mut want, k)) {
                log_softmax_row(xr, wr, Ahead::NONE, Unfused);
            }
            assert!(
                got.iter().zip(&want).all(|(&a, &b)| close(a, b, k)),
                "log_softmax k={k}"
            );
            let mut lse = vec![0f32; n];
            logsumexp_rows::<_, _, false>(&x, k, &mut lse, Unfused);
            for (xr, &l) in rows(&x, k).zip(&lse) {
                assert!(
                    close(l, logsumexp_row(xr, Unfused) as f32, k),
                    "logsumexp k={k}"
                );
            }
        }
    }

    /// Rows of one element: `log_softmax` is `x - x`, +0 where `x` is finite and NaN where
    /// not, bitwise the row path's, at every level.
    #[test]
    fn log_softmax_of_rows_of_one_is_x_minus_x() {
        fn check<T: Float>(x: &[T]) {
            let mut want = vec![T::ONE; x.len()];
            for (xr, wr) in rows(x, 1).zip(rows_mut(&mut want, 1)) {
                log_softmax_row(xr, wr, Ahead::NONE, Unfused);
            }
            assert!(want[..6].iter().all(|v| v.to_f64().to_bits() == 0));
            assert!(want[6..].iter().all(|v| v.is_nan()));
            for level in Level::supported() {
                let mut got = vec![T::ONE; x.len()];
                log_softmax(level, x, 1, &mut got, true);
                assert!(same_or_nan(&got, &want), "{level:?}");
            }
        }
        let (inf, inf32) = (f64::INFINITY, f32::INFINITY);
        check::<f32>(&[0.0, -0.0, 1.5, -3e38, 3e38, 1e-45, inf32, -inf32, f32::NAN]);
        check::<f64>(&[0.0, -0.0, 1.5, -1e308, 1e308, 5e-324, inf, -inf, f64::NAN]);
    }

    #[test]
    fn seed_example() {
        let x = [2.0f64, 1.0, 0.1];
        let mut out = [0.0; 3];
        softmax(Level::active(), &x, 3, &mut out, true);
        let want = [
            0.659_001_138_885_968,
            0.242_432_970_704_714,
            0.098_565_890_409_318,
        ];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-14, "{out:?}");
        }
    }

    #[test]
    fn float32_limit_rows_keep_their_answer() {
        let x = [3e38f32, 3e38, -3e38, 0.0];
        let mut out = [0.0f32; 4];
        softmax(Level::active(), &x, 4, &mut out, true);
        assert_eq!(out, [0.5, 0.5, 0.0, 0.0]);
        log_softmax(Level::active(), &x, 4, &mut out, true);
        assert_eq!(out[2], f32::NEG_INFINITY);
        assert!((out[0] + std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn infinite_rows_follow_pytorch() {
        let mut o = [0.0f64; 1];
        logsumexp(Level::active(), &[f64::NEG_INFINITY; 3], 3, &mut o);
        assert_eq!(o[0], f64::NEG_INFINITY);
        logsumexp(Level::active(), &[f64::INFINITY, 1.0], 2, &mut o);
        assert_eq!(o[0], f64::INFINITY);
        logsumexp(Level::active(), &[f64::NAN, 1.0], 2, &mut o);
        assert!(o[0].is_nan());
        let mut s = [0.0f64; 3];
        softmax(Level::active(), &[f64::NEG_INFINITY; 3], 3, &mut s, true);
        assert!(s.iter().all(|v| v.is_nan()));
        logsumexp::<f64>(Level::active(), &[], 0, &mut o);
        assert_eq!(o[0], f64::NEG_INFINITY);
    }

    /// `2 * LN_GROUP + 3` rows of `k` elements (two groups of the grouped paths and a short
    /// one): row 0 only -inf, row 1 with +inf, row 2 with NaN, row 3 dominated by a 5 at
    /// `peak` among -30s, row `LN_GROUP + 2` with 3e38, the others ordinary logits.
    pub(crate) fn special_rows<T: Float>(k: usize, peak: usize) -> (usize, Vec<T>) {
        let n = 2 * LN_GROUP + 3;
        let mut x: Vec<T> = (0..n * k)
            .map(|i| T::from_f64(((i * 37) % 101) as f64 / 7.0 - 7.0))
            .collect();
        x[..k].fill(T::NEG_INFINITY);
        x[k + 5] = T::from_f64(f64::INFINITY);
        x[2 * k + k / 2] = T::from_f64(f64::NAN);
        x[3 * k..4 * k].fill(T::from_f64(-30.0));
        x[3 * k + peak] = T::from_f64(5.0);
        x[(LN_GROUP + 2) * k + 3] = T::from_f64(3e38);
        (n, x)
    }

    /// Bitwise equal, except that any NaN matches any NaN: which operand's NaN an instruction
    /// passes on (its sign) is not part of the result.
    pub(crate) fn same_or_nan<T: Float>(a: &[T], b: &[T]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.to_f64().to_bits() == y.to_f64().to_bits() || (x.is_nan() && y.is_nan())
            })
    }

    #[inline(always)]
    fn lse_by_rows_with<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], a: A) {
        for (xr, o) in rows(x, k).zip(out.iter_mut()) {
            *o = T::from_f64(logsumexp_row(xr, a));
        }
    }

    /// The logsumexp of each row with its sums by `short_exp_sum`, one row at a time.
    #[inline(always)]
    fn short_lse_by_rows_with<T: Float, A: Arith>(x: &[T], k: usize, out: &mut [T], a: A) {
        for (xr, o) in rows(x, k).zip(out.iter_mut()) {
            let m = row_max(xr);
            *o = T::from_f64(lse_of(
                xr,
                m,
                super::super::short_exp_sum(xr, m, a).ln::<T>(),
            ));
        }
    }

    crate::isa::isa_dispatch! {
        pub fn lse_by_rows[T: Float](x: &[T], k: usize, out: &mut [T]) = lse_by_rows_with;
        pub fn short_lse_by_rows[T: Float](x: &[T], k: usize, out: &mut [T]) =
            short_lse_by_rows_with;
    }

    /// Rows of [`SMALL_K`] or more take their sums and logarithms [`LN_GROUP`] rows at a time
    /// ([`GroupStats`]): bitwise the per-row path at every level, over two groups and a short
    /// one, on rows of only -inf, with +inf, NaN, a huge value or a dominating maximum. Rows
    /// shorter than a chunk (`short_rows`) sum their terms beside their maxima's ones: bitwise
    /// that sum taken row by row, and within [`close_to_row_path`] of the row path.
    #[test]
    fn grouped_logsumexp_is_the_row_path() {
        fn check<T: Float>() {
            for k in [SMALL_K, 100, 255, 256, 1000, 2100] {
                let (n, x) = special_rows::<T>(k, 22);
                for level in Level::supported() {
                    let (mut got, mut want) = (vec![T::ZERO; n], vec![T::ZERO; n]);
                    logsumexp(level, &x, k, &mut got);
                    lse_by_rows(level, &x, k, &mut want);
                    if short_rows(k) {
                        let eps = if T::DTYPE == crate::dtype::DType::F32 {
                            f64::from(f32::EPSILON)
                        } else {
                            f64::EPSILON
                        };
                        let close = (got.iter().zip(&want))
                            .all(|(a, b)| close_to_row_path(a.to_f64(), b.to_f64(), k, eps));
                        assert!(close, "{level:?} k={k}: {got:?} !~ {want:?}");
                        short_lse_by_rows(level, &x, k, &mut want);
                    }
                    let same = same_or_nan(&got, &want);
                    assert!(same, "{level:?} k={k}: {got:?} != {want:?}");
                }
            }
            assert!(short_rows(100) && !short_rows(SMALL_K - 1) && !short_rows(256));
        }
        check::<f32>();
        check::<f64>();
    }

    /// Neumaier's compensated sum: within 2 epsilons of the exact sum of positive terms.
    fn compensated_sum(v: &[f64]) -> f64 {
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for &x in v {
            let t = s + x;
            c += if s.abs() >= x.abs() {
                (s - t) + x
            } else {
                (x - t) + s
            };
            s = t;
        }
        s + c
    }

    /// Rows longer than [`ONE_PASS_K`] (float32 softmax in one pass over `x`, float64 in two)
    /// against a float64 softmax, at every level: the row's maximum in the first, a middle or
    /// the last step (the steps before it scaled by `exp(m_j - m) / s`), a dominating maximum,
    /// leading steps of only -inf, and the rows PyTorch makes NaN (only -inf; +inf; a NaN,
    /// also one hidden in a leading step of -inf).
    ///
    /// Tolerance, relative to the value, in epsilons of `T`: the reference's terms are within
    /// 1 of `f64`'s and its sum is compensated; ours round the exp (2), the product with the
    /// step's factor (1) and the factor's `exp` and `1 / s` (1 each), and the sum of positive
    /// terms rounds at most 16 times per lane and 4 times pairwise per chunk in `T`, then once
    /// per chunk and per step in `f64` (11 at this `k`): 5 + 20 + 11 = 36, so 40; plus the
    /// smallest normal for terms in the subnormal range.
    #[test]
    fn long_rows_in_one_pass_are_the_softmax() {
        fn check<T: Float>(eps: f64, tiny: f64) {
            let k = 3 * ONLINE_STEP + 77;
            assert!(k > ONE_PASS_K);
            let base = |i: usize| ((i * 37) % 101) as f64 / 7.0 - 7.0;
            let mut cases: Vec<(&str, Vec<f64>)> = Vec::new();
            for (name, at) in [("max first", 5), ("max middle", k / 2), ("max last", k - 1)] {
                let mut x: Vec<f64> = (0..k).map(base).collect();
                x[at] = 9.0;
                cases.push((name, x));
            }
            let mut x = vec![-30.0; k];
            x[k - 3] = 5.0;
            cases.push(("dominated", x));
            let mut x: Vec<f64> = (0..k).map(base).collect();
            x[..ONLINE_STEP + 10].fill(f64::NEG_INFINITY);
            cases.push(("leading -inf", x));
            let mut nan_hidden = vec![f64::NEG_INFINITY; k];
            nan_hidden[7] = f64::NAN;
            nan_hidden[k - 1] = 1.0;
            let mut nan_late: Vec<f64> = (0..k).map(base).collect();
            nan_late[k - 2] = f64::NAN;
            let mut pos_inf: Vec<f64> = (0..k).map(base).collect();
            pos_inf[ONLINE_STEP + 1] = f64::INFINITY;
            let nan_rows = [
                ("only -inf", vec![f64::NEG_INFINITY; k]),
                ("NaN among leading -inf", nan_hidden),
                ("NaN late", nan_late),
                ("+inf", pos_inf),
            ];
            for level in Level::supported() {
                for (name, x64) in &cases {
                    let x: Vec<T> = x64.iter().map(|&v| T::from_f64(v)).collect();
                    let mut got = vec![T::ZERO; k];
                    softmax(level, &x, k, &mut got, true);
                    let xr: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
                    let m = xr.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let e: Vec<f64> = xr.iter().map(|&v| (v - m).exp()).collect();
                    let s = compensated_sum(&e);
                    for (i, (g, w)) in got.iter().zip(e.iter().map(|v| v / s)).enumerate() {
                        let g = g.to_f64();
                        let ok = (g - w).abs() <= 40.0 * eps * w + tiny;
                        assert!(ok, "{level:?} {name}: [{i}] {g} against {w}");
                    }
                }
                for (name, x64) in &nan_rows {
                    let x: Vec<T> = x64.iter().map(|&v| T::from_f64(v)).collect();
                    let mut got = vec![T::ZERO; k];
                    softmax(level, &x, k, &mut got, true);
                    assert!(got.iter().all(|v| v.is_nan()), "{level:?} {name}");
                }
            }
        }
        check::<f32>(f32::EPSILON.into(), f32::MIN_POSITIVE.into());
        check::<f64>(f64::EPSILON, f64::MIN_POSITIVE);
    }

    #[inline(always)]
    fn backward_by_rows_with<T: Float, A: Arith>(g: &[T], ls: &[T], k: usize, out: &mut [T], a: A) {
        for ((gr, lr), or) in rows(g, k).zip(rows(ls, k)).zip(rows_mut(out, k)) {
            log_softmax_backward_row(gr, lr, or, a);
        }
    }

    crate::isa::isa_dispatch! {
        pub fn backward_by_rows[T: Float](g: &[T], ls: &[T], k: usize, out: &mut [T]) =
            backward_by_rows_with;
    }

    /// The grouped log-softmax backward pass of rows under [`SMALL_K`] is bitwise the row
    /// path at every level, infinities and NaN included.
    #[test]
    fn short_log_softmax_backward_is_the_row_path() {
        for (k, ls) in small_rows_cases() {
            let g: Vec<f32> = (0..ls.len())
                .map(|i| ((i * 13) % 17) as f32 / 4.0 - 2.0)
                .collect();
            for level in Level::supported() {
                let (mut got, mut want) = (vec![0f32; ls.len()], vec![1f32; ls.len()]);
                log_softmax_backward(level, &g, &ls, k, &mut got);
                backward_by_rows(level, &g, &ls, k, &mut want);
                let bad = (got.iter().zip(&want))
                    .position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()));
                assert!(bad.is_none(), "{level:?} k={k} at {bad:?}");
            }
        }
    }

    #[test]
    fn jacobian_matches_backward() {
        let x = [0.3f64, -1.0, 2.0, 0.5];
        let mut j = [0.0; 16];
        softmax_jacobian(Level::active(), &x, 4, &mut j);
        let mut s = [0.0; 4];
        softmax(Level::active(), &x, 4, &mut s, true);
        let g = [1.0, -2.0, 0.5, 3.0];
        let mut vjp = [0.0; 4];
        softmax_backward(Level::active(), &g, &s, 4, &mut vjp);
        for c in 0..4 {
            let want: f64 = (0..4).map(|r| g[r] * j[r * 4 + c]).sum();
            assert!((vjp[c] - want).abs() < 1e-14);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::isa::Level;
    use proptest::prelude::*;

    proptest! {
        /// float32 softmax rows agree with a float64 textbook softmax and sum to one.
        #[test]
        fn softmax_f32_matches_f64_textbook(row in proptest::collection::vec(-80.0f32..80.0, 1..300)) {
            let mut out = vec![0.0f32; row.len()];
            softmax(Level::active(), &row, row.len(), &mut out, true);
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for (o, ei) in out.iter().zip(&e) {
                prop_assert!((*o as f64 - ei / s).abs() <= 2e-6 + 2e-5 * ei / s);
            }
            let total: f64 = out.iter().map(|&v| v as f64).sum();
            prop_assert!((total - 1.0).abs() < 1e-5);
        }

        /// logsumexp is the log of the softmax normalizer: log_softmax = x - logsumexp.
        #[test]
        fn log_softmax_is_x_minus_logsumexp(row in proptest::collection::vec(-700.0f64..700.0, 1..200)) {
            let mut ls = vec![0.0; row.len()];
            log_softmax(Level::active(), &row, row.len(), &mut ls, true);
            let lse = logsumexp_row(&row, crate::isa::Unfused);
            for (l, x) in ls.iter().zip(&row) {
                prop_assert!((l - (x - lse)).abs() <= 1e-12 * (1.0 + x.abs()));
            }
        }
    }
}
