//! Cross-entropy (and NLL) of one row, with its gradient in the same pass over the row.
//!
//! With `z` the (optionally soft-capped) logits of a row, `m = max z`, `s = sum exp(z - m)`,
//! `lse = m + ln s` and `p = softmax(z)`, the loss for a class-index target `t`, class weights
//! `w`, label smoothing `ε` over `K` classes and z-loss coefficient `ζ` is PyTorch's
//!
//! ```text
//! loss = (1-ε)·w_t·(lse - z_t) + (ε/K)·Σ_c w_c·(lse - z_c) + ζ·lse²
//! ```
//!
//! and its gradient with respect to `z` has the closed form
//!
//! ```text
//! dz_j = p_j·((1-ε)·w_t + (ε/K)·Σ_c w_c + 2ζ·lse) - (ε/K)·w_j - [j = t]·(1-ε)·w_t
//! ```
//!
//! For a probability target `q`, `q' = (1-ε)·q + ε/K` replaces the one-hot and
//! `dz_j = p_j·(Σ_c w_c q'_c + 2ζ·lse) - w_j q'_j`. A soft cap `c` multiplies `dz_j` by
//! `1 - (z_j / c)²`, the derivative of `c·tanh(x / c)`. Log-probabilities are formed as
//! `(z - m) - ln s` (not `z - lse`) so rows near the float range keep their precision, and the
//! loss itself is accumulated in `f64`. Terms whose coefficient is zero (`ε = 0`, `ζ = 0`) are
//! skipped, as PyTorch skips them, so an infinite logit elsewhere cannot turn them into NaN.
//!
//! Where the maximum dominates the row (`s = 1 + rest` with `rest < 1`), `ln s` is
//! `log1p(rest)` ([`ExpSum::ln`]), so the loss of a confidently right prediction,
//! `lse - z_t = log1p(rest)`, keeps its digits, and the gradient at that maximum, where
//! `p - 1` would cancel, is formed from `p - 1 = -rest / s` ([`top_grad`]).
//!
//! Against a class index, the row goes through the online cross-entropy of [`super::online`]
//! as one block (the split long rows and the fused linear cross-entropy fold the same
//! arithmetic over blocks); probability targets, which only these row paths take, have their
//! own loop.

pub(crate) use super::lanes::Tally;
use super::lanes::{
    lanes_class_grads, lanes_class_losses, lanes_class_total, lanes_stats, LIMIT, ROW_LANES,
};
use super::online::{self, smoothed_loss, top_grad, unweighted_wz, RowGrad, RowStats, Terms};
use super::{
    max_exp_store_sum, max_exp_sum, rows, rows_mut, short_rows, small_rows_stats, Ahead, ExpSum,
    GroupStats, RowsAhead, LN_GROUP, ONLINE_STEP, SMALL_K, SMALL_ROWS, STACK_SCRATCH,
};
use crate::float::Float;
use crate::isa::{isa_dispatch, Arith, Level};

/// What a row is compared against.
#[derive(Clone, Copy, Debug)]
pub enum RowTarget<'a, T> {
    /// `ignore_index`: loss 0, gradient 0, not counted.
    Ignored,
    /// A class index, already checked to be in `[0, K)`.
    Class(usize),
    /// A row of `K` class probabilities (soft or one-hot labels).
    Probs(&'a [T]),
}

/// The options of a cross-entropy call, resolved once per call. Made by `CeOptions::new`
/// (which validates them, in `ops`) or [`CeOptions::plain`]; the fields are the crate's own,
/// so `weight_total` can never fall out of step with `weight`.
#[derive(Clone, Debug)]
pub struct CeOptions<T> {
    /// Per-class weights (length `K`), or `None` for all ones.
    pub(crate) weight: Option<Vec<T>>,
    /// `Σ_c w_c` (`K` without weights).
    pub(crate) weight_total: f64,
    pub(crate) label_smoothing: f64,
    pub(crate) z_loss: f64,
    pub(crate) softcap: Option<f64>,
}

impl<T: Float> CeOptions<T> {
    /// Options with no weights, smoothing, z-loss or cap for `k` classes.
    pub fn plain(k: usize) -> Self {
        CeOptions {
            weight: None,
            weight_total: k as f64,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
        }
    }

    /// No weights, smoothing or z-loss: the loss is the negative log-likelihood of the target
    /// alone (a soft cap may still apply).
    #[inline(always)]
    fn plain_terms(&self) -> bool {
        self.weight.is_none() && self.label_smoothing == 0.0 && self.z_loss == 0.0
    }

    #[inline(always)]
    fn w(&self, c: usize) -> f64 {
        self.weight.as_ref().map_or(1.0, |w| w[c].to_f64())
    }
}

/// How the gradient of each row is scaled: one factor for `"mean"`/`"sum"` (upstream gradient
/// over the denominator), or one per row for `"none"`.
#[derive(Clone, Copy, Debug)]
pub enum Scale<'a, T> {
    Uniform(f64),
    PerRow(&'a [T]),
}

impl<'a, T: Float> Scale<'a, T> {
    #[inline(always)]
    pub fn at(&self, i: usize) -> f64 {
        match self {
            Scale::Uniform(s) => *s,
            Scale::PerRow(g) => g[i].to_f64(),
        }
    }

    /// The scales of the rows from `first` on.
    #[inline(always)]
    pub fn after(self, first: usize) -> Scale<'a, T> {
        match self {
            Scale::Uniform(s) => Scale::Uniform(s),
            Scale::PerRow(g) => Scale::PerRow(&g[first..]),
        }
    }
}

/// The loss of one row; when `grad` is given, also writes `scale * d loss / d x` into it.
/// `capped` is scratch for the soft-capped logits (left untouched without a cap).
#[cfg(test)]
#[inline(always)]
pub fn ce_row<T: Float, A: Arith>(
    x: &[T],
    target: RowTarget<'_, T>,
    o: &CeOptions<T>,
    grad: Option<(&mut [T], f64)>,
    capped: &mut Vec<T>,
    ar: A,
) -> f64 {
    ce_row_with(x, target, o, grad, capped, ar, None, false, Ahead::NONE)
}

