//! The numerical kernels: pure functions over contiguous rows (`&[T]` holding `rows * k`
//! elements), single-threaded, no allocation beyond an optional scratch row, no knowledge of
//! strides, dtypes other than `T`, threads or Python. `crate::ops` feeds them blocks of rows.
//!
//! Shared building blocks live here: the row maximum and the sums of `exp(x - shift)`, written
//! with `LANES` independent accumulators so LLVM turns them into SIMD loops with a fixed
//! (hence reproducible) summation order. Sums of `exp` run in `T` within chunks of `CHUNK`
//! elements (at most `CHUNK / LANES` terms per accumulator, so a float32 chunk sum is within
//! ~16 ULP) and chunk totals are added in `f64`. Other sums are accumulated in `f64` throughout.

pub mod binary;
pub mod cross_entropy;
mod lanes;
pub mod linear;
pub mod online;
pub mod scoring;
pub mod softmax;

#[cfg(test)]
mod exact_tests;

use crate::dtype::DType;
use crate::float::Float;
use crate::isa::Arith;
pub(crate) use crate::math::ln_f64;

/// Independent accumulators per loop: a fixed count, not the vector width, so that every
/// instruction set sums in the same order (16 = one AVX-512 register of f32, two of AVX2).
const LANES: usize = 16;
/// Elements summed in the compute type before the partial sum moves to `f64`.
// PERF: summing exp in f32 lanes instead of widening each term to f64 halved the time of
// an exp sum over float32 rows (512 x 128256: 204 ms -> 106 ms, one thread).
const CHUNK: usize = 256;
/// Elements per step of the one-pass maximum and exp-sum: a step stays in L1 between its
/// maximum and its sum, so a long row is read from memory once.
// PERF: a float32 row of 128256 (501 KiB) does not fit this machine's 512 KiB L2 beside its
// output, so the two-pass form read it from memory twice; not measured apart from the ISA
// dispatch that landed with it.
pub(crate) const ONLINE_STEP: usize = 2048;

/// How far ahead of a row the pass of its exps prefetches the rows to come, in bytes.
// PERF: a row's maximum is a pass of loads with little to do beside them, its exps a pass of
// arithmetic on data in L1. Rows that come from memory (a float32 row of 1000 is 4 KiB) wait
// on their loads in the first pass while the memory idles in the second; prefetching the row
// two ahead (8 KiB) through the exps gives the memory work there. The floor loop of
// benches/floor.rs on float32 8192 x 1000: 4.4-4.8 ms against 6.8-7.7 ms without, Intel Xeon
// (the loop as it is in L1: 3.9 ms).
const PREFETCH_BYTES: usize = 8192;

/// Rows shorter than this take the grouped paths of [`small_rows_exp`] (softmax) and
/// [`small_rows_stats`] (the others).
pub(crate) const SMALL_K: usize = 64;
/// Rows per group of those paths: a group's exps (at most `SMALL_ROWS * SMALL_K` values, 16 KiB
/// in f64) stay in L1 between the map and the per-row sums.
pub(crate) const SMALL_ROWS: usize = 32;

/// Whether rows of `k` classes take the short copies of `logsumexp` and the plain
/// `cross_entropy` ([`GroupStats::fill_short`]).
#[inline]
pub(crate) fn short_rows(k: usize) -> bool {
    (SMALL_K..CHUNK).contains(&k)
}

/// The instruction set the kernels run with now (see [`crate::isa`]).
pub fn simd_backend() -> &'static str {
    crate::isa::active().name()
}

/// The largest element of `x`, ignoring NaN (a NaN still poisons the row through its sum);
/// `-inf` for an empty row.
#[inline(always)]
pub fn row_max<T: Float>(x: &[T]) -> T {
    if x.len() < CHUNK {
        row_max_with::<T, true>(x)
    } else {
        row_max_with::<T, false>(x)
    }
}

/// [`row_max`], its lanes folded in halves (vector steps) where `FOLD`, else taken with the
/// remainder in scalar steps.
// PERF: rows shorter than a chunk fold: as one scalar loop, the lanes took a fifth to a
// quarter of the time of a logsumexp of rows of 100 (float32 16384 x 100: 0.75x the time
// folded). Longer rows do not: folded, float32 8192 x 1000 cross_entropy took 1.2x the time in
// the side-by-side runs, and 256 x 1000 logsumexp 1.33x: perf showed the chunk loop itself
// cut into 128- and 256-bit pieces to match the fold's halves.
#[inline(always)]
fn row_max_with<T: Float, const FOLD: bool>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut x = x;
    // PERF: long rows take two vectors a step into two sets of lanes, two chains of `maxps`
    // instead of one (float32 8192 x 1000 softmax(out=) 0.95-0.96x the time, float64
    // log_softmax(out=) 0.93x, the rest 0.96-1.01x; AMD EPYC, 2026-12-05). The maximum is the
    // same value in any order; only which of +0 and -0 is kept can change, and a row holding
    // both has s >= 2, where no output depends on the shift's sign.
    if !FOLD {
        let mut acc2 = [T::NEG_INFINITY; LANES];
        let mut pairs = x.chunks_exact(2 * LANES);
        for c in &mut pairs {
            let c: &[T; 2 * LANES] = c.try_into().unwrap();
            for l in 0..LANES {
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
                acc2[l] = if c[l + LANES] > acc2[l] {
                    c[l + LANES]
                } else {
                    acc2[l]
                };
            }
        }
        for l in 0..LANES {
            acc[l] = if acc2[l] > acc[l] { acc2[l] } else { acc[l] };
        }
        x = pairs.remainder();
    }
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        let c: &[T; LANES] = c.try_into().unwrap();
        for l in 0..LANES {
            // One `maxps` on x86: a NaN in `c` keeps `acc`.
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = T::NEG_INFINITY;
    if FOLD {
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                acc[l] = if acc[l + width] > acc[l] {
                    acc[l + width]
                } else {
                    acc[l]
                };
            }
            width /= 2;
        }
        m = acc[0];
    }
    for &v in chunks.remainder() {
        if v > m {
            m = v;
        }
    }
    if !FOLD {
        // PERF: its own loop, which LLVM unrolls, not the remainder's loop chained with the
        // lanes: float32 log_softmax of rows of 300 and 1000 kept `m` on the stack there after
        // an unrelated change (1.07-1.21x the time, AVX2 and AVX-512).
        for v in acc {
            if v > m {
                m = v;
            }
        }
    }
    m
}

#[inline(always)]
fn lanes_total(acc: [f64; LANES], tail: f64) -> f64 {
    // Pairwise, in a fixed order.
    let mut a = [0.0; LANES / 2];
    for l in 0..LANES / 2 {
        a[l] = acc[l] + acc[l + LANES / 2];
    }
    let mut b = [0.0; LANES / 4];
    for l in 0..LANES / 4 {
        b[l] = a[l] + a[l + LANES / 4];
    }
    ((b[0] + b[2]) + (b[1] + b[3])) + tail
}

