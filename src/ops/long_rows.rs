//! The strategy for rows too few to keep the threads busy and long enough to cut (a single
//! row of a million classes): [`super::row_map`] and [`super::multiclass_loss`]
//! (cross-entropy on class indices) hand such arrays here; this module uses only the shared
//! types of [`super`]. Each row is cut into segments of `SEGMENT` elements; the segments'
//! maxima and exp-sums are computed in parallel and combined in segment order (rescaled to the
//! row's maximum, in `f64`), then the segments of the output are written in parallel.
//! Cross-entropy folds and differentiates its segments with the tile kernels of the fused
//! linear cross-entropy ([`crate::kernels::linear`]). An output written over its input
//! (`out=x`) is read and overwritten segment by segment, each by its own thread, with no copy
//! of the row. Segments depend only on the row length, so results are the same for any thread
//! count; they can differ from the unsplit path in the last bits, since the exp-sum is grouped
//! differently.

use rayon::prelude::*;

use super::{RowMap, Src, Upstream};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels::cross_entropy::CeOptions;
use crate::kernels::linear::{fold_tile, grad_tile, RowStats, TileOpts};
use crate::kernels::softmax::{exp_scaled, lse_of, segment_sums};
use crate::kernels::ExpSum;
use crate::pool::{in_pool, should_stop};
use crate::strided::{View, ViewMut};

/// Elements per segment: 128 KiB of float32, which stays in L2 between the two sweeps.
pub(crate) const SEGMENT: usize = 1 << 15;
/// Arrays with fewer rows than this are split within their rows (more rows already spread
/// over the threads whole).
const MAX_ROWS: usize = 4;

/// Whether `n` rows of `k` elements take this path (a function of the shape alone).
pub fn applies(n: usize, k: usize) -> bool {
    n < MAX_ROWS && k >= 2 * SEGMENT
}

/// `f(i, segment i of row)` for every segment, in parallel on the pool; results in order.
fn per_segment<T: Float, R: Send>(row: &[T], f: impl Fn(usize, &[T]) -> R + Sync + Send) -> Vec<R> {
    in_pool(|threads| {
        if threads == 1 {
            row.chunks(SEGMENT)
                .enumerate()
                .map(|(i, s)| f(i, s))
                .collect()
        } else {
            row.par_chunks(SEGMENT)
                .enumerate()
                .map(|(i, s)| f(i, s))
                .collect()
        }
    })
}

/// `f(i, segment i of row)` for every segment, each written by one thread.
fn per_segment_mut<T: Float>(row: &mut [T], f: impl Fn(usize, &mut [T]) + Sync + Send) {
    in_pool(|threads| {
        if threads == 1 {
            row.chunks_mut(SEGMENT)
                .enumerate()
                .for_each(|(i, s)| f(i, s));
        } else {
            row.par_chunks_mut(SEGMENT)
                .enumerate()
                .for_each(|(i, s)| f(i, s));
        }
    })
}

/// The input's segment `i` of `len` elements: from `xs` when the input is a separate row,
/// otherwise the output segment's own values, copied into `held` (128 KiB, in L2) before the
/// segment is overwritten.
fn input_segment<'s, T: Float>(
    xs: Option<&'s [T]>,
    i: usize,
    out: &[T],
    held: &'s mut Vec<T>,
) -> &'s [T] {
    match xs {
        Some(xs) => &xs[i * SEGMENT..i * SEGMENT + out.len()],
        None => {
            held.clear();
            held.extend_from_slice(out);
            held
        }
    }
}

/// The row's maximum and its sums of `exp(x - max)` from its segments', combined in order.
fn combine<T: Float>(parts: &[(T, ExpSum)]) -> (T, ExpSum) {
    let m = parts
        .iter()
        .fold(T::NEG_INFINITY, |m, &(pm, _)| if pm > m { pm } else { m });
    // A segment of only -inf adds its 0 (or NaN) as is: exp(-inf - -inf) would be NaN. A
    // segment holding the maximum keeps its exact one apart from its rest.
    let s = parts.iter().fold(ExpSum::ZERO, |s, &(pm, ps)| {
        s.plus(if pm == T::NEG_INFINITY || pm == m {
            ps
        } else {
            ps.rescaled((pm.to_f64() - m.to_f64()).exp())
        })
    });
    (m, s)
}

/// The softmax family on one row: reads `xs` (or `o` itself when `xs` is `None`: in place)
/// and writes `o` (one element for logsumexp, `k` otherwise).
fn map_row<T: Float>(isa: Level, map: RowMap, xs: Option<&[T]>, o: &mut [T]) {
    let (m, s) = combine(&per_segment(xs.unwrap_or(o), |_, seg| {
        segment_sums(isa, seg)
    }));
    match map {
        RowMap::LogSumExp => {
            let row = xs.unwrap_or(o);
            o[0] = T::from_f64(lse_of(row, m, s.ln::<T>()));
        }
        RowMap::Softmax | RowMap::LogSoftmax => {
            let inv_s = T::from_f64(1.0 / s.s);
            let ln_s = T::from_f64(s.ln::<T>());
            per_segment_mut(o, |i, oi| {
                let mut held = Vec::new();
                let xi = input_segment(xs, i, oi, &mut held);
                if map == RowMap::Softmax {
                    exp_scaled(isa, xi, m, inv_s, oi);
                } else {
                    for (ov, &v) in oi.iter_mut().zip(xi) {
                        *ov = (v - m) - ln_s;
                    }
                }
            });
        }
        RowMap::SoftmaxJacobian => unreachable!("k x k outputs are never this long"),
    }
}

