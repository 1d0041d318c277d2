//! Inference scoring of one row in one read: the target's log-probability and rank, the
//! entropy and the top-k log-probabilities, without ever forming `log_softmax(x)`.
//!
//! With `z = x / τ` (τ the temperature), `m = max x`, `y = (x - m) / τ <= 0`, `e = exp(y)` and
//! `s = Σ e`, every output follows from three sums taken in the same pass:
//!
//! ```text
//! log p_j = y_j - ln s                      (never z_j - lse: near the float range lse rounds)
//! H       = -Σ p log p = ln s - (Σ e·y) / s  (both terms >= 0: no cancellation)
//! rank_t  = #{j : x_j > x_t} + #{j < t : x_j = x_t}
//! ```
//!
//! The row is read in steps of `ONLINE_STEP` elements that stay in L1: per step one loop takes
//! the maximum and counts the rank, one takes `Σ e` and `Σ e·y` (lanes in `T` within chunks of
//! `CHUNK`, chunk totals in `f64`, as every exp-sum of the crate), and when the maximum grows
//! the running sums are rescaled in `f64`: `s' = r s`, `(Σ e y)' = r (Σ e y - δ s)` with
//! `δ = (m' - m) / τ`, `r = exp(-δ)`. `y` is clamped where `exp` is exactly 0 before `e·y`,
//! so a `-inf` logit contributes `0`, not `0 · -inf`.
//!
//! The order behind `rank`, `is_greedy` and `top_ids` is that of the logits as given (a
//! positive temperature does not change it, and dividing could merge neighbours by rounding):
//! descending, ties by lower index, and NaN above every number, as `np.argmax` and
//! `torch.sort(descending=True, stable=True)` order it. Top-k keeps a min-heap of the best
//! `top_k` seen so far; a step or 16-element chunk whose maximum does not beat the heap's worst
//! is skipped with one comparison, so on real rows almost every element costs nothing here.
//!
//! Rows holding NaN or `+inf`, or only `-inf` (found after the pass: their exp-sum is NaN or
//! their maximum not finite) follow IEEE and PyTorch: every float output is NaN (PyTorch's
//! `log_softmax` of such a row is all NaN); their rank and top-k ids are recomputed by a plain
//! scalar pass under the NaN-aware order.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{chunk_total, ln_f64, rows, CHUNK, LANES, ONLINE_STEP};
use crate::dtype::DType;
use crate::float::Float;
use crate::isa::{isa_dispatch, Arith};

/// What to compute for a block of rows.
#[derive(Clone, Copy, Debug)]
pub struct Plan<T> {
    /// A target equal to this is skipped: no rank, NaN log-probability.
    pub ignore_index: i64,
    /// `1 / temperature` in the compute type (checked to be a normal number by the caller).
    pub inv_temperature: T,
    pub top_k: usize,
    /// Whether to accumulate `Σ e·y` (the entropy); perplexity does without it.
    pub entropy: bool,
}

/// The per-row results of a block; `rank` is `-1` for a row without (or with an ignored)
/// target, and `logprob` NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowScore {
    pub logprob: f64,
    pub entropy: f64,
    pub rank: i64,
}

impl Default for RowScore {
    fn default() -> Self {
        RowScore {
            logprob: f64::NAN,
            entropy: f64::NAN,
            rank: -1,
        }
    }
}

/// Where a block's results go: one [`RowScore`] per row, `top_k` ids and log-probabilities
/// per row (best first).
#[derive(Debug)]
pub struct BlockOut<'a> {
    pub rows: &'a mut [RowScore],
    pub top_ids: &'a mut [i64],
    pub top_logprobs: &'a mut [f64],
}

/// `(value, index)` under the scoring order: `a` before `b` when it is NaN and `b` is not,
/// when it is larger, or when they are equal (or both NaN) and its index is lower.
#[inline(always)]
fn before<T: Float>(a: T, i: usize, b: T, j: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => i < j,
        (true, false) => true,
        (false, true) => false,
        (false, false) => a > b || (a == b && i < j),
    }
}

