//! Rows too few to keep the threads busy and long enough to cut (a single row of a million
//! classes): [`crate::ops::row_map`] and [`crate::ops::multiclass_loss`] (cross-entropy on
//! class indices) hand such arrays here. Each row is cut into segments of
//! `SEGMENT` elements; the segments' maxima and exp-sums are computed in parallel and combined
//! in segment order (rescaled to the row's maximum, in `f64`), then the segments of the
//! output are written in parallel. Cross-entropy folds and differentiates its segments with
//! the tile kernels of the fused linear cross-entropy ([`crate::kernels::linear`]). An output
//! written over its input (`out=x`) is read and overwritten segment by segment, each by its own
//! thread, with no copy of the row. Segments depend only on the row length, so results are
//! the same for any thread count; they can differ from the unsplit path in the last bits,
//! since the exp-sum is grouped differently.

use rayon::prelude::*;

use crate::float::Float;
use crate::kernels::cross_entropy::CeOptions;
use crate::kernels::linear::{fold_tile, grad_tile, RowStats, TileOpts};
use crate::kernels::softmax::{exp_scaled, segment_sums};
use crate::ops::{RowMap, Upstream};
use crate::pool::{in_pool, should_stop};
use crate::strided::View;

/// Elements per segment: 128 KiB of float32, which stays in L2 between the two sweeps.
const SEGMENT: usize = 1 << 15;
/// Arrays with fewer rows than this are split within their rows (more rows already spread
/// over the threads whole).
const MAX_ROWS: usize = 4;

/// Whether `n` rows of `k` elements take this path (a function of the shape alone).
pub fn applies(n: usize, k: usize) -> bool {
    n < MAX_ROWS && k >= 2 * SEGMENT
}

/// Runs `f` on each segment (with its index) in parallel on the pool, results in order.
fn per_segment<R: Send>(len: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    let count = len.div_ceil(SEGMENT);
    in_pool(|threads| {
        if threads == 1 {
            (0..count).map(&f).collect()
        } else {
            (0..count).into_par_iter().map(&f).collect()
        }
    })
}

/// The row's maximum and its `Σ exp(x - max)` from its segments', combined in order.
fn combine<T: Float>(parts: &[(T, f64)]) -> (T, f64) {
    let m = parts
        .iter()
        .fold(T::NEG_INFINITY, |m, &(pm, _)| if pm > m { pm } else { m });
    // A segment of only -inf adds its 0 (or NaN) as is: exp(-inf - -inf) would be NaN.
    let s = parts.iter().fold(0.0, |s, &(pm, ps)| {
        s + if pm == T::NEG_INFINITY {
            ps
        } else {
            ps * (pm.to_f64() - m.to_f64()).exp()
        }
    });
    (m, s)
}

/// The address of row `r` when `out` is written over `x` itself (`out=x`, one contiguous row
/// of `T`): each segment is then read and overwritten in place by its own thread, instead of
/// the row being copied first on one thread (what `x`'s copy-on-read would do).
fn written_over<T: Float>(x: &View, out: Option<&View>, r: usize) -> Option<usize> {
    let p = out?.row_in_place::<T>(r)?;
    (x.row_in_place::<T>(r) == Some(p)).then_some(p as usize)
}

/// Row `r` of `x` as an address (not a pointer, so that segment closures can go to other
/// threads): `over` itself, or the row loaded into `scratch` when it must be.
///
/// # Safety
/// As for [`View::load`].
unsafe fn row_addr<T: Float>(
    x: &View,
    r: usize,
    over: Option<usize>,
    scratch: &mut Vec<T>,
) -> usize {
    match over {
        Some(p) => p,
        None => unsafe { x.load::<T>(r, r + 1, scratch) }.as_ptr() as usize,
    }
}

/// Segment `i` of the row of `k` elements at `addr`: its first column and its elements.
///
/// # Safety
/// `addr` must hold `k` valid `T` that nothing writes while the slice lives.
unsafe fn segment<'a, T>(addr: usize, k: usize, i: usize) -> (usize, &'a [T]) {
    let c0 = i * SEGMENT;
    (c0, unsafe {
        std::slice::from_raw_parts((addr as *const T).add(c0), SEGMENT.min(k - c0))
    })
}

