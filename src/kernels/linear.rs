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

/// [`RowGrad`]s split into one array per coefficient, for tiles held class by class (one
/// class's logits over the block's rows contiguous), so the loop over a class's rows vectorizes.
pub struct ColumnGrad<T> {
    m: Vec<T>,
    inv_s: Vec<T>,
    ca: Vec<T>,
    cb: Vec<T>,
    live: Vec<bool>,
}

impl<T: Float> ColumnGrad<T> {
    pub fn new(rows: &[RowGrad<T>]) -> ColumnGrad<T> {
        ColumnGrad {
            m: rows.iter().map(|r| r.m).collect(),
            inv_s: rows.iter().map(|r| r.inv_s).collect(),
            ca: rows.iter().map(|r| r.ca).collect(),
            cb: rows.iter().map(|r| r.cb).collect(),
            live: rows.iter().map(|r| r.target.is_some()).collect(),
        }
    }
}

/// [`grad_rows`] on a tile held class by class: `tile` holds classes `c0..` (`nb` rows each),
/// `o.weight` their weights. Every element gets the arithmetic `grad_rows` gives it, in the
/// same order, so the gradient is the same bit for bit.
#[inline(always)]
fn grad_cols<T: Float, A: Arith>(
    tile: &mut [T],
    nb: usize,
    c0: usize,
    c: &ColumnGrad<T>,
    rows: &[RowGrad<T>],
    o: TileOpts<'_, T>,
    a: A,
) {
    let kb = tile.len() / nb.max(1);
    // The targets' logits before the loops overwrite them.
    let targets: Vec<(usize, usize, T)> = rows
        .iter()
        .enumerate()
        .filter_map(|(r, g)| {
            let j = g.target?.checked_sub(c0).filter(|&j| j < kb)?;
            Some((r, j, tile[j * nb + r]))
        })
        .collect();
    let cap = o.softcap.map(|c| (T::from_f64(c), T::from_f64(1.0 / c)));
    let (m, inv_s, ca, cb, live) = (
        &c.m[..nb],
        &c.inv_s[..nb],
        &c.ca[..nb],
        &c.cb[..nb],
        &c.live[..nb],
    );
    for (j, col) in tile.chunks_exact_mut(nb.max(1)).enumerate() {
        let wj = o.weight.map_or(T::ONE, |w| w[j]);
        let rows = col.iter_mut().zip(m).zip(inv_s).zip(ca).zip(cb).zip(live);
        match cap {
            // PERF: one loop per case without per-element branches, so each vectorizes.
            None => {
                for (((((g, &m), &inv_s), &ca), &cb), &live) in rows {
                    let d = ca * (a.exp_nonpos(*g - m) * inv_s) - cb * wj;
                    *g = if live { d } else { T::ZERO };
                }
            }
            Some((ct, inv_c)) => {
                for (((((g, &m), &inv_s), &ca), &cb), &live) in rows {
                    let z = cap_one(*g, ct);
                    let d = ca * (a.exp_nonpos(z - m) * inv_s) - cb * wj;
                    *g = if live {
                        d * cap_slope(z, inv_c)
                    } else {
                        T::ZERO
                    };
                }
            }
        }
    }
    for (r, j, z) in targets {
        let g = &rows[r];
        let wj = o.weight.map_or(T::ONE, |w| w[j]);
        tile[j * nb + r] = match cap {
            None => g.target_value(g.at(a.exp_nonpos(z - g.m), wj)),
            Some((ct, inv_c)) => {
                let z = cap_one(z, ct);
                g.target_value(g.at(a.exp_nonpos(z - g.m), wj)) * cap_slope(z, inv_c)
            }
        };
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
    /// [`grad_tile`] of a tile held class by class (see `grad_cols`).
    pub fn grad_tile_t['w, T: Float](
        tile: &mut [T],
        nb: usize,
        c0: usize,
        c: &ColumnGrad<T>,
        rows: &[RowGrad<T>],
        o: TileOpts<'w, T>,
    ) = grad_cols;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{Isa, Level};
    use crate::kernels::online::tests::option_sets;

    /// A tile held class by class gets the gradient `grad_tile` gives the same tile held row
    /// by row, bit for bit: every option set and instruction set, ignored rows, targets in the
    /// block and outside it, a block that does not start at class 0.
    #[test]
    fn class_held_tiles_get_the_row_held_gradient() {
        let (nb, kb, c0) = (37, 21, 5);
        let v = c0 + kb + 3;
        let x = crate::testing::uniform(nb * kb, 0xC01, 8.0);
        let x: Vec<f32> = x.into_iter().map(|z| z as f32).collect();
        let targets: Vec<Option<usize>> = (0..nb)
            .map(|i| (i % 5 != 0).then_some((i * 7) % v))
            .collect();
        for isa in Isa::ALL {
            let level = Level::capped(isa);
            for o in option_sets(v) {
                let opts = TileOpts {
                    weight: o.weight.as_deref().map(|w| &w[c0..c0 + kb]),
                    softcap: o.softcap,
                    smoothing: o.label_smoothing > 0.0,
                };
                let rows: Vec<RowGrad<f32>> = x
                    .chunks(kb)
                    .zip(&targets)
                    .map(|(row, &t)| {
                        let mut st = [RowStats::new(t)];
                        fold_tile(level, row, kb, c0, &mut st, opts, &mut Vec::new());
                        st[0].finish(&o, v, 0.75).1
                    })
                    .collect();
                let mut want = x.clone();
                grad_tile(level, &mut want, kb, c0, &rows, opts);
                let mut got = vec![0f32; nb * kb];
                for (i, row) in x.chunks(kb).enumerate() {
                    for (j, &z) in row.iter().enumerate() {
                        got[j * nb + i] = z;
                    }
                }
                grad_tile_t(
                    level,
                    &mut got,
                    nb,
                    c0,
                    &ColumnGrad::new(&rows),
                    &rows,
                    opts,
                );
                for i in 0..nb {
                    for j in 0..kb {
                        let (g, w) = (got[j * nb + i], want[i * kb + j]);
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{isa:?} row {i} class {j}: {g} vs {w}, {o:?}"
                        );
                    }
                }
            }
        }
    }
}