#[inline(always)]
fn lanes_total_t<T: Float>(acc: [T; LANES], tail: T) -> f64 {
    let mut wide = [0.0; LANES];
    for (w, v) in wide.iter_mut().zip(acc) {
        *w = v.to_f64();
    }
    lanes_total(wide, tail.to_f64())
}

/// Called once per column in the loops over a block's columns in [`lanes`]: an empty `asm!`,
/// which LLVM's loop vectorizer cannot vectorize, so it leaves those loops alone and the SLP
/// vectorizer makes each column's 16 lanes one vector (or two, or four). Left to itself, the
/// loop vectorizer took the loop over columns, once the lanes were unrolled, and vectorized
/// it with a gather and a scatter per lane: float32 65536 x 10 softmax took 2.5 times as long.
#[inline(always)]
pub(crate) fn per_column() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: an empty template: no instruction is emitted and no register, flag, stack or
    // memory is touched.
    unsafe {
        std::arch::asm!("", options(nomem, nostack, preserves_flags));
    }
}

/// [`lanes_total_t`], in registers where the token `a` has it (the same bits).
#[inline(always)]
pub(crate) fn chunk_total<T: Float, A: Arith>(acc: [T; LANES], tail: T, a: A) -> f64 {
    a.lanes_total_f32(&acc, tail)
        .unwrap_or_else(|| lanes_total_t(acc, tail))
}

/// The sum of a chunk of at most `CHUNK` values in `LANES` accumulators, then pairwise.
#[inline(always)]
fn chunk_sum<T: Float, A: Arith>(chunk: &[T], a: A) -> f64 {
    let mut acc = [T::ZERO; LANES];
    let mut lanes = chunk.chunks_exact(LANES);
    for c in &mut lanes {
        let c: &[T; LANES] = c.try_into().unwrap();
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut tail = T::ZERO;
    for &v in lanes.remainder() {
        tail += v;
    }
    // PERF: the accumulators through memory once per chunk. Otherwise the SLP vectorizer
    // shaped this loop after the pairwise total's f64 pairs: eight vectors of two lanes, a
    // load and an add each per step (float32 512 x 128256 softmax(out=): a fifth of the
    // kernel's time). Where the token adds the float32 total in registers (the same bits),
    // the accumulators stay in one: float32 logsumexp, cross_entropy and their gradient of
    // rows of 40 to 128256, 0.90-0.99x the time (AMD EPYC, AVX-512 and AVX2, 2026-12-05).
    if let Some(total) = a.lanes_total_f32(&acc, tail) {
        return total;
    }
    lanes_total_t(std::hint::black_box(acc), tail)
}

/// `out[i] = exp(x[i] - shift)`: a plain map, which LLVM's loop vectorizer always turns into
/// SIMD code (fusing the sum into this loop left the accumulators on the stack).
#[inline(always)]
fn exp_map<T: Float, A: Arith>(x: &[T], shift: T, out: &mut [T], a: A) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = a.exp_nonpos(v - shift);
    }
}

/// A row's `s = Σ exp(x - m)` beside `rest`, the same sum without the maximum's own term
/// (exactly 1). Where one maximum dominates, `s` has rounded the rest away (`1 + exp(-40) = 1`
/// in `f64`); `rest` keeps it for `ln s = log1p(rest)` and for the gradient at the maximum,
/// `p - 1 = -rest / s`. It is only taken apart where `s < 2` (see [`exp_sum`]); elsewhere
/// `rest = s`, which is all [`ExpSum::dominated`] needs to say no.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpSum {
    pub s: f64,
    pub rest: f64,
}

impl ExpSum {
    pub const ZERO: ExpSum = ExpSum { s: 0.0, rest: 0.0 };

    /// Both sums equal: no term is exactly 1 (a block whose maximum lies below the row's).
    #[inline(always)]
    pub fn all_rest(s: f64) -> ExpSum {
        ExpSum { s, rest: s }
    }

    /// One term is exactly 1 and the others add up to less than 1: `s - 1` is `rest`, and the
    /// maximum is the only term whose probability cancels against 1.
    #[inline(always)]
    pub fn dominated(self) -> bool {
        // s - rest is the maximum's 1 (or 0 for a block below the row's maximum), up to
        // rounding far below 0.5 while rest < 1.
        // `&`, not `&&`: no branch, which would mispredict on rows of random confidence.
        (self.rest < 1.0) & ((self.s - self.rest - 1.0).abs() < 0.5)
    }

    /// `ln s` for rows of `T`, in `T`'s precision: `log1p(rest)` where the maximum dominates,
    /// otherwise `ln s` (which is `log1p(s - 1)` to the bit for `s >= 1`: `s - 1` and
    /// `1 + (s - 1)` are exact there). Every path takes a row's logarithm here, so that the
    /// paths and the thread counts agree to the bit.
    // PERF: one logarithm and selects, no branch (log1p_or_ln): as a branch between two calls,
    // on float32 65536 x 10 logits of spread 3 (about half the rows dominated, at random),
    // logsumexp took 0.97 ms against 0.65 ms before the rest existed.
    #[inline(always)]
    pub fn ln<T: Float>(self) -> f64 {
        T::log1p_or_ln(self.dominated(), self.rest, self.s)
    }

    /// The sums of a row with `ones` terms exactly 1 (its maxima) and the others adding up to
    /// `rest`, by [`ExpSum`]'s rule: `rest = s` where `s >= 2` (never dominated).
    #[inline(always)]
    pub fn of_ones_and_rest(ones: u32, rest: f64) -> ExpSum {
        let s = f64::from(ones) + rest;
        ExpSum {
            s,
            rest: if s < 2.0 { rest } else { s },
        }
    }

    /// The sums of two disjoint parts of a row over the same shift.
    #[inline(always)]
    pub fn plus(self, o: ExpSum) -> ExpSum {
        ExpSum {
            s: self.s + o.s,
            rest: self.rest + o.rest,
        }
    }

    /// The sums taken to a larger shift, `f = exp(old - new)`: none of the terms is 1 any more.
    #[inline(always)]
    pub fn rescaled(self, f: f64) -> ExpSum {
        ExpSum::all_rest(self.s * f)
    }

    /// The sums of a block whose maximum is `bm` merged into those of the blocks so far,
    /// whose maximum is `m` (both in `f64`; `-inf` for a block of only `-inf`); returns the new
    /// maximum. A block of only `-inf` adds its 0 (or NaN) as is: `exp(-inf - -inf)` is NaN.
    #[inline(always)]
    pub fn merge(&mut self, m: f64, b: ExpSum, bm: f64) -> f64 {
        if bm == f64::NEG_INFINITY {
            *self = self.plus(b);
            m
        } else if bm > m {
            *self = self.rescaled((m - bm).exp()).plus(b);
            bm
        } else if bm == m {
            *self = self.plus(b);
            m
        } else {
            *self = self.plus(b.rescaled((bm - m).exp()));
            m
        }
    }
}

