//! Every instruction-set level the CPU has, run side by side on the same inputs. Each call is
//! given its [`Level`], so nothing global is switched and these tests run in parallel with
//! all the others.
//!
//! On rows of 0, 1, 15, 17, 2047, 2049 and 1,000,003 elements in both float types (the grouped
//! short-row path, plain rows, rows just under and past one online step of 2048, and a few rows
//! split over the threads), softmax, log-softmax, logsumexp and the cross-entropy on class
//! indices (per-row losses alone; the mean with its gradient), through `ops`, must:
//!
//! - agree bitwise between AVX2 and AVX-512, which run the same fused arithmetic in the same
//!   order (see [`crate::isa`]);
//! - agree between the baseline and those within [`BASELINE_ULPS`];
//! - agree at every level with a float64 reference within [`tol`], the bound of
//!   `kernels::exact_tests`.
//!
//! `binary_cross_entropy_with_logits` is checked against its reference on the same lengths at
//! every level (its kernel's own tests hold it to a few ULP, and its levels to each other).

use crate::float::Float;
use crate::isa::{Isa, Level};
use crate::ops::{self, BinaryArgs, CeOptions, Loss, Reduction, RowMap, Src, Targets, Upstream};
use crate::strided::{View, ViewMut};
use crate::testing::{reference, spread, tol, uniform, unit};

/// `(row length, rows)`: a few rows of each length.
const SHORT: [(usize, usize); 6] = [(0, 3), (1, 5), (15, 7), (17, 7), (2047, 5), (2049, 5)];
/// Two rows: split within the row over the threads (`ops::long_rows`).
const LONG: (usize, usize) = (1_000_003, 2);
const IGNORE: i64 = -100;

/// How far the baseline may be from the fused levels, in ULPs of `T` at each result's scale
/// (the scale [`tol`] multiplies; `eps·scale` per unit). The copies compute the same operations
/// in the same order and differ only inside `exp`, whose polynomial the baseline evaluates with
/// two roundings per multiply-add; each copy's `exp` is within 2 ULP of the exact value
/// (`math`'s sweeps), so two copies' are within 4. A probability `exp(x - max) / s` takes that
/// 4 from its own term and at most 4 more from the sum `s`, whose terms are all positive and
/// each moved by at most 4: 8. Log-sums, losses and log-probabilities move less (`log1p`
/// divides the sum's move by `1 + rest`), gradients as much as the probabilities. Measured on
/// these inputs: at most 2.2 (rows of 2049), 1.5 on the rows of a million.
const BASELINE_ULPS: f64 = 8.0;

/// What one level computes on one input.
struct Results<T> {
    softmax: Vec<T>,
    log_softmax: Vec<T>,
    logsumexp: Vec<T>,
    /// Per row, the loss alone (`"none"`).
    losses: Vec<f64>,
    /// `"mean"`, with its gradient.
    mean: f64,
    grad: Vec<T>,
}

/// `n` rows of `k` logits, and a target per row: the row's maximum, another class, or ignored.
fn input<T: Float>(k: usize, n: usize) -> (Vec<T>, Vec<i64>) {
    let x: Vec<T> = uniform(n * k, 0x5EED ^ k as u64, 20.0)
        .into_iter()
        .map(T::from_f64)
        .collect();
    let targets = (0..n)
        .map(|i| match i % 4 {
            _ if k == 0 => IGNORE,
            0 => reference(&x[i * k..(i + 1) * k]).2 as i64,
            3 => IGNORE,
            _ => ((i * 7919) % k) as i64,
        })
        .collect();
    (x, targets)
}

/// `n` rows of `k` of `x`; of nothing when `k == 0`.
fn rows<T: Float>(x: &[T], n: usize, k: usize) -> View<'_> {
    let v = if k == 0 {
        View::repeated_row::<T>(&[], n)
    } else {
        View::of_slice(x, k)
    };
    assert_eq!((v.rows(), v.k()), (n, k));
    v
}

/// `out` as `n` rows of `k`; as `n` rows of nothing when `k == 0`.
fn rows_mut<T: Float>(out: &mut [T], n: usize, k: usize) -> ViewMut<'_> {
    if k > 0 {
        return ViewMut::of_slice(out, k);
    }
    let size = std::mem::size_of::<T>() as isize;
    // SAFETY: `n` rows of no element address no memory; `out` is borrowed for the view's life.
    unsafe {
        ViewMut::from_raw(
            out.as_mut_ptr() as *mut u8,
            T::DTYPE,
            &[n, 0],
            &[0, size],
            Some(1),
        )
    }
    .unwrap()
}