/// The loss of one row (`z`: its logits `x`, soft-capped where the options say so), and with
/// `grad` its gradient as `scale * d loss / d x`; optionally with the row's maximum, sums and
/// `ln` of its sum already known (`pre`, the grouped paths without a soft cap:
/// `(m, s, s.ln())`); where `held`, `grad`, when given, already holds `exp(z - max)`. Without
/// `pre`, the pass of the row's sums prefetches `ahead`, and on a row of at most a step
/// ([`ONLINE_STEP`]) leaves the exps in `grad` when there is one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ce_row_with<T: Float, A: Arith>(
    x: &[T],
    target: RowTarget<'_, T>,
    o: &CeOptions<T>,
    grad: Option<(&mut [T], f64)>,
    capped: &mut Vec<T>,
    ar: A,
    pre: Option<(T, ExpSum, f64)>,
    held: bool,
    ahead: Ahead<'_, T>,
) -> f64 {
    let k = x.len();
    if matches!(target, RowTarget::Ignored) || k == 0 {
        if let Some((g, _)) = grad {
            g.fill(T::ZERO);
        }
        return 0.0;
    }
    let z = online::capped(x, o.softcap, capped);
    let mut grad = grad;
    // `held`: the gradient loops read exp(z - m) back from `grad`, where the caller or the
    // pass of the sums put them.
    // PERF: kept from the pass of the sums rather than taken again: float32 8192 x 1000
    // cross_entropy_and_grad took 0.66-0.71x the time (BENCHMARKS.md).
    let ((m, sums), held) = match (pre, grad.as_mut()) {
        (Some((m, sums, _)), _) => ((m, sums), held),
        (None, Some((g, _))) if k <= ONLINE_STEP => (max_exp_store_sum(z, g, ahead, ar), true),
        (None, _) => (max_exp_sum(z, ahead, ar), false),
    };
    let ln_s = match pre {
        Some((_, _, ln_s)) => ln_s,
        None => sums.ln::<T>(),
    };
    let scale = grad.as_ref().map_or(0.0, |(_, sc)| *sc);
    let (loss, g) = match target {
        RowTarget::Class(t) => {
            // The online cross-entropy, the whole row as one block.
            let mut st = RowStats::new(Some(t));
            let w = o.weight.as_deref();
            st.fold_sums(z, 0, w, o.label_smoothing > 0.0, m, sums);
            let (loss, rg) = st.finish_with_ln(o, k, scale, ln_s);
            let g = grad.map(|(g, _)| {
                class_grad(g, z, &rg, w, held, ar);
                g
            });
            (loss, g)
        }
        RowTarget::Probs(q) => {
            let mut g = grad.map(|(g, _)| g);
            let loss = probs_row(z, q, o, (m, sums, ln_s), g.as_deref_mut(), scale, held, ar);
            (loss, g)
        }
        RowTarget::Ignored => unreachable!(),
    };
    if let (Some(g), Some(c)) = (g, o.softcap) {
        let inv_c = T::from_f64(1.0 / c);
        for (gj, &zj) in g.iter_mut().zip(z) {
            *gj *= online::cap_slope(zj, inv_c);
        }
    }
    loss
}

/// The gradient of a row against a class index, before the soft cap, from its [`RowGrad`];
/// `held`: `g` holds `exp(z - m)` already.
#[inline(always)]
fn class_grad<T: Float, A: Arith>(
    g: &mut [T],
    z: &[T],
    rg: &RowGrad<T>,
    w: Option<&[T]>,
    held: bool,
    ar: A,
) {
    // PERF: plain loops in T (no per-element f64 or Option) so they vectorize.
    match (w, held) {
        (Some(w), false) => {
            for ((gj, &zj), &wj) in g.iter_mut().zip(z).zip(w) {
                *gj = rg.at(ar.exp_nonpos(zj - rg.m), wj);
            }
        }
        (None, false) => {
            for (gj, &zj) in g.iter_mut().zip(z) {
                *gj = rg.at(ar.exp_nonpos(zj - rg.m), T::ONE);
            }
        }
        (Some(w), true) => {
            for (gj, &wj) in g.iter_mut().zip(w) {
                *gj = rg.at(*gj, wj);
            }
        }
        (None, true) => {
            for gj in g.iter_mut() {
                *gj = rg.at(*gj, T::ONE);
            }
        }
    }
    rg.set_target(g, 0);
}

/// The loss of a row of (soft-capped) logits `z` against probabilities `q`, whose maximum is
/// `m`, sums `sums` and `ln_s = sums.ln()`; when `g` is given, also its `scale`-d gradient
/// before the soft cap.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn probs_row<T: Float, A: Arith>(
    z: &[T],
    q: &[T],
    o: &CeOptions<T>,
    (m, sums, ln_s): (T, ExpSum, f64),
    g: Option<&mut [T]>,
    scale: f64,
    held: bool,
    ar: A,
) -> f64 {
    let (eps, kf, mf) = (o.label_smoothing, z.len() as f64, m.to_f64());
    // Class c's share of the target: w_c * ((1 - eps) * q_c + eps / K) (see target_sums).
    let terms = (1.0 - eps, eps / kf);
    let lse = mf + ln_s;
    let (total, wqz) = match o.weight.as_deref() {
        None => target_sums(q, z, mf, terms, |_| 1.0),
        Some(w) => target_sums(q, z, mf, terms, |c| w[c].to_f64()),
    };
    let (mut loss, mut a, mut extra) = (-wqz + ln_s * total, total, 0.0);
    if o.z_loss != 0.0 {
        loss += o.z_loss * lse * lse;
        a += 2.0 * o.z_loss * lse;
        extra += 2.0 * o.z_loss * lse;
    }
    if let Some(g) = g {
        let inv_s = T::from_f64(1.0 / sums.s);
        let ca = T::from_f64(scale * a);
        if !held {
            for (gj, &zj) in g.iter_mut().zip(z) {
                *gj = ar.exp_nonpos(zj - m);
            }
        }
        match o.weight.as_deref() {
            None => probs_grad(g, q, (ca, inv_s), scale, terms, |_| 1.0),
            Some(w) => probs_grad(g, q, (ca, inv_s), scale, terms, |c| w[c].to_f64()),
        }
        if sums.dominated() {
            // The maximum's term: a·p - wq = (a - total)·p - total·(1 - p) + (total - wq).
            if let Some(j) = z.iter().position(|&v| v == m) {
                let wq = o.w(j) * (terms.0 * q[j].to_f64() + terms.1);
                g[j] = T::from_f64(top_grad(scale, extra, wq - total, total, sums));
            }
        }
    }
    loss
}

/// `(Σ wq_c, Σ wq_c (z_c - mf))` over a row of logits `z` against probabilities `q`, where
/// `wq_c = w(c) * (keep * q_c + spread)` (`w(c) = 1.0` without class weights: the same as no
/// product), summed from class 0 upwards.
#[inline(always)]
fn target_sums<T: Float>(
    q: &[T],
    z: &[T],
    mf: f64,
    (keep, spread): (f64, f64),
    w: impl Fn(usize) -> f64,
) -> (f64, f64) {
    let (mut total, mut wqz) = (0.0, 0.0);
    for (c, (&qc, &zc)) in q.iter().zip(z).enumerate() {
        let wq = w(c) * (keep * qc.to_f64() + spread);
        total += wq;
        wqz += wq * (zc.to_f64() - mf);
    }
    (total, wqz)
}

/// The gradient of a row against probabilities `q` before the soft cap, from the exps in `g`:
/// `ca * (e * inv_s) - scale * wq_c` (`wq_c` as in [`target_sums`]).
// PERF: without an Option per element, so that it vectorizes: float32 8192 x 1000
// probability-target gradients took 3.1x the time with one (see BENCHMARKS.md).
#[inline(always)]
fn probs_grad<T: Float>(
    g: &mut [T],
    q: &[T],
    (ca, inv_s): (T, T),
    scale: f64,
    (keep, spread): (f64, f64),
    w: impl Fn(usize) -> f64,
) {
    for (j, (gj, &qj)) in g.iter_mut().zip(q).enumerate() {
        let wq = w(j) * (keep * qj.to_f64() + spread);
        *gj = ca * (*gj * inv_s) - T::from_f64(scale * wq);
    }
}