/// [`ExpSum`] of `exp(x - shift)` for `shift >= max(x)`, chunk totals in `f64`; its `s` is the
/// value [`exp_store_sum`] returns.
///
/// The rest is only worth its cost where the maximum can dominate, `s < 2` (with two exact ones
/// `s >= 2`, and `ln s` is exact as it is); elsewhere `rest = s`, which keeps
/// [`ExpSum::dominated`] false. Where `s < 2` and an element equals `shift`, only the one
/// chunk that holds it is summed again without it, and the chunk totals are added again in
/// their order: the hot loop stays the plain exp-sum. (Should rounding ever make another
/// chunk look like the maximum's, nothing is left out, `rest = s`, and `ln s` is the plain
/// logarithm.)
// PERF: a second accumulator in the hot loop (a compare and a masked add per vector) was
// 20-60% slower on float32 8192 x 1000 and 65536 x 10 (criterion, noisy machine); this costs
// one chunk's exps again, on rows whose sum is below 2 only.
#[inline(always)]
pub fn exp_sum<T: Float, A: Arith>(x: &[T], shift: T, ahead: Ahead<'_, T>, a: A) -> ExpSum {
    exp_sum_into(x, shift, None, ahead, a)
}

/// [`exp_sum`], the terms `exp(x - shift)` also left in `out` (of `x`'s length) when given:
/// the same sums to the bit, as the chunks' terms are summed from where they are mapped.
#[inline(always)]
fn exp_sum_into<T: Float, A: Arith>(
    x: &[T],
    shift: T,
    mut out: Option<&mut [T]>,
    ahead: Ahead<'_, T>,
    a: A,
) -> ExpSum {
    const MAX_CHUNKS: usize = ONLINE_STEP / CHUNK;
    debug_assert!(out.as_ref().is_none_or(|o| o.len() == x.len()));
    let mut totals = [0.0; MAX_CHUNKS];
    let mut s = 0.0;
    let mut buf;
    let mut held = if x.len() >= CHUNK && T::DTYPE == DType::F32 {
        buf = [T::ZERO; CHUNK];
        Some(&mut buf)
    } else {
        None
    };
    for (j, chunk) in x.chunks(CHUNK).enumerate() {
        ahead.prefetch(x.len(), j);
        let into = match out.as_deref_mut() {
            Some(o) => Some(&mut o[j * CHUNK..j * CHUNK + chunk.len()]),
            None => held.as_deref_mut().map(|h| &mut h[..chunk.len()]),
        };
        let t = chunk_exp_sum::<T, A, false>(chunk, shift, into, a);
        if j < MAX_CHUNKS {
            totals[j] = t;
        }
        s += t;
    }
    // A NaN sum keeps a NaN rest.
    if s.is_nan() || s >= 2.0 || x.len() > ONLINE_STEP {
        return ExpSum::all_rest(s);
    }
    // The maximum's chunk is the first whose total reaches 1: with s < 2 the others add up to
    // less than 1. (A search for the element itself cost more than the rest: float32 8192 x
    // 1000 logits of spread 3, a tenth of whose rows come here, logsumexp 3.2 ms against 2.8.)
    let chunks = x.len().div_ceil(CHUNK);
    let Some(c) = totals[..chunks].iter().position(|&t| t >= 1.0) else {
        return ExpSum::all_rest(s); // no term is 1: a block below the row's maximum
    };
    let mut rest = 0.0;
    for (j, &t) in totals[..chunks].iter().enumerate() {
        rest += if j == c {
            // Through the scratch, never `out`: its terms stay those of every element.
            let chunk = &x[c * CHUNK..((c + 1) * CHUNK).min(x.len())];
            let into = held.as_deref_mut().map(|h| &mut h[..chunk.len()]);
            chunk_exp_sum::<T, A, true>(chunk, shift, into, a)
        } else {
            t
        };
    }
    ExpSum { s, rest }
}

/// The exp-sum of one chunk of at most [`CHUNK`] elements, added as [`chunk_sum`] adds;
/// `SKIP_ONES` leaves out the elements equal to `shift` (whose terms are 1). `held`, of the
/// chunk's length, receives the terms.
// PERF: with `held` (rows of a chunk or more), the exps are mapped into it (in L1) and summed
// from there. Summed in the loop that makes them, the accumulator went through the stack on
// every step, a store-to-load round trip in the loop's one dependency chain (float32
// logsumexp on Zen 5: 1.9x the floor loop of benches/floor.rs on a row of 8192; 8192 x 1000
// 0.87x the time, 64 x 8192 0.80x). Rows shorter than a chunk keep that loop (with `held` too,
// 8192 x 100 took 1.1x the time), and so does `f64`, whose longer exp hides the round trip
// (`held` took 0.93-1.15x the time there); except where the caller keeps the exps
// ([`exp_sum_into`] with `out`), which saves the gradient a pass of exps. Summed in registers
// by `std::arch` intrinsics instead (the same bits, no store): AVX-512 0.90-1.01x the time on
// float32 logsumexp and cross_entropy from 256 x 1000 to 8192 x 1000, no gain beyond the
// noise; AVX2, two exps' constants spilled from its 16 registers, 1.10-1.18x (AMD EPYC,
// 2026-12-04). Not kept.
#[inline(always)]
fn chunk_exp_sum<T: Float, A: Arith, const SKIP_ONES: bool>(
    chunk: &[T],
    shift: T,
    held: Option<&mut [T]>,
    a: A,
) -> f64 {
    let term = |v: T| {
        // `d == 0`, not `v == shift`: an infinite shift leaves NaN terms, as without SKIP_ONES.
        let d = v - shift;
        if SKIP_ONES && d == T::ZERO {
            T::ZERO
        } else {
            a.exp_nonpos(d)
        }
    };
    if let Some(held) = held {
        // A plain map, as `exp_map` (which it is without `SKIP_ONES`).
        debug_assert_eq!(held.len(), chunk.len());
        for (h, &v) in held.iter_mut().zip(chunk) {
            *h = term(v);
        }
        return chunk_sum(held, a);
    }
    let mut acc = [T::ZERO; LANES];
    let mut lanes = chunk.chunks_exact(LANES);
    for c in &mut lanes {
        let c: &[T; LANES] = c.try_into().unwrap();
        for l in 0..LANES {
            acc[l] += term(c[l]);
        }
    }
    let rest = lanes.remainder();
    let mut tail = T::ZERO;
    if chunk.len() > LANES && !rest.is_empty() {
        // The remainder's terms from one vector over the chunk's last LANES elements (the
        // first LANES - rest.len() of which were summed above), then added in order as below.
        // PERF: one vector exponential instead of up to 15 scalar ones per row (see
        // BENCHMARKS.md, 2026-12-02 afternoon).
        let last: &[T; LANES] = chunk[chunk.len() - LANES..].try_into().unwrap();
        // A loop, not `array::map`: where LLVM leaves map as a call (it did in `cargo build`'s
        // library, not in the wheel's), its closure is compiled apart from the instruction
        // set's copy of the kernel, without FMA, and every `mul_add` of the exponential is a
        // call of `fmaf` (float32 2048 x 100 label-smoothed cross_entropy: 2.2x the time).
        let mut terms = [T::ZERO; LANES];
        for (t, &v) in terms.iter_mut().zip(last) {
            *t = term(v);
        }
        for &t in &terms[LANES - rest.len()..] {
            tail += t;
        }
    } else {
        for &v in rest {
            tail += term(v);
        }
    }
    chunk_total(acc, tail, a)
}

