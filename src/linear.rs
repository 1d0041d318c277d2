//! Fused linear cross-entropy: the loss of `logits = hidden @ weight.T (+ bias)` and its
//! gradients with respect to `hidden`, `weight` and `bias`, without ever holding the `N x V`
//! logits (a language model's 4096 x 128256 float32 logits are 2.1 GB, their gradient as much).
//!
//! All scratch (tiles of logits, operands widened from float16/bfloat16, per-block gradient
//! accumulators, the GEMMs' packing) is sized from the shape and `max_memory` (16 MiB by
//! default), never from `V` alone nor from the thread count. One of two schedules runs:
//!
//! * **Keep** (when a block of at least [`MIN_KEEP_ROWS`] rows' logits over all `V` classes
//!   fits a quarter of the budget): each row block's logits are made with one GEMM per class
//!   block, folded into the rows' losses, turned into their gradient in place, and two more
//!   GEMMs give the block's `d_hidden` and add its share of `d_weight`: three products, as
//!   the materialized path does. The loss alone plans the same way, so both functions give
//!   the same loss, bit for bit.
//! * **Recompute** (logits too wide to keep): a forward sweep over row blocks folds tiles of
//!   `rows x cols` logits into each row's max, exp-sum and target logit
//!   ([`crate::kernels::linear`]); then (the `_and_grad` form) a backward sweep, class block by
//!   class block, recomputes each tile, turns it into the gradient of the logits and adds
//!   `G @ W_j` into `d_hidden` and `G^T @ H_i` into the class block's `d_weight` rows: four
//!   products in all, in memory that does not grow with `N` or `V`. These tiles are held class
//!   by class (transposed), the orientation in which gemm runs all three kinds of product at
//!   full speed (see `logits_t_into`); the forward fold gathers a few rows at a time back into
//!   rows for the row kernel.
//!   Class blocks outermost means a block's `d_weight` rows are finished before the next block
//!   starts, so half-precision weights need a float32 accumulator of one block only.
//!
//! Operands not already contiguous in the compute type ([`Operand::Rows`]) are converted one
//! block of rows at a time, never whole.
//!
//! Determinism: every accumulation (row statistics over class blocks, `d_hidden` over class
//! blocks, `d_weight` and `d_bias` over row blocks, the loss over rows) runs in a fixed order;
//! the blocks depend only on the shape and the budget; each product is one `gemm` call, whose
//! threads split the output, never a dot product. So the results are bitwise identical for any
//! thread count (tested). The threads a product may use are capped by the budget too (each
//! costs gemm a buffer of its own), so the memory does not grow with the thread count either.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::isa::Level;
use crate::kernels::linear::{fold_tile, grad_tile_t, ColumnGrad, RowGrad, RowStats, TileOpts};
use crate::ops::{CeOptions, Reduction};
use crate::pool::{in_pool_capped, in_pool_capped_interruptible, num_threads, should_stop};

/// `max_memory` when the caller does not choose: the API's default of `max_memory_bytes`.
pub const DEFAULT_MAX_MEMORY: usize = 16 << 20;
/// Rows per block of the recompute schedule: the GEMMs' `M` (forward, `d_hidden`) and `K`
/// (`d_weight`).
const ROW_BLOCK: usize = 512;
/// The most rows of `hidden` one block converts (for the binding's allocation check).
pub const LINEAR_MAX_ROWS: usize = ROW_BLOCK;
/// The fewest rows a block of the keep schedule may have: below this, `d_weight`'s product
/// (inner dimension = rows) passes over all of `d_weight` too often, and recomputing wins or
/// ties (one thread, AVX-512, 512 x 256 -> 16000 with gradients against the materialized path:
/// blocks of 64, 96 and 160 rows 1.27x, 1.22x, 1.24x; recomputing 1.23-1.31x; 256 rows 1.10x).
const MIN_KEEP_ROWS: usize = 256;
/// Class blocks never narrower (the GEMMs' efficiency) nor wider (one tile's scratch) than this.
const MIN_COLS: usize = 64;
const MAX_COLS: usize = 4096;
/// The most rows of `weight` one block converts (for the binding's allocation check).
pub const LINEAR_MAX_COLS: usize = MAX_COLS;
/// What each thread running a product touches of gemm's own per-thread buffer (an `mc x kc`
/// panel of the left operand, at most 384 x 512 float32 today), rounded up.
const GEMM_THREAD_BYTES: usize = 1 << 20;
/// The deepest panel `gemm` packs (its `kc` on today's caches): what one product's packing
/// costs is about `min(k, KC) * (m + n)` elements.
const KC: usize = 512;
/// One cache line: the rows of a class-held tile gathered at a time (see `fold_columns`).
const PANEL_BYTES: usize = 64;

