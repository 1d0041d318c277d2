//! Exactness where the maximum dominates (issue 16): `logsumexp`, `log_softmax`, the
//! cross-entropy loss and its gradient at the target, on rows whose maximum takes almost all of
//! the sum, through every path (short-row groups, plain rows, rows past one online step, rows
//! split over the threads, and the fused linear cross-entropy), in both float types, against
//! float64 references built with `log1p`.
//!
//! Tolerance, from the error analysis rather than from the results, in units `u` of `T`'s
//! rounding (2^-24, 2^-53): each `exp` is within 2 ULP, each accumulator lane adds at most 16
//! terms in `T`, the lanes' pairwise total and `log1p` (worked in `T`: its input rounded to
//! `T`, then within 2 ULP) add a few more roundings, chunks of 256 are added in `f64` one after
//! another, and the output is rounded to `T`: `24 + k/256` units.
//! One more term comes from the input, not the sums: `x - max` is rounded in `T` before its
//! `exp`, which moves `exp(x - max)` by up to `|x - max|·u` relative (as in every
//! implementation that works in `T`; the reference takes the exact difference). Where `lse =
//! m + ln s` adds terms of opposite signs, the bound is relative to `|m| + |ln s|`.
//! Before `log1p` these results were off by up to 100% (a loss of 0 for 4.2e-18). The bound
//! and the reference live in `crate::testing`, shared with `crate::isa_tests`.

use crate::float::Float;
use crate::linear::{
    linear_cross_entropy, LinUpstream, LinearCe, LinearGrads, Operand, RowsOut, DEFAULT_MAX_MEMORY,
};
use crate::testing::{reference, spread, tol};
use crate::{CeOptions, Reduction};

/// Rows of `k` whose maximum dominates: SciPy's test_gh18295 rows (`[0, -40]` in float64,
/// `[0, -10]` and `[0, -20]` in float32) padded with -1e4 (whose exp is 0), then random rows
/// whose other logits lie `gap` and more below the maximum, the maximum at 0 or shifted.
fn confident_rows<T: Float>(k: usize, n: usize, seed: u64) -> Vec<T> {
    let mut state = seed | 1;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let f32_rows = std::mem::size_of::<T>() == 4;
    // float32 terms stay normal (exp(-80) is 1.8e-35); float64 reach 1e-260.
    let gaps: &[f64] = if f32_rows {
        &[3.0, 8.0, 10.0, 20.0, 40.0, 60.0]
    } else {
        &[3.0, 10.0, 20.0, 40.0, 100.0, 300.0, 600.0]
    };
    let scipy: &[f64] = if f32_rows { &[-10.0, -20.0] } else { &[-40.0] };
    let mut x = Vec::with_capacity(n * k);
    for i in 0..n {
        let mut row = vec![-1e4; k];
        if i < scipy.len() && k >= 2 {
            row[0] = 0.0;
            row[1] = scipy[i];
        } else {
            let gap = gaps[i % gaps.len()];
            let shift = if i % 3 == 0 {
                0.0
            } else {
                50.0 * (unit() - 0.5)
            };
            for v in row.iter_mut() {
                *v = shift - gap - 5.0 * unit();
            }
            row[(unit() * k as f64) as usize % k] = shift;
        }
        x.extend(row.into_iter().map(T::from_f64));
    }
    x
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs()
}