/// [`ExpSum`] of a row shorter than [`CHUNK`] over its maximum `m`: the rest in the one pass
/// of exps (the terms where `x = m` left out), the count of those ones in a pass of compares,
/// `s = ones + rest`, as the short-row paths form it. Equal to [`exp_sum`]'s sums to a few
/// ULP, not bitwise (its `s` adds the ones among the terms in `T`).
#[inline(always)]
fn short_exp_sum<T: Float, A: Arith>(x: &[T], m: T, a: A) -> ExpSum {
    debug_assert!(x.len() < CHUNK);
    let rest = chunk_exp_sum::<T, A, true>(x, m, None, a);
    let ones = x.iter().map(|&v| u32::from(v - m == T::ZERO)).sum();
    ExpSum::of_ones_and_rest(ones, rest)
}

/// `(m, sums of exp(x - m))` with `m` the maximum of `x` as in [`row_max`], reading `x` once:
/// each step's maximum is taken while the step is in L1, and the sums so far are rescaled by
/// `exp(m_old - m_new)` when the maximum grows. Rows of up to one step take the plain
/// two-pass route, whose result is the same up to rounding, and prefetch `ahead`; longer rows
/// prefetch their own next step instead ([`Ahead::next_step`]).
#[inline(always)]
pub fn max_exp_sum<T: Float, A: Arith>(x: &[T], ahead: Ahead<'_, T>, a: A) -> (T, ExpSum) {
    max_exp_sum_with(x, ahead, true, a)
}

/// [`max_exp_sum`], a long row's next step prefetched only where `steps_ahead`
/// ([`Ahead::next_step`]).
#[inline(always)]
pub fn max_exp_sum_with<T: Float, A: Arith>(
    x: &[T],
    ahead: Ahead<'_, T>,
    steps_ahead: bool,
    a: A,
) -> (T, ExpSum) {
    if x.len() <= ONLINE_STEP {
        let m = row_max(x);
        return (m, exp_sum(x, m, ahead, a));
    }
    let (mut m, mut s) = (T::NEG_INFINITY, ExpSum::ZERO);
    for (i, step) in x.chunks(ONLINE_STEP).enumerate() {
        let sm = row_max(step);
        if sm == T::NEG_INFINITY {
            // Only -inf (or NaN) here: it adds nothing, but exp(-inf - -inf) would be NaN
            // while the row's maximum is still -inf. A NaN must still poison the sum.
            if step.iter().any(|v| v.is_nan()) {
                s = ExpSum::all_rest(f64::NAN);
            }
            continue;
        }
        if sm > m {
            // exp(-inf) = 0 drops the empty sum of the first finite step; a +inf maximum
            // makes the row's sum NaN below, as the two-pass route does.
            s = s.rescaled((m.to_f64() - sm.to_f64()).exp());
            m = sm;
        }
        let ahead = if steps_ahead {
            Ahead::next_step(x, i)
        } else {
            Ahead::NONE
        };
        s = s.plus(exp_sum(step, m, ahead, a));
    }
    (m, s)
}

/// [`max_exp_sum`] of a row of at most [`ONLINE_STEP`] elements (two passes), the terms
/// `exp(x - m)` also left in `out` (of `x`'s length): a caller that needs them again reads
/// them instead of taking the exps twice. The same values as [`max_exp_sum`], bitwise.
#[inline(always)]
pub fn max_exp_store_sum<T: Float, A: Arith>(
    x: &[T],
    out: &mut [T],
    ahead: Ahead<'_, T>,
    a: A,
) -> (T, ExpSum) {
    debug_assert!(x.len() <= ONLINE_STEP);
    let m = row_max(x);
    (m, exp_sum_into(x, m, Some(out), ahead, a))
}

/// Rows from this long on prefetch their next step while they read one ([`Ahead::next_step`]).
// PERF: float32, one thread, AMD EPYC (AVX-512; AVX2 forced in brackets), time against no
// prefetch: 512 x 128256 logsumexp 0.92x (0.91x), cross_entropy 0.88-0.94x (0.93x),
// cross_entropy_and_grad 0.97-0.98x; 256 x 65536 0.94-0.97x; float64 256 x 128256
// cross_entropy 0.92x. Rows of 4096 and 8192 (whose steps the hardware's prefetcher finds in
// time, or in cache) lost up to 7%, hence the floor (64 x 32768: 0.97-0.99x). Log-softmax,
// which reads the row again, does not take it (AVX2 forced 1.07-1.08x), nor softmax's own
// long rows (storing their exps beside: 1.07-1.20x). The segments of rows split over threads
// (`ops::long_rows`) take it in every operation: softmax and log_softmax there 0.98-1.01x
// (1 x 8000000, 2 x 4000000; one and two threads). (BENCHMARKS.md, 2026-12-04, twentieth
// session.)
pub(crate) const STEPS_AHEAD_MIN: usize = 16 * ONLINE_STEP;

/// Rows per group of [`GroupStats`].
pub(crate) const LN_GROUP: usize = 8;

/// The maxima (`ms`), sums (`ss`) and `ln s` (`ls`) of a group of at most [`LN_GROUP`] rows.
pub(crate) struct GroupStats<T> {
    pub ms: [T; LN_GROUP],
    pub ss: [ExpSum; LN_GROUP],
    pub ls: [f64; LN_GROUP],
}

impl<T: Float> GroupStats<T> {
    pub fn new() -> Self {
        GroupStats {
            ms: [T::ZERO; LN_GROUP],
            ss: [ExpSum::ZERO; LN_GROUP],
            ls: [0.0; LN_GROUP],
        }
    }

    /// The statistics of group `g` of the block `x` (its rows `LN_GROUP g..`, of `k > 0`
    /// elements): each row's maximum and sums by [`max_exp_sum`], row by row, then the group's
    /// logarithms in one loop; the values of the per-row path, bitwise. The passes prefetch
    /// the rows ahead ([`Ahead`]).
    // PERF: `ln s` is a chain of some thirty dependent operations per row; taken per row,
    // it sat between a row's sum and the next row's loads. Over a group it is one vector loop
    // (eight rows per instruction on AVX-512): float32 2048 x 100 logsumexp 0.76x the time,
    // 512 x 1000 0.96x (BENCHMARKS.md). Callers loop over the groups themselves rather than
    // pass a closure: a closure left as a call runs without the instruction set's features
    // (seen in a `cargo build` of the library).
    #[inline(always)]
    pub fn fill<A: Arith>(&mut self, x: &[T], g: usize, k: usize, a: A) {
        let first = g * LN_GROUP;
        let xg = &x[first * k..((first + LN_GROUP) * k).min(x.len())];
        debug_assert!(k > 0);
        for (r, ((xr, m), s)) in rows(xg, k).zip(&mut self.ms).zip(&mut self.ss).enumerate() {
            (*m, *s) = max_exp_sum(xr, Ahead::of(x, first + r, k, &[], 0), a);
        }
        self.logarithms();
    }

