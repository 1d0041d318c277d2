//! Fused linear cross-entropy: the loss of `logits = hidden @ weight.T (+ bias)` and its
//! gradients with respect to `hidden`, `weight` and `bias`, without ever holding the `N x V`
//! logits (a language model's 4096 x 128256 float32 logits are 2.1 GB, their gradient as much).
//!
//! Rows are cut into blocks of `ROW_BLOCK` and classes into blocks of `VOCAB_BLOCK` (half that
//! in the forward sweep); a tile of logits per thread (one row block against one class block,
//! 2 or 4 MiB in float32) is all the scratch there is. For each row block:
//!
//! 1. Forward sweep: the class blocks are spread over the threads; each thread computes a
//!    block's tile with one GEMM (the `gemm` crate) and folds it into per-row max, exp-sum and
//!    target logit of that block ([`crate::kernels::linear`]), and the blocks' row statistics
//!    are then combined in class order. After the last class block each row's loss is final.
//! 2. Backward sweep (the `_and_grad` form only): each tile is recomputed, turned into the
//!    gradient of the logits in place, and two more GEMMs add `G @ W_j` into `d_hidden` and
//!    `G^T @ H_i` into `d_weight`'s rows of class block `j`; its column sums go into `d_bias`.
//!
//! The loss alone costs one GEMM's work; loss and gradients cost four (forward, recompute,
//! `d_hidden`, `d_weight`) against the materialized path's three, in exchange for memory that
//! does not grow with `N` or `V`.
//!
//! Determinism: every accumulation (the forward's row statistics over class blocks, `d_hidden`
//! over class blocks, `d_weight` and `d_bias` over row blocks, the loss over rows) runs in a
//! fixed order, and each product is split into pieces of output that depend only on its shape
//! (run in parallel, or one after another by one thread), so the results are bitwise identical
//! for any thread count (tested).

use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::linear::{fold_tile, grad_tile, RowStats, TileOpts};
use crate::ops::{CeOptions, Reduction};
use crate::pool::{in_pool, should_stop};

/// Rows per block: the GEMMs' `M` (forward, `d_hidden`) and `K` (`d_weight`).
const ROW_BLOCK: usize = 512;
/// Classes per block: with `ROW_BLOCK`, a float32 tile of 4 MiB.
const VOCAB_BLOCK: usize = 2048;
/// Classes per block of the forward sweep, which has one tile per thread: half the backward's,
/// so that two threads' tiles hold what one backward tile holds.
const FORWARD_BLOCK: usize = VOCAB_BLOCK / 2;
/// Class blocks per wave of the forward sweep: the caller checks for an interrupt between
/// waves (a block is tens of milliseconds of GEMM).
const WAVE_BLOCKS: usize = 8;

/// The operands, as contiguous row-major slices in the compute type.
#[derive(Clone, Copy, Debug)]
pub struct LinearCe<'a, T> {
    /// `n x d`.
    pub hidden: &'a [T],
    /// `v x d`, as `nn.Linear` stores it.
    pub weight: &'a [T],
    /// `v` values, or `None`.
    pub bias: Option<&'a [T]>,
    /// `n` class indices.
    pub targets: &'a [i64],
    pub ignore_index: i64,
    pub n: usize,
    pub d: usize,
    pub v: usize,
    /// Class weights, smoothing, z-loss and soft cap, as for `cross_entropy`.
    pub opts: &'a CeOptions<T>,
}

/// The upstream gradient: a scalar for `"mean"`/`"sum"`, one value per row for `"none"`.
#[derive(Clone, Copy, Debug)]
pub enum LinUpstream<'a> {
    Scalar(f64),
    PerRow(&'a [f64]),
}

/// Where the gradients go (`n x d`, `v x d`, `v`); every element is written.
#[derive(Debug)]
pub struct LinearGrads<'a, T> {
    pub d_hidden: &'a mut [T],
    pub d_weight: &'a mut [T],
    pub d_bias: Option<&'a mut [T]>,
}

/// Columns (or rows, for narrow products) per piece of a product: see [`Product::run`].
const PIECE: usize = 256;