/// A heap entry; `Ord` is the scoring order (greater = earlier), total thanks to the index.
#[derive(Clone, Copy, Debug)]
struct Cand<T> {
    v: T,
    i: usize,
}

impl<T: Float> PartialEq for Cand<T> {
    fn eq(&self, o: &Self) -> bool {
        self.i == o.i
    }
}
impl<T: Float> Eq for Cand<T> {}
impl<T: Float> PartialOrd for Cand<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: Float> Ord for Cand<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        if self.i == o.i {
            Ordering::Equal
        } else if before(self.v, self.i, o.v, o.i) {
            Ordering::Greater
        } else {
            Ordering::Less
        }
    }
}

/// The best `top_k` elements seen so far: a min-heap whose root is the worst kept.
struct TopK<T> {
    heap: BinaryHeap<Reverse<Cand<T>>>,
    k: usize,
}

impl<T: Float> TopK<T> {
    fn new(k: usize) -> Self {
        TopK {
            heap: BinaryHeap::with_capacity(k + 1),
            k,
        }
    }

    /// The value an element must exceed to enter (the heap is full once a row is started).
    #[inline(always)]
    fn threshold(&self) -> T {
        self.heap.peek().map_or(T::NEG_INFINITY, |r| r.0.v)
    }

    /// Starts a row with its first `k` elements (every row has at least `k`).
    fn start(&mut self, x: &[T]) {
        self.heap.clear();
        self.heap.extend(
            x[..self.k]
                .iter()
                .enumerate()
                .map(|(i, &v)| Reverse(Cand { v, i })),
        );
    }

    /// Offers element `i`; only called when it may enter.
    #[inline(never)]
    fn offer(&mut self, v: T, i: usize) {
        let root = self.heap.peek().map(|r| r.0);
        if root.is_some_and(|r| before(v, i, r.v, r.i)) {
            self.heap.pop();
            self.heap.push(Reverse(Cand { v, i }));
        }
    }

    /// Offers the elements of `x` (starting at row index `start`) that beat the threshold,
    /// skipping 16-element chunks whose maximum does not. NaN never beats it here: rows with
    /// NaN are redone by [`special_row`].
    #[inline(always)]
    fn scan(&mut self, x: &[T], start: usize) {
        let mut thr = self.threshold();
        let mut lanes = x.chunks_exact(LANES);
        let mut base = start;
        for c in &mut lanes {
            let c: &[T; LANES] = c.try_into().unwrap();
            let mut hit = false;
            for &v in c {
                hit |= v > thr;
            }
            if hit {
                for (l, &v) in c.iter().enumerate() {
                    if v > thr {
                        self.offer(v, base + l);
                        thr = self.threshold();
                    }
                }
            }
            base += LANES;
        }
        for (l, &v) in lanes.remainder().iter().enumerate() {
            if v > thr {
                self.offer(v, base + l);
                thr = self.threshold();
            }
        }
    }

    /// Writes the kept elements best first: ids and `(x - m) / τ - ln s` (NaN when `ln_s` is).
    fn write(&mut self, m: f64, inv_t: f64, ln_s: f64, ids: &mut [i64], lps: &mut [f64]) {
        let sorted = std::mem::take(&mut self.heap).into_sorted_vec();
        for ((Reverse(c), id), lp) in sorted.iter().zip(ids.iter_mut()).zip(lps.iter_mut()) {
            *id = c.i as i64;
            *lp = (c.v.to_f64() - m) * inv_t - ln_s;
        }
        self.heap = BinaryHeap::from(sorted);
    }
}