    /// [`Self::fill`], each row's terms `exp(x - max)` left in its row of `out` (the block's
    /// output, laid out as `x`), for a caller that reads them again; `out`'s rows ahead are
    /// prefetched where `fetch_out` ([`fetches_out`]).
    #[inline(always)]
    pub fn fill_into<A: Arith>(
        &mut self,
        x: &[T],
        g: usize,
        k: usize,
        out: &mut [T],
        fetch_out: bool,
        a: A,
    ) {
        let first = g * LN_GROUP;
        debug_assert!(k > 0 && out.len() == x.len());
        let mut rows = RowsAhead::from_row(x, k, first, &mut out[first * k..], fetch_out);
        for (m, s) in self.ms.iter_mut().zip(&mut self.ss) {
            let Some((_, xr, or, ahead)) = rows.next() else {
                break;
            };
            (*m, *s) = max_exp_store_sum(xr, or, ahead, a);
        }
        self.logarithms();
    }

    /// [`Self::fill`] for rows of [`SMALL_K`] up to [`CHUNK`] elements, their sums by
    /// [`short_exp_sum`]: no second look at the rows their maximum dominates.
    // PERF: float32 16384 x 100 logsumexp 0.86x the time of `fill`, 4096 x 64 0.66x (about a
    // third and a half of these rows dominated), Intel Xeon, 2026-12-03 (BENCHMARKS.md). Its
    // own kernels (`short_rows`): as a branch in `fill`, rows of 1000 took 1.05-1.10x the time.
    #[inline(always)]
    pub fn fill_short<A: Arith>(&mut self, xg: &[T], k: usize, a: A) {
        debug_assert!(short_rows(k) && xg.len() <= LN_GROUP * k);
        for ((xr, m), s) in rows(xg, k).zip(&mut self.ms).zip(&mut self.ss) {
            *m = row_max(xr);
            *s = short_exp_sum(xr, *m, a);
        }
        self.logarithms();
    }

    #[inline(always)]
    fn logarithms(&mut self) {
        // A short group also takes the logarithms of sums it does not hold (the previous
        // group's, or zeros): unused.
        for (l, s) in self.ls.iter_mut().zip(&self.ss) {
            *l = s.ln::<T>();
        }
    }
}

/// [`max_exp_sum`] of one piece of a longer row: a piece of only `-inf` sums to 0 (NaN if it
/// holds a NaN), never `exp(-inf - -inf)`, since the row's maximum may lie in another piece.
#[inline(always)]
pub fn segment_max_exp_sum<T: Float, A: Arith>(x: &[T], a: A) -> (T, ExpSum) {
    let (m, s) = max_exp_sum(x, Ahead::NONE, a);
    if m == T::NEG_INFINITY {
        return (
            m,
            ExpSum::all_rest(if x.iter().any(|v| v.is_nan()) {
                f64::NAN
            } else {
                0.0
            }),
        );
    }
    (m, s)
}

/// For `shift >= max(x)`, writes `exp(x - shift)` into `out` and returns its sum, added in
/// the order of [`exp_sum`]. The exps are mapped first and summed from L1 afterwards: fusing
/// the two left the accumulators on the stack (float32 128 x 128256 `softmax(out=)`, one
/// thread: 21.7 ms fused, 19.9 ms split).
#[inline(always)]
pub fn exp_store_sum<T: Float, A: Arith>(
    x: &[T],
    shift: T,
    out: &mut [T],
    ahead: Ahead<'_, T>,
    a: A,
) -> f64 {
    let mut total = 0.0;
    for (j, (chunk, ochunk)) in x.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
        ahead.prefetch(x.len(), j);
        exp_map(chunk, shift, ochunk, a);
        total += chunk_sum(ochunk, a);
    }
    total
}

/// `out = exp(x)` for `x <= 0`: the kernels' exponential alone, as their loops run it (the
/// floor bench's `exp` group measures it per element).
#[inline(always)]
fn exp_nonpos_alone<T: Float, A: Arith>(x: &[T], out: &mut [T], a: A) {
    exp_map(x, T::ZERO, out, a);
}

crate::isa::isa_dispatch! {
    pub fn exp_nonpos_map[T: Float](x: &[T], out: &mut [T]) = exp_nonpos_alone;
}

/// For a group of rows shorter than [`SMALL_K`]: each row's maximum into `ms` and
/// `out = exp(x - max)` row by row, the `exp` taken as one flat map over the whole group. Per
/// row, a map of a few elements runs mostly in the scalar remainder of its vector loop; over
/// the group it runs at full width (float32 65536 x 10 softmax: see BENCHMARKS.md). The values
/// and, summed with [`chunk_sum`], the sums are bitwise those of the per-row path.
#[inline(always)]
pub(crate) fn small_rows_exp<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    ms: &mut [T],
    out: &mut [T],
    a: A,
) {
    for ((xr, or), m) in rows(x, k).zip(rows_mut(out, k)).zip(ms.iter_mut()) {
        // row_max's value (a maximum does not depend on the order), without its 16 lanes.
        *m = T::NEG_INFINITY;
        for &v in xr {
            if v > *m {
                *m = v;
            }
        }
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = v - *m;
        }
    }
    for o in out.iter_mut() {
        *o = a.exp_nonpos(*o);
    }
}

/// The sum of one row of exps from [`small_rows_exp`], in the order of [`exp_sum`].
#[inline(always)]
pub(crate) fn small_row_sum<T: Float, A: Arith>(exps: &[T], a: A) -> f64 {
    debug_assert!(exps.len() <= CHUNK);
    if exps.len() < LANES {
        // chunk_sum's value: no full lane, so its lanes add zeros to the tail's sum.
        let mut tail = T::ZERO;
        for &v in exps {
            tail += v;
        }
        return tail.to_f64();
    }
    chunk_sum(exps, a)
}