/// Cross-entropy of a block of rows: per-row losses into `losses`, and `scale`-d gradients
/// into `grad` (same layout as `x`) when given. `targets(i)` gives row `i`'s target.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the rows, their targets, options, two outputs, a hint
fn cross_entropy_rows<'t, T: Float, A: Arith>(
    x: &[T],
    k: usize,
    targets: impl Fn(usize) -> RowTarget<'t, T>,
    o: &CeOptions<T>,
    grad: Option<(&mut [T], Scale<'_, T>)>,
    losses: &mut [f64],
    fetch_out: bool,
    a: A,
) {
    let mut capped = Vec::new();
    if k > 0 && k < SMALL_K && o.softcap.is_none() {
        return small_cross_entropy_rows(x, k, targets, o, grad, losses, a);
    }
    let group_bytes = LN_GROUP * k * std::mem::size_of::<T>();
    if k > 0 && o.softcap.is_none() && group_bytes <= GROUPED_BYTES {
        return grouped_cross_entropy_rows(x, k, targets, o, grad, losses, fetch_out, a);
    }
    match grad {
        Some((g, scale)) if k > 0 => {
            let mut rows = RowsAhead::new(x, k, g, fetch_out);
            while let Some((i, xr, gr, ahead)) = rows.next() {
                let g = Some((gr, scale.at(i)));
                losses[i] = ce_row_with(xr, targets(i), o, g, &mut capped, a, None, false, ahead);
            }
        }
        _ if k == 0 => losses.fill(0.0),
        _ => {
            for (i, (xr, l)) in rows(x, k).zip(losses.iter_mut()).enumerate() {
                let ahead = Ahead::of(x, i, k, &[], 0);
                *l = ce_row_with(xr, targets(i), o, None, &mut capped, a, None, false, ahead);
            }
        }
    }
}

/// Rows take the grouped path while a group of them spans at most this many bytes, so that
/// the passes after the group's sums (the gradient, the label smoothing's and the probability
/// targets' sums) read it again from L1.
// PERF: float32 cross_entropy_and_grad, grouped: rows of 64 to 500 took 0.74-0.93x the time
// of the per-row path; rows of 1000 to 2048 (groups of 32 to 64 KiB) 0.93-1.05x, no gain
// beyond the noise between builds, so they keep the per-row path (BENCHMARKS.md). Without a
// gradient too: grouped, float32 8192 x 1000 cross_entropy took 0.96-0.98x the time, within
// the noise (AMD EPYC, 2026-12-04).
const GROUPED_BYTES: usize = 16 * 1024;

/// [`cross_entropy_rows`] for rows of [`SMALL_K`] or more without a soft cap: each group's
/// maxima, sums and logarithms from [`GroupStats`], then each row's loss and gradient.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the rows, their targets, options, two outputs, a hint
fn grouped_cross_entropy_rows<'t, T: Float, A: Arith>(
    x: &[T],
    k: usize,
    targets: impl Fn(usize) -> RowTarget<'t, T>,
    o: &CeOptions<T>,
    mut grad: Option<(&mut [T], Scale<'_, T>)>,
    losses: &mut [f64],
    fetch_out: bool,
    a: A,
) {
    debug_assert!(grad.as_ref().is_none_or(|(g, _)| g.len() == x.len()));
    let mut capped = Vec::new();
    let mut st = GroupStats::new();
    let groups = x.chunks(LN_GROUP * k).zip(losses.chunks_mut(LN_GROUP));
    for (gi, (xg, lg)) in groups.enumerate() {
        let first = gi * LN_GROUP;
        // The gradient's rows are written next: they take the exps (prefetched beside them
        // where the arrays fit in the cache), which the gradient loops read back.
        // PERF: rather than take the exps again: float32 16384 x 100 cross_entropy_and_grad
        // took 0.86x the time, 8192 x 300 0.82-0.86x (BENCHMARKS.md).
        match grad.as_mut() {
            Some((g, _)) => st.fill_into(x, gi, k, g, fetch_out, a),
            None => st.fill(x, gi, k, a),
        }
        let held = grad.is_some();
        for (r, (xr, l)) in rows(xg, k).zip(lg).enumerate() {
            let i = first + r;
            let g = grad
                .as_mut()
                .map(|(g, scale)| (&mut g[i * k..(i + 1) * k], scale.at(i)));
            let (pre, none) = (Some((st.ms[r], st.ss[r], st.ls[r])), Ahead::NONE);
            *l = ce_row_with(xr, targets(i), o, g, &mut capped, a, pre, held, none);
        }
    }
}

/// [`cross_entropy_rows`] for rows shorter than [`SMALL_K`] without a soft cap: groups of
/// rows get their exps and sums from [`small_rows_stats`], the exps written into the gradient
/// buffer when there is one (the gradient loops then read them back) or into scratch.
#[inline(always)]
fn small_cross_entropy_rows<'t, T: Float, A: Arith>(
    x: &[T],
    k: usize,
    targets: impl Fn(usize) -> RowTarget<'t, T>,
    o: &CeOptions<T>,
    mut grad: Option<(&mut [T], Scale<'_, T>)>,
    losses: &mut [f64],
    a: A,
) {
    let mut capped = Vec::new();
    if grad.is_none() && o.plain_terms() && k < LIMIT {
        return plain_lane_losses(x, k, targets, o, losses, a);
    }
    // Without class weights or z-loss, every row against a class index has the same gradient
    // terms: the online cross-entropy's, taken once here.
    let shared = (o.weight.is_none() && o.z_loss == 0.0).then(|| Terms::new(o, k, 1.0));
    let mut ms = [T::ZERO; SMALL_ROWS];
    let (mut ss, mut ls) = ([ExpSum::ZERO; SMALL_ROWS], [0.0; SMALL_ROWS]);
    let mut tops = [0.0; SMALL_ROWS];
    let group = SMALL_ROWS * k;
    // The exps without the maxima's terms, sized to the input; the whole exps go into the
    // gradient when there is one.
    let (mut stack, mut heap) = ([T::ZERO; STACK_SCRATCH], Vec::new());
    let scratch = super::scratch(x.len().min(group), &mut stack, &mut heap);
    for (gi, (xg, lg)) in x
        .chunks(group)
        .zip(losses.chunks_mut(SMALL_ROWS))
        .enumerate()
    {
        let first = gi * SMALL_ROWS;
        let rest_exps = &mut scratch[..xg.len()];
        let (eg, scale) = match grad.as_mut() {
            Some((g, scale)) => {
                let eg = &mut g[first * k..first * k + xg.len()];
                let full = Some(&mut *eg);
                small_rows_stats(xg, k, &mut ms, rest_exps, full, &mut ss, &mut ls, a);
                (eg, Some(*scale))
            }
            None => {
                small_rows_stats(xg, k, &mut ms, rest_exps, None, &mut ss, &mut ls, a);
                (rest_exps, None)
            }
        };
        // Which of two gradients the target takes is random per row (a confident one or not),
        // so both are formed, the divisions here for all rows, in a loop that vectorizes.
        if let (Some(_), Some(tm)) = (scale, shared) {
            for (tg, &sums) in tops.iter_mut().zip(&ss) {
                *tg = top_grad(1.0, tm.extra, tm.cbw, tm.corr, sums);
            }
        }
        for (r, ((xr, er), l)) in rows(xg, k).zip(rows_mut(eg, k)).zip(lg).enumerate() {
            let (target, sc) = (targets(first + r), scale.map(|sc| sc.at(first + r)));
            *l = match (target, shared) {
                // A class index without weights or z-loss: ce_row_with's arithmetic (RowStats'
                // fold and finish) with the terms shared by every row taken once and the
                // neutral ones left out, so the same bits, without its per-row branching
                // (float32 65536 x 10: see BENCHMARKS.md).
                (RowTarget::Class(t), Some(tm)) => {
                    let mf = ms[r].to_f64();
                    if let Some(sc) = sc {
                        let (ca, inv_s) = (T::from_f64(sc * tm.coef), T::from_f64(1.0 / ss[r].s));
                        if o.label_smoothing > 0.0 {
                            let cb = T::from_f64(sc * o.label_smoothing / k as f64);
                            for gj in er.iter_mut() {
                                *gj = ca * (*gj * inv_s) - cb;
                            }
                        } else {
                            for gj in er.iter_mut() {
                                *gj = ca * (*gj * inv_s);
                            }
                        }
                        // top_grad(sc, ..) = sc * top_grad(1, ..), bitwise.
                        let top = T::from_f64(sc * tops[r]);
                        let plain = er[t] - T::from_f64(sc * tm.corr);
                        let at_top = ss[r].dominated() & (xr[t] == ms[r]);
                        // A load, not a select: x86 lowers a select of floats under a
                        // condition like this one into a branch (AVX2 and below).
                        er[t] = [plain, top][std::hint::black_box(usize::from(at_top))];
                    }
                    let nll = -((xr[t].to_f64() - mf) - ls[r]);
                    smoothed_loss(o, k, nll, || unweighted_wz(xr, mf), ls[r])
                }
                (target, _) => {
                    let pre = Some((ms[r], ss[r], ls[r]));
                    let g = sc.map(|sc| (er, sc));
                    ce_row_with(xr, target, o, g, &mut capped, a, pre, true, Ahead::NONE)
                }
            };
        }
    }
}

