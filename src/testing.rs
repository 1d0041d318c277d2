//! What the crate's numerical tests share: reproducible inputs, the float64 reference of a
//! row's log-sum-exp and the error bound the results are held to (derived in the header of
//! `kernels::exact_tests`).

use crate::float::Float;

/// The error bound for a row of `k` whose largest `|x - max|` that still adds to the sum is
/// `d`, relative to the quantity's scale: `(24 + k/256 + d)·u`, `u` the rounding unit of `T`.
pub(crate) fn tol<T: Float>(k: usize, d: f64) -> f64 {
    (24.0 + (k / 256) as f64 + d) * unit::<T>()
}

/// The rounding unit `u` of `T`: 2^-24 for `f32`, 2^-53 for `f64` (half an ULP at 1).
pub(crate) fn unit<T: Float>() -> f64 {
    if T::DTYPE == crate::dtype::DType::F32 {
        f32::EPSILON as f64 / 2.0
    } else {
        f64::EPSILON / 2.0
    }
}

/// The largest `max - x` of the row among the terms that add to its sum (a padding of -1e4
/// adds an exact 0).
pub(crate) fn spread<T: Float>(row: &[T]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
    row.iter()
        .map(|v| m - v.to_f64())
        .filter(|&d| d < 1000.0)
        .fold(0.0, f64::max)
}

/// What a row's results should be, in `f64` from the row's values: `(lse, rest, argmax)` with
/// `rest = Σ_{j != argmax} exp(x_j - max)` and `lse = max + log1p(rest)`.
pub(crate) fn reference<T: Float>(row: &[T]) -> (f64, f64, usize) {
    let (mut t, mut m) = (0, f64::NEG_INFINITY);
    for (j, v) in row.iter().enumerate() {
        if v.to_f64() > m {
            (t, m) = (j, v.to_f64());
        }
    }
    let rest: f64 = row
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != t)
        .map(|(_, v)| (v.to_f64() - m).exp())
        .sum();
    (m + rest.ln_1p(), rest, t)
}

/// `len` values uniform in `[-spread/2, spread/2)`, from a xorshift seeded with `seed`.
pub(crate) fn uniform(len: usize, seed: u64, spread: f64) -> Vec<f64> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * spread
        })
        .collect()
}