/// One step's maximum (ignoring NaN, as [`super::row_max`]) and, with `RANK`, how many of its
/// elements come before the target: those `> xt`, or `>= xt` for the first `ge` elements
/// (indices below the target's).
#[inline(always)]
fn max_and_count<T: Float, const RANK: bool>(x: &[T], xt: T, ge: usize) -> (T, u64) {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut cnt = [0u32; LANES];
    let ge = ge.min(x.len());
    let mut lanes = x.chunks_exact(LANES);
    let mut at = 0;
    for c in &mut lanes {
        let c: &[T; LANES] = c.try_into().unwrap();
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
        if RANK {
            if at + LANES <= ge {
                for l in 0..LANES {
                    cnt[l] += (c[l] >= xt) as u32;
                }
            } else if at >= ge {
                for l in 0..LANES {
                    cnt[l] += (c[l] > xt) as u32;
                }
            } else {
                for l in 0..LANES {
                    cnt[l] += if at + l < ge { c[l] >= xt } else { c[l] > xt } as u32;
                }
            }
        }
        at += LANES;
    }
    let mut m = T::NEG_INFINITY;
    let mut n = cnt.iter().map(|&c| c as u64).sum::<u64>();
    for (l, &v) in lanes.remainder().iter().enumerate() {
        if v > m {
            m = v;
        }
        if RANK {
            n += if at + l < ge { v >= xt } else { v > xt } as u64;
        }
    }
    for &v in &acc {
        if v > m {
            m = v;
        }
    }
    (m, n)
}

/// `(e, e·y)` of one element for [`exp_sums`] (a function, not a closure, so that it is
/// always inlined into the vector loop).
#[inline(always)]
fn exp_term<T: Float, A: Arith, const ENTROPY: bool, const SCALED: bool>(
    v: T,
    m: T,
    inv_t: T,
    lo: T,
    a: A,
) -> (T, T) {
    let y = if SCALED { (v - m) * inv_t } else { v - m };
    if ENTROPY {
        let y = if y < lo { lo } else { y };
        let e = a.exp_nonpos(y);
        (e, e * y)
    } else {
        (a.exp_nonpos(y), T::ZERO)
    }
}

/// `(Σ e, Σ e·y)` over one step with `y = (x - m) · inv_t` (`SCALED`; `x - m` otherwise);
/// without `ENTROPY` the second sum is 0. For `e·y`, `y` is clamped where `exp` itself clamps
/// it (its result there is exactly 0), so a `-inf` contributes 0, and LLVM folds the two clamps.
#[inline(always)]
fn exp_sums<T: Float, A: Arith, const ENTROPY: bool, const SCALED: bool>(
    x: &[T],
    m: T,
    inv_t: T,
    a: A,
) -> (f64, f64) {
    let lo = T::from_f64(if T::DTYPE == DType::F32 {
        -104.0
    } else {
        -746.0
    });
    let (mut s, mut sey) = (0.0, 0.0);
    for chunk in x.chunks(CHUNK) {
        let mut acc = [T::ZERO; LANES];
        let mut acc_ey = [T::ZERO; LANES];
        let mut lanes = chunk.chunks_exact(LANES);
        for c in &mut lanes {
            let c: &[T; LANES] = c.try_into().unwrap();
            for l in 0..LANES {
                let (e, ey) = exp_term::<T, A, ENTROPY, SCALED>(c[l], m, inv_t, lo, a);
                acc[l] += e;
                if ENTROPY {
                    acc_ey[l] += ey;
                }
            }
        }
        let (mut tail, mut tail_ey) = (T::ZERO, T::ZERO);
        for &v in lanes.remainder() {
            let (e, ey) = exp_term::<T, A, ENTROPY, SCALED>(v, m, inv_t, lo, a);
            tail += e;
            tail_ey += ey;
        }
        // PERF: the totals in registers where the token has them (the same bits): float32
        // token_logprobs 8192 x 1000 and 512 x 32000 0.90-0.98x the time (AMD EPYC, 2026-12-05).
        s += chunk_total(acc, tail, a);
        if ENTROPY {
            sey += chunk_total(acc_ey, tail_ey, a);
        }
    }
    (s, sey)
}