/// An operand's rows (`width` elements each) in the compute type.
#[derive(Clone, Copy)]
pub enum Operand<'a, T> {
    /// Contiguous row-major, already in the compute type: read in place.
    Slice(&'a [T]),
    /// Anything else (float16/bfloat16, a mixed dtype, other strides): `load(r0, r1, scratch)`
    /// replaces `scratch` with rows `r0..r1`, so only one block is ever converted at a time.
    Rows(&'a (dyn Fn(usize, usize, &mut Vec<T>) + Sync)),
}

impl<T: Float> Operand<'_, T> {
    fn rows<'s>(&'s self, r0: usize, r1: usize, width: usize, scratch: &'s mut Vec<T>) -> &'s [T] {
        match *self {
            Operand::Slice(s) => &s[r0 * width..r1 * width],
            Operand::Rows(load) => {
                load(r0, r1, scratch);
                assert_eq!(scratch.len(), (r1 - r0) * width, "an operand loaded short");
                scratch
            }
        }
    }

    fn in_place(&self) -> bool {
        matches!(self, Operand::Slice(_))
    }
}

/// The operands.
#[derive(Clone, Copy)]
pub struct LinearCe<'a, T> {
    /// `n x d`.
    pub hidden: Operand<'a, T>,
    /// `v x d`, as `nn.Linear` stores it.
    pub weight: Operand<'a, T>,
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
    /// Bytes of scratch the call may use (see the module docs); at least one tile of a few
    /// rows and [`MIN_COLS`] classes is always used.
    pub max_memory: usize,
}

/// The upstream gradient: a scalar for `"mean"`/`"sum"`, one value per row for `"none"`.
#[derive(Clone, Copy, Debug)]
pub enum LinUpstream<'a> {
    Scalar(f64),
    PerRow(&'a [f64]),
}

/// Where rows of a gradient go.
pub enum RowsOut<'a, T> {
    /// Contiguous row-major in the compute type: accumulated in place.
    Slice(&'a mut [T]),
    /// Anything else: `store(r0, rows)` writes finished rows from `r0` on (rounding them into
    /// the array's dtype); they are accumulated in a block-sized scratch first.
    Rows(&'a mut (dyn FnMut(usize, &[T]) + Send)),
}

/// Where the gradients go (`n x d`, `v x d`, `v`); every element is written.
pub struct LinearGrads<'a, T> {
    pub d_hidden: &'a mut [T],
    pub d_weight: RowsOut<'a, T>,
    pub d_bias: Option<&'a mut [T]>,
}

/// Operand of a product: a slice with row and column strides (elements).
type Mat<'a, T> = (&'a [T], usize, usize);