/// Checks logsumexp, log_softmax and the cross-entropy (its loss and gradient, through the
/// row API) of `n` confident rows of `k`.
fn check_rows<T: Float>(k: usize, n: usize) {
    let x: Vec<T> = confident_rows(k, n, 0x9E37_79B9 ^ k as u64);
    let mut lse = vec![T::ZERO; n];
    crate::logsumexp(&x, k, &mut lse).unwrap();
    let mut ls = vec![T::ZERO; n * k];
    crate::log_softmax(&x, k, &mut ls).unwrap();
    let refs: Vec<_> = x.chunks(k).map(reference).collect();
    let targets: Vec<i64> = refs.iter().map(|r| r.2 as i64).collect();
    let (mut g, mut losses) = (vec![T::ZERO; n * k], vec![0.0; n]);
    let opts = CeOptions::<T>::plain(k);
    crate::cross_entropy_and_grad(
        &x,
        k,
        &targets,
        &opts,
        Reduction::Sum,
        &mut g,
        Some(&mut losses),
    )
    .unwrap();
    for (i, &(want_lse, rest, t)) in refs.iter().enumerate() {
        let row = &x[i * k..(i + 1) * k];
        let tol = tol::<T>(k, spread(row));
        let what = format!("k={k} row {i} rest={rest:e}");
        let got = lse[i].to_f64();
        let (m, ln_s) = (row[t].to_f64(), rest.ln_1p());
        assert!(
            (got - want_lse).abs() <= tol * (m.abs() + ln_s),
            "logsumexp {what}: {got:e} vs {want_lse:e}"
        );
        let got = ls[i * k + t].to_f64();
        assert!(
            close(got, -rest.ln_1p(), tol),
            "log_softmax {what}: {got:e}"
        );
        assert!(
            close(losses[i], rest.ln_1p(), tol),
            "loss {what}: {:e}",
            losses[i]
        );
        // The loss alone takes other loops (no gradient buffer to hold the exps).
        let alone = crate::cross_entropy(row, k, &targets[i..i + 1], &opts, Reduction::Sum);
        let alone = alone.unwrap();
        assert!(
            close(alone, rest.ln_1p(), tol),
            "loss alone {what}: {alone:e}"
        );
        let got = g[i * k + t].to_f64();
        let want = -rest / (1.0 + rest);
        assert!(close(got, want, tol), "grad {what}: {got:e} vs {want:e}");
    }
}

#[test]
fn short_rows_float32() {
    for k in [2, 3, 10, 17, 63] {
        check_rows::<f32>(k, 70);
    }
}

#[test]
fn short_rows_float64() {
    for k in [2, 3, 10, 17, 63] {
        check_rows::<f64>(k, 70);
    }
}

#[test]
fn rows_float32() {
    for k in [64, 200, 2500] {
        check_rows::<f32>(k, 37);
    }
}

#[test]
fn rows_float64() {
    for k in [64, 200, 2500] {
        check_rows::<f64>(k, 37);
    }
}

/// One and three rows long enough to be split over the threads (`long_rows`).
#[test]
fn split_rows_both_types() {
    let k = (1 << 16) + 1000;
    assert!(crate::ops::long_rows::applies(3, k));
    for n in [1, 3] {
        check_rows::<f32>(k, n);
        check_rows::<f64>(k, n);
    }
}

/// The fused linear cross-entropy with one hidden unit of 1: the logits are the weights
/// themselves, so its loss and `d_weight` are the row's loss and gradient.
fn check_linear<T: Float>(v: usize) {
    let x: Vec<T> = confident_rows(v, 9, 0x2545_F491 ^ v as u64);
    let opts = CeOptions::<T>::plain(v);
    for (i, row) in x.chunks(v).enumerate() {
        let (_, rest, t) = reference(row);
        let tol = tol::<T>(v, spread(row));
        let a = LinearCe {
            hidden: Operand::Slice(&[T::ONE]),
            weight: Operand::Slice(row),
            bias: None,
            targets: &[t as i64],
            ignore_index: -100,
            n: 1,
            d: 1,
            v,
            opts: &opts,
            max_memory: DEFAULT_MAX_MEMORY,
        };
        let (mut dh, mut dw) = (vec![T::ZERO; 1], vec![T::ZERO; v]);
        let grads = LinearGrads {
            d_hidden: &mut dh,
            d_weight: RowsOut::Slice(&mut dw),
            d_bias: None,
        };
        let up = LinUpstream::Scalar(1.0);
        let loss = linear_cross_entropy(&a, Reduction::Sum, up, None, Some(grads)).unwrap();
        let what = format!("v={v} row {i} rest={rest:e}");
        assert!(close(loss, rest.ln_1p(), tol), "loss {what}: {loss:e}");
        let want = -rest / (1.0 + rest);
        let got = dw[t].to_f64();
        assert!(close(got, want, tol), "grad {what}: {got:e} vs {want:e}");
    }
}

#[test]
fn fused_linear_both_types() {
    for v in [10, 3000] {
        check_linear::<f32>(v);
        check_linear::<f64>(v);
    }
}