/// Scores one row of at least one element; `target` is `None` without (or with an ignored)
/// target. Returns the row's results and `(m, ln s)` for the top-k values (`ln s` NaN for a
/// special row, whose top-k ids are then already recomputed).
#[inline(always)]
fn score_row<T: Float, A: Arith, const RANK: bool, const ENTROPY: bool, const SCALED: bool>(
    x: &[T],
    target: Option<usize>,
    inv_t: T,
    top: Option<&mut TopK<T>>,
    a: A,
) -> (RowScore, f64, f64) {
    let t = target.unwrap_or(0);
    let xt = x[t];
    let (mut m, mut s, mut sey, mut rank) = (T::NEG_INFINITY, 0.0f64, 0.0f64, 0u64);
    let inv64 = inv_t.to_f64();
    let mut top = top;
    if let Some(tk) = top.as_deref_mut() {
        tk.start(x);
    }
    let first = top.as_ref().map_or(0, |tk| tk.k);
    for (si, step) in x.chunks(ONLINE_STEP).enumerate() {
        let start = si * ONLINE_STEP;
        let (sm, c) = max_and_count::<T, RANK>(step, xt, t.saturating_sub(start));
        rank += c;
        if let Some(tk) = top.as_deref_mut() {
            if start + step.len() > first && sm > tk.threshold() {
                let skip = first.saturating_sub(start);
                tk.scan(&step[skip..], start + skip);
            }
        }
        if sm == T::NEG_INFINITY {
            // Only -inf or NaN: nothing to add, but a NaN must still poison the row.
            if step.iter().any(|v| v.is_nan()) {
                s = f64::NAN;
            }
            continue;
        }
        if sm > m {
            if s != 0.0 {
                let d = (sm.to_f64() - m.to_f64()) * inv64;
                let r = (-d).exp();
                sey = r * (sey - d * s);
                s *= r;
            }
            m = sm;
        }
        let (ds, dsey) = exp_sums::<T, A, ENTROPY, SCALED>(step, m, inv_t, a);
        s += ds;
        sey += dsey;
    }
    let mf = m.to_f64();
    if !(mf.is_finite() && s.is_finite()) {
        return special_row(x, target, top);
    }
    let ln_s = ln_f64(s);
    let score = RowScore {
        logprob: match target {
            Some(_) => (xt.to_f64() - mf) * inv64 - ln_s,
            None => f64::NAN,
        },
        entropy: if ENTROPY { ln_s - sey / s } else { f64::NAN },
        rank: if target.is_some() { rank as i64 } else { -1 },
    };
    (score, mf, ln_s)
}

/// A row holding NaN or `+inf`, or only `-inf`: NaN for every float output, and the rank and
/// top-k under the NaN-aware order by a plain scalar pass.
#[cold]
fn special_row<T: Float>(
    x: &[T],
    target: Option<usize>,
    top: Option<&mut TopK<T>>,
) -> (RowScore, f64, f64) {
    let rank = match target {
        Some(t) => x
            .iter()
            .enumerate()
            .filter(|&(j, &v)| before(v, j, x[t], t))
            .count() as i64,
        None => -1,
    };
    if let Some(tk) = top {
        tk.start(x);
        for (j, &v) in x.iter().enumerate().skip(tk.k) {
            tk.offer(v, j);
        }
    }
    let score = RowScore {
        logprob: f64::NAN,
        entropy: f64::NAN,
        rank,
    };
    (score, f64::NAN, f64::NAN)
}