/// For a group of rows shorter than [`SMALL_K`]: each row's maximum into `ms`, its sums into
/// `ss` and `ln s` into `ls`, and `exps = exp(x - m)` with the maxima's own terms left out (0
/// at each element equal to its row's maximum, where the term is exactly 1); `full`, when
/// given, gets the exps with those terms (for a gradient, which would otherwise put them back
/// with a select per element, a branch in the scalar remainder of a short row's loop). Each row's sum of
/// `exps` is then its rest beside `c` exact ones, `c` the count of its maxima, without a second
/// sum: `s = c + rest`, and `ln s = log1p(rest)` where `c = 1`. The row path adds the 1 among
/// the terms in `T` instead, so the two agree to a few ULP, not bitwise.
// PERF: float32 65536 x 10 logits of spread 3, logsumexp, one thread: 0.80 ms, against 1.47 ms
// with the rest summed apart where s < 2 (a branch per row, random) and 0.65 ms before the
// rest existed (see BENCHMARKS.md).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // an input, its scratch and four outputs, as arrays
pub(crate) fn small_rows_stats<T: Float, A: Arith>(
    x: &[T],
    k: usize,
    ms: &mut [T],
    exps: &mut [T],
    full: Option<&mut [T]>,
    ss: &mut [ExpSum],
    ls: &mut [f64],
    a: A,
) {
    let (mut rv, mut cv) = ([0.0; SMALL_ROWS], [0u32; SMALL_ROWS]);
    for (((xr, er), m), c) in rows(x, k)
        .zip(rows_mut(exps, k))
        .zip(ms.iter_mut())
        .zip(&mut cv)
    {
        // row_max's value (a maximum does not depend on the order), without its 16 lanes.
        let mut mx = T::NEG_INFINITY;
        for &v in xr {
            mx = if v > mx { v } else { mx };
        }
        let mut count = 0;
        for (e, &v) in er.iter_mut().zip(xr) {
            *e = v - mx;
            count += u32::from(v == mx);
        }
        (*m, *c) = (mx, count);
    }
    // One flat map over the group: per row, a map of a few elements would run mostly in the
    // scalar remainder of its vector loop. An infinite maximum leaves no 0 in its row (its
    // differences are NaN or -inf), and its sums NaN.
    let rest_term = |d: T, e: T| if d == T::ZERO { T::ZERO } else { e };
    match full {
        Some(full) => {
            for (e, f) in exps.iter_mut().zip(full.iter_mut()) {
                *f = a.exp_nonpos(*e);
                *e = rest_term(*e, *f);
            }
        }
        None => {
            for e in exps.iter_mut() {
                *e = rest_term(*e, a.exp_nonpos(*e));
            }
        }
    }
    for (er, r) in rows(exps, k).zip(rv.iter_mut()) {
        *r = small_row_sum(er, a);
    }
    for (((l, o), &rest), &c) in ls.iter_mut().zip(ss.iter_mut()).zip(&rv).zip(&cv) {
        *o = ExpSum::of_ones_and_rest(c, rest);
        *l = o.ln::<T>();
    }
}

/// `len` zeros in `stack` when they fit, else in `heap`: a call on a few short rows then costs
/// no allocation (a malloc/free pair was ~230 of the ~11.5k instructions of an 8 x 10
/// `cross_entropy`).
#[inline(always)]
pub(crate) fn scratch<'a, T: Float>(
    len: usize,
    stack: &'a mut [T],
    heap: &'a mut Vec<T>,
) -> &'a mut [T] {
    if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, T::ZERO);
        heap
    }
}

/// Elements of the stack scratch of the short-row paths (see [`scratch`]).
pub(crate) const STACK_SCRATCH: usize = 256;

/// `sum(a * b)` in `f64`.
#[inline(always)]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut ac = a.chunks_exact(LANES);
    let mut bc = b.chunks_exact(LANES);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for l in 0..LANES {
            acc[l] += x[l].to_f64() * y[l].to_f64();
        }
    }
    let tail = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| x.to_f64() * y.to_f64())
        .sum();
    lanes_total(acc, tail)
}

/// `Σ w_c (z_c - at)` in `f64`, with `w_c = 1` without weights.
#[inline(always)]
pub fn shifted_dot<T: Float>(w: Option<&[T]>, z: &[T], at: f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut zc = z.chunks_exact(LANES);
    let tail: f64 = match w {
        Some(w) => {
            let mut wc = w.chunks_exact(LANES);
            for (x, y) in (&mut wc).zip(&mut zc) {
                for l in 0..LANES {
                    acc[l] += x[l].to_f64() * (y[l].to_f64() - at);
                }
            }
            let tail = wc.remainder().iter().zip(zc.remainder());
            tail.map(|(&x, &y)| x.to_f64() * (y.to_f64() - at)).sum()
        }
        None => {
            for y in &mut zc {
                for l in 0..LANES {
                    acc[l] += y[l].to_f64() - at;
                }
            }
            zc.remainder().iter().map(|&y| y.to_f64() - at).sum()
        }
    };
    lanes_total(acc, tail)
}

/// `sum(a)` in `f64`.
#[inline(always)]
pub fn sum<T: Float>(a: &[T]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut ac = a.chunks_exact(LANES);
    for x in &mut ac {
        for l in 0..LANES {
            acc[l] += x[l].to_f64();
        }
    }
    lanes_total(acc, ac.remainder().iter().map(|v| v.to_f64()).sum())
}

/// What a pass over one row prefetches beside it, a [`CHUNK`] at a time as it goes: a row of
/// the input ahead (`x`; in a long row read a step at a time, its next step) and, where the
/// call's arrays fit in the cache ([`fetches_out`]), the row of the output the caller will
/// write then (`out`, for writing). Only a hint: no result depends on it.
#[derive(Clone, Copy)]
pub(crate) struct Ahead<'a, T> {
    x: &'a [T],
    out: &'a [T],
}

impl<'a, T> Ahead<'a, T> {
    pub const NONE: Self = Ahead { x: &[], out: &[] };

    /// For row `i` of the block `x` (rows of `k`): the row [`PREFETCH_BYTES`] ahead (at least
    /// two rows), as far as the block goes, and the same row of the output, of which `out`
    /// holds the rows from `out_first` on (empty where the caller writes none, or where the
    /// output is not to be prefetched, [`fetches_out`]). Nothing for
    /// rows shorter than a [`CHUNK`] (their loads overlap well enough) or longer than
    /// [`ONLINE_STEP`] (read a step at a time).
    #[inline(always)]
    pub fn of(x: &'a [T], i: usize, k: usize, out: &'a [T], out_first: usize) -> Self {
        if !prefetches_rows(k) {
            return Ahead::NONE;
        }
        let row = i + (PREFETCH_BYTES / (k * std::mem::size_of::<T>())).max(2);
        Ahead {
            x: part(x, row * k, k),
            out: part(out, row.saturating_sub(out_first) * k, k),
        }
    }

    /// For step `s` of a row read a step at a time ([`ONLINE_STEP`]): the input's next step,
    /// for rows of at least [`STEPS_AHEAD_MIN`] elements.
    #[inline(always)]
    pub fn next_step(x: &'a [T], s: usize) -> Self {
        if x.len() < STEPS_AHEAD_MIN {
            return Ahead::NONE;
        }
        Ahead {
            x: part(x, (s + 1) * ONLINE_STEP, ONLINE_STEP),
            out: &[],
        }
    }

    /// Prefetches piece `j` (of [`CHUNK`] elements) of both rows; nothing for a pass over
    /// fewer than a [`CHUNK`] of `row` elements ([`Ahead::of`] gives those nothing to fetch).
    // Plain functions, no closures: a closure LLVM leaves as a call runs without the
    // instruction set's features.
    // PERF: the test on `row`, not only empty pieces: cutting the empty pieces per row cost
    // rows of 100 and 200 3-6% (float32 log_softmax and cross_entropy_and_grad, Intel Xeon).
    #[inline(always)]
    fn prefetch(self, row: usize, j: usize) {
        if row < CHUNK {
            return;
        }
        crate::simd::prefetch(part(self.x, j * CHUNK, CHUNK));
        crate::simd::prefetch_write(part(self.out, j * CHUNK, CHUNK));
    }
}