/// Elements a strided `rows x cols` matrix reaches from its first.
fn reach(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst (m x n, strides (dst_rs, dst_cs)) = [dst +] lhs (m x k) @ rhs (k x n)` with `threads`
/// of the pool. gemm's threads split the output into tiles and every dot product runs in one
/// order, so the bits do not depend on `threads`.
#[allow(clippy::too_many_arguments)]
fn product<T: Float>(
    dst: &mut [T],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    threads: usize,
) {
    assert!(
        reach(m, n, dst_rs, dst_cs) <= dst.len()
            && reach(m, k, lhs.1, lhs.2) <= lhs.0.len()
            && reach(k, n, rhs.1, rhs.2) <= rhs.0.len(),
        "product operands out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            // gemm leaves dst alone for an empty inner dimension
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = T::ZERO;
                }
            }
        }
        return;
    }
    // Already inside this pool (see `linear_cross_entropy`): install runs in place.
    in_pool_capped(threads, |threads| {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the assert above keeps every element the shapes and strides reach inside
        // the slices; `dst` is borrowed mutably, so nothing else reads or writes it meanwhile.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dst_cs as isize,
                dst_rs as isize,
                accumulate,
                lhs.0.as_ptr(),
                lhs.2 as isize,
                lhs.1 as isize,
                rhs.0.as_ptr(),
                rhs.2 as isize,
                rhs.1 as isize,
                if accumulate { T::ONE } else { T::ZERO },
                T::ONE,
                false,
                false,
                false,
                par,
            )
        }
    })
}

/// A block of `hidden` transposed (`d x nb`, each of its columns contiguous), the left operand
/// of the forward products. Read as it is stored (row-major), gemm packs it again for every
/// class block, one element at a time from `d` rows apart: with the tile and the weight block
/// in between evicting it, that pack took 12% of a call at 1024 x 1024 -> 32000 (perf, one
/// thread, AVX-512) against the 3% of the same products run back to back.
/// It remembers which block it holds (by its first row): the backward sweep asks for the same
/// block once per class block, and with one row block it is transposed once, not per tile.
struct HiddenT<T> {
    rows: Vec<T>,
    at: Option<usize>,
}

impl<T: Float> HiddenT<T> {
    fn with_capacity(len: usize) -> HiddenT<T> {
        HiddenT {
            rows: Vec::with_capacity(len),
            at: None,
        }
    }

    /// The block of rows `r0..r0 + nb` (`h`, `nb x d`) transposed.
    fn of(&mut self, r0: usize, h: &[T], nb: usize, d: usize) -> &[T] {
        if self.at != Some(r0) {
            self.rows.resize(nb * d, T::ZERO);
            transpose(h, d, (nb, d), &mut self.rows, nb);
            self.at = Some(r0);
        }
        &self.rows
    }
}

/// `tile_t (kb x nb) = (h (nb x d) @ w (kb x d).T + bias).T`: the recompute schedule's tiles are
/// held class by class, each class's logits over the block's rows contiguous. gemm runs this
/// orientation at full speed and the row-major one 15-20% slower (its packing of `w.T` into
/// a row-major output; 512 x 4096 x 1024 float32, one thread, AVX-512: 101 against 84
/// GFLOPS), and both backward products read the column-held tile at full speed too.
///
/// `ht` is the block of `hidden` transposed (`d x nb`, see [`HiddenT`]).
fn logits_t_into<T: Float>(
    tile_t: &mut [T],
    (nb, kb, d): (usize, usize, usize),
    ht: &[T],
    w: &[T],
    bias: Option<&[T]>,
    threads: usize,
) {
    product(
        tile_t,
        (1, nb),
        false,
        (nb, kb, d),
        (ht, 1, nb),
        (w, 1, d),
        threads,
    );
    if let Some(b) = bias {
        for (col, &bj) in tile_t.chunks_exact_mut(nb.max(1)).zip(b) {
            col.iter_mut().for_each(|z| *z += bj);
        }
    }
}

/// `dst[j * dst_rs + i] = src[i * src_rs + j]` for a `rows x cols` block, a square of 16 x 16
/// at a time through a local copy: both sides are then read and written a line at a time
/// (a plain loop writes every element on a line of its own), and full squares are loops of
/// constant length that LLVM unrolls into shuffles.
fn transpose<T: Float>(
    src: &[T],
    src_rs: usize,
    (rows, cols): (usize, usize),
    dst: &mut [T],
    dst_rs: usize,
) {
    const B: usize = 16;
    let mut sq = [[T::ZERO; B]; B];
    for i0 in (0..rows).step_by(B) {
        let bi = B.min(rows - i0);
        for j0 in (0..cols).step_by(B) {
            let bj = B.min(cols - j0);
            if bi == B && bj == B {
                for (ii, line) in sq.iter_mut().enumerate() {
                    let at = (i0 + ii) * src_rs + j0;
                    line.copy_from_slice(&src[at..at + B]);
                }
                for jj in 0..B {
                    let at = (j0 + jj) * dst_rs + i0;
                    let out: &mut [T; B] = (&mut dst[at..at + B]).try_into().unwrap();
                    for (o, line) in out.iter_mut().zip(&sq) {
                        *o = line[jj];
                    }
                }
                continue;
            }
            for ii in 0..bi {
                let at = (i0 + ii) * src_rs + j0;
                for (jj, &z) in src[at..at + bj].iter().enumerate() {
                    dst[(j0 + jj) * dst_rs + i0 + ii] = z;
                }
            }
        }
    }
}

/// Rows `r0..r0 + p` of a class-held tile (`kb` classes of `nb` rows) into `out`, row by row.
fn gather_rows<T: Float>(tile_t: &[T], nb: usize, r0: usize, p: usize, out: &mut [T]) {
    let kb = out.len() / p.max(1);
    transpose(&tile_t[r0..], nb, (kb, p), out, kb);
}

/// Folds a class-held tile into its rows' sums: a few rows at a time (a cache line of each
/// class) are gathered into rows and folded by the row kernel, so the sums are those of
/// folding a row-major tile, bit for bit. Rows split over the products' threads.
fn fold_columns<T: Float>(
    isa: Level,
    tile_t: &[T],
    (nb, kb, c0): (usize, usize, usize),
    stats: &mut [RowStats],
    o: TileOpts<'_, T>,
    threads: usize,
) {
    let p = PANEL_BYTES / std::mem::size_of::<T>();
    let run = |(i, st): (usize, &mut [RowStats]), per: usize| {
        let mut panel = vec![T::ZERO; p.min(st.len()) * kb];
        let mut capped = Vec::new();
        for (q, sp) in st.chunks_mut(p).enumerate() {
            let rows = &mut panel[..sp.len() * kb];
            gather_rows(tile_t, nb, i * per + q * p, sp.len(), rows);
            fold_tile(isa, rows, kb, c0, sp, o, &mut capped);
        }
    };
    in_pool_capped(threads, |threads| {
        if threads == 1 || nb <= p {
            return run((0, stats), nb);
        }
        let per = nb.div_ceil(threads * 4).next_multiple_of(p);
        stats
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|c| run(c, per));
    });
}

/// Turns a class-held tile of logits into the gradient with respect to them, in place:
/// classes split over the products' threads.
fn grad_columns<T: Float>(
    isa: Level,
    tile_t: &mut [T],
    (nb, kb, c0): (usize, usize, usize),
    rows: &[RowGrad<T>],
    o: TileOpts<'_, T>,
    threads: usize,
) {
    let coefs = ColumnGrad::new(rows);
    let run = |(i, t): (usize, &mut [T]), per: usize| {
        let j0 = i * per;
        let oc = TileOpts {
            weight: o.weight.map(|w| &w[j0..]),
            ..o
        };
        grad_tile_t(isa, t, nb, c0 + j0, &coefs, rows, oc);
    };
    in_pool_capped(threads, |threads| {
        if threads == 1 || kb < 2 {
            return run((0, tile_t), kb);
        }
        let per = kb.div_ceil(threads * 4);
        tile_t
            .par_chunks_mut(per * nb.max(1))
            .enumerate()
            .for_each(|c| run(c, per));
    });
}

/// Adds each class's row of a class-held tile into `sums`, rows in order.
fn add_row_sums<T: Float>(sums: &mut [f64], tile_t: &[T], nb: usize, threads: usize) {
    let run = |(s, col): (&mut f64, &[T])| {
        for &g in col {
            *s += g.to_f64();
        }
    };
    in_pool_capped(threads, |threads| {
        let cols = tile_t.chunks_exact(nb.max(1));
        if threads == 1 {
            sums.iter_mut().zip(cols).for_each(run);
        } else {
            sums.par_iter_mut()
                .zip(tile_t.par_chunks_exact(nb.max(1)))
                .for_each(run);
        }
    });
}

/// Block sizes, from the shape, the dtypes' layout and the budget (never the thread count,
/// except for how many forward tiles run at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Rows per block.
    rows: usize,
    /// Classes per block (the keep schedule: per forward GEMM).
    cols: usize,
    /// Threads a product may use (each costs gemm a buffer of its own).
    gemm_threads: usize,
    /// The keep schedule.
    keep: bool,
}

impl Plan {
    fn new<T: Float>(
        a: &LinearCe<'_, T>,
        grads: Option<&LinearGrads<'_, T>>,
        threads: usize,
    ) -> Plan {
        let (n, d, v) = (a.n.max(1), a.d.max(1), a.v.max(1));
        let s = std::mem::size_of::<T>();
        // A quarter for our tiles and converted blocks; the rest for gemm's packing (one shared
        // panel of the right operand per product, a panel of the left one per thread), the
        // allocator's slack and, on a first call, the pool's threads.
        let ours = a.max_memory / 4;
        let gemm_threads = (a.max_memory / 4 / GEMM_THREAD_BYTES).clamp(1, threads.max(1));
        let widen_h = if a.hidden.in_place() { 0 } else { d * s };
        let widen_w = if a.weight.in_place() { 0 } else { d * s };
        let pack = KC.min(d) * s; // per row or column of a forward product's operands

        // The loss alone plans as its `_and_grad` form does (with the bias's sums and
        // d_weight's accumulator reserved), so both give the same loss, bit for bit.
        let direct =
            a.weight.in_place() && grads.is_none_or(|g| matches!(g.d_weight, RowsOut::Slice(_)));
        {
            let sums = if a.bias.is_some() { v * 8 } else { 0 };
            let cols = (ours / 4 / (pack + s)).clamp(MIN_COLS, MAX_COLS).min(v);
            let per_row = v * s + widen_h + d * s; // logits, converted and transposed rows
            let fit = ours.saturating_sub(sums + cols * pack) / per_row;
            if direct && fit >= n.min(MIN_KEEP_ROWS) {
                let rows = n.div_ceil(n.div_ceil(fit.max(1)));
                return Plan {
                    rows,
                    cols,
                    gemm_threads,
                    keep: true,
                };
            }
        }
        // The recompute schedule takes three eighths: its hidden block (converted, and
        // transposed for the forward products, see `HiddenT`) replaces gemm's packing of that
        // operand, and a block of fewer rows streams all of `weight` from memory once more per
        // block (4096 x 2048 -> 128256, two threads: blocks of 256 rows made the loss 1.23x
        // one NumPy matmul).
        let ours = a.max_memory / 8 * 3;
        // The hidden block takes at most half of it.
        let per_row = widen_h + d * s;
        let rows = ROW_BLOCK.min(n).min((ours / 2 / per_row).max(16));
        // Backward: the tile, a converted weight block and a float32 d_weight accumulator.
        let narrow = !a.weight.in_place();
        let per_col = rows * s + widen_w + if narrow { d * s } else { 0 } + pack;
        let fixed = rows * per_row;
        let cols = (ours.saturating_sub(fixed) / per_col)
            .clamp(MIN_COLS, MAX_COLS)
            .min(v);
        Plan {
            rows,
            cols,
            gemm_threads,
            keep: false,
        }
    }
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

/// Every slice's length against the shape, before anything is written.
fn check_sizes<T>(
    a: &LinearCe<'_, T>,
    upstream: LinUpstream<'_>,
    losses: Option<&[f64]>,
    grads: Option<&LinearGrads<'_, T>>,
) -> Result<()> {
    let (n, d, v) = (a.n, a.d, a.v);
    if let Operand::Slice(h) = a.hidden {
        check("hidden", h, n * d)?;
    }
    if let Operand::Slice(w) = a.weight {
        check("weight", w, v * d)?;
    }
    check("targets", a.targets, n)?;
    if let Some(b) = a.bias {
        check("bias", b, v)?;
    }
    if let Some(w) = &a.opts.weight {
        check("class_weight", w, v)?;
    }
    if let Some(l) = losses {
        check("losses", l, n)?;
    }
    if let LinUpstream::PerRow(u) = upstream {
        check("grad_output", u, n)?;
    }
    if let Some(g) = grads {
        check("d_hidden", g.d_hidden, n * d)?;
        if let RowsOut::Slice(dw) = &g.d_weight {
            check("d_weight", dw, v * d)?;
        }
        if let Some(db) = g.d_bias.as_deref() {
            check("d_bias", db, v)?;
        }
    }
    Ok(())
}

/// Checks every target and returns the `"mean"` denominator (the targets' class weights).
fn validate_targets<T: Float>(a: &LinearCe<'_, T>) -> Result<f64> {
    let mut denominator = 0.0;
    for (i, &t) in a.targets.iter().enumerate() {
        if t == a.ignore_index {
            continue;
        }
        if t < 0 || t as u64 >= a.v as u64 {
            return Err(Error::ClassIndex {
                index: t,
                position: vec![i],
                classes: a.v,
            });
        }
        denominator += a
            .opts
            .weight
            .as_ref()
            .map_or(1.0, |w| w[t as usize].to_f64());
    }
    Ok(denominator)
}

/// What the per-row results need besides the statistics.
struct RowResults<'c, 'l> {
    upstream: LinUpstream<'c>,
    /// The scale of every row's gradient for a scalar upstream.
    uniform: f64,
    losses: Option<&'l mut [f64]>,
    /// The sum of the losses so far, rows in order.
    total: f64,
}

impl RowResults<'_, '_> {
    /// Rows `r0..` are final: their losses, and what their gradients need into `out`.
    fn finish<T: Float>(
        &mut self,
        stats: &[RowStats],
        r0: usize,
        o: &CeOptions<T>,
        v: usize,
        out: &mut Vec<RowGrad<T>>,
    ) {
        for (i, st) in stats.iter().enumerate() {
            let scale = match self.upstream {
                LinUpstream::PerRow(u) => u[r0 + i],
                LinUpstream::Scalar(_) => self.uniform,
            };
            let (loss, rg) = st.finish(o, v, scale);
            if let Some(l) = self.losses.as_deref_mut() {
                l[r0 + i] = loss;
            }
            self.total += loss;
            out.push(rg);
        }
    }
}

fn tile_opts<'o, T: Float>(a: &LinearCe<'o, T>, c0: usize, kb: usize) -> TileOpts<'o, T> {
    TileOpts {
        weight: a.opts.weight.as_deref().map(|w| &w[c0..c0 + kb]),
        softcap: a.opts.softcap,
        smoothing: a.opts.label_smoothing > 0.0,
    }
}

fn row_targets<'a, T>(
    a: &'a LinearCe<'_, T>,
    r0: usize,
    r1: usize,
) -> impl Iterator<Item = RowStats> + 'a {
    a.targets[r0..r1]
        .iter()
        .map(|&t| RowStats::new((t != a.ignore_index).then_some(t as usize)))
}

/// The recompute schedule's forward sweep: every row's loss into `rows`, and (when `grads`
/// asks) what its gradient needs. False when interrupted.
///
/// One tile at a time, its product spread over the threads by gemm and its rows folded in
/// parallel: every GEMM runs on this thread, so gemm's per-call buffers come from one
/// allocator arena (products run on the pool's threads left each thread's arena holding its
/// own, and the peak grew with the thread count).
fn forward<T: Float>(
    isa: Level,
    a: &LinearCe<'_, T>,
    plan: &Plan,
    rows: &mut RowResults<'_, '_>,
    mut row_grads: Option<&mut Vec<RowGrad<T>>>,
    threads: usize,
) -> bool {
    let (n, d, v) = (a.n, a.d, a.v);
    // Every buffer at its largest, once.
    let (nb_max, kb_max) = (plan.rows.min(n), plan.cols.min(v));
    let mut tile = Vec::with_capacity(nb_max * kb_max);
    let mut hs = Vec::with_capacity(if a.hidden.in_place() { 0 } else { nb_max * d });
    let mut ht = HiddenT::with_capacity(nb_max * d);
    let mut ws = Vec::with_capacity(if a.weight.in_place() { 0 } else { kb_max * d });
    let mut discard = Vec::new();
    for r0 in (0..n).step_by(plan.rows) {
        let nb = plan.rows.min(n - r0);
        let h = a.hidden.rows(r0, r0 + nb, d, &mut hs);
        let ht = ht.of(r0, h, nb, d);
        let mut stats: Vec<RowStats> = row_targets(a, r0, r0 + nb).collect();
        for c0 in (0..v).step_by(plan.cols) {
            if should_stop() {
                return false;
            }
            let kb = plan.cols.min(v - c0);
            let w = a.weight.rows(c0, c0 + kb, d, &mut ws);
            tile.resize(nb * kb, T::ZERO);
            let b = a.bias.map(|b| &b[c0..c0 + kb]);
            logits_t_into(&mut tile, (nb, kb, d), ht, w, b, threads);
            // Folding straight into the running sums gives the bits of folding each block
            // into sums of its own and adding those in class order.
            let o = tile_opts(a, c0, kb);
            fold_columns(isa, &tile, (nb, kb, c0), &mut stats, o, threads);
        }
        let out = row_grads.as_deref_mut().unwrap_or(&mut discard);
        rows.finish(&stats, r0, a.opts, v, out);
        discard.clear();
    }
    true
}

/// The recompute schedule's backward sweep, class block by class block. False when
/// interrupted.
fn backward<T: Float>(
    isa: Level,
    a: &LinearCe<'_, T>,
    plan: &Plan,
    row_grads: &[RowGrad<T>],
    g: &mut LinearGrads<'_, T>,
    threads: usize,
) -> bool {
    let (n, d, v) = (a.n, a.d, a.v);
    let LinearGrads {
        d_hidden,
        d_weight,
        d_bias,
    } = g;
    // Every buffer at its largest, once (see `forward`).
    let (rows, cols) = (plan.rows.min(n), plan.cols.min(v));
    let mut tile = Vec::with_capacity(rows * cols);
    let mut hs = Vec::with_capacity(if a.hidden.in_place() { 0 } else { rows * d });
    let mut ht = HiddenT::with_capacity(rows * d);
    let mut ws = Vec::with_capacity(if a.weight.in_place() { 0 } else { cols * d });
    let narrow = matches!(d_weight, RowsOut::Rows(_));
    let mut acc = Vec::with_capacity(if narrow { cols * d } else { 0 });
    let mut sums = Vec::with_capacity(cols);
    for c0 in (0..v).step_by(plan.cols) {
        let kb = plan.cols.min(v - c0);
        let w = a.weight.rows(c0, c0 + kb, d, &mut ws);
        let bias = a.bias.map(|b| &b[c0..c0 + kb]);
        let dw: &mut [T] = match d_weight {
            RowsOut::Slice(s) => &mut s[c0 * d..(c0 + kb) * d],
            RowsOut::Rows(_) => {
                acc.resize(kb * d, T::ZERO);
                &mut acc[..]
            }
        };
        if n == 0 {
            dw.fill(T::ZERO);
        }
        sums.clear();
        sums.resize(kb, 0.0);
        for r0 in (0..n).step_by(plan.rows) {
            if should_stop() {
                return false;
            }
            let nb = plan.rows.min(n - r0);
            let h = a.hidden.rows(r0, r0 + nb, d, &mut hs);
            tile.resize(nb * kb, T::ZERO);
            logits_t_into(
                &mut tile,
                (nb, kb, d),
                ht.of(r0, h, nb, d),
                w,
                bias,
                threads,
            );
            let o = tile_opts(a, c0, kb);
            let rg = &row_grads[r0..r0 + nb];
            grad_columns(isa, &mut tile, (nb, kb, c0), rg, o, threads);
            if d_bias.is_some() {
                add_row_sums(&mut sums, &tile, nb, threads);
            }
            // The tile is the gradient's transpose: read as `nb x kb` with row stride 1 for
            // d_hidden, as `kb x nb` row-major for d_weight.
            let dh = &mut d_hidden[r0 * d..(r0 + nb) * d];
            let g = &tile[..];
            product(
                dh,
                (d, 1),
                c0 > 0,
                (nb, d, kb),
                (g, 1, nb),
                (w, d, 1),
                threads,
            );
            product(
                dw,
                (d, 1),
                r0 > 0,
                (kb, d, nb),
                (g, nb, 1),
                (h, d, 1),
                threads,
            );
        }
        if let RowsOut::Rows(store) = d_weight {
            store(c0, &acc[..kb * d]);
        }
        if let Some(db) = d_bias.as_deref_mut() {
            for (o, &s) in db[c0..c0 + kb].iter_mut().zip(&sums) {
                *o = T::from_f64(s);
            }
        }
    }
    true
}

/// The keep schedule: loss and gradients, row block by row block, three products each. False
/// when interrupted.
fn keep<T: Float>(
    isa: Level,
    a: &LinearCe<'_, T>,
    plan: &Plan,
    rows: &mut RowResults<'_, '_>,
    mut g: Option<&mut LinearGrads<'_, T>>,
    threads: usize,
) -> bool {
    let (n, d, v) = (a.n, a.d, a.v);
    let Operand::Slice(weight) = a.weight else {
        unreachable!("the plan keeps logits only with the weight in place")
    };
    if let Some(RowsOut::Slice(d_weight)) = g.as_mut().map(|g| &mut g.d_weight) {
        if n == 0 {
            d_weight.fill(T::ZERO); // no row block writes it
        }
    }
    let mut sums = g
        .as_ref()
        .and_then(|g| g.d_bias.as_ref())
        .map(|_| vec![0.0f64; v]);
    let mut z = vec![T::ZERO; plan.rows.min(n) * v];
    let mut hs = Vec::with_capacity(if a.hidden.in_place() {
        0
    } else {
        plan.rows.min(n) * d
    });
    let mut ht = HiddenT::with_capacity(plan.rows.min(n) * d);
    let mut row_grads = Vec::with_capacity(plan.rows);
    for r0 in (0..n).step_by(plan.rows) {
        let nb = plan.rows.min(n - r0);
        let h = a.hidden.rows(r0, r0 + nb, d, &mut hs);
        let ht = ht.of(r0, h, nb, d);
        // Held class by class, as the recompute schedule's tiles (see `logits_t_into`).
        let z = &mut z[..nb * v];
        let mut stats: Vec<RowStats> = row_targets(a, r0, r0 + nb).collect();
        for c0 in (0..v).step_by(plan.cols) {
            if should_stop() {
                return false;
            }
            let kb = plan.cols.min(v - c0);
            let w = &weight[c0 * d..(c0 + kb) * d];
            let b = a.bias.map(|b| &b[c0..c0 + kb]);
            let tile = &mut z[c0 * nb..(c0 + kb) * nb];
            logits_t_into(tile, (nb, kb, d), ht, w, b, threads);
            let o = tile_opts(a, c0, kb);
            fold_columns(isa, tile, (nb, kb, c0), &mut stats, o, threads);
        }
        row_grads.clear();
        rows.finish(&stats, r0, a.opts, v, &mut row_grads);
        let Some(g) = g.as_mut() else { continue };
        let RowsOut::Slice(d_weight) = &mut g.d_weight else {
            unreachable!("the plan keeps logits only with d_weight in place")
        };
        let o = tile_opts(a, 0, v);
        grad_columns(isa, z, (nb, v, 0), &row_grads, o, threads);
        if let Some(s) = sums.as_mut() {
            add_row_sums(s, z, nb, threads);
        }
        let dh = &mut g.d_hidden[r0 * d..(r0 + nb) * d];
        let z = &z[..];
        product(
            dh,
            (d, 1),
            false,
            (nb, d, v),
            (z, 1, nb),
            (weight, d, 1),
            threads,
        );
        product(
            d_weight,
            (d, 1),
            r0 > 0,
            (v, d, nb),
            (z, nb, 1),
            (h, d, 1),
            threads,
        );
    }
    if let (Some(db), Some(s)) = (g.and_then(|g| g.d_bias.as_deref_mut()), sums) {
        for (o, &s) in db.iter_mut().zip(&s) {
            *o = T::from_f64(s);
        }
    }
    true
}

/// The loss of `hidden @ weight.T + bias` against class-index targets, reduced as asked; per-row
/// losses go into `losses` (for `"none"`) and the gradients, scaled by `upstream`, into `grads`.
/// Every target is validated (and the operands' sizes checked) before anything is written.
/// Returns the reduced loss (NaN for `"none"`, or when interrupted, see [`crate::pool`]).
pub fn linear_cross_entropy<T: Float>(
    a: &LinearCe<'_, T>,
    reduction: Reduction,
    upstream: LinUpstream<'_>,
    losses: Option<&mut [f64]>,
    mut grads: Option<LinearGrads<'_, T>>,
) -> Result<f64> {
    let isa = Level::active();
    check_sizes(a, upstream, losses.as_deref(), grads.as_ref())?;
    let denominator = validate_targets(a)?;
    let uniform = match (reduction, upstream) {
        (Reduction::Mean, LinUpstream::Scalar(g)) => g / denominator,
        (_, LinUpstream::Scalar(g)) => g,
        (_, LinUpstream::PerRow(_)) => f64::NAN,
    };
    let mut rows = RowResults {
        upstream,
        uniform,
        losses,
        total: 0.0,
    };
    if let Some(g) = grads.as_mut() {
        if a.v == 0 {
            g.d_hidden.fill(T::ZERO); // no class block writes it
        }
    }
    let plan = Plan::new(a, grads.as_ref(), num_threads());
    let threads = plan.gemm_threads;
    // All on one thread of our pool, capped at the products' threads: gemm's parallel work
    // then runs on that pool (on Rayon's global one, where a product called from outside any
    // pool goes, gemm's threads and their packing buffers were bounded neither by
    // `set_num_threads` nor by the budget, and a first call started them), and every GEMM's
    // own buffers come from that one thread's allocator arena.
    let done = in_pool_capped_interruptible(threads, |_| match grads.as_mut() {
        _ if plan.keep => keep(isa, a, &plan, &mut rows, grads.as_mut(), threads),
        Some(g) => {
            let mut row_grads = Vec::with_capacity(a.n);
            forward(isa, a, &plan, &mut rows, Some(&mut row_grads), threads)
                && backward(isa, a, &plan, &row_grads, g, threads)
        }
        None => forward(isa, a, &plan, &mut rows, None, threads),
    });
    if !done {
        return Ok(f64::NAN);
    }
    Ok(match reduction {
        Reduction::Mean => rows.total / denominator,
        Reduction::Sum => rows.total,
        Reduction::None => f64::NAN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        n: usize,
        d: usize,
        v: usize,
        h: Vec<f64>,
        w: Vec<f64>,
        b: Vec<f64>,
        t: Vec<i64>,
        opts: CeOptions<f64>,
    }

    fn case(n: usize, d: usize, v: usize) -> Case {
        let val = |i: usize, m: usize| ((i * m % 1009) as f64 / 1009.0 - 0.5) * 2.0;
        let t = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    -100
                } else {
                    (i * 37 % v) as i64
                }
            })
            .collect();
        Case {
            n,
            d,
            v,
            h: (0..n * d).map(|i| val(i, 7919)).collect(),
            w: (0..v * d).map(|i| val(i, 104729)).collect(),
            b: (0..v).map(|i| val(i, 31)).collect(),
            t,
            opts: CeOptions {
                label_smoothing: 0.1,
                z_loss: 1e-3,
                softcap: Some(4.0),
                ..CeOptions::<f64>::plain(v)
            },
        }
    }

    /// Loss and gradients with `threads` threads, the weight read in place or through
    /// `Operand::Rows`, d_weight written in place or through `RowsOut::Rows`.
    fn run(
        c: &Case,
        threads: usize,
        max_memory: usize,
        by_rows: bool,
    ) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        crate::set_num_threads(threads).unwrap();
        let load = |r0: usize, r1: usize, s: &mut Vec<f64>| {
            s.clear();
            s.extend_from_slice(&c.w[r0 * c.d..r1 * c.d]);
        };
        let (mut dh, mut dw, mut db) = (vec![0.0; c.n * c.d], vec![0.0; c.v * c.d], vec![0.0; c.v]);
        let mut dw_rows = dw.clone();
        let d = c.d;
        let mut store =
            |r0: usize, rows: &[f64]| dw_rows[r0 * d..r0 * d + rows.len()].copy_from_slice(rows);
        let args = LinearCe {
            hidden: Operand::Slice(&c.h),
            weight: if by_rows {
                Operand::Rows(&load)
            } else {
                Operand::Slice(&c.w)
            },
            bias: Some(&c.b),
            targets: &c.t,
            ignore_index: -100,
            n: c.n,
            d: c.d,
            v: c.v,
            opts: &c.opts,
            max_memory,
        };
        let grads = LinearGrads {
            d_hidden: &mut dh,
            d_weight: if by_rows {
                RowsOut::Rows(&mut store)
            } else {
                RowsOut::Slice(&mut dw)
            },
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
        if by_rows {
            dw = dw_rows;
        }
        (loss, dh, dw, db)
    }

    /// The fused form against `cross_entropy_and_grad` of the materialized logits, with shapes
    /// that cross the row and class block boundaries, both schedules, operands in place or
    /// converted by rows, and 1, 2 and 3 threads (bitwise the same).
    #[test]
    fn matches_the_materialized_logits_for_any_thread_count() {
        let c = case(ROW_BLOCK + 9, 5, 2 * MAX_COLS + 13);
        let (n, d, v) = (c.n, c.d, c.v);
        let logits: Vec<f64> = (0..n * v)
            .map(|i| {
                let (r, k) = (i / v, i % v);
                c.b[k] + (0..d).map(|j| c.h[r * d + j] * c.w[k * d + j]).sum::<f64>()
            })
            .collect();
        let mut g = vec![0.0; n * v];
        let want =
            crate::cross_entropy_and_grad(&logits, v, &c.t, &c.opts, Reduction::Mean, &mut g, None)
                .unwrap();
        // 1 MiB: recompute with several class blocks; 128 MiB: keep, in two row blocks.
        for (max_memory, keeps) in [(1 << 20, false), (128 << 20, true)] {
            for by_rows in [false, true] {
                let mut runs = Vec::new();
                for threads in [1, 2, 3] {
                    let (loss, dh, dw, db) = run(&c, threads, max_memory, by_rows);
                    assert!((loss - want).abs() < 1e-12 * want.abs(), "{loss} vs {want}");
                    for k in 0..d {
                        let r = 3;
                        let dh_want: f64 = (0..v).map(|j| g[r * v + j] * c.w[j * d + k]).sum();
                        assert!((dh[r * d + k] - dh_want).abs() < 1e-12, "d_hidden");
                        let j = MAX_COLS + 2;
                        let dw_want: f64 = (0..n).map(|r| g[r * v + j] * c.h[r * d + k]).sum();
                        assert!((dw[j * d + k] - dw_want).abs() < 1e-12, "d_weight");
                    }
                    let db_want: f64 = (0..n).map(|r| g[r * v + 7]).sum();
                    assert!((db[7] - db_want).abs() < 1e-12, "d_bias");
                    runs.push((loss.to_bits(), dh, dw, db));
                }
                assert!(
                    runs.windows(2).all(|w| w[0] == w[1]),
                    "results depend on the thread count"
                );
            }
            let plan = |threads| {
                let a = LinearCe {
                    hidden: Operand::Slice(&c.h),
                    weight: Operand::Slice(&c.w),
                    bias: None,
                    targets: &c.t,
                    ignore_index: -100,
                    n,
                    d,
                    v,
                    opts: &c.opts,
                    max_memory,
                };
                let (mut dh, mut dw) = (vec![0.0; n * d], vec![0.0; v * d]);
                let g = LinearGrads {
                    d_hidden: &mut dh,
                    d_weight: RowsOut::Slice(&mut dw),
                    d_bias: None,
                };
                Plan::new(&a, Some(&g), threads)
            };
            let p = plan(1);
            assert_eq!(p.keep, keeps, "{p:?}");
            assert!(p.keep || p.cols < v, "{p:?}");
            // The recompute schedule's share (see `Plan::new`): its tile and transposed hidden
            // block (float64 here) within three eighths of the budget.
            let share = (p.cols + d) * p.rows * 8;
            assert!(p.keep || share <= max_memory / 8 * 3, "{p:?}");
            let many = plan(64).gemm_threads;
            assert!(many * GEMM_THREAD_BYTES <= (max_memory / 4).max(GEMM_THREAD_BYTES));
            assert!(!p.keep || p.rows < n, "{p:?}");
        }
    }

    #[test]
    fn an_out_of_range_target_writes_nothing() {
        let opts = CeOptions::<f32>::plain(3);
        let args = LinearCe {
            hidden: Operand::Slice(&[1.0; 4]),
            weight: Operand::Slice(&[1.0; 6]),
            bias: None,
            targets: &[0, 3],
            ignore_index: -100,
            n: 2,
            d: 2,
            v: 3,
            opts: &opts,
            max_memory: DEFAULT_MAX_MEMORY,
        };
        let (mut dh, mut dw) = (vec![7.0f32; 4], vec![7.0f32; 6]);
        let grads = LinearGrads {
            d_hidden: &mut dh,
            d_weight: RowsOut::Slice(&mut dw),
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