/// Scores a block of rows of `k` elements. `targets` holds one class index per row (already
/// checked to be in range or `plan.ignore_index`), or is empty without targets.
#[inline(always)]
fn score_rows_impl<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    targets: &[i64],
    plan: &Plan<T>,
    out: &mut BlockOut<'_>,
    a: A,
) {
    let tk = plan.top_k;
    if k == 0 {
        // The entropy of an empty distribution: an empty sum.
        for r in out.rows.iter_mut() {
            *r = RowScore {
                entropy: if plan.entropy { 0.0 } else { f64::NAN },
                ..RowScore::default()
            };
        }
        return;
    }
    let mut top = (tk > 0).then(|| TopK::new(tk));
    for (i, xr) in rows(x, k).enumerate() {
        let target = targets
            .get(i)
            .filter(|&&t| t != plan.ignore_index)
            .map(|&t| t as usize);
        let inv = plan.inv_temperature;
        let heap = top.as_mut();
        let (score, m, ln_s) = match (target.is_some(), plan.entropy, inv != T::ONE) {
            (true, true, true) => score_row::<T, A, true, true, true>(xr, target, inv, heap, a),
            (true, true, false) => score_row::<T, A, true, true, false>(xr, target, inv, heap, a),
            (true, false, true) => score_row::<T, A, true, false, true>(xr, target, inv, heap, a),
            (true, false, false) => score_row::<T, A, true, false, false>(xr, target, inv, heap, a),
            (false, true, true) => score_row::<T, A, false, true, true>(xr, target, inv, heap, a),
            (false, true, false) => score_row::<T, A, false, true, false>(xr, target, inv, heap, a),
            (false, false, true) => score_row::<T, A, false, false, true>(xr, target, inv, heap, a),
            (false, false, false) => {
                score_row::<T, A, false, false, false>(xr, target, inv, heap, a)
            }
        };
        out.rows[i] = score;
        if let Some(t) = top.as_mut() {
            let (ids, lps) = (
                &mut out.top_ids[i * tk..(i + 1) * tk],
                &mut out.top_logprobs[i * tk..(i + 1) * tk],
            );
            t.write(m, inv.to_f64(), ln_s, ids, lps);
        }
    }
}

