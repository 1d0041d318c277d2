//! The elementwise binary cross-entropies over whole arrays (on probabilities and on logits,
//! with the gradient for logits), block by block on the kernels of [`crate::kernels::binary`].

use super::{block_scale, check_out, pieces, Reduction, Src, Upstream};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels::binary;
use crate::pool::{for_blocks_with, ordered_sum};
use crate::strided::{View, ViewMut};

/// The sum of a block's losses in eight interleaved partial sums, added pairwise at the end:
/// a fixed order (the same on every instruction set and thread count) whose adds do not wait
/// on each other, where one running sum waited four cycles an element.
fn lane_sum(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a += b;
        }
    }
    for (a, &b) in acc.iter_mut().zip(chunks.remainder()) {
        *a += b;
    }
    let [a, b, c, d, e, f, g, h] = acc;
    ((a + b) + (c + d)) + ((e + f) + (g + h))
}

/// Operands of an elementwise binary loss: all views share rows and row length (the binding
/// broadcasts `weight` and `pos_weight` by zero strides). `shape` is the input's shape.
#[derive(Clone, Copy, Debug)]
pub struct BinaryArgs<'a> {
    pub input: Src<'a>,
    pub target: &'a View<'a>,
    pub weight: Option<&'a View<'a>>,
    pub pos_weight: Option<&'a View<'a>>,
    pub shape: &'a [usize],
}

/// Binary cross-entropy: on probabilities (`logits = false`) or logits. Writes per-element
/// losses into `losses` (`"none"`) and, for logits, `scale * d loss / d x` into `grad`.
/// Returns the reduced loss (NaN for `"none"`).
pub fn binary_loss<T: Float>(
    isa: Level,
    logits: bool,
    a: BinaryArgs<'_>,
    reduction: Reduction,
    upstream: Upstream<'_>,
    losses: Option<&mut ViewMut<'_>>,
    grad: Option<&mut ViewMut<'_>>,
) -> Result<f64> {
    let (n, k) = a.input.check(grad.as_deref())?;
    for v in [Some(a.target), a.weight, a.pos_weight]
        .into_iter()
        .flatten()
    {
        if (v.rows(), v.k()) != (n, k) {
            return Err(Error::Shape(
                "binary loss operands must match the input".into(),
            ));
        }
    }
    for o in [grad.as_deref(), losses.as_deref()].into_iter().flatten() {
        check_out("output", o, n, k)?;
    }
    let count = (n * k) as f64;
    let uniform = reduction.uniform_scale(upstream, count);
    let blocks = pieces(grad, n, k).zip(pieces(losses, n, k));
    let parts = for_blocks_with(
        n,
        k,
        blocks,
        |r, (mut g_piece, l_piece)| -> std::result::Result<f64, (usize, f64)> {
            let mut s: [Vec<T>; 6] = Default::default();
            let mut sl = Vec::new();
            let mut out = vec![0.0f64; r.len() * k];
            let [sx, sy, sw, sp, su, sg] = &mut s;
            let xs = a.input.load::<T>(r.clone(), g_piece.as_ref(), sx);
            let ys = a.target.load::<T>(r.start, r.end, sy);
            let ws = a.weight.map(|w| w.load::<T>(r.start, r.end, sw));
            let ps = a.pos_weight.map(|p| p.load::<T>(r.start, r.end, sp));
            if logits {
                match g_piece.as_mut() {
                    Some(gp) => {
                        let scale = block_scale(upstream, uniform, r.clone(), su);
                        gp.store::<T, _>(sg, |g| {
                            binary::bce_with_logits(isa, xs, ys, ws, ps, &mut out, Some((g, scale)))
                        });
                    }
                    None => binary::bce_with_logits(isa, xs, ys, ws, ps, &mut out, None),
                }
            } else if let Err(i) = binary::bce(isa, xs, ys, ws, &mut out) {
                return Err((r.start * k + i, xs[i].to_f64()));
            }
            if let Some(mut lp) = l_piece {
                lp.store::<f64, _>(&mut sl, |l| l.copy_from_slice(&out));
            }
            Ok(lane_sum(&out))
        },
    );
    let mut sums = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Ok(s) => sums.push(s),
            Err((flat, value)) => {
                return Err(Error::Domain {
                    what: "input probabilities must be in [0, 1]",
                    value,
                    position: View::position(flat, a.shape),
                })
            }
        }
    }
    Ok(reduction.finish(ordered_sum(&sums), count))
}
