//! Tile kernels of the fused linear cross-entropy ([`crate::linear`]): a tile holds the logits
//! of a block of rows against a block of `kb` classes starting at class `c0`, one row after
//! another. The formulas are those of [`super::cross_entropy`], split across tiles: the forward
//! sweep folds each tile into every row's running maximum and exp-sum (rescaled when the maximum
//! grows, as in [`super::max_exp_sum`]) and picks up the target's logit; once a row's sums are
//! final, the backward sweep turns each recomputed tile into the gradient of the logits in place.

use super::cross_entropy::{top_grad, CeOptions};
use super::{rows_mut, segment_max_exp_sum, sum, ExpSum};
use crate::float::Float;
use crate::isa::{isa_dispatch, Arith};

/// One row's target and its sums over the classes seen so far.
#[derive(Clone, Copy, Debug)]
pub struct RowStats {
    /// The target class, or `None` for an ignored row (whose sums are not needed).
    pub target: Option<usize>,
    /// The largest (soft-capped) logit so far.
    pub m: f64,
    /// `Σ exp(z - m)` so far, with its rest beside the exact ones.
    pub s: ExpSum,
    /// `Σ w_c z_c` so far (kept only with label smoothing).
    pub wz: f64,
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
            zt: f64::NAN,
        }
    }

    /// Adds the sums of the row's next block of classes, seen by another `RowStats`.
    pub fn absorb(&mut self, next: &RowStats) {
        self.merge(next.m, next.s);
        self.wz += next.wz;
        if !next.zt.is_nan() {
            self.zt = next.zt; // only the target's block sets it
        }
    }

    /// Adds a block whose maximum is `m` and whose sums of `exp(z - m)` are `s`.
    fn merge(&mut self, m: f64, s: ExpSum) {
        self.m = self.s.merge(self.m, s, m);
    }
}

impl RowStats {
    /// The row's loss (the formula of [`super::cross_entropy`]) from its final sums over `k`
    /// classes, and what its gradient needs, multiplied by the row's gradient `scale`.
    pub fn finish<T: Float>(&self, o: &CeOptions<T>, k: usize, scale: f64) -> (f64, RowGrad<T>) {
        let Some(t) = self.target else {
            return (0.0, RowGrad::IGNORED);
        };
        let (eps, kf) = (o.label_smoothing, k as f64);
        let ln_s = self.s.ln();
        let lse = self.m + ln_s;
        let wt = o.weight.as_ref().map_or(1.0, |w| w[t].to_f64());
        let nll = wt * (ln_s - (self.zt - self.m));
        let (mut loss, mut coef, corr, mut extra) = if eps > 0.0 {
            let smooth = lse * o.weight_total - self.wz;
            (
                (1.0 - eps) * nll + eps / kf * smooth,
                (1.0 - eps) * wt + eps / kf * o.weight_total,
                (1.0 - eps) * wt,
                eps / kf * o.weight_total,
            )
        } else {
            (nll, wt, wt, 0.0)
        };
        if o.z_loss != 0.0 {
            loss += o.z_loss * lse * lse;
            coef += 2.0 * o.z_loss * lse;
            extra += 2.0 * o.z_loss * lse;
        }
        // The target's gradient apart where it is the dominating maximum (see `top_grad`).
        let top = (self.s.dominated() && self.zt == self.m).then(|| {
            let cbw = eps / kf * wt;
            T::from_f64(top_grad(scale, extra, cbw, corr, self.s))
        });
        let grad = RowGrad {
            m: T::from_f64(self.m),
            inv_s: T::from_f64(1.0 / self.s.s),
            ca: T::from_f64(scale * coef),
            cb: T::from_f64(scale * eps / kf),
            corr: T::from_f64(scale * corr),
            top,
            target: Some(t),
        };
        (loss, grad)
    }
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
}