isa_dispatch! {
    /// Scores a block of rows of `k` elements (see the module docs).
    pub fn score_rows[T: Float](x: &[T], k: usize, targets: &[i64], plan: &Plan<T>, out: &mut BlockOut<'_>) = score_rows_impl;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Level;

    /// The textbook scoring of one row in f64: (logprob, entropy, rank, top ids, top logprobs).
    fn textbook(
        x: &[f64],
        t: usize,
        tau: f64,
        top_k: usize,
    ) -> (f64, f64, i64, Vec<i64>, Vec<f64>) {
        let z: Vec<f64> = x.iter().map(|v| v / tau).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let lp: Vec<f64> = z.iter().map(|v| v - lse).collect();
        let h = -lp
            .iter()
            .map(|&l| if l.exp() == 0.0 { 0.0 } else { l.exp() * l })
            .sum::<f64>();
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&i, &j| {
            if before(x[i], i, x[j], j) {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        });
        let rank = order.iter().position(|&j| j == t).unwrap() as i64;
        let ids: Vec<i64> = order[..top_k].iter().map(|&j| j as i64).collect();
        let lps = order[..top_k].iter().map(|&j| lp[j]).collect();
        (lp[t], h, rank, ids, lps)
    }

    fn run<T: Float>(
        x: &[T],
        k: usize,
        targets: &[i64],
        plan: &Plan<T>,
    ) -> (Vec<RowScore>, Vec<i64>, Vec<f64>) {
        let n = x.len() / k;
        let mut rows = vec![RowScore::default(); n];
        let mut ids = vec![0; n * plan.top_k];
        let mut lps = vec![0.0; n * plan.top_k];
        score_rows(
            Level::active(),
            x,
            k,
            targets,
            plan,
            &mut BlockOut {
                rows: &mut rows,
                top_ids: &mut ids,
                top_logprobs: &mut lps,
            },
        );
        (rows, ids, lps)
    }

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // A coarse grid, so that ties happen.
                ((s >> 40) % 4000) as f64 / 100.0 - 20.0
            })
            .collect()
    }

    /// Rows short and long (several online steps, maxima growing late), ties, -inf entries,
    /// every temperature path, against the f64 textbook.
    #[test]
    fn rows_match_the_textbook() {
        for &k in &[1usize, 2, 15, 17, 300, 5000, 9000] {
            for &(tau, top_k) in &[(1.0, 0usize), (1.0, 5), (0.7, 3), (2.0, 1)] {
                let top_k = top_k.min(k);
                let n = 3;
                let mut x = noise(n * k, k as u64 * 31 + top_k as u64);
                // Row 1 grows its maximum late; row 2 has -inf entries, one at the target.
                for j in 0..k {
                    x[k + j] += j as f64 * 0.01;
                }
                x[2 * k] = f64::NEG_INFINITY;
                x[3 * k - 1] = f64::NEG_INFINITY;
                let targets: Vec<i64> = vec![(k / 2) as i64, (k - 1) as i64, 0];
                let plan = Plan {
                    ignore_index: -100,
                    inv_temperature: 1.0 / tau,
                    top_k,
                    entropy: true,
                };
                let (rows, ids, lps) = run(&x, k, &targets, &plan);
                let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let plan32 = Plan {
                    ignore_index: -100,
                    inv_temperature: (1.0 / tau) as f32,
                    top_k,
                    entropy: true,
                };
                let (rows32, ids32, lps32) = run(&xf, k, &targets, &plan32);
                let x32: Vec<f64> = xf.iter().map(|&v| v as f64).collect();
                let close = |g: f64, w: f64, tol: f64| {
                    g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol * (1.0 + w.abs())
                };
                for r in 0..n {
                    // Each precision against the textbook on the values it sees (f32 rounding
                    // makes other ties).
                    for (xs, got, got_ids, got_lps, tol) in [
                        (&x, &rows, &ids, &lps, 1e-12),
                        (&x32, &rows32, &ids32, &lps32, 2e-5),
                    ] {
                        let row = &xs[r * k..(r + 1) * k];
                        let (lp, h, rank, wids, wlps) =
                            textbook(row, targets[r] as usize, tau, top_k);
                        let g = got[r];
                        assert!(
                            close(g.logprob, lp, tol),
                            "k={k} row {r}: {} vs {lp}",
                            g.logprob
                        );
                        assert!(
                            close(g.entropy, h, tol),
                            "k={k} row {r}: H {} vs {h}",
                            g.entropy
                        );
                        assert_eq!(g.rank, rank, "k={k} row {r}");
                        assert_eq!(
                            &got_ids[r * top_k..(r + 1) * top_k],
                            &wids[..],
                            "k={k} row {r}"
                        );
                        for (a, b) in got_lps[r * top_k..(r + 1) * top_k].iter().zip(&wlps) {
                            assert!(close(*a, *b, tol), "k={k} row {r}: top {a} vs {b}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn special_rows_give_nan_and_the_nan_aware_order() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let cases: [(&[f64], usize, i64, &[i64]); 4] = [
            (&[1.0, nan, 3.0, nan], 2, 2, &[1, 3, 2]),
            (&[1.0, inf, 3.0, 3.0], 3, 2, &[1, 2, 3]),
            (&[-inf, -inf, -inf, -inf], 2, 2, &[0, 1, 2]),
            (&[2.0, 0.0, nan, 2.0], 0, 1, &[2, 0, 3]),
        ];
        for (x, t, rank, ids) in cases {
            let plan = Plan {
                ignore_index: -100,
                inv_temperature: 1.0,
                top_k: 3,
                entropy: true,
            };
            let (rows, got_ids, lps) = run(x, 4, &[t as i64], &plan);
            assert!(
                rows[0].logprob.is_nan() && rows[0].entropy.is_nan(),
                "{x:?}"
            );
            assert_eq!(rows[0].rank, rank, "{x:?}");
            assert_eq!(got_ids, ids, "{x:?}");
            assert!(lps.iter().all(|v| v.is_nan()));
        }
    }

    #[test]
    fn ignored_rows_and_empty_classes() {
        let plan = Plan {
            ignore_index: -1,
            inv_temperature: 1.0f64,
            top_k: 0,
            entropy: true,
        };
        let (rows, _, _) = run(&[1.0, 2.0], 2, &[-1], &plan);
        assert!(rows[0].logprob.is_nan());
        assert_eq!(rows[0].rank, -1);
        assert!(
            (rows[0].entropy - 0.582_203_108_888_217_9).abs() < 1e-14,
            "{rows:?}"
        );
        let mut out = vec![RowScore::default(); 2];
        score_rows::<f32>(
            Level::active(),
            &[],
            0,
            &[],
            &Plan {
                ignore_index: -1,
                inv_temperature: 1.0,
                top_k: 0,
                entropy: true,
            },
            &mut BlockOut {
                rows: &mut out,
                top_ids: &mut [],
                top_logprobs: &mut [],
            },
        );
        assert_eq!(out[1].entropy, 0.0);
    }
}