/// `row_map` for the softmax family on rows that [`applies`] says to split.
pub fn row_map<T: Float>(map: RowMap, x: &View, out: &View) {
    let k = x.k();
    let (mut sx, mut so) = (Vec::new(), Vec::new());
    for r in 0..x.rows() {
        if should_stop() {
            return;
        }
        let over_x = written_over::<T>(x, Some(out), r);
        // SAFETY: as in `ops::row_map`: the views' memory is valid, one row at a time. With
        // `over_x` no segment of `xs` is made once the output is being written.
        unsafe {
            let xs = row_addr::<T>(x, r, over_x, &mut sx);
            let parts = per_segment(k, |i| segment_sums(segment::<T>(xs, k, i).1));
            let (m, s) = combine(&parts);
            match map {
                RowMap::LogSumExp => out.store::<T, _>(r, r + 1, &mut so, |o| {
                    // PyTorch's answer for an infinite maximum, as in `logsumexp_row`.
                    o[0] = if m.to_f64().is_infinite() {
                        let row = std::slice::from_raw_parts(xs as *const T, k);
                        if row.iter().any(|v| v.is_nan()) {
                            T::from_f64(f64::NAN)
                        } else {
                            m
                        }
                    } else {
                        T::from_f64(m.to_f64() + crate::math::ln_f64(s))
                    }
                }),
                RowMap::Softmax | RowMap::LogSoftmax => out.store::<T, _>(r, r + 1, &mut so, |o| {
                    let o_addr = o.as_mut_ptr() as usize;
                    let inv_s = T::from_f64(1.0 / s);
                    let ln_s = T::from_f64(crate::math::ln_f64(s));
                    per_segment(k, |i| {
                        let (c0, len) = (i * SEGMENT, SEGMENT.min(k - i * SEGMENT));
                        // SAFETY: segments are disjoint ranges of `o`, which this call owns.
                        let oi = std::slice::from_raw_parts_mut((o_addr as *mut T).add(c0), len);
                        // Over `x`: the segment's logits are `oi` itself (128 KiB, copied in L2).
                        let held;
                        let xi = match over_x {
                            Some(_) => {
                                held = oi.to_vec();
                                &held[..]
                            }
                            None => segment::<T>(xs, k, i).1,
                        };
                        if map == RowMap::Softmax {
                            exp_scaled(xi, m, inv_s, oi);
                        } else {
                            for (ov, &v) in oi.iter_mut().zip(xi) {
                                *ov = (v - m) - ln_s;
                            }
                        }
                    });
                }),
                RowMap::SoftmaxJacobian => unreachable!("k x k outputs are never this long"),
            }
        }
    }
}

/// Cross-entropy on class indices (already validated) for rows that [`applies`] says to
/// split: per-row losses into `losses`, `scale`-d gradients into `grad`; returns the sum of the
/// row losses, in row order. `uniform` is the gradient scale under a scalar upstream.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<T: Float>(
    x: &View,
    targets: &View,
    ignore_index: i64,
    o: &CeOptions<T>,
    upstream: Upstream<'_>,
    uniform: f64,
    losses: Option<&View>,
    grad: Option<&View>,
) -> f64 {
    let k = x.k();
    let opts = |c0: usize, len: usize| TileOpts {
        weight: o.weight.as_deref().map(|w| &w[c0..c0 + len]),
        softcap: o.softcap,
        smoothing: o.label_smoothing > 0.0,
    };
    let (mut sx, mut si, mut su, mut sl, mut sg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut total = 0.0;
    for r in 0..x.rows() {
        if should_stop() {
            return f64::NAN;
        }
        let over_x = written_over::<T>(x, grad, r);
        // SAFETY: as in `row_map`. With `over_x` no segment of `xs` is made once the gradient
        // pass starts, which reaches that memory only through `g`.
        unsafe {
            let t = targets.load_index(r, r + 1, &mut si)[0];
            let target = (t != ignore_index).then_some(t as usize);
            let xs = row_addr::<T>(x, r, over_x, &mut sx);
            let parts = per_segment(k, |i| {
                let (c0, seg) = segment::<T>(xs, k, i);
                let mut st = [RowStats::new(target)];
                fold_tile(
                    seg,
                    seg.len(),
                    c0,
                    &mut st,
                    opts(c0, seg.len()),
                    &mut Vec::new(),
                );
                st[0]
            });
            let mut stats = RowStats::new(target);
            for p in &parts {
                stats.absorb(p);
            }
            let scale = match upstream {
                Upstream::PerRow(u) => u.load::<f64>(r, r + 1, &mut su)[0],
                Upstream::Scalar(_) => uniform,
            };
            let (loss, rg) = stats.finish(o, k, scale);
            total += loss;
            if let Some(lv) = losses {
                lv.store::<f64, _>(r, r + 1, &mut sl, |l| l[0] = loss);
            }
            if let Some(gv) = grad {
                gv.store::<T, _>(r, r + 1, &mut sg, |g| {
                    let g_addr = g.as_mut_ptr() as usize;
                    per_segment(k, |i| {
                        let (c0, len) = (i * SEGMENT, SEGMENT.min(k - i * SEGMENT));
                        // SAFETY: segments are disjoint ranges of `g`, which this call owns.
                        let gi = std::slice::from_raw_parts_mut((g_addr as *mut T).add(c0), len);
                        if over_x.is_none() {
                            gi.copy_from_slice(segment::<T>(xs, k, i).1);
                        }
                        grad_tile(gi, len, c0, &[rg], opts(c0, len));
                    });
                });
            }
        }
    }
    total
}
