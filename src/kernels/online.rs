//! The online cross-entropy of one row against a class index, written once for every path: a
//! row is folded block by block into running sums ([`RowStats::fold`]), finished into its loss
//! and the coefficients of its gradient ([`RowStats::finish`], a [`RowGrad`]), and each block
//! then turned into its gradient ([`RowGrad::at`], [`RowGrad::set_target`], [`cap_slope`]).
//! The row kernel ([`super::cross_entropy`]) folds a row as one block, its short-row groups
//! with the sums already taken, the split long rows ([`crate::ops::long_rows`]) one segment per
//! thread, the fused linear cross-entropy ([`super::linear`]) one tile of classes at a time.
//! The formulas are those of the [`super::cross_entropy`] header.
//!
//! Blocks are combined as [`ExpSum::merge`] does: the sums are rescaled to the larger maximum
//! when it grows, and the rest of the exp-sum is kept apart from the maximum's exact 1 (so the
//! loss and the gradient at a dominating target stay exact). `Σ w_c (z_c - m)` for label
//! smoothing is kept relative to the first block's maximum and moved to the row's at the end:
//! relative, so logits far from 0 do not cancel against `lse · Σ w`.

use super::cross_entropy::CeOptions;
use super::{segment_max_exp_sum, shifted_dot, sum, ExpSum};
use crate::float::Float;
use crate::isa::Arith;

/// One row's target and its sums over the classes seen so far.
#[derive(Clone, Copy, Debug)]
pub struct RowStats {
    /// The target class, or `None` for an ignored row (whose sums are not needed).
    pub target: Option<usize>,
    /// The largest (soft-capped) logit so far.
    pub m: f64,
    /// `Σ exp(z - m)` so far, with its rest beside the exact ones.
    pub s: ExpSum,
    /// `Σ w_c (z_c - wz_at)` so far (kept only with label smoothing).
    pub wz: f64,
    /// The shift of `wz`: the first block's maximum (0 if that is infinite), NaN before it.
    pub wz_at: f64,
    /// `Σ w_c` over the classes in `wz`.
    pub w_seen: f64,
    /// The target's (soft-capped) logit, once its block was seen.
    pub zt: f64,
}

impl RowStats {
    pub fn new(target: Option<usize>) -> RowStats {
        RowStats {
            target,
            m: f64::NEG_INFINITY,
            s: ExpSum::ZERO,
            wz: 0.0,
            wz_at: f64::NAN,
            w_seen: 0.0,
            zt: f64::NAN,
        }
    }

    /// Folds the row's next block of (soft-capped) logits `z`, classes `c0..c0 + z.len()`
    /// with weights `w` (those classes' only); `smoothing` keeps `Σ w_c z_c`. Ignored rows are
    /// left alone.
    #[inline(always)]
    pub fn fold<T: Float, A: Arith>(
        &mut self,
        z: &[T],
        c0: usize,
        w: Option<&[T]>,
        smoothing: bool,
        a: A,
    ) {
        if self.target.is_none() {
            return;
        }
        let (m, s) = segment_max_exp_sum(z, a);
        self.fold_sums(z, c0, w, smoothing, m, s);
    }

    /// [`RowStats::fold`] of a block whose maximum `m` and sums `s` are already known.
    #[inline(always)]
    pub fn fold_sums<T: Float>(
        &mut self,
        z: &[T],
        c0: usize,
        w: Option<&[T]>,
        smoothing: bool,
        m: T,
        s: ExpSum,
    ) {
        let Some(t) = self.target else { return };
        if (c0..c0 + z.len()).contains(&t) {
            self.zt = z[t - c0].to_f64();
        }
        let mf = m.to_f64();
        if smoothing {
            // exp(-inf - -inf) would be NaN; a block of only -inf is shifted by 0.
            let at = if mf.is_finite() { mf } else { 0.0 };
            let wb = w.map_or(z.len() as f64, sum);
            self.add_wz(shifted_dot(w, z, at), at, wb);
        }
        self.m = self.s.merge(self.m, s, mf);
    }

