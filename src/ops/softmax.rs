//! The softmax family over whole arrays: softmax, log-softmax, logsumexp and the Jacobian
//! row by row ([`row_map`]), and the backward passes of softmax and log-softmax
//! ([`softmax_backward`]). Blocks of rows run in parallel on the kernels of
//! [`crate::kernels::softmax`]; a few very long rows go to [`super::long_rows`].

use super::{check_out, long_rows, pieces, RowMap, Src};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels;
use crate::pool::for_blocks_with;
use crate::strided::{View, ViewMut};

/// Applies `map` to every row of `x`, writing `out` (same rows; row length per [`RowMap`]).
pub fn row_map<T: Float>(isa: Level, map: RowMap, x: Src<'_>, out: &mut ViewMut<'_>) -> Result<()> {
    let (n, k) = x.check(Some(out))?;
    check_out("out", out, n, map.out_k(k))?;
    if matches!(x, Src::Out) && map.out_k(k) != k {
        return Err(Error::Value(format!(
            "{map:?} cannot be written over its input"
        )));
    }
    if map != RowMap::SoftmaxJacobian && long_rows::applies(n, k) {
        long_rows::row_map::<T>(isa, map, x, out);
        return Ok(());
    }
    // The input and the output, or the one array written over itself.
    let arrays = if matches!(x, Src::Out) { 1 } else { 2 };
    let fetch = kernels::fetches_out::<T>(arrays, n, k);
    for_blocks_with(n, k, pieces(Some(out), n, k), |r, piece| {
        let mut piece = piece.expect("one piece per block");
        let (mut sx, mut so) = (Vec::new(), Vec::new());
        let xs = x.load::<T>(r, Some(&piece), &mut sx);
        piece.store::<T, _>(&mut so, |o| match map {
            RowMap::Softmax => kernels::softmax::softmax(isa, xs, k, o, fetch),
            RowMap::LogSoftmax => kernels::softmax::log_softmax(isa, xs, k, o, fetch),
            RowMap::SoftmaxJacobian => kernels::softmax::softmax_jacobian(isa, xs, k, o),
            RowMap::LogSumExp => kernels::softmax::logsumexp(isa, xs, k, o),
        });
    });
    Ok(())
}

/// The backward pass of softmax (`log = false`: `y` is the softmax output) or of log-softmax
/// (`log = true`: `y` is the log-softmax output), given the upstream gradient `g`.
pub fn softmax_backward<T: Float>(
    isa: Level,
    log: bool,
    g: &View<'_>,
    y: &View<'_>,
    out: &mut ViewMut<'_>,
) -> Result<()> {
    let (n, k) = (g.rows(), g.k());
    check_out("output", out, y.rows(), y.k())?;
    check_out("out", out, n, k)?;
    for_blocks_with(n, k, pieces(Some(out), n, k), |r, piece| {
        let mut piece = piece.expect("one piece per block");
        let (mut sg, mut sy, mut so) = (Vec::new(), Vec::new(), Vec::new());
        let gs = g.load::<T>(r.start, r.end, &mut sg);
        let ys = y.load::<T>(r.start, r.end, &mut sy);
        piece.store::<T, _>(&mut so, |o| {
            if log {
                kernels::softmax::log_softmax_backward(isa, gs, ys, k, o)
            } else {
                kernels::softmax::softmax_backward(isa, gs, ys, k, o)
            }
        });
    });
    Ok(())
}