/// Options shared by every row of a tile.
#[derive(Clone, Copy, Debug)]
pub struct TileOpts<'a, T> {
    /// The class weights of this tile's classes (`kb` of them), if any.
    pub weight: Option<&'a [T]>,
    pub softcap: Option<f64>,
    /// Whether `Σ w_c z_c` is needed (label smoothing on).
    pub smoothing: bool,
}

/// Folds a tile into its rows' sums (ignored rows are skipped). With a soft cap, each row is
/// capped into `capped` first; the tile itself is only read.
#[inline(always)]
fn fold_rows<T: Float, A: Arith>(
    tile: &[T],
    kb: usize,
    c0: usize,
    stats: &mut [RowStats],
    o: TileOpts<'_, T>,
    capped: &mut Vec<T>,
    a: A,
) {
    for (row, st) in super::rows(tile, kb).zip(stats.iter_mut()) {
        let Some(t) = st.target else { continue };
        let z: &[T] = match o.softcap {
            Some(c) => {
                let ct = T::from_f64(c);
                capped.clear();
                capped.extend(row.iter().map(|&v| ct * (v / ct).tanh()));
                capped
            }
            None => row,
        };
        if (c0..c0 + kb).contains(&t) {
            st.zt = z[t - c0].to_f64();
        }
        let (m, s) = segment_max_exp_sum(z, a);
        st.merge(m.to_f64(), s);
        if o.smoothing {
            st.wz += match o.weight {
                Some(w) => super::dot(w, z),
                None => sum(z),
            };
        }
    }
}

/// Turns a tile of logits into the scaled gradient of the loss with respect to them.
#[inline(always)]
fn grad_rows<T: Float, A: Arith>(
    tile: &mut [T],
    kb: usize,
    c0: usize,
    rows: &[RowGrad<T>],
    o: TileOpts<'_, T>,
    a: A,
) {
    for (row, r) in rows_mut(tile, kb).zip(rows) {
        let Some(t) = r.target else {
            row.fill(T::ZERO);
            continue;
        };
        let local_t = (c0..c0 + kb).contains(&t).then(|| t - c0);
        match (o.softcap, o.weight) {
            // PERF: plain loops without per-element branches, as in `ce_row`, so they vectorize.
            (None, Some(w)) => {
                for (g, &wj) in row.iter_mut().zip(w) {
                    *g = r.ca * (a.exp_nonpos(*g - r.m) * r.inv_s) - r.cb * wj;
                }
            }
            (None, None) => {
                for g in row.iter_mut() {
                    *g = r.ca * (a.exp_nonpos(*g - r.m) * r.inv_s) - r.cb;
                }
            }
            (Some(c), w) => {
                // tanh does not vectorize anyway; one loop caps, differentiates and scales.
                let (ct, inv_c) = (T::from_f64(c), T::from_f64(1.0 / c));
                for (j, g) in row.iter_mut().enumerate() {
                    let z = ct * (*g / ct).tanh();
                    let wj = w.map_or(T::ONE, |w| w[j]);
                    let mut d = r.ca * (a.exp_nonpos(z - r.m) * r.inv_s) - r.cb * wj;
                    if local_t == Some(j) {
                        d = r.top.unwrap_or(d - r.corr);
                    }
                    let q = z * inv_c;
                    *g = d * (T::ONE - q * q);
                }
                continue;
            }
        }
        if let Some(t) = local_t {
            row[t] = r.top.unwrap_or(row[t] - r.corr);
        }
    }
}

isa_dispatch! {
    /// Folds a tile into its rows' sums (see `fold_rows`).
    pub fn fold_tile['w, T: Float](
        tile: &[T],
        kb: usize,
        c0: usize,
        stats: &mut [RowStats],
        o: TileOpts<'w, T>,
        capped: &mut Vec<T>,
    ) = fold_rows;
    /// Turns a tile of logits into the scaled gradient with respect to them (see `grad_rows`).
    pub fn grad_tile['w, T: Float](
        tile: &mut [T],
        kb: usize,
        c0: usize,
        rows: &[RowGrad<T>],
        o: TileOpts<'w, T>,
    ) = grad_rows;
}