    /// Adds `Σ w_c (z_c - at)` of a block whose weights add up to `wb`.
    #[inline(always)]
    fn add_wz(&mut self, wz: f64, at: f64, wb: f64) {
        if self.wz_at.is_nan() {
            (self.wz, self.wz_at) = (wz, at);
        } else {
            self.wz += wz + (at - self.wz_at) * wb;
        }
        self.w_seen += wb;
    }

    /// Adds the sums of the row's next block of classes, seen by another `RowStats`.
    pub fn absorb(&mut self, next: &RowStats) {
        self.m = self.s.merge(self.m, next.s, next.m);
        if !next.wz_at.is_nan() {
            self.add_wz(next.wz, next.wz_at, next.w_seen);
        }
        if !next.zt.is_nan() {
            self.zt = next.zt; // only the target's block sets it
        }
    }

    /// The row's loss from its final sums over `k` classes, and what its gradient needs,
    /// multiplied by the row's gradient `scale`.
    #[inline(always)]
    pub fn finish<T: Float>(&self, o: &CeOptions<T>, k: usize, scale: f64) -> (f64, RowGrad<T>) {
        self.finish_with_ln(o, k, scale, self.s.ln::<T>())
    }

    /// [`RowStats::finish`] given `ln_s`, the bits of `self.s.ln()`, which the short-row
    /// paths take for a group of rows at once.
    #[inline(always)]
    pub fn finish_with_ln<T: Float>(
        &self,
        o: &CeOptions<T>,
        k: usize,
        scale: f64,
        ln_s: f64,
    ) -> (f64, RowGrad<T>) {
        let Some(t) = self.target else {
            return (0.0, RowGrad::IGNORED);
        };
        let mf = self.m;
        let lse = mf + ln_s;
        let wt = o.weight.as_ref().map_or(1.0, |w| w[t].to_f64());
        let Terms {
            mut coef,
            corr,
            mut extra,
            cbw,
        } = Terms::new(o, k, wt);
        let nll = -wt * ((self.zt - mf) - ln_s);
        // Σ w_c (z_c - m), moved from the first block's shift to the row's maximum.
        let wz = || self.wz + (self.wz_at - mf) * self.w_seen;
        let mut loss = smoothed_loss(o, k, nll, wz, ln_s);
        if o.z_loss != 0.0 {
            loss += o.z_loss * lse * lse;
            coef += 2.0 * o.z_loss * lse;
            extra += 2.0 * o.z_loss * lse;
        }
        // The target's gradient apart where it is the dominating maximum (see `top_grad`).
        let top = (self.s.dominated() && self.zt == mf)
            .then(|| T::from_f64(top_grad(scale, extra, cbw, corr, self.s)));
        let grad = RowGrad {
            m: T::from_f64(mf),
            inv_s: T::from_f64(1.0 / self.s.s),
            ca: T::from_f64(scale * coef),
            cb: T::from_f64(scale * o.label_smoothing / k as f64),
            corr: T::from_f64(scale * corr),
            top,
            target: Some(t),
        };
        (loss, grad)
    }
}

/// The terms of a row's gradient that depend on the options and the target's weight `wt`
/// alone, before the z-loss: the coefficient of `p_j`, the target-class correction, the part
/// of the coefficient beyond the correction (for `top_grad`) and the target's constant term.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Terms {
    pub coef: f64,
    pub corr: f64,
    pub extra: f64,
    pub cbw: f64,
}

impl Terms {
    /// `Terms::new` of plain options (no smoothing) and `wt = 1`, as constants the compiler
    /// can fold (`x * 1.0`, `x - 0.0`).
    pub const UNIT: Terms = Terms {
        coef: 1.0,
        corr: 1.0,
        extra: 0.0,
        cbw: 0.0,
    };

