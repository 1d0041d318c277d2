//! The numerical kernels: pure functions over contiguous rows (`&[T]` holding `rows * k`
//! elements), single-threaded, no allocation beyond an optional scratch row, no knowledge of
//! strides, dtypes other than `T`, threads or Python. `crate::ops` feeds them blocks of rows.
//!
//! Shared building blocks live here: the row maximum and the sums of `exp(x - shift)`, written
//! with `LANES` independent accumulators so LLVM turns them into SIMD loops with a fixed
//! (hence reproducible) summation order. Sums of `exp` run in `T` within chunks of `CHUNK`
//! elements (at most `CHUNK / LANES` terms per accumulator, so a float32 chunk sum is within
//! ~32 ULP) and chunk totals are added in `f64`. Other sums are accumulated in `f64` throughout.

pub mod binary;
pub mod cross_entropy;
pub mod softmax;

use crate::float::Float;

const LANES: usize = 8;
/// Elements summed in the compute type before the partial sum moves to `f64`.
// PERF: summing exp in f32 lanes instead of widening each term to f64 halved the time of
// an exp sum over float32 rows (512 x 128256: 204 ms -> 106 ms, one thread).
const CHUNK: usize = 256;

/// The instruction set the kernels are vectorized for. Until runtime dispatch lands this is
/// the platform baseline the wheel is compiled for, so it runs on every machine of the arch.
pub fn simd_backend() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "sse2"
    } else if cfg!(target_arch = "aarch64") {
        "neon"
    } else {
        "scalar"
    }
}

/// The largest element of `x`, ignoring NaN (a NaN still poisons the row through its sum);
/// `-inf` for an empty row.
#[inline]
pub fn row_max<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            if c[l] > acc[l] {
                acc[l] = c[l];
            }
        }
    }
    let mut m = T::NEG_INFINITY;
    for &v in chunks.remainder().iter().chain(acc.iter()) {
        if v > m {
            m = v;
        }
    }
    m
}

#[inline]
fn lanes_total(acc: [f64; LANES], tail: f64) -> f64 {
    // Pairwise, in a fixed order.
    let a = (acc[0] + acc[4]) + (acc[2] + acc[6]);
    let b = (acc[1] + acc[5]) + (acc[3] + acc[7]);
    (a + b) + tail
}

#[inline]
fn lanes_total_t<T: Float>(acc: [T; LANES], tail: T) -> f64 {
    lanes_total(acc.map(|v| v.to_f64()), tail.to_f64())
}

/// `sum(exp(x - shift))`, chunk totals in `f64`.
#[inline]
pub fn exp_sum<T: Float>(x: &[T], shift: T) -> f64 {
    let mut total = 0.0;
    for chunk in x.chunks(CHUNK) {
        let mut acc = [T::ZERO; LANES];
        let mut lanes = chunk.chunks_exact(LANES);
        for c in &mut lanes {
            for l in 0..LANES {
                acc[l] += (c[l] - shift).exp();
            }
        }
        let mut tail = T::ZERO;
        for &v in lanes.remainder() {
            tail += (v - shift).exp();
        }
        total += lanes_total_t(acc, tail);
    }
    total
}

/// Writes `exp(x - shift)` into `out` and returns its sum (chunk totals in `f64`).
#[inline]
pub fn exp_store_sum<T: Float>(x: &[T], shift: T, out: &mut [T]) -> f64 {
    let mut total = 0.0;
    for (chunk, ochunk) in x.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
        let mut acc = [T::ZERO; LANES];
        let mut xc = chunk.chunks_exact(LANES);
        let mut oc = ochunk.chunks_exact_mut(LANES);
        for (c, o) in (&mut xc).zip(&mut oc) {
            for l in 0..LANES {
                let e = (c[l] - shift).exp();
                o[l] = e;
                acc[l] += e;
            }
        }
        let mut tail = T::ZERO;
        for (&v, o) in xc.remainder().iter().zip(oc.into_remainder()) {
            let e = (v - shift).exp();
            *o = e;
            tail += e;
        }
        total += lanes_total_t(acc, tail);
    }
    total
}

/// `sum(a * b)` in `f64`.
#[inline]
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

/// `sum(a)` in `f64`.
#[inline]
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
