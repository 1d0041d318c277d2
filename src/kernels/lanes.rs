//! Rows as lanes: the statistics of rows shorter than one accumulator set ([`LANES`]
//! elements), [`ROW_LANES`] rows at a time, each row in one SIMD lane.
//!
//! A row of ten classes read as a vector is mostly padding, and its maximum and sum end in
//! horizontal reductions and scalar tails. Transposed, a block of 16 such rows is `k` vectors
//! whose `j`-th holds element `j` of every row: the maximum, the count of maxima, the exps and
//! the sum are then `k` full-width steps for 16 rows, and the `f64` logarithm runs over the 16
//! sums at once. Each lane does exactly the scalar arithmetic of [`super::small_rows_stats`]
//! for its row, in the same order (the maximum over `j`, then the sum of the rest from 0
//! upwards in `T`), so the two are bitwise equal; a test holds them to it.

use super::{ExpSum, LANES};
use crate::float::Float;
use crate::isa::Arith;
use crate::simd::MAX_K;
pub(crate) use crate::simd::ROW_LANES;

/// For rows of `k` elements, `0 < k < LANES`, held in `x` (at most `ms.len()` rows): each
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
    assert!(k > 0 && k < LANES.min(MAX_K), "rows of 1 to 15 elements");
    let blocks = x
        .chunks(ROW_LANES * k)
        .zip(ms.chunks_mut(ROW_LANES))
        .zip(ss.chunks_mut(ROW_LANES))
        .zip(ls.chunks_mut(ROW_LANES));
    // Lanes past a short last block's rows hold zeros or the previous block's rows: nothing
    // they compute traps or is written out.
    let mut xt = [[T::ZERO; ROW_LANES]; MAX_K];
    for (((xb, mb), sb), lb) in blocks {
        a.rows_to_lanes(xb, k, &mut xt);
        let xt = &xt[..k];
        let mut m = [T::NEG_INFINITY; ROW_LANES];
        for col in xt {
            for l in 0..ROW_LANES {
                m[l] = if col[l] > m[l] { col[l] } else { m[l] };
            }
        }
        let (mut count, mut rest) = ([0u32; ROW_LANES], [T::ZERO; ROW_LANES]);
        for col in xt {
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
            let r = rest[l].to_f64();
            let s = f64::from(count[l]) + r;
            sums[l] = ExpSum {
                s,
                rest: if s < 2.0 { r } else { s },
            };
            lns[l] = sums[l].ln();
        }
        let rows = xb.len() / k;
        mb[..rows].copy_from_slice(&m[..rows]);
        sb[..rows].copy_from_slice(&sums[..rows]);
        lb[..rows].copy_from_slice(&lns[..rows]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{isa_dispatch, Level};
    use crate::kernels::softmax::tests::small_rows_cases;
    use crate::kernels::{small_rows_stats, SMALL_ROWS};
    use crate::simd::{rows_to_lanes, Lanes};

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

    isa_dispatch! {
        pub fn transpose[T: Float](block: &[T], k: usize, cols: &mut Lanes<T>) = transpose_with;
        pub fn both[T: Float](x: &[T], k: usize) -> [Stats<T>; 2] = both_with;
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