/// [`small_cross_entropy_rows`] without a gradient, options or a soft cap, on rows of fewer
/// than [`LIMIT`] classes: the sums from [`lanes_stats`], then the losses of a group at once
/// (its targets first, the loss `lse - x_t` of every class-index row in one loop), bitwise
/// the loss of the row path.
#[inline(always)]
fn plain_lane_losses<'t, T: Float, A: Arith>(
    x: &[T],
    k: usize,
    targets: impl Fn(usize) -> RowTarget<'t, T>,
    o: &CeOptions<T>,
    losses: &mut [f64],
    a: A,
) {
    let mut capped = Vec::new();
    let mut ms = [T::ZERO; SMALL_ROWS];
    let (mut ss, mut ls) = ([ExpSum::ZERO; SMALL_ROWS], [0.0; SMALL_ROWS]);
    for (gi, (xg, lg)) in x
        .chunks(SMALL_ROWS * k)
        .zip(losses.chunks_mut(SMALL_ROWS))
        .enumerate()
    {
        let first = gi * SMALL_ROWS;
        lanes_stats(xg, k, &mut ms, &mut ss, &mut ls, a);
        // Per row: the logit at its class index (`class` 1), ignored (0), or a probability
        // row, whose loss is taken here (2).
        let (mut at, mut class) = ([T::ZERO; SMALL_ROWS], [0u8; SMALL_ROWS]);
        for (r, xr) in rows(xg, k).enumerate() {
            match targets(first + r) {
                RowTarget::Class(t) => (at[r], class[r]) = (xr[t], 1),
                RowTarget::Ignored => lg[r] = 0.0,
                target @ RowTarget::Probs(_) => {
                    let pre = Some((ms[r], ss[r], ls[r]));
                    lg[r] =
                        ce_row_with(xr, target, o, None, &mut capped, a, pre, false, Ahead::NONE);
                    class[r] = 2;
                }
            }
        }
        for (r, l) in lg.iter_mut().enumerate() {
            let loss = -((at[r].to_f64() - ms[r].to_f64()) - ls[r]);
            *l = if class[r] == 1 { loss } else { *l };
        }
    }
}

/// [`cross_entropy_rows`] without a gradient, on class indices: the plain loss of short rows
/// as lanes ([`lanes_class_losses`]), of longer rows from logsumexp's statistics of a group,
/// any other through the row paths.
#[inline(always)]
fn class_losses_rows<T: Float, A: Arith, const SHORT: bool>(
    x: &[T],
    k: usize,
    idx: &[i64],
    ignore: i64,
    o: &CeOptions<T>,
    losses: &mut [f64],
    a: A,
) {
    let plain = o.plain_terms();
    if !SHORT && plain && o.softcap.is_none() && k > 0 && k < LIMIT {
        return lanes_class_losses(x, k, idx, ignore, losses, a);
    }
    // The loss of class-index rows from their statistics: ce_row's with its options' neutral
    // terms left out, the same bits without the online fold's bookkeeping.
    let index_losses = |xg: &[T], tg: &[i64], ms: &[T], ls: &[f64], lg: &mut [f64]| {
        for (r, ((xr, l), &t)) in rows(xg, k).zip(lg).zip(tg).enumerate() {
            *l = if t == ignore {
                0.0
            } else {
                -((xr[t as usize].to_f64() - ms[r].to_f64()) - ls[r])
            };
        }
    };
    if !SHORT && plain && o.softcap.is_none() && k > 0 && k < SMALL_K {
        // PERF: logsumexp's grouped statistics, not small_cross_entropy_rows' per-row targets
        // and options (float32 16384 x 40: cross_entropy 1.11x logsumexp before).
        let mut ms = [T::ZERO; SMALL_ROWS];
        let (mut ss, mut ls) = ([ExpSum::ZERO; SMALL_ROWS], [0.0; SMALL_ROWS]);
        let (mut stack, mut heap) = ([T::ZERO; STACK_SCRATCH], Vec::new());
        let exps = super::scratch(x.len().min(SMALL_ROWS * k), &mut stack, &mut heap);
        let groups = x.chunks(SMALL_ROWS * k).zip(losses.chunks_mut(SMALL_ROWS));
        for ((xg, lg), tg) in groups.zip(idx.chunks(SMALL_ROWS)) {
            let exps = &mut exps[..xg.len()];
            small_rows_stats(xg, k, &mut ms, exps, None, &mut ss, &mut ls, a);
            index_losses(xg, tg, &ms, &ls, lg);
        }
        return;
    }
    if plain && o.softcap.is_none() && k >= SMALL_K {
        // PERF: float32 6553 x 100: cross_entropy 1.12x logsumexp through the row path.
        let mut st = GroupStats::new();
        let groups = x.chunks(LN_GROUP * k).zip(losses.chunks_mut(LN_GROUP));
        for (g, ((xg, lg), tg)) in groups.zip(idx.chunks(LN_GROUP)).enumerate() {
            if SHORT {
                st.fill_short(xg, k, a);
            } else {
                st.fill(x, g, k, a);
            }
            index_losses(xg, tg, &st.ms, &st.ls, lg);
        }
        return;
    }
    cross_entropy_rows(x, k, class_targets(idx, ignore), o, None, losses, false, a)
}

/// `idx` (one class index per row, `ignore` skipped) as the row paths' targets.
fn class_targets<'t, T>(idx: &[i64], ignore: i64) -> impl Fn(usize) -> RowTarget<'t, T> + '_ {
    move |i| match idx[i] {
        t if t == ignore => RowTarget::Ignored,
        t => RowTarget::Class(t as usize),
    }
}