    #[inline(always)]
    pub fn new<T: Float>(o: &CeOptions<T>, k: usize, wt: f64) -> Terms {
        let (eps, kf) = (o.label_smoothing, k as f64);
        let cbw = eps / kf * wt;
        if eps > 0.0 {
            Terms {
                coef: (1.0 - eps) * wt + eps / kf * o.weight_total,
                corr: (1.0 - eps) * wt,
                extra: eps / kf * o.weight_total,
                cbw,
            }
        } else {
            Terms {
                coef: wt,
                corr: wt,
                extra: 0.0,
                cbw,
            }
        }
    }
}

/// `Σ (z_c - m)` of a whole row `z` without class weights, whose maximum is `m`: the value
/// [`RowStats::fold_sums`] and [`RowStats::finish`] form for a row folded as one block.
#[inline(always)]
pub(crate) fn unweighted_wz<T: Float>(z: &[T], m: f64) -> f64 {
    let at = if m.is_finite() { m } else { 0.0 };
    shifted_dot::<T>(None, z, at) + (at - m) * z.len() as f64
}

/// A row's loss before the z-loss, from its negative log-likelihood `nll`, `wz()` =
/// `Σ w_c (z_c - m)` (asked for only with label smoothing) and `ln_s`.
#[inline(always)]
pub(crate) fn smoothed_loss<T: Float>(
    o: &CeOptions<T>,
    k: usize,
    nll: f64,
    wz: impl FnOnce() -> f64,
    ln_s: f64,
) -> f64 {
    let eps = o.label_smoothing;
    if eps > 0.0 {
        let smooth = -wz() + ln_s * o.weight_total;
        (1.0 - eps) * nll + eps / k as f64 * smooth
    } else {
        nll
    }
}

/// The scaled gradient at the class `j` of a dominating maximum (`e_j = 1`, `p_j = 1/s`):
/// `scale·(extra·p_j - cbw - corr·(1 - p_j))`, where the gradient loops would form
/// `(extra + corr)·p_j - cbw - corr` and lose `1 - p_j = rest/s` to cancellation. `extra` is
/// the coefficient of `p_j` beyond `corr`, `cbw` the constant term.
#[inline(always)]
pub(crate) fn top_grad(scale: f64, extra: f64, cbw: f64, corr: f64, sums: ExpSum) -> f64 {
    scale * (extra / sums.s - cbw - corr * (sums.rest / sums.s))
}

/// What the backward sweep needs of one row, already multiplied by the row's gradient scale:
/// `g_j = (ca·exp(z_j - m)/s - cb·w_j - [j = t]·corr) · cap'(z_j)`, except that `top`, when
/// set, replaces the bracket at `j = t` (the target is the dominating maximum).
#[derive(Clone, Copy, Debug)]
pub struct RowGrad<T> {
    pub m: T,
    pub inv_s: T,
    pub ca: T,
    pub cb: T,
    pub corr: T,
    pub top: Option<T>,
    /// The target class, or `None` for an ignored row (whose gradient is 0).
    pub target: Option<usize>,
}

impl<T: Float> RowGrad<T> {
    /// An ignored row: its gradient is 0.
    pub const IGNORED: RowGrad<T> = RowGrad {
        m: T::ZERO,
        inv_s: T::ZERO,
        ca: T::ZERO,
        cb: T::ZERO,
        corr: T::ZERO,
        top: None,
        target: None,
    };

    /// The bracket of `g_j` but the target's correction, from `e = exp(z_j - m)` and the
    /// class weight `wj` (1 without weights).
    #[inline(always)]
    pub fn at(&self, e: T, wj: T) -> T {
        self.ca * (e * self.inv_s) - self.cb * wj
    }

    /// The bracket at the target from what [`RowGrad::at`] gave there.
    #[inline(always)]
    pub fn target_value(&self, at: T) -> T {
        self.top.unwrap_or(at - self.corr)
    }

