//! The elementwise binary cross-entropies over whole arrays (on probabilities and on logits,
//! with the gradient for logits), block by block on the kernels of [`crate::kernels::binary`].

use super::{block_scale, check_out, pieces, Reduction, Scale, Src, Upstream};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels::binary;
use crate::pool::{for_blocks_with, ordered_sum, BLOCK_ELEMS};
use crate::strided::{View, ViewMut};

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
    if k > BLOCK_ELEMS {
        // Rows longer than a block would each be one block: one thread, and scratch of a
        // row's length. Elementwise, the same elements as rows of one element are cut into
        // blocks of `BLOCK_ELEMS` (the same flat order, so positions in errors hold).
        let input = match a.input {
            Src::View(v) => Some(v.elements()),
            Src::Out => None,
        };
        let (target, weight) = (a.target.elements(), a.weight.map(View::elements));
        let pos_weight = a.pos_weight.map(View::elements);
        let per_element = match upstream {
            Upstream::PerRow(u) => Some(u.elements()),
            Upstream::Scalar(_) => None,
        };
        let upstream = per_element.as_ref().map_or(upstream, Upstream::PerRow);
        let args = BinaryArgs {
            input: input.as_ref().map_or(Src::Out, Src::View),
            target: &target,
            weight: weight.as_ref(),
            pos_weight: pos_weight.as_ref(),
            shape: a.shape,
        };
        let mut losses = losses.map(ViewMut::elements);
        let mut grad = grad.map(ViewMut::elements);
        return binary_loss::<T>(
            isa,
            logits,
            args,
            reduction,
            upstream,
            losses.as_mut(),
            grad.as_mut(),
        );
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
            let [sx, sy, sw, sp, su, sg] = &mut s;
            let xs = a.input.load::<T>(r.clone(), g_piece.as_ref(), sx);
            let ys = a.target.load::<T>(r.start, r.end, sy);
            let ws = a.weight.map(|w| w.load::<T>(r.start, r.end, sw));
            let ps = a.pos_weight.map(|p| p.load::<T>(r.start, r.end, sp));
            // The kernels return the block's sum and write its losses only for "none".
            let kernel = |out: Option<&mut [f64]>, g: Option<(&mut [T], Scale<'_, T>)>| {
                if logits {
                    Ok(binary::bce_with_logits(isa, xs, ys, ws, ps, out, g))
                } else {
                    binary::bce(isa, xs, ys, ws, out)
                }
            };
            let with_losses = |g: Option<(&mut [T], Scale<'_, T>)>| match l_piece {
                Some(mut lp) => lp.store::<f64, _>(&mut sl, |l| kernel(Some(l), g)),
                None => kernel(None, g),
            };
            let sum = match g_piece.as_mut() {
                Some(gp) => {
                    let scale = block_scale(upstream, uniform, r.clone(), su);
                    gp.store::<T, _>(sg, |g| with_losses(Some((g, scale))))
                }
                None => with_losses(None),
            };
            sum.map_err(|i| (r.start * k + i, xs[i].to_f64()))
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
    Ok(reduction.finish(ordered_sum(sums), count))
}
