//! Tile kernels of the fused linear cross-entropy ([`crate::linear`]): a tile holds the logits
//! of a block of rows against a block of `kb` classes starting at class `c0`, one row after
//! another. The formulas are those of [`super::cross_entropy`], split across tiles: the forward
//! sweep folds each tile into every row's running maximum and exp-sum (rescaled when the maximum
//! grows, as in [`super::max_exp_sum`]) and picks up the target's logit; once a row's sums are
//! final, the backward sweep turns each recomputed tile into the gradient of the logits in place.

use super::{max_exp_sum, rows_mut, sum};
use crate::float::Float;
use crate::isa::{isa_dispatch, Arith};

/// One row's target and its sums over the classes seen so far.
#[derive(Clone, Copy, Debug)]
pub struct RowStats {
    /// The target class, or `None` for an ignored row (whose sums are not needed).
    pub target: Option<usize>,
    /// The largest (soft-capped) logit so far.
    pub m: f64,
    /// `Σ exp(z - m)` so far.
    pub s: f64,
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
            s: 0.0,
            wz: 0.0,
            zt: f64::NAN,
        }
    }

    /// Adds a block whose maximum is `m` and whose `Σ exp(z - m)` is `s`.
    fn merge(&mut self, m: f64, s: f64) {
        if s == 0.0 {
            return; // an all -inf block adds nothing (and -inf - -inf would be NaN)
        }
        if m > self.m {
            self.s = self.s * (self.m - m).exp() + s;
            self.m = m;
        } else {
            self.s += s * (m - self.m).exp();
        }
    }
}

/// What the backward sweep needs of one row, already multiplied by the row's gradient scale:
/// `g_j = (ca·exp(z_j - m)/s - cb·w_j - [j = t]·corr) · cap'(z_j)`.
#[derive(Clone, Copy, Debug)]
pub struct RowGrad<T> {
    pub m: T,
    pub inv_s: T,
    pub ca: T,
    pub cb: T,
    pub corr: T,
    /// The target class, or `None` for an ignored row (whose gradient is 0).
    pub target: Option<usize>,
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

#[inline(always)]
fn cap_in_place<T: Float>(row: &mut [T], cap: Option<f64>) {
    if let Some(c) = cap {
        let ct = T::from_f64(c);
        for v in row.iter_mut() {
            *v = ct * (*v / ct).tanh();
        }
    }
}

/// Folds a tile into its rows' sums (ignored rows are skipped). Soft-caps the tile in place.
#[inline(always)]
fn fold_rows<T: Float, A: Arith>(
    tile: &mut [T],
    kb: usize,
    c0: usize,
    stats: &mut [RowStats],
    o: TileOpts<'_, T>,
    a: A,
) {
    for (row, st) in rows_mut(tile, kb).zip(stats.iter_mut()) {
        let Some(t) = st.target else { continue };
        cap_in_place(row, o.softcap);
        if (c0..c0 + kb).contains(&t) {
            st.zt = row[t - c0].to_f64();
        }
        let (m, s) = max_exp_sum(row, a);
        st.merge(m.to_f64(), s);
        if o.smoothing {
            st.wz += match o.weight {
                Some(w) => super::dot(w, row),
                None => sum(row),
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
                        d -= r.corr;
                    }
                    let q = z * inv_c;
                    *g = d * (T::ONE - q * q);
                }
                continue;
            }
        }
        if let Some(t) = local_t {
            row[t] -= r.corr;
        }
    }
}

isa_dispatch! {
    /// Folds a tile into its rows' sums (see `fold_rows`).
    pub fn fold_tile['w, T: Float](
        tile: &mut [T],
        kb: usize,
        c0: usize,
        stats: &mut [RowStats],
        o: TileOpts<'w, T>,
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