/// [`cross_entropy_rows`] with the gradient, on class indices: full blocks of short rows
/// without options but label smoothing as lanes ([`lanes_class_grads`]) where their
/// transpositions run in registers, any other row through the row paths.
// PERF: a kernel of its own: within `class_losses`, the losses alone took 1.04-1.14x the time
// (float32 65536 x 4..15).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the rows, their targets, options, two outputs, a hint
fn class_grads_rows<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    (idx, ignore): (&[i64], i64),
    o: &CeOptions<T>,
    (grad, scale): (&mut [T], Scale<'_, T>),
    losses: &mut [f64],
    fetch_out: bool,
    a: A,
) {
    let target = class_targets(idx, ignore);
    let unweighted = o.weight.is_none() && o.z_loss == 0.0 && o.softcap.is_none();
    if !(unweighted && k > 0 && k < LIMIT && a.lanes_in_registers::<T>()) {
        return cross_entropy_rows(x, k, target, o, Some((grad, scale)), losses, fetch_out, a);
    }
    // PERF: full blocks only, as softmax (a short block's transpositions are copies).
    let full = idx.len() / ROW_LANES * ROW_LANES;
    let (xf, xr) = x.split_at(full * k);
    let (gf, gr) = grad.split_at_mut(full * k);
    let (lf, lr) = losses.split_at_mut(full);
    let (targets, sc) = ((&idx[..full], ignore), |i| scale.at(i));
    if o.label_smoothing > 0.0 {
        lanes_class_grads::<true, _, _>(xf, k, targets, o, sc, gf, lf, a);
    } else {
        lanes_class_grads::<false, _, _>(xf, k, targets, o, sc, gf, lf, a);
    }
    let rest = |i: usize| target(full + i);
    cross_entropy_rows(
        xr,
        k,
        rest,
        o,
        Some((gr, scale.after(full))),
        lr,
        fetch_out,
        a,
    )
}

/// `(live, bad)`: how many of the class indices `idx` are not `ignore`, and how many of those
/// lie outside `[0, k)`.
// PERF: counted without a branch per index, in a dispatched kernel so that the compares are
// vectors of 64-bit lanes (the baseline has none): float32 65536 x 10 cross_entropy spent 5%
// of a call here with a branch per index, 6% as scalar code without.
#[inline(always)]
fn count_classes_with<A: Arith>(idx: &[i64], ignore: i64, k: usize, _: A) -> (usize, usize) {
    let (mut live, mut bad) = (0usize, 0usize);
    for &t in idx {
        let kept = t != ignore;
        live += usize::from(kept);
        bad += usize::from(kept & (t as u64 >= k as u64));
    }
    (live, bad)
}

/// [`cross_entropy`] without a gradient on one class index per row, `ignore` skipped and the
/// others in `[0, k)` (checked by the caller).
pub fn class_losses<T: Float>(
    isa: Level,
    x: &[T],
    k: usize,
    idx: &[i64],
    ignore: i64,
    o: &CeOptions<T>,
    losses: &mut [f64],
) {
    if short_rows(k) {
        class_losses_short(isa, x, k, idx, ignore, o, losses)
    } else {
        class_losses_any(isa, x, k, idx, ignore, o, losses)
    }
}