fn run<T: Float>(isa: Level, x: &[T], n: usize, k: usize, targets: &[i64]) -> Results<T> {
    let xv = rows(x, n, k);
    let map = |map: RowMap, out_k: usize| {
        let mut out = vec![T::ZERO; n * out_k];
        let mut ov = rows_mut(&mut out, n, out_k);
        ops::row_map::<T>(isa, map, Src::View(&xv), &mut ov).unwrap();
        out
    };
    let (softmax, log_softmax) = (map(RowMap::Softmax, k), map(RowMap::LogSoftmax, k));
    let mut logsumexp = vec![T::ZERO; n];
    ops::row_map::<T>(
        isa,
        RowMap::LogSumExp,
        Src::View(&xv),
        &mut ViewMut::of_slice(&mut logsumexp, 1),
    )
    .unwrap();
    let tv = View::of_indices(targets);
    let shape = [n];
    let t = Targets::Index {
        view: &tv,
        ignore_index: IGNORE,
        shape: &shape,
    };
    let o = CeOptions::<T>::plain(k);
    let ce = |reduction, losses: Option<&mut ViewMut<'_>>, grad: Option<&mut ViewMut<'_>>| {
        let up = Upstream::Scalar(1.0);
        let loss = Loss::CrossEntropy(&o);
        ops::multiclass_loss::<T>(isa, loss, Src::View(&xv), t, reduction, up, losses, grad)
            .unwrap()
    };
    let mut losses = vec![0.0; n];
    ce(
        Reduction::None,
        Some(&mut ViewMut::of_slice(&mut losses, 1)),
        None,
    );
    let mut grad = vec![T::ZERO; n * k];
    let mean = ce(Reduction::Mean, None, Some(&mut rows_mut(&mut grad, n, k)));
    Results {
        softmax,
        log_softmax,
        logsumexp,
        losses,
        mean,
        grad,
    }
}

/// Checks one result of every level (`got`, in the order of `levels`) against its reference
/// `want` and each other; returns the baseline's distance from the fused levels in
/// [`BASELINE_ULPS`]'s units.
fn point(
    what: &dyn Fn() -> String,
    levels: &[Level],
    got: &[f64],
    want: f64,
    scale: f64,
    tol: f64,
) -> f64 {
    for (isa, &g) in levels.iter().zip(got) {
        let ok = if want.is_finite() {
            (g - want).abs() <= tol * scale
        } else {
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan())
        };
        assert!(ok, "{} at {isa:?}: {g:e}, reference {want:e}", what());
    }
    // Each fused level against the first: no allocation per point (millions of them).
    let mut fused = (levels.iter().zip(got)).filter(|(isa, _)| isa.isa() != Isa::Baseline);
    let first = fused.next();
    if let Some((a, &ga)) = first {
        for (b, &gb) in fused {
            assert!(
                ga.to_bits() == gb.to_bits() || (ga.is_nan() && gb.is_nan()),
                "{}: {a:?} gives {ga:e}, {b:?} {gb:e}",
                what()
            );
        }
    }
    let base = (levels.iter().zip(got)).find(|(isa, _)| isa.isa() == Isa::Baseline);
    match (base, first) {
        (Some((_, &b)), Some((_, &f))) if b.to_bits() != f.to_bits() => (b - f).abs() / scale,
        _ => 0.0,
    }
}

/// Runs every level on `n` rows of `k` and checks them (see the module docs).
fn check_levels<T: Float>(k: usize, n: usize) {
    let (x, targets) = input::<T>(k, n);
    let levels = Level::supported();
    let runs: Vec<Results<T>> = levels
        .iter()
        .map(|&isa| run(isa, &x, n, k, &targets))
        .collect();
    let u = unit::<T>();
    let check = |what: &dyn Fn() -> String, got: &dyn Fn(&Results<T>) -> f64, want, scale, tol| {
        let mut values = [0.0; Isa::ALL.len()];
        values.iter_mut().zip(&runs).for_each(|(v, r)| *v = got(r));
        let apart = point(what, &levels, &values[..runs.len()], want, scale, tol) / (2.0 * u);
        assert!(
            apart <= BASELINE_ULPS,
            "{}: the baseline is {apart} ULP away",
            what()
        );
    };
    let counted = targets.iter().filter(|&&t| t != IGNORE).count() as f64;
    let (mut total, mut total_tol) = (0.0, 0.0f64);
    for (i, &t) in targets.iter().enumerate() {
        let at = |what: &'static str, j: usize| move || format!("{what} k={k} row {i} [{j}]");
        if k == 0 {
            check(
                &at("logsumexp", 0),
                &|r| r.logsumexp[i].to_f64(),
                f64::NEG_INFINITY,
                0.0,
                0.0,
            );
            check(&at("loss", 0), &|r| r.losses[i], 0.0, 0.0, 0.0);
            continue;
        }
        let row = &x[i * k..(i + 1) * k];
        let (lse, rest, top) = reference(row);
        let (m, ln_s, s) = (row[top].to_f64(), rest.ln_1p(), 1.0 + rest);
        let tol = tol::<T>(k, spread(row));
        check(
            &at("logsumexp", 0),
            &|r| r.logsumexp[i].to_f64(),
            lse,
            m.abs() + ln_s,
            tol,
        );
        for (j, xj) in row.iter().enumerate() {
            let e = i * k + j;
            let d = xj.to_f64() - m;
            let p = d.exp() / s;
            check(&at("softmax", j), &|r| r.softmax[e].to_f64(), p, p, tol);
            check(
                &at("log_softmax", j),
                &|r| r.log_softmax[e].to_f64(),
                d - ln_s,
                d.abs() + ln_s,
                tol,
            );
            let g = match t {
                IGNORE => 0.0,
                t if j != t as usize => p,
                _ if j == top => -rest / s,
                _ => p - 1.0,
            };
            let scale = if t == IGNORE { 0.0 } else { p + g.abs() };
            check(
                &at("grad", j),
                &|r| r.grad[e].to_f64(),
                g / counted,
                scale / counted,
                tol,
            );
        }
        let loss = if t == IGNORE {
            0.0
        } else {
            lse - row[t as usize].to_f64()
        };
        check(&at("loss", 0), &|r| r.losses[i], loss, loss, tol);
        total += loss;
        total_tol = total_tol.max(tol);
    }
    let mean = total / counted;
    check(
        &|| format!("mean k={k}"),
        &|r| r.mean,
        mean,
        mean.abs(),
        total_tol,
    );
}