/// The rows of `k` elements of `x` beside those of `out`, each with what to prefetch while
/// it is read: [`Ahead::of`] in `x` and, where the caller asks, in the rows of `out` after it
/// (split off the row being written, and still readable for that). A lending iterator,
/// walked with `while let`.
// Not a closure taking the rows: a closure LLVM leaves as a call runs without the instruction
// set's features.
pub(crate) struct RowsAhead<'x, 'o, T> {
    x: &'x [T],
    rows: std::slice::ChunksExact<'x, T>,
    k: usize,
    i: usize,
    out: &'o mut [T],
    fetch_out: bool,
}

/// A row of [`RowsAhead`]: its index, input and output, and what to prefetch beside it.
type RowAhead<'x, 'o, 'a, T> = (usize, &'x [T], &'o mut [T], Ahead<'a, T>);

impl<'x, 'o, T> RowsAhead<'x, 'o, T> {
    /// The rows of `x` and `out`; the output's rows are prefetched only where `fetch_out`
    /// ([`fetches_out`]).
    pub fn new(x: &'x [T], k: usize, out: &'o mut [T], fetch_out: bool) -> Self {
        Self::from_row(x, k, 0, out, fetch_out)
    }

    /// From row `i` on, `out` holding the output's rows from row `i`.
    pub fn from_row(x: &'x [T], k: usize, i: usize, out: &'o mut [T], fetch_out: bool) -> Self {
        // (`k == 0`: `x` is empty, and so are the rows.)
        let rows = x[(i * k).min(x.len())..].chunks_exact(k.max(1));
        debug_assert!(out.len() >= rows.len() * k);
        RowsAhead {
            x,
            rows,
            k,
            i,
            out,
            fetch_out,
        }
    }

    /// Row `i`: `(i, its input, its output, what to prefetch)`; `None` after the last row.
    #[inline(always)]
    pub fn next(&mut self) -> Option<RowAhead<'x, 'o, '_, T>> {
        let (xr, i, k) = (self.rows.next()?, self.i, self.k);
        let (or, after) = std::mem::take(&mut self.out).split_at_mut(k);
        self.out = after;
        self.i += 1;
        let out: &[T] = if self.fetch_out { self.out } else { &[] };
        Some((i, xr, or, Ahead::of(self.x, i, k, out, i + 1)))
    }
}

/// Whether the passes over rows prefetch the output's rows they will write, for a call that
/// reads and writes `arrays` arrays of `n` rows of `k` elements of `T` (the input and the
/// output; one where the output is written over the input; and any other array of that shape
/// it reads, such as probability targets): only where those fit well inside the last-level
/// cache ([`crate::isa::last_level_cache`]; always where the CPU does not say).
// PERF: `prefetchw` brings a line owned into L1 early; from L3 that saved float32 8192 x 256
// `softmax(out=)` up to a quarter of its time, but with the lines in memory it cost rows of
// 500 to 2048 1.05-1.22x the time (AMD EPYC with 32 MiB of L3, BENCHMARKS.md, 2026-12-04).
pub(crate) fn fetches_out<T>(arrays: usize, n: usize, k: usize) -> bool {
    let bytes = (arrays * std::mem::size_of::<T>())
        .saturating_mul(n)
        .saturating_mul(k);
    crate::isa::last_level_cache().is_none_or(|llc| bytes <= llc / 4 * 3)
}

/// Whether the passes over rows of `k` elements prefetch the rows ahead ([`Ahead::of`]).
pub(crate) fn prefetches_rows(k: usize) -> bool {
    (CHUNK..=ONLINE_STEP).contains(&k)
}

/// `v[at..at + n]`, cut short at the end of `v`.
#[inline(always)]
fn part<T>(v: &[T], at: usize, n: usize) -> &[T] {
    let lo = at.min(v.len());
    &v[lo..(lo + n).min(v.len())]
}

/// Splits `rows * k` elements into rows; yields nothing for `k == 0` (an empty class axis).
#[inline]
pub(crate) fn rows<T>(x: &[T], k: usize) -> impl Iterator<Item = &[T]> {
    x.chunks_exact(k.max(1))
        .take(if k == 0 { 0 } else { usize::MAX })
}