/// `dst (m x n, row stride dst_rs) = [dst +] lhs (m x k) @ rhs (k x n)`, strides in elements.
struct Product<'a, T> {
    m: usize,
    n: usize,
    k: usize,
    lhs: (&'a [T], isize, isize),
    rhs: (&'a [T], isize, isize),
}

impl<T: Float> Product<'_, T> {
    /// Runs the product as independent pieces of `PIECE` output columns (rows when the
    /// product is narrow), each a single-threaded gemm call, spread over the pool. Pieces
    /// depend only on the shape, so results do not depend on the thread count; splitting by
    /// columns costs no repacking (each piece packs only its own part of `rhs`); and each
    /// thread's gemm scratch has the same size call after call, so the allocator reuses it
    /// (gemm's own multi-threaded mode grew the resident set by tens of MiB).
    fn run(&self, dst: &mut [T], dst_rs: isize, accumulate: bool) {
        self.run_pieces(dst, dst_rs, accumulate, true)
    }

    /// [`Product::run`]'s pieces one after another on this thread: the same bits.
    fn run_here(&self, dst: &mut [T], dst_rs: isize, accumulate: bool) {
        self.run_pieces(dst, dst_rs, accumulate, false)
    }

    fn run_pieces(&self, dst: &mut [T], dst_rs: isize, accumulate: bool, parallel: bool) {
        if self.k == 0 {
            if !accumulate {
                dst.fill(T::ZERO); // gemm leaves dst alone for an empty inner dimension
            }
            return;
        }
        let by_columns = self.n >= 2 * PIECE || self.m < 2 * PIECE;
        let (len, pieces) = if by_columns {
            (self.n, self.n.div_ceil(PIECE))
        } else {
            (self.m, self.m.div_ceil(PIECE))
        };
        let dst_addr = dst.as_mut_ptr() as usize;
        let piece = |i: usize| {
            let (p0, p1) = (i * PIECE, ((i + 1) * PIECE).min(len));
            let (lhs, lhs_rs, lhs_cs) = self.lhs;
            let (rhs, rhs_rs, rhs_cs) = self.rhs;
            let (m, n, dst_off, lhs_off, rhs_off) = if by_columns {
                (self.m, p1 - p0, p0 as isize, 0, p0 as isize * rhs_cs)
            } else {
                (
                    p1 - p0,
                    self.n,
                    p0 as isize * dst_rs,
                    p0 as isize * lhs_rs,
                    0,
                )
            };
            let alpha = if accumulate { T::ONE } else { T::ZERO };
            // SAFETY: the callers pass slices that cover every element the shapes and strides
            // reach (sizes checked by `linear_cross_entropy` before any product runs); pieces
            // write disjoint columns (or rows) of `dst`, which the caller borrows mutably.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    self.k,
                    (dst_addr as *mut T).offset(dst_off),
                    1,
                    dst_rs,
                    accumulate,
                    lhs.as_ptr().offset(lhs_off),
                    lhs_cs,
                    lhs_rs,
                    rhs.as_ptr().offset(rhs_off),
                    rhs_cs,
                    rhs_rs,
                    alpha,
                    T::ONE,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        if !parallel {
            return (0..pieces).for_each(piece);
        }
        in_pool(|threads| {
            if threads == 1 || pieces == 1 {
                (0..pieces).for_each(piece);
            } else {
                (0..pieces).into_par_iter().for_each(piece);
            }
        })
    }
}

/// Runs `f` on consecutive groups of tile rows, each with its rows' entries of `items`, in
/// parallel (any split gives the same result: rows are independent).
fn for_tile_rows<T: Float, I: Send>(
    tile: &mut [T],
    kb: usize,
    items: &mut [I],
    f: impl Fn(&mut [T], &mut [I]) + Sync + Send,
) {
    let rows = items.len();
    in_pool(|threads| {
        if threads == 1 || rows < 2 {
            return f(tile, items);
        }
        let per = rows.div_ceil(threads * 4);
        tile.par_chunks_mut(per * kb)
            .zip(items.par_chunks_mut(per))
            .for_each(|(t, it)| f(t, it));
    });
}

/// Visits the class blocks of one row block (`nb` rows) in order: each block's logits are
/// computed into `tile`, which is handed to `f` with the block's first class, width and tile
/// options. False when interrupted (see [`crate::pool::interruptible`]).
fn sweep<'o, T: Float>(
    tile: &mut [T],
    nb: usize,
    v: usize,
    logits: &impl Fn(&mut [T], usize, usize),
    opts: &impl Fn(usize, usize) -> TileOpts<'o, T>,
    mut f: impl FnMut(&mut [T], usize, usize, TileOpts<'o, T>),
) -> bool {
    for c0 in (0..v).step_by(VOCAB_BLOCK) {
        if should_stop() {
            return false;
        }
        let kb = VOCAB_BLOCK.min(v - c0);
        let t = &mut tile[..nb * kb];
        logits(t, c0, kb);
        f(t, c0, kb, opts(c0, kb));
    }
    true
}

fn check<T>(what: &str, s: &[T], want: usize) -> Result<()> {
    if s.len() != want {
        return Err(Error::Shape(format!(
            "{what}: expected {want} elements, got {}",
            s.len()
        )));
    }
    Ok(())
}

/// The loss of `hidden @ weight.T + bias` against class-index targets, reduced as asked; per-row
/// losses go into `losses` (for `"none"`) and the gradients, scaled by `upstream`, into `grads`.
/// Every target is validated (and the operands' sizes checked) before anything is written.
/// Returns the reduced loss (NaN for `"none"`, or when interrupted, see [`crate::pool`]).
pub fn linear_cross_entropy<T: Float>(
    a: &LinearCe<'_, T>,
    reduction: Reduction,
    upstream: LinUpstream<'_>,
    mut losses: Option<&mut [f64]>,
    mut grads: Option<LinearGrads<'_, T>>,
) -> Result<f64> {
    let (n, d, v) = (a.n, a.d, a.v);
    check("hidden", a.hidden, n * d)?;
    check("weight", a.weight, v * d)?;
    check("targets", a.targets, n)?;
    if let Some(b) = a.bias {
        check("bias", b, v)?;
    }
    if let Some(w) = &a.opts.weight {
        check("class_weight", w, v)?;
    }
    if let Some(l) = losses.as_deref() {
        check("losses", l, n)?;
    }
    if let LinUpstream::PerRow(u) = upstream {
        check("grad_output", u, n)?;
    }
    if let Some(g) = grads.as_ref() {
        check("d_hidden", g.d_hidden, n * d)?;
        check("d_weight", g.d_weight, v * d)?;
        if let Some(db) = g.d_bias.as_deref() {
            check("d_bias", db, v)?;
        }
    }
    let mut denominator = 0.0;
    for (i, &t) in a.targets.iter().enumerate() {
        if t == a.ignore_index {
            continue;
        }
        if t < 0 || t as u64 >= v as u64 {
            return Err(Error::ClassIndex {
                index: t,
                position: vec![i],
                classes: v,
            });
        }
        denominator += a
            .opts
            .weight
            .as_ref()
            .map_or(1.0, |w| w[t as usize].to_f64());
    }
    let uniform = match (reduction, upstream) {
        (Reduction::Mean, LinUpstream::Scalar(g)) => g / denominator,
        (_, LinUpstream::Scalar(g)) => g,
        (_, LinUpstream::PerRow(_)) => f64::NAN,
    };
    let eps = a.opts.label_smoothing;
    let mut d_bias = grads
        .as_ref()
        .and_then(|g| g.d_bias.as_ref())
        .map(|_| vec![0.0f64; v]);
    if let Some(g) = grads.as_mut() {
        // Blocks that never run leave these empty sums.
        if n == 0 {
            g.d_weight.fill(T::ZERO);
        }
        if v == 0 {
            g.d_hidden.fill(T::ZERO);
        }
    }

    // One forward tile per thread; the first is also the backward sweep's, wider.
    let rows = ROW_BLOCK.min(n);
    let tiles: Vec<Mutex<Vec<T>>> = (0..in_pool(|threads| threads))
        .map(|i| {
            let width = if i == 0 && grads.is_some() {
                VOCAB_BLOCK
            } else {
                FORWARD_BLOCK
            };
            Mutex::new(vec![T::ZERO; rows * width.min(v)])
        })
        .collect();
    let mut total = 0.0;
    for r0 in (0..n).step_by(ROW_BLOCK) {
        let nb = ROW_BLOCK.min(n - r0);
        let hidden_block = &a.hidden[r0 * d..(r0 + nb) * d];
        let row_targets: Vec<Option<usize>> = a.targets[r0..r0 + nb]
            .iter()
            .map(|&t| (t != a.ignore_index).then_some(t as usize))
            .collect();
        let mut stats: Vec<RowStats> = row_targets.iter().map(|&t| RowStats::new(t)).collect();
        // The logits of this row block against classes c0..c0+kb, into the tile, the GEMM's
        // pieces in parallel or (`here`) on this thread.
        let block_logits = |tile: &mut [T], c0: usize, kb: usize, here: bool| {
            let product = Product {
                m: nb,
                n: kb,
                k: d,
                lhs: (hidden_block, d as isize, 1),
                // weight.T: row kk, column jj is weight[c0 + jj][kk]
                rhs: (&a.weight[c0 * d..(c0 + kb) * d], 1, d as isize),
            };
            if here {
                product.run_here(tile, kb as isize, false);
            } else {
                product.run(tile, kb as isize, false);
            }
            if let Some(b) = a.bias {
                for row in tile.chunks_exact_mut(kb) {
                    for (z, &bj) in row.iter_mut().zip(&b[c0..c0 + kb]) {
                        *z += bj;
                    }
                }
            }
        };
        let logits = |tile: &mut [T], c0: usize, kb: usize| block_logits(tile, c0, kb, false);
        let logits_here = |tile: &mut [T], c0: usize, kb: usize| block_logits(tile, c0, kb, true);
        let tile_opts = |c0: usize, kb: usize| TileOpts {
            weight: a.opts.weight.as_deref().map(|w| &w[c0..c0 + kb]),
            softcap: a.opts.softcap,
            smoothing: eps > 0.0,
        };

        // Forward: whole class blocks in parallel, each computed and folded by one thread into
        // stats of its own, combined in class-block order (so any thread count gives the
        // same bits), with no barrier inside a block (splitting each block's GEMM over the
        // threads, as the backward sweep does, scaled worse: see BENCHMARKS.md).
        let blocks = v.div_ceil(FORWARD_BLOCK);
        let fold_block = |j: usize| {
            let (c0, kb) = (j * FORWARD_BLOCK, FORWARD_BLOCK.min(v - j * FORWARD_BLOCK));
            let slot = rayon::current_thread_index().unwrap_or(0) % tiles.len();
            // Uncontended: a thread runs one block at a time and only ever takes its own slot.
            let mut buf = tiles[slot].lock().unwrap_or_else(|e| e.into_inner());
            let t = &mut buf[..nb * kb];
            logits_here(t, c0, kb);
            let mut st: Vec<RowStats> = row_targets.iter().map(|&t| RowStats::new(t)).collect();
            fold_tile(t, kb, c0, &mut st, tile_opts(c0, kb), &mut Vec::new());
            st
        };
        for wave in (0..blocks).collect::<Vec<_>>().chunks(WAVE_BLOCKS) {
            if should_stop() {
                return Ok(f64::NAN);
            }
            let parts: Vec<Vec<RowStats>> = in_pool(|threads| {
                if threads == 1 {
                    wave.iter().map(|&j| fold_block(j)).collect()
                } else {
                    wave.par_iter().map(|&j| fold_block(j)).collect()
                }
            });
            for part in &parts {
                for (s, p) in stats.iter_mut().zip(part) {
                    s.absorb(p);
                }
            }
        }

        let mut row_grads = Vec::with_capacity(nb);
        for (i, st) in stats.iter().enumerate() {
            let scale = match upstream {
                LinUpstream::PerRow(u) => u[r0 + i],
                LinUpstream::Scalar(_) => uniform,
            };
            let (loss, rg) = st.finish(a.opts, v, scale);
            if let Some(l) = losses.as_deref_mut() {
                l[r0 + i] = loss;
            }
            total += loss;
            row_grads.push(rg);
        }

        let Some(g) = grads.as_mut() else { continue };
        let mut tile = tiles[0].lock().unwrap_or_else(|e| e.into_inner());
        let backward = sweep(&mut tile, nb, v, &logits, &tile_opts, |t, c0, kb, o| {
            for_tile_rows(t, kb, &mut row_grads, |rows, rg| {
                grad_tile(rows, kb, c0, rg, o)
            });
            if let Some(db) = d_bias.as_mut() {
                for row in t.chunks_exact(kb) {
                    for (acc, &gj) in db[c0..c0 + kb].iter_mut().zip(row) {
                        *acc += gj.to_f64();
                    }
                }
            }
            let t: &[T] = t;
            // d_hidden[r0..] (+)= G @ weight[c0..c0+kb]
            Product {
                m: nb,
                n: d,
                k: kb,
                lhs: (t, kb as isize, 1),
                rhs: (&a.weight[c0 * d..(c0 + kb) * d], d as isize, 1),
            }
            .run(&mut g.d_hidden[r0 * d..(r0 + nb) * d], d as isize, c0 > 0);
            // d_weight[c0..c0+kb] (+)= G.T @ hidden[r0..]
            Product {
                m: kb,
                n: d,
                k: nb,
                lhs: (t, 1, kb as isize),
                rhs: (hidden_block, d as isize, 1),
            }
            .run(&mut g.d_weight[c0 * d..(c0 + kb) * d], d as isize, r0 > 0);
        });
        if !backward {
            return Ok(f64::NAN);
        }
    }
    if let (Some(g), Some(db)) = (grads.as_mut(), d_bias) {
        if let Some(out) = g.d_bias.as_deref_mut() {
            for (o, &s) in out.iter_mut().zip(&db) {
                *o = T::from_f64(s);
            }
        }
    }
    Ok(match reduction {
        Reduction::Mean => total / denominator,
        Reduction::Sum => total,
        Reduction::None => f64::NAN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused form against `cross_entropy_and_grad` of the materialized logits, with shapes
    /// that cross the row and class tile boundaries, and with 1 and 2 threads.
    #[test]
    fn matches_the_materialized_logits_for_any_thread_count() {
        let (n, d, v) = (ROW_BLOCK + 9, 5, VOCAB_BLOCK + 13);
        let val = |i: usize, m: usize| ((i * m % 1009) as f64 / 1009.0 - 0.5) * 2.0;
        let h: Vec<f64> = (0..n * d).map(|i| val(i, 7919)).collect();
        let w: Vec<f64> = (0..v * d).map(|i| val(i, 104729)).collect();
        let b: Vec<f64> = (0..v).map(|i| val(i, 31)).collect();
        let t: Vec<i64> = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    -100
                } else {
                    (i * 37 % v) as i64
                }
            })
            .collect();
        let opts = CeOptions {
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(4.0),
            ..CeOptions::<f64>::plain(v)
        };
        let logits: Vec<f64> = (0..n * v)
            .map(|i| {
                let (r, c) = (i / v, i % v);
                b[c] + (0..d).map(|k| h[r * d + k] * w[c * d + k]).sum::<f64>()
            })
            .collect();
        let mut g = vec![0.0; n * v];
        let want =
            crate::cross_entropy_and_grad(&logits, v, &t, &opts, Reduction::Mean, &mut g, None)
                .unwrap();

        let mut runs = Vec::new();
        for threads in [1, 2] {
            crate::set_num_threads(threads).unwrap();
            let (mut dh, mut dw, mut db) = (vec![0.0; n * d], vec![0.0; v * d], vec![0.0; v]);
            let args = LinearCe {
                hidden: &h,
                weight: &w,
                bias: Some(&b),
                targets: &t,
                ignore_index: -100,
                n,
                d,
                v,
                opts: &opts,
            };
            let grads = LinearGrads {
                d_hidden: &mut dh,
                d_weight: &mut dw,
                d_bias: Some(&mut db),
            };
            let loss = linear_cross_entropy(
                &args,
                Reduction::Mean,
                LinUpstream::Scalar(1.0),
                None,
                Some(grads),
            )
            .unwrap();
            assert!((loss - want).abs() < 1e-12 * want.abs(), "{loss} vs {want}");
            for k in 0..d {
                let r = 3;
                let dh_want: f64 = (0..v).map(|c| g[r * v + c] * w[c * d + k]).sum();
                assert!((dh[r * d + k] - dh_want).abs() < 1e-12, "d_hidden");
                let c = VOCAB_BLOCK + 2;
                let dw_want: f64 = (0..n).map(|r| g[r * v + c] * h[r * d + k]).sum();
                assert!((dw[c * d + k] - dw_want).abs() < 1e-12, "d_weight");
            }
            let db_want: f64 = (0..n).map(|r| g[r * v + 7]).sum();
            assert!((db[7] - db_want).abs() < 1e-12, "d_bias");
            runs.push((loss.to_bits(), dh, dw, db));
        }
        assert!(runs[0] == runs[1], "results depend on the thread count");
    }

    #[test]
    fn an_out_of_range_target_writes_nothing() {
        let opts = CeOptions::<f32>::plain(3);
        let args = LinearCe {
            hidden: &[1.0; 4],
            weight: &[1.0; 6],
            bias: None,
            targets: &[0, 3],
            ignore_index: -100,
            n: 2,
            d: 2,
            v: 3,
            opts: &opts,
        };
        let (mut dh, mut dw) = (vec![7.0f32; 4], vec![7.0f32; 6]);
        let grads = LinearGrads {
            d_hidden: &mut dh,
            d_weight: &mut dw,
            d_bias: None,
        };
        let err = linear_cross_entropy(
            &args,
            Reduction::Sum,
            LinUpstream::Scalar(1.0),
            None,
            Some(grads),
        );
        assert!(matches!(err, Err(Error::ClassIndex { index: 3, .. })));
        assert!(dh.iter().chain(&dw).all(|&x| x == 7.0));
    }
}