/// `binary_cross_entropy_with_logits` of `n` rows of `k`, losses and gradient, against
/// `max(x, 0) - x·y + log1p(exp(-|x|))` and `σ(x) - y` in `f64`, within the bound of the
/// crate's other tests of it, `(1 + |want|)` times 1e-5 for `f32`, 1e-12 for `f64`: the
/// reference's `max(x, 0) - x·y` cancels where `y` is near 1, so it holds no bound relative to
/// the loss itself (the kernel's own test, against a reference that does not cancel, does).
fn check_binary<T: Float>(isa: Level, k: usize, n: usize) {
    let x: Vec<T> = uniform(n * k, 0xB1 ^ k as u64, 20.0)
        .into_iter()
        .map(T::from_f64)
        .collect();
    let y: Vec<T> = uniform(n * k, 0xB2 ^ k as u64, 20.0)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            T::from_f64(if i % 3 == 0 {
                (v + 10.0) / 20.0
            } else {
                (i % 2) as f64
            })
        })
        .collect();
    let (xv, yv) = (rows(&x, n, k), rows(&y, n, k));
    let args = BinaryArgs {
        input: Src::View(&xv),
        target: &yv,
        weight: None,
        pos_weight: None,
        shape: &[n, k],
    };
    let (mut losses, mut grad) = (vec![0.0; n * k], vec![T::ZERO; n * k]);
    ops::binary_loss::<T>(
        isa,
        true,
        args,
        Reduction::None,
        Upstream::Scalar(1.0),
        Some(&mut rows_mut(&mut losses, n, k)),
        Some(&mut rows_mut(&mut grad, n, k)),
    )
    .unwrap();
    let tol = if T::DTYPE == crate::dtype::DType::F32 {
        1e-5
    } else {
        1e-12
    };
    for (e, (xe, ye)) in x.iter().zip(&y).enumerate() {
        let (xe, ye) = (xe.to_f64(), ye.to_f64());
        let loss = xe.max(0.0) - xe * ye + (-xe.abs()).exp().ln_1p();
        let sig = 1.0 / (1.0 + (-xe).exp());
        let close = |got: f64, want: f64| (got - want).abs() <= tol * (1.0 + want.abs());
        let (l, g) = (losses[e], grad[e].to_f64());
        assert!(
            close(l, loss),
            "loss k={k} [{e}] x={xe} y={ye}: {l} vs {loss}"
        );
        assert!(
            close(g, sig - ye),
            "grad k={k} [{e}] x={xe} y={ye}: {g} vs {}",
            sig - ye
        );
    }
}

#[test]
fn levels_agree_on_short_rows_float32() {
    for (k, n) in SHORT {
        check_levels::<f32>(k, n);
    }
}

#[test]
fn levels_agree_on_short_rows_float64() {
    for (k, n) in SHORT {
        check_levels::<f64>(k, n);
    }
}

#[test]
fn levels_agree_on_rows_of_a_million_float32() {
    check_levels::<f32>(LONG.0, LONG.1);
}

#[test]
fn levels_agree_on_rows_of_a_million_float64() {
    check_levels::<f64>(LONG.0, LONG.1);
}

#[test]
fn bce_with_logits_matches_its_reference() {
    for isa in Level::supported() {
        for (k, n) in SHORT.into_iter().chain([LONG]) {
            check_binary::<f32>(isa, k, n);
            check_binary::<f64>(isa, k, n);
        }
    }
}