#[inline]
pub(crate) fn rows_mut<T>(x: &mut [T], k: usize) -> impl Iterator<Item = &mut [T]> {
    x.chunks_exact_mut(k.max(1))
        .take(if k == 0 { 0 } else { usize::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{Fused, Unfused};

    #[inline(always)]
    fn lanes_total_with<T: Float, A: Arith>(acc: &[T; LANES], tail: T, a: A) -> Option<f64> {
        a.lanes_total_f32(acc, tail)
    }

    crate::isa::isa_dispatch! {
        pub fn token_total[T: Float](acc: &[T; LANES], tail: T) -> Option<f64> = lanes_total_with;
    }

    /// The totals of a chunk's float32 accumulators in registers (AVX2, AVX-512) are bitwise
    /// `lanes_total_t`'s, NaN matching NaN, on accumulators of every magnitude and sign,
    /// subnormal, infinite or NaN; the levels without them, and float64, say so (`None`).
    #[test]
    fn register_totals_are_the_generic_ones() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bits = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        for level in crate::isa::Level::supported() {
            let has = level.isa() != crate::isa::Isa::Baseline;
            for case in 0..20_000 {
                // Finite values of either sign over 80 binades, whose sums round in f64 (so
                // that another order of the additions shows), in most cases; any bit pattern
                // (subnormal, infinite, NaN) in the others.
                let mut value = || {
                    let b = bits();
                    if case % 4 == 0 {
                        return f32::from_bits(b);
                    }
                    let sign = if b & 1 == 0 { 1.0 } else { -1.0 };
                    let frac = 1.0 + (b >> 9) as f32 * 2f32.powi(-23);
                    sign * frac * 2f32.powi((b >> 1) as i32 % 80 - 40)
                };
                let mut acc = [0.0f32; LANES];
                acc.iter_mut().for_each(|v| *v = value());
                let tail = value();
                let want = lanes_total_t(acc, tail);
                match token_total(level, &acc, tail) {
                    Some(got) => assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{level:?} {acc:?} {tail}: {got} against {want}"
                    ),
                    None => assert!(!has, "{level:?} has no total in registers"),
                }
            }
            assert_eq!(token_total(level, &[1.0f64; LANES], 0.0), None);
        }
    }

    /// The two ways `chunk_exp_sum` adds a chunk (mapped into `held` then summed, or summed as
    /// made) give the same bits, with and without the maximum's terms, on any chunk length.
    #[test]
    fn held_and_fused_chunk_sums_agree() {
        fn check<A: Arith>(a: A) {
            let mut s = 0x2545_F491_4F6C_DD1Du64;
            for len in [1, 15, 16, 17, 100, 232, 255, 256] {
                let x: Vec<f32> = (0..len)
                    .map(|i| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        if i % 7 == 3 {
                            0.0 // the shift itself: a term of 1, left out with SKIP_ONES
                        } else {
                            -20.0 * ((s >> 40) as f32 / (1u64 << 24) as f32)
                        }
                    })
                    .collect();
                let mut held = [0.0f32; CHUNK];
                let both = |skip: bool, held: &mut [f32; CHUNK]| {
                    if skip {
                        (
                            chunk_exp_sum::<f32, A, true>(&x, 0.0, Some(&mut held[..len]), a),
                            chunk_exp_sum::<f32, A, true>(&x, 0.0, None, a),
                        )
                    } else {
                        (
                            chunk_exp_sum::<f32, A, false>(&x, 0.0, Some(&mut held[..len]), a),
                            chunk_exp_sum::<f32, A, false>(&x, 0.0, None, a),
                        )
                    }
                };
                for skip in [false, true] {
                    let (h, f) = both(skip, &mut held);
                    assert_eq!(h.to_bits(), f.to_bits(), "len {len}, skip ones {skip}");
                }
            }
        }
        check(Fused);
        check(Unfused);
    }

    /// [`RowsAhead`] walks the rows of the input beside those of the output, and gives the
    /// output's row ahead to prefetch only where `fetch_out`.
    #[test]
    fn rows_ahead_fetch_the_output_only_when_asked() {
        let (k, n) = (300, 9);
        let x: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        for fetch_out in [false, true] {
            let mut out = vec![0f32; n * k];
            let mut rows = RowsAhead::new(&x, k, &mut out, fetch_out);
            let mut seen = 0;
            while let Some((i, xr, or, ahead)) = rows.next() {
                assert_eq!((xr.as_ptr(), xr.len()), (x[i * k..].as_ptr(), k));
                or.fill(i as f32);
                // Rows of 1200 bytes: the row 6 ahead, in both arrays while it is in the block.
                let ahead_row = i + PREFETCH_BYTES / (k * 4);
                if ahead_row < n {
                    assert_eq!(ahead.x.as_ptr(), x[ahead_row * k..].as_ptr(), "row {i}");
                } else {
                    assert!(ahead.x.is_empty(), "row {i}");
                }
                if fetch_out && ahead_row < n {
                    // The row `ahead_row - i - 1` rows past this one's end in `out`.
                    let after = or.as_ptr_range().end;
                    let want = after.wrapping_add((ahead_row - i - 1) * k);
                    assert_eq!((ahead.out.as_ptr(), ahead.out.len()), (want, k), "row {i}");
                } else {
                    assert!(ahead.out.is_empty(), "row {i}");
                }
                seen += 1;
            }
            assert_eq!(seen, n);
            assert!((0..n).all(|i| out[i * k..(i + 1) * k].iter().all(|&v| v == i as f32)));
        }
    }

    /// A long row read a step at a time prefetches the step after the one it reads (the last
    /// step nothing), shorter rows nothing; the sums run with and without it on the rows at
    /// the floor's edge (a slice taken out of bounds would panic there) and agree.
    #[test]
    fn long_rows_fetch_their_next_step() {
        for len in [STEPS_AHEAD_MIN - 1, STEPS_AHEAD_MIN, STEPS_AHEAD_MIN + 5] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 / 37.0)
                .collect();
            let steps = len.div_ceil(ONLINE_STEP);
            for s in 0..steps {
                let ahead = Ahead::next_step(&x, s);
                assert!(ahead.out.is_empty());
                if len < STEPS_AHEAD_MIN || s + 1 == steps {
                    assert!(ahead.x.is_empty(), "len {len}, step {s}");
                } else {
                    let next = &x[(s + 1) * ONLINE_STEP..];
                    let want = (next.as_ptr(), next.len().min(ONLINE_STEP));
                    assert_eq!(
                        (ahead.x.as_ptr(), ahead.x.len()),
                        want,
                        "len {len}, step {s}"
                    );
                }
            }
            let with = max_exp_sum_with(&x, Ahead::NONE, true, Unfused);
            let without = max_exp_sum_with(&x, Ahead::NONE, false, Unfused);
            assert_eq!(with.0, without.0);
            assert_eq!(
                with.1.ln::<f32>().to_bits(),
                without.1.ln::<f32>().to_bits()
            );
        }
    }

    /// [`Ahead::of`] gives the row [`PREFETCH_BYTES`] (at least two rows) ahead in the input
    /// and the output, cut at the block's end, and nothing for rows outside the lengths it
    /// serves; the output may start at a later row.
    #[test]
    fn ahead_is_the_row_ahead_cut_at_the_block() {
        fn check<T: Float>() {
            let size = std::mem::size_of::<T>();
            for k in [1, 255, 256, 300, 1000, 2048, 2049] {
                for n in [1, 2, 3, 5, 17] {
                    let x = vec![T::ZERO; n * k];
                    let out = vec![T::ZERO; n * k];
                    let d = (PREFETCH_BYTES / (k * size)).max(2);
                    for i in 0..n {
                        for first in [0, i + 1] {
                            let out = &out[(first * k).min(out.len())..];
                            let a = Ahead::of(&x, i, k, out, first);
                            if !(CHUNK..=ONLINE_STEP).contains(&k) {
                                assert!(a.x.is_empty() && a.out.is_empty(), "k={k}");
                                continue;
                            }
                            let lo = ((i + d) * k).min(x.len());
                            let len = (x.len() - lo).min(k);
                            assert_eq!(a.x.as_ptr(), x[lo..].as_ptr(), "k={k} n={n} i={i}");
                            assert_eq!(a.x.len(), len, "k={k} n={n} i={i}");
                            let olo = ((i + d - first) * k).min(out.len());
                            assert_eq!(a.out.as_ptr(), out[olo..].as_ptr(), "k={k} i={i}");
                            assert_eq!(a.out.len(), len, "k={k} n={n} i={i} first={first}");
                        }
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// Both forms of [`row_max`] (lanes folded, or with the remainder in one loop) give the
    /// largest element ignoring NaN, wherever it lies (any lane, the remainder), on lengths
    /// around a vector's and a chunk's; `-inf` for an empty row or one of only NaN.
    #[test]
    fn row_max_both_forms_ignore_nan() {
        fn check<T: Float>() {
            for len in [
                0usize, 1, 5, 15, 16, 17, 31, 33, 100, 255, 256, 257, 272, 300, 1000, 1008,
            ] {
                for at in (0..len).step_by(7).chain(len.checked_sub(1)) {
                    let x: Vec<T> = (0..len)
                        .map(|i| match i % 5 {
                            _ if i == at => T::from_f64(3.5),
                            1 => T::from_f64(f64::NAN),
                            2 => T::NEG_INFINITY,
                            _ => T::from_f64(-((i * 37 % 101) as f64)),
                        })
                        .collect();
                    for m in [row_max_with::<T, true>(&x), row_max_with::<T, false>(&x)] {
                        assert_eq!(m.to_f64(), 3.5, "len {len}, maximum at {at}");
                    }
                }
                let nan = vec![T::from_f64(f64::NAN); len];
                for m in [
                    row_max_with::<T, true>(&nan),
                    row_max_with::<T, false>(&nan),
                ] {
                    assert_eq!(m.to_f64(), f64::NEG_INFINITY, "len {len} of NaN");
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }
}
