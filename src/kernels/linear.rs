//! Tile kernels of the fused linear cross-entropy ([`crate::linear`]): a tile holds the logits
//! of a block of rows against a block of `kb` classes starting at class `c0`, one row after
//! another. The arithmetic is the online cross-entropy of [`super::online`], a tile a block: the
//! forward sweep folds each tile into every row's [`RowStats`]; once a row's sums are final
//! ([`RowStats::finish`]), the backward sweep turns each recomputed tile into the gradient of
//! the logits in place.

use super::online::{cap_one, cap_slope, capped};
pub use super::online::{RowGrad, RowStats};
use super::rows_mut;
use crate::float::Float;
use crate::isa::{isa_dispatch, Arith};

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
/// capped into `scratch` first; the tile itself is only read.
#[inline(always)]
fn fold_rows<T: Float, A: Arith>(
    tile: &[T],
    kb: usize,
    c0: usize,
    stats: &mut [RowStats],
    o: TileOpts<'_, T>,
    scratch: &mut Vec<T>,
    a: A,
) {
    for (row, st) in super::rows(tile, kb).zip(stats.iter_mut()) {
        if st.target.is_none() {
            continue;
        }
        st.fold(
            capped(row, o.softcap, scratch),
            c0,
            o.weight,
            o.smoothing,
            a,
        );
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
                    *g = r.at(a.exp_nonpos(*g - r.m), wj);
                }
            }
            (None, None) => {
                for g in row.iter_mut() {
                    *g = r.at(a.exp_nonpos(*g - r.m), T::ONE);
                }
            }
            (Some(c), w) => {
                // tanh does not vectorize anyway; one loop caps, differentiates and scales.
                let (ct, inv_c) = (T::from_f64(c), T::from_f64(1.0 / c));
                for (j, g) in row.iter_mut().enumerate() {
                    let z = cap_one(*g, ct);
                    let wj = w.map_or(T::ONE, |w| w[j]);
                    let mut d = r.at(a.exp_nonpos(z - r.m), wj);
                    if local_t == Some(j) {
                        d = r.target_value(d);
                    }
                    *g = d * cap_slope(z, inv_c);
                }
                continue;
            }
        }
        r.set_target(row, c0);
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