/// `row_map` for the softmax family on rows that [`applies`] says to split.
pub fn row_map<T: Float>(isa: Level, map: RowMap, x: Src<'_>, out: &mut ViewMut<'_>) {
    let (mut sx, mut so) = (Vec::new(), Vec::new());
    let n = out.rows();
    let mut all = out.all();
    for r in 0..n {
        if should_stop() {
            return;
        }
        let mut row = all.sub(r..r + 1);
        match x {
            Src::View(v) => {
                let xs = v.load::<T>(r, r + 1, &mut sx);
                row.store::<T, _>(&mut so, |o| map_row(isa, map, Some(xs), o));
            }
            // Written over its input: each segment is read and overwritten in place by its own
            // thread, instead of the row being copied first on one thread.
            Src::Out => row.update::<T, _>(&mut so, |o| map_row(isa, map, None, o)),
        }
    }
}

/// The loss of one row (read from `xs`, or from `g` itself when `xs` is `None`) and, when `g`
/// is given, `scale * d loss / d x` written into it.
fn ce_row<T: Float>(
    isa: Level,
    xs: Option<&[T]>,
    g: Option<&mut [T]>,
    target: Option<usize>,
    o: &CeOptions<T>,
    scale: f64,
) -> f64 {
    let opts = |c0: usize, len: usize| TileOpts {
        weight: o.weight.as_deref().map(|w| &w[c0..c0 + len]),
        softcap: o.softcap,
        smoothing: o.label_smoothing > 0.0,
    };
    let row = match (xs, &g) {
        (Some(xs), _) => xs,
        (None, Some(g)) => &g[..],
        (None, None) => unreachable!("an in-place row has its gradient"),
    };
    let k = row.len();
    let parts = per_segment(row, |i, seg| {
        let c0 = i * SEGMENT;
        let mut st = [RowStats::new(target)];
        fold_tile(
            isa,
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
    let (loss, rg) = stats.finish(o, k, scale);
    if let Some(g) = g {
        per_segment_mut(g, |i, gi| {
            let c0 = i * SEGMENT;
            if let Some(xs) = xs {
                gi.copy_from_slice(&xs[c0..c0 + gi.len()]);
            }
            grad_tile(isa, gi, gi.len(), c0, &[rg], opts(c0, gi.len()));
        });
    }
    loss
}

/// Cross-entropy on class indices (already validated) for rows that [`applies`] says to
/// split: per-row losses into `losses`, `scale`-d gradients into `grad`; returns the sum of the
/// row losses, in row order. `uniform` is the gradient scale under a scalar upstream.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<T: Float>(
    isa: Level,
    x: Src<'_>,
    targets: &View<'_>,
    ignore_index: i64,
    o: &CeOptions<T>,
    upstream: Upstream<'_>,
    uniform: f64,
    losses: Option<&mut ViewMut<'_>>,
    grad: Option<&mut ViewMut<'_>>,
) -> f64 {
    let (mut sx, mut si, mut su, mut sl, mut sg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let n = targets.rows();
    let mut grad = grad.map(|g| g.all());
    let mut losses = losses.map(|l| l.all());
    let mut total = 0.0;
    for r in 0..n {
        if should_stop() {
            return f64::NAN;
        }
        let t = targets.load_index(r, r + 1, &mut si)[0];
        let target = (t != ignore_index).then_some(t as usize);
        let scale = match upstream {
            Upstream::PerRow(u) => u.load::<f64>(r, r + 1, &mut su)[0],
            Upstream::Scalar(_) => uniform,
        };
        let mut g_row = grad.as_mut().map(|g| g.sub(r..r + 1));
        let loss = match (x, g_row.as_mut()) {
            (Src::View(v), Some(gr)) => {
                let xs = v.load::<T>(r, r + 1, &mut sx);
                gr.store::<T, _>(&mut sg, |g| {
                    ce_row(isa, Some(xs), Some(g), target, o, scale)
                })
            }
            (Src::View(v), None) => ce_row(
                isa,
                Some(v.load::<T>(r, r + 1, &mut sx)),
                None,
                target,
                o,
                scale,
            ),
            // Written over its logits: each segment is folded, then overwritten by its
            // gradient, in place on its own thread (no copy of the row).
            (Src::Out, Some(gr)) => {
                gr.update::<T, _>(&mut sg, |g| ce_row(isa, None, Some(g), target, o, scale))
            }
            (Src::Out, None) => unreachable!("ops::Src::check gives an in-place input its output"),
        };
        total += loss;
        if let Some(l) = losses.as_mut() {
            l.sub(r..r + 1).store::<f64, _>(&mut sl, |l| l[0] = loss);
        }
    }
    total
}