isa_dispatch! {
    /// Cross-entropy of a block of rows: per-row losses into `losses`, and `scale`-d gradients
    /// into `grad` (same layout as `x`) when given. `targets(i)` gives row `i`'s target.
    /// `fetch_out`: whether to prefetch the gradient's rows ([`super::fetches_out`]).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy['t, T: Float](
        x: &[T],
        k: usize,
        targets: impl Fn(usize) -> RowTarget<'t, T>,
        o: &CeOptions<T>,
        grad: Option<(&mut [T], Scale<'_, T>)>,
        losses: &mut [f64],
        fetch_out: bool,
    ) = cross_entropy_rows;
    /// [`cross_entropy`] without a gradient on one class index per row, `ignore` skipped and
    /// the others in `[0, k)` (checked by the caller).
    pub fn class_losses_any[T: Float](
        x: &[T],
        k: usize,
        idx: &[i64],
        ignore: i64,
        o: &CeOptions<T>,
        losses: &mut [f64],
    ) = class_losses_rows::<T, _, false>;
    pub fn class_losses_short[T: Float](
        x: &[T],
        k: usize,
        idx: &[i64],
        ignore: i64,
        o: &CeOptions<T>,
        losses: &mut [f64],
    ) = class_losses_rows::<T, _, true>;
    /// [`class_losses`] (the indices and `ignore` as a pair) and the `scale`-d gradient into
    /// `grad` (laid out as `x`).
    #[allow(clippy::too_many_arguments)]
    pub fn class_grads[T: Float](
        x: &[T],
        k: usize,
        targets: (&[i64], i64),
        o: &CeOptions<T>,
        grad: (&mut [T], Scale<'_, T>),
        losses: &mut [f64],
        fetch_out: bool,
    ) = class_grads_rows;
    pub fn count_classes[](idx: &[i64], ignore: i64, k: usize) -> (usize, usize) =
        count_classes_with;
    /// The plain cross-entropy's [`Tally`] of a block of rows on their class indices, which
    /// it checks itself; only where [`totals_in_lanes`].
    pub fn class_total[T: Float](x: &[T], k: usize, idx: &[i64], ignore: i64) -> Tally =
        lanes_class_total;
}

/// Whether [`class_total`] takes rows of `k` classes under the options `o`: short rows
/// without options.
pub fn totals_in_lanes<T: Float>(k: usize, o: &CeOptions<T>) -> bool {
    o.plain_terms() && o.softcap.is_none() && k > 0 && k < LIMIT
}

/// Negative log-likelihood of a block of rows of log-probabilities: `-w_t·x_t` for a class
/// index, `-Σ_c w_c·q_c·x_c` for a probability row, 0 when ignored.
pub fn nll<'t, T: Float>(
    x: &[T],
    k: usize,
    targets: impl Fn(usize) -> RowTarget<'t, T>,
    weight: Option<&[T]>,
    losses: &mut [f64],
) {
    let w = |c: usize| weight.map_or(1.0, |w| w[c].to_f64());
    for (i, (xr, l)) in rows(x, k).zip(losses.iter_mut()).enumerate() {
        *l = match targets(i) {
            RowTarget::Ignored => 0.0,
            RowTarget::Class(t) => -w(t) * xr[t].to_f64(),
            RowTarget::Probs(q) => -xr
                .iter()
                .zip(q)
                .enumerate()
                .map(|(c, (&v, &qc))| w(c) * qc.to_f64() * v.to_f64())
                .sum::<f64>(),
        };
    }
    if k == 0 {
        losses.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Unfused;
    use crate::kernels::softmax::tests::{
        close_to_row_path, same_or_nan, small_rows_cases, special_rows,
    };

    /// Row `i`'s target in the tests: with `soft`, its row of the probabilities `q`; else the
    /// class `3 i mod k`, ignored where `i mod 5 == ignored`.
    fn test_targets<'q>(
        q: &'q [f32],
        k: usize,
        soft: bool,
        ignored: usize,
    ) -> impl Fn(usize) -> RowTarget<'q, f32> + Copy + 'q {
        move |i| match (soft, i % 5) {
            (true, _) => RowTarget::Probs(&q[i * k..(i + 1) * k]),
            (false, r) if r == ignored => RowTarget::Ignored,
            (false, _) => RowTarget::Class((i * 3) % k),
        }
    }

    /// Within [`close_to_row_path`] for float32 rows of `k` classes.
    fn close<T: Float>(a: &[T], b: &[T], k: usize) -> bool {
        let eps = f64::from(f32::EPSILON);
        a.iter()
            .zip(b)
            .all(|(x, y)| close_to_row_path(x.to_f64(), y.to_f64(), k, eps))
    }

    /// The grouped small-row path gives the losses and gradients of `ce_row` (within
    /// [`close_to_row_path`]: its sums are rounded apart), and bitwise those of the online
    /// cross-entropy (`ce_row_with`) given its own sums, for
    /// class indices (some ignored) and probabilities, with every option but the soft cap
    /// (which keeps the per-row path).
    #[test]
    fn small_rows_match_the_row_path() {
        for (k, x) in small_rows_cases() {
            let n = x.len() / k;
            let q: Vec<f32> = (0..x.len()).map(|i| ((i * 7) % 11) as f32 / 55.0).collect();
            let per_row = [0.5f32; 64];
            let sets = crate::kernels::online::tests::option_sets(k);
            for opts in sets.into_iter().filter(|o| o.softcap.is_none()) {
                for soft in [false, true] {
                    let target = test_targets(&q, k, soft, 3);
                    let scales = [Scale::Uniform(0.25), Scale::PerRow(&per_row[..])];
                    for scale in scales {
                        let (mut gl, mut wl) = (vec![0.0; n], vec![0.0; n]);
                        let (mut gg, mut wg) = (vec![0f32; x.len()], vec![0f32; x.len()]);
                        let grad = Some((&mut gg[..], scale));
                        cross_entropy_rows(&x, k, target, &opts, grad, &mut gl, true, Unfused);
                        let mut cap = Vec::new();
                        for (i, (xr, gr)) in rows(&x, k).zip(rows_mut(&mut wg, k)).enumerate() {
                            let g = Some((gr, scale.at(i)));
                            wl[i] = ce_row(xr, target(i), &opts, g, &mut cap, Unfused);
                        }
                        assert!(close(&gg, &wg, k), "grad k={k} soft={soft}");
                        assert!(close(&gl, &wl, k), "loss k={k} soft={soft}");
                        // Bitwise the online cross-entropy given the small path's own sums.
                        let (mut pg, mut pl) = (vec![0f32; x.len()], vec![0.0; n]);
                        for (i, (xr, gr)) in rows(&x, k).zip(rows_mut(&mut pg, k)).enumerate() {
                            let (mut ms, mut ss, mut ls) = ([0f32; 1], [ExpSum::ZERO; 1], [0.0]);
                            let mut rest = vec![0f32; k];
                            let full = Some(&mut gr[..]);
                            small_rows_stats(
                                xr, k, &mut ms, &mut rest, full, &mut ss, &mut ls, Unfused,
                            );
                            let (g, pre) = (Some((gr, scale.at(i))), Some((ms[0], ss[0], ls[0])));
                            pl[i] = ce_row_with(
                                xr,
                                target(i),
                                &opts,
                                g,
                                &mut cap,
                                Unfused,
                                pre,
                                true,
                                Ahead::NONE,
                            );
                        }
                        assert!(same_or_nan(&gg, &pg), "pinned grad k={k} soft={soft}");
                        assert!(same_or_nan(&gl, &pl), "pinned loss k={k} soft={soft}");
                        gl.fill(f64::MAX);
                        cross_entropy_rows(&x, k, target, &opts, None, &mut gl, true, Unfused);
                        assert!(close(&gl, &wl, k), "loss only k={k} soft={soft}");
                        assert!(same_or_nan(&gl, &pl), "pinned loss only k={k} soft={soft}");
                    }
                }
            }
        }
    }

    /// Rows of [`SMALL_K`] or more without a soft cap take their maxima, sums and logarithms
    /// a group at a time ([`GroupStats`]): losses and gradients bitwise those of
    /// [`ce_row`] row by row, for every option set, class-index (some ignored) and probability
    /// targets, over two groups and a short one, on rows of only -inf, with +inf, NaN, a huge
    /// value or a dominating maximum; rows too long for the grouped gradient included. Both
    /// keep the exps of the pass of the sums for the gradient ([`max_exp_store_sum`]); taken
    /// again, they give the same bits.
    #[test]
    fn grouped_rows_are_the_row_path() {
        let widest = GROUPED_BYTES / (LN_GROUP * std::mem::size_of::<f32>());
        for k in [SMALL_K, 100, widest, widest + 1] {
            // Row 3's class target is (3 * 3) % k.
            let (n, x) = special_rows::<f32>(k, 9);
            let q: Vec<f32> = (0..x.len()).map(|i| ((i * 7) % 11) as f32 / 55.0).collect();
            let per_row = vec![0.5f32; n];
            let sets = crate::kernels::online::tests::option_sets(k);
            for opts in sets.into_iter().filter(|o| o.softcap.is_none()) {
                for soft in [false, true] {
                    let target = test_targets(&q, k, soft, 4);
                    let (mut gl, mut wl) = (vec![0.0; n], vec![0.0; n]);
                    let (mut gg, mut wg) = (vec![0f32; x.len()], vec![0f32; x.len()]);
                    let scale = Scale::PerRow(&per_row[..]);
                    let grad = Some((&mut gg[..], scale));
                    cross_entropy_rows(&x, k, target, &opts, grad, &mut gl, true, Unfused);
                    let mut cap = Vec::new();
                    for (i, (xr, gr)) in rows(&x, k).zip(rows_mut(&mut wg, k)).enumerate() {
                        let g = Some((gr, scale.at(i)));
                        wl[i] = ce_row(xr, target(i), &opts, g, &mut cap, Unfused);
                    }
                    assert!(same_or_nan(&gg, &wg), "grad k={k} soft={soft}");
                    assert!(same_or_nan(&gl, &wl), "loss k={k} soft={soft}");
                    // The exps taken again by the gradient loops (as rows longer than a step
                    // take them) give the same bits.
                    let (mut al, mut ag) = (vec![0.0; n], vec![0f32; x.len()]);
                    for (i, (xr, gr)) in rows(&x, k).zip(rows_mut(&mut ag, k)).enumerate() {
                        let (m, s) = max_exp_sum(xr, Ahead::NONE, Unfused);
                        let (g, pre) = (Some((gr, scale.at(i))), Some((m, s, s.ln::<f32>())));
                        let (t, none) = (target(i), Ahead::NONE);
                        al[i] = ce_row_with(xr, t, &opts, g, &mut cap, Unfused, pre, false, none);
                    }
                    assert!(same_or_nan(&gg, &ag), "grad again k={k} soft={soft}");
                    assert!(same_or_nan(&gl, &al), "loss again k={k} soft={soft}");
                    gl.fill(f64::MAX);
                    cross_entropy_rows(&x, k, target, &opts, None, &mut gl, true, Unfused);
                    assert!(same_or_nan(&gl, &wl), "loss only k={k} soft={soft}");
                }
            }
        }
    }

    /// Soft-capped rows take the per-row path, whose gradient reads back the exps of the capped
    /// logits kept by the pass of the sums: bitwise the gradient with those exps taken again,
    /// for every option set with a cap, class-index (some ignored) and probability targets,
    /// on rows with -inf, +inf, NaN, a huge value or a dominating maximum.
    #[test]
    fn soft_capped_rows_keep_their_exps_bitwise() {
        for k in [100, 300, 1000, ONLINE_STEP] {
            let (_, x) = special_rows::<f32>(k, 9);
            let q: Vec<f32> = (0..x.len()).map(|i| ((i * 7) % 11) as f32 / 55.0).collect();
            let sets = crate::kernels::online::tests::option_sets(k);
            for opts in sets.into_iter().filter(|o| o.softcap.is_some()) {
                for soft in [false, true] {
                    let target = test_targets(&q, k, soft, 4);
                    let (mut cap, mut zs) = (Vec::new(), Vec::new());
                    for (i, xr) in rows(&x, k).enumerate() {
                        let (mut kept, mut again) = (vec![0f32; k], vec![0f32; k]);
                        let g = Some((&mut kept[..], 0.5));
                        let l = ce_row(xr, target(i), &opts, g, &mut cap, Unfused);
                        let z = online::capped(xr, opts.softcap, &mut zs);
                        let (m, s) = max_exp_sum(z, Ahead::NONE, Unfused);
                        let (g, pre) = (Some((&mut again[..], 0.5)), Some((m, s, s.ln::<f32>())));
                        let (t, none) = (target(i), Ahead::NONE);
                        let la = ce_row_with(xr, t, &opts, g, &mut cap, Unfused, pre, false, none);
                        assert!(same_or_nan(&kept, &again), "grad k={k} soft={soft} row {i}");
                        assert!(same_or_nan(&[l], &[la]), "loss k={k} soft={soft} row {i}");
                    }
                }
            }
        }
    }

    /// Central differences of the loss against the analytic gradient, every option at once.
    #[test]
    fn gradient_matches_finite_differences() {
        let x = [0.3f64, -1.2, 2.0, 0.7, -0.1];
        let q = [0.1f64, 0.2, 0.3, 0.25, 0.15];
        let o = CeOptions {
            weight: Some(vec![0.5, 1.0, 2.0, 0.3, 1.5]),
            weight_total: 5.3,
            label_smoothing: 0.2,
            z_loss: 0.05,
            softcap: Some(3.0),
        };
        for target in [RowTarget::Class(2), RowTarget::Probs(&q)] {
            let mut g = [0.0; 5];
            let mut cap = Vec::new();
            ce_row(&x, target, &o, Some((&mut g, 1.7)), &mut cap, Unfused);
            for j in 0..5 {
                let h = 1e-6;
                let (mut xp, mut xm) = (x, x);
                xp[j] += h;
                xm[j] -= h;
                let fd = (ce_row(&xp, target, &o, None, &mut cap, Unfused)
                    - ce_row(&xm, target, &o, None, &mut cap, Unfused))
                    / (2.0 * h);
                assert!(
                    (g[j] - 1.7 * fd).abs() < 1e-7,
                    "{j}: {} vs {}",
                    g[j],
                    1.7 * fd
                );
            }
        }
    }

    #[test]
    fn one_hot_probabilities_equal_the_class_index() {
        let x = [2.0f64, 1.0, 0.1];
        let o = CeOptions::plain(3);
        let mut cap = Vec::new();
        let by_index = ce_row(&x, RowTarget::Class(0), &o, None, &mut cap, Unfused);
        let by_probs = ce_row(
            &x,
            RowTarget::Probs(&[1.0, 0.0, 0.0]),
            &o,
            None,
            &mut cap,
            Unfused,
        );
        assert!((by_index - 0.417_030_02).abs() < 1e-8);
        assert!((by_index - by_probs).abs() < 1e-15);
    }

    /// Without a gradient, the plain losses of rows of fewer than [`LIMIT`] classes come from
    /// [`plain_lane_losses`]; they are bitwise those of the grouped path with a gradient, at
    /// every level, on class indices (some ignored) and probabilities.
    #[test]
    fn lane_losses_are_the_grouped_losses() {
        for (k, x) in small_rows_cases().into_iter().filter(|(k, _)| *k < LIMIT) {
            let n = x.len() / k;
            let q: Vec<f32> = (0..x.len()).map(|i| ((i * 7) % 11) as f32 / 55.0).collect();
            let o = CeOptions::plain(k);
            for level in crate::isa::Level::supported() {
                for soft in [false, true] {
                    let target = test_targets(&q, k, soft, 3);
                    let (mut lanes, mut grouped) = (vec![0.0; n], vec![0.0; n]);
                    cross_entropy(level, &x, k, target, &o, None, &mut lanes, true);
                    let mut g = vec![0f32; x.len()];
                    let grad = Some((&mut g[..], Scale::Uniform(1.0)));
                    cross_entropy(level, &x, k, target, &o, grad, &mut grouped, true);
                    assert!(same_or_nan(&lanes, &grouped), "{level:?} k={k} soft={soft}");
                }
            }
        }
    }

    /// [`class_total`] of short plain rows is the total of their [`class_losses`] bitwise as
    /// [`crate::kernels::sum`] adds them (the sum the paths with a gradient take), with the
    /// rows not ignored and the indices outside the classes counted: at every level, in both
    /// types, a last block short or full, several blocks.
    #[test]
    fn class_totals_add_up_the_class_losses() {
        fn check<T: Float>(k: usize, n: usize) {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (k * 1000 + n) as u64;
            let mut next = move || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as f64 / (1u64 << 31) as f64
            };
            let x: Vec<T> = (0..n * k)
                .map(|_| T::from_f64((next() - 0.5) * 20.0))
                .collect();
            let ignore = -100;
            let mut idx: Vec<i64> = (0..n).map(|_| (next() * k as f64) as i64).collect();
            for i in (2..n).step_by(7) {
                idx[i] = ignore;
            }
            let o = CeOptions::plain(k);
            assert!(totals_in_lanes(k, &o));
            let mut losses = vec![0.0; n];
            for level in crate::isa::Level::supported() {
                class_losses(level, &x, k, &idx, ignore, &o, &mut losses);
                let want = crate::kernels::sum(&losses);
                let got = class_total(level, &x, k, &idx, ignore);
                assert_eq!(got.sum.to_bits(), want.to_bits(), "{level:?} k={k} n={n}");
                assert_eq!((got.live, got.bad), (n - (2..n).step_by(7).count(), 0));
                let mut outside = idx.clone();
                (outside[0], outside[n - 1]) = (k as i64, -1);
                let got = class_total(level, &x, k, &outside, ignore);
                assert!(got.sum.is_nan() && got.bad == 2, "{level:?} k={k} n={n}");
            }
        }
        for k in 1..LIMIT {
            for n in [2, 16, 83, 160] {
                check::<f32>(k, n);
                check::<f64>(k, n);
            }
        }
    }

    /// The class-index losses without a gradient ([`class_losses`], lanes for short plain
    /// rows, grouped statistics for longer plain rows, the row paths otherwise) are bitwise
    /// those of the grouped path with a gradient, at every level, with and without options,
    /// ignored rows giving 0; an index outside the classes, which callers reject first, gives
    /// NaN rather than another row's logit.
    #[test]
    fn class_losses_are_the_grouped_losses() {
        for (k, x) in small_rows_cases() {
            let n = x.len() / k;
            let ignore = -100;
            let idx: Vec<i64> = (0..n)
                .map(|i| {
                    if i % 5 == 3 {
                        ignore
                    } else {
                        ((i * 3) % k) as i64
                    }
                })
                .collect();
            let target = |i: usize| match idx[i] {
                t if t == ignore => RowTarget::Ignored,
                t => RowTarget::Class(t as usize),
            };
            let smoothed = CeOptions::new(k, None, 0.1, 0.0, None).unwrap();
            let per_row: Vec<f32> = (0..n).map(|i| 0.25 + i as f32 / 8.0).collect();
            for o in [CeOptions::plain(k), smoothed] {
                for level in crate::isa::Level::supported() {
                    let (mut got, mut grouped) = (vec![0.0; n], vec![0.0; n]);
                    class_losses(level, &x, k, &idx, ignore, &o, &mut got);
                    let mut g = vec![0f32; x.len()];
                    let grad = Some((&mut g[..], Scale::Uniform(1.0)));
                    cross_entropy(level, &x, k, target, &o, grad, &mut grouped, true);
                    assert!(same_or_nan(&got, &grouped), "{level:?} k={k}");
                    assert!((3..n).step_by(5).all(|i| got[i] == 0.0), "ignored rows");
                    // With the gradient (lanes for full blocks of short rows, smoothed or not).
                    for scale in [Scale::Uniform(0.375), Scale::PerRow(&per_row[..])] {
                        let (mut gg, mut wg) = (vec![1f32; x.len()], vec![2f32; x.len()]);
                        class_grads(
                            level,
                            &x,
                            k,
                            (&idx, ignore),
                            &o,
                            (&mut gg, scale),
                            &mut got,
                            true,
                        );
                        let grad = Some((&mut wg[..], scale));
                        cross_entropy(level, &x, k, target, &o, grad, &mut grouped, true);
                        assert!(same_or_nan(&got, &grouped), "loss {level:?} k={k}");
                        assert!(same_or_nan(&gg, &wg), "grad {level:?} k={k} {scale:?}");
                        assert!(gg[3 * k..4 * k].iter().all(|&v| v == 0.0), "ignored row");
                    }
                }
            }
            if k < LIMIT {
                let mut outside = idx.clone();
                outside[6] = k as i64;
                let mut got = vec![0.0; n];
                let o = CeOptions::plain(k);
                class_losses(
                    crate::isa::Level::best(),
                    &x,
                    k,
                    &outside,
                    ignore,
                    &o,
                    &mut got,
                );
                assert!(got[6].is_nan() && !got[7].is_nan(), "k={k}: {}", got[6]);
                // With a gradient, the lanes path (where its transpositions run in registers;
                // the grouped path indexes the row by the class and would panic).
                let lanes = crate::isa::Level::supported().into_iter();
                for level in lanes.filter(|l| l.isa() >= crate::isa::Isa::Avx2) {
                    let mut g = vec![0f32; x.len()];
                    let grad = (&mut g[..], Scale::Uniform(1.0));
                    class_grads(level, &x, k, (&outside, ignore), &o, grad, &mut got, true);
                    assert!(got[6].is_nan() && !got[7].is_nan(), "{level:?} k={k}");
                    let (row6, row7) = (&g[6 * k..7 * k], &g[7 * k..8 * k]);
                    assert!(row6.iter().all(|v| v.is_nan()), "{level:?} k={k}: {row6:?}");
                    assert!(
                        row7.iter().all(|v| !v.is_nan()),
                        "{level:?} k={k}: {row7:?}"
                    );
                }
            }
        }
    }

    /// The plain loss of each row with its sums by `short_exp_sum`, one row at a time.
    #[inline(always)]
    fn short_losses_with<A: Arith>(x: &[f32], k: usize, idx: &[i64], out: &mut [f64], a: A) {
        for ((xr, o), &t) in rows(x, k).zip(out.iter_mut()).zip(idx) {
            let m = crate::kernels::row_max(xr);
            let ln_s = crate::kernels::short_exp_sum(xr, m, a).ln::<f32>();
            *o = if t < 0 {
                0.0
            } else {
                -((xr[t as usize].to_f64() - m.to_f64()) - ln_s)
            };
        }
    }

    isa_dispatch! {
        pub fn short_losses[](x: &[f32], k: usize, idx: &[i64], out: &mut [f64]) =
            short_losses_with;
    }

    /// Rows of [`SMALL_K`] or more (the row path, one-pass rows past 2048 included):
    /// [`class_losses`] without options is bitwise [`ce_row`]'s loss at every level, on rows
    /// with infinities, NaN and a dominating maximum. Rows shorter than a chunk
    /// (`short_rows`) sum their terms beside their maxima's ones: bitwise that loss taken
    /// row by row, and within [`close_to_row_path`] of the row path.
    #[test]
    fn long_row_class_losses_are_the_row_losses() {
        for k in [SMALL_K, 100, 255, 256, 1000, 2100] {
            // Row 3's target is (3 * 7 + 1) % k.
            let (n, x) = special_rows::<f32>(k, 22);
            let idx: Vec<i64> = (0..n as i64)
                .map(|i| if i == 6 { -100 } else { (i * 7 + 1) % k as i64 })
                .collect();
            let o = CeOptions::plain(k);
            let mut cap = Vec::new();
            for level in crate::isa::Level::supported() {
                let mut got = vec![0.0; n];
                class_losses(level, &x, k, &idx, -100, &o, &mut got);
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        let target = match idx[i] {
                            -100 => RowTarget::Ignored,
                            t => RowTarget::Class(t as usize),
                        };
                        let xr = &x[i * k..(i + 1) * k];
                        ce_row_at(level, xr, target, &o, &mut cap)
                    })
                    .collect();
                let want = if short_rows(k) {
                    assert!(
                        close(&got, &want, k),
                        "{level:?} k={k}: {got:?} !~ {want:?}"
                    );
                    let mut short = vec![0.0; n];
                    short_losses(level, &x, k, &idx, &mut short);
                    short
                } else {
                    want
                };
                assert!(
                    same_or_nan(&got, &want),
                    "{level:?} k={k}: {got:?} != {want:?}"
                );
                assert!(
                    got[3] > 0.0 && got[3] < 1e-6,
                    "dominated row keeps its digits"
                );
            }
        }
    }

    #[inline(always)]
    fn ce_row_with_level<A: Arith>(
        x: &[f32],
        t: RowTarget<'_, f32>,
        o: &CeOptions<f32>,
        cap: &mut Vec<f32>,
        a: A,
    ) -> f64 {
        ce_row(x, t, o, None, cap, a)
    }

    isa_dispatch! {
        pub fn ce_row_at['t](
            x: &[f32],
            t: RowTarget<'t, f32>,
            o: &CeOptions<f32>,
            cap: &mut Vec<f32>,
        ) -> f64 = ce_row_with_level;
    }

    #[test]
    fn infinities_follow_pytorch() {
        let o = CeOptions::<f64>::plain(3);
        let mut cap = Vec::new();
        let ni = f64::NEG_INFINITY;
        assert_eq!(
            ce_row(
                &[ni, 1.0, 2.0],
                RowTarget::Class(0),
                &o,
                None,
                &mut cap,
                Unfused
            ),
            f64::INFINITY
        );
        assert!(ce_row(
            &[ni, 1.0, 2.0],
            RowTarget::Class(1),
            &o,
            None,
            &mut cap,
            Unfused
        )
        .is_finite());
        assert!(ce_row(
            &[f64::INFINITY, 1.0, 2.0],
            RowTarget::Class(0),
            &o,
            None,
            &mut cap,
            Unfused
        )
        .is_nan());
    }
}