    /// Applies [`RowGrad::target_value`] to a block of brackets for classes `c0..`, if the
    /// target is among them.
    #[inline(always)]
    pub fn set_target(&self, g: &mut [T], c0: usize) {
        if let Some(t) = self.target {
            if (c0..c0 + g.len()).contains(&t) {
                g[t - c0] = self.target_value(g[t - c0]);
            }
        }
    }
}

/// `z` soft-capped to `c·tanh(z / c)` into `scratch`, or `z` itself without a cap.
#[inline(always)]
pub fn capped<'a, T: Float>(z: &'a [T], cap: Option<f64>, scratch: &'a mut Vec<T>) -> &'a [T] {
    match cap {
        Some(c) => {
            let ct = T::from_f64(c);
            scratch.clear();
            scratch.extend(z.iter().map(|&v| cap_one(v, ct)));
            scratch
        }
        None => z,
    }
}

/// One logit soft-capped by `ct`.
#[inline(always)]
pub fn cap_one<T: Float>(v: T, ct: T) -> T {
    ct * (v / ct).tanh()
}

/// `1 - (z / c)²`, the derivative of the soft cap at a capped logit `z`; `inv_c = 1 / c`.
#[inline(always)]
pub fn cap_slope<T: Float>(z: T, inv_c: T) -> T {
    let r = z * inv_c;
    T::ONE - r * r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::isa::Level;
    use crate::kernels::cross_entropy::{cross_entropy, RowTarget, Scale};
    use crate::kernels::linear::{fold_tile, grad_tile, TileOpts};
    use crate::kernels::softmax::tests::close_to_row_path;

    fn same<T: Float>(a: &[T], b: &[T]) -> bool {
        a.iter().zip(b).all(|(x, y)| {
            x.to_f64().to_bits() == y.to_f64().to_bits() || (x.is_nan() && y.is_nan())
        })
    }

    fn logits(n: usize, seed: u64, spread: f64) -> Vec<f32> {
        let x = crate::testing::uniform(n, seed, spread);
        x.into_iter().map(|v| v as f32).collect()
    }

    /// Every option set of the cross-entropy on class indices, for `k` classes.
    #[test]
    fn unit_terms_are_those_of_plain_options() {
        for k in [1, 10, 1000] {
            let t = Terms::new(&CeOptions::<f32>::plain(k), k, 1.0);
            let bits = |t: Terms| [t.coef, t.corr, t.extra, t.cbw].map(f64::to_bits);
            assert_eq!(bits(t), bits(Terms::UNIT), "k={k}");
        }
    }

    pub(crate) fn option_sets(k: usize) -> Vec<CeOptions<f32>> {
        let weight: Vec<f32> = (0..k).map(|c| 0.5 + (c % 3) as f32).collect();
        let full = CeOptions {
            weight_total: weight.iter().map(|&w| w as f64).sum(),
            weight: Some(weight),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: None,
        };
        let capped = CeOptions {
            softcap: Some(5.0),
            ..full.clone()
        };
        let smooth_only = CeOptions {
            label_smoothing: 0.2,
            ..CeOptions::plain(k)
        };
        vec![CeOptions::plain(k), full, capped, smooth_only]
    }

    /// The fused linear path's tile kernels, given a whole row as one tile, are the row kernel
    /// bit for bit (within `close_to_row_path` where the row kernel takes the small-row path):
    /// loss and gradient, every option set, targets at the maximum and elsewhere, rows offset
    /// far from 0 and rows whose maximum dominates.
    #[test]
    fn one_tile_is_the_row_kernel() {
        let eps = f64::from(f32::EPSILON);
        for k in [1, 10, 100, 3000] {
            let mut x = logits(4 * k, 0x51ED ^ k as u64, 20.0);
            x[k..2 * k].iter_mut().for_each(|v| *v += 1e4);
            x[2 * k..3 * k].iter_mut().for_each(|v| *v -= 60.0);
            x[2 * k + k / 2] = 0.0;
            for o in option_sets(k) {
                for (i, row) in x.chunks(k).enumerate() {
                    let t = if i == 2 { k / 2 } else { (i * 7) % k };
                    // The row kernel, dispatched to the same instruction set as the tiles.
                    let (mut want, mut want_loss) = (vec![0f32; k], [0.0]);
                    let g = Some((&mut want[..], Scale::Uniform(0.75)));
                    cross_entropy(
                        Level::active(),
                        row,
                        k,
                        |_| RowTarget::Class(t),
                        &o,
                        g,
                        &mut want_loss,
                        true,
                    );
                    let want_loss = want_loss[0];
                    let mut cap = Vec::new();
                    let opts = TileOpts {
                        weight: o.weight.as_deref(),
                        softcap: o.softcap,
                        smoothing: o.label_smoothing > 0.0,
                    };
                    let mut st = [RowStats::new(Some(t))];
                    fold_tile(Level::active(), row, k, 0, &mut st, opts, &mut cap);
                    let (loss, rg) = st[0].finish(&o, k, 0.75);
                    let mut got = row.to_vec();
                    grad_tile(Level::active(), &mut got, k, 0, &[rg], opts);
                    let what = format!("k={k} row {i} {o:?}");
                    if k < crate::kernels::SMALL_K {
                        // Rows this short take the small-row path, whose sum is rounded apart.
                        let close = |a: f64, b: f64| close_to_row_path(a, b, k, eps);
                        assert!(close(loss, want_loss), "loss {what}");
                        let all = got.iter().zip(&want);
                        assert!(
                            all.into_iter().all(|(&a, &b)| close(a.into(), b.into())),
                            "grad {what}"
                        );
                        continue;
                    }
                    assert_eq!(loss.to_bits(), want_loss.to_bits(), "loss {what}");
                    assert!(same(&got, &want), "grad {what}");
                }
            }
        }
    }

    /// The split long-row path is the online fold over its segments, in order, bit for bit.
    #[test]
    fn split_rows_are_the_fold_over_segments() {
        let seg = crate::ops::long_rows::SEGMENT;
        let k = 2 * seg + 1234;
        assert!(crate::ops::long_rows::applies(1, k));
        // The level the slice API below reads.
        let isa = Level::active();
        let mut x = logits(k, 0xC0FFEE, 16.0);
        x[seg + 17] = 40.0; // a dominating maximum, the target, in the middle segment
        for o in option_sets(k) {
            for t in [seg + 17, 5] {
                let (mut got, mut losses) = (vec![0f32; k], [0.0]);
                let g = (&mut got[..], Some(&mut losses[..]));
                crate::cross_entropy_and_grad(
                    &x,
                    k,
                    &[t as i64],
                    &o,
                    crate::Reduction::Sum,
                    g.0,
                    g.1,
                )
                .unwrap();
                let mut stats = RowStats::new(Some(t));
                let opts = |c0: usize, len: usize| TileOpts {
                    weight: o.weight.as_deref().map(|w| &w[c0..c0 + len]),
                    softcap: o.softcap,
                    smoothing: o.label_smoothing > 0.0,
                };
                for (i, part) in x.chunks(seg).enumerate() {
                    let mut st = [RowStats::new(Some(t))];
                    let c0 = i * seg;
                    fold_tile(
                        isa,
                        part,
                        part.len(),
                        c0,
                        &mut st,
                        opts(c0, part.len()),
                        &mut Vec::new(),
                    );
                    stats.absorb(&st[0]);
                }
                let (loss, rg) = stats.finish(&o, k, 1.0);
                let mut want = x.clone();
                for (i, part) in want.chunks_mut(seg).enumerate() {
                    let len = part.len();
                    grad_tile(isa, part, len, i * seg, &[rg], opts(i * seg, len));
                }
                let what = format!("t={t} {o:?}");
                assert_eq!(losses[0].to_bits(), loss.to_bits(), "loss {what}");
                assert!(same(&got, &want), "grad {what}");
            }
        }
    }
}
