//! # sce_rs
//!
//! Numerically stable softmax, log-softmax, logsumexp and the cross-entropy family with their
//! gradients, for `f32` and `f64` rows, parallel and deterministic.
//!
//! The crate is a pure-Rust core with an optional Python binding (feature `python`, switched
//! on by maturin). Its public surface is what a Rust caller (or another language's binding)
//! needs: the functions at this root over contiguous slices of rows, [`CeOptions`] (validated
//! by [`CeOptions::new`]), [`Reduction`], [`Error`], the thread count, [`simd_backend`], and
//! the fused linear cross-entropy in [`linear`]. The layers below it are the crate's own, from
//! the bottom:
//!
//! - `strided` (memory): arrays of any strides and storage dtype seen as blocks of contiguous
//!   rows, the one place where pointers become slices (`View<'a>` to read, `ViewMut<'a>` to
//!   write); `pool` (threads): the thread pool and the fixed block schedule behind
//!   thread-count independent results.
//! - `kernels`: pure row math, one block of contiguous `&[T]` rows at a time, built on `math`
//!   (our own vectorizable `exp` and `ln`) and `isa` (the instruction set: each dispatched
//!   kernel takes an `isa::Level`, which can only hold a level the CPU supports).
//! - `ops`: strategies over whole strided views (blocks of rows in parallel, a few long rows
//!   split within, fixed-order reductions), with their checks.
//! - On top, the two callers of `ops`: these slice functions and the Python binding
//!   (`python`). Each reads the instruction set once per call (`isa::Level::active`, which
//!   honours `SCE_RS_FORCE_ISA`) and passes it down; `linear` (the fused linear
//!   cross-entropy) and `scoring` do the same over the kernels directly.
//!
//! ```
//! let x = [2.0f64, 1.0, 0.1];
//! let mut p = [0.0; 3];
//! sce_rs::softmax(&x, 3, &mut p).unwrap();
//! assert!((p[0] - 0.659).abs() < 1e-3);
//! let loss = sce_rs::cross_entropy(&x, 3, &[0], &sce_rs::CeOptions::plain(3), sce_rs::Reduction::Sum).unwrap();
//! assert!((loss - 0.417).abs() < 1e-3);
//! ```

// The public items' docs link to the layers beneath them on purpose: the crate's docs are
// read with `cargo doc --document-private-items` (the Makefile's `doc`), where they resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod dtype;
pub(crate) mod error;
pub(crate) mod float;
pub(crate) mod isa;
pub(crate) mod kernels;
pub mod linear;
pub(crate) mod math;
pub(crate) mod ops;
pub(crate) mod pool;
pub mod scoring;
pub(crate) mod simd;
pub(crate) mod strided;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod isa_tests;
#[cfg(test)]
mod testing;

pub use error::{Error, Result};
pub use float::Float;
pub use kernels::simd_backend;
pub use ops::{CeOptions, Reduction};
pub use pool::{num_threads, set_num_threads};

use isa::Level;
use ops::{RowMap, Src, Targets, Upstream};
use strided::{View, ViewMut};

fn check_rows(what: &str, len: usize, k: usize) -> Result<usize> {
    if k == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(Error::Shape(format!("{what}: k = 0 needs an empty slice")))
        };
    }
    if !len.is_multiple_of(k) {
        return Err(Error::Shape(format!(
            "{what}: length {len} is not a multiple of the row length {k}"
        )));
    }
    Ok(len / k)
}

fn check_len(what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::Shape(format!(
            "{what}: expected {want} elements, got {len}"
        )));
    }
    Ok(())
}

fn map_slice<T: Float>(
    isa: Level,
    map: RowMap,
    x: &[T],
    k: usize,
    out: &mut [T],
    out_k: usize,
) -> Result<()> {
    let n = check_rows("x", x.len(), k)?;
    check_len("out", out.len(), n * out_k)?;
    let xv = View::of_slice(x, k);
    let mut ov = ViewMut::of_slice(out, out_k);
    ops::row_map::<T>(isa, map, Src::View(&xv), &mut ov)
}

/// Softmax of each row of `k` elements of `x` into `out` (same length).
pub fn softmax<T: Float>(x: &[T], k: usize, out: &mut [T]) -> Result<()> {
    map_slice(Level::active(), RowMap::Softmax, x, k, out, k)
}

/// Log-softmax of each row of `k` elements of `x` into `out` (same length).
pub fn log_softmax<T: Float>(x: &[T], k: usize, out: &mut [T]) -> Result<()> {
    map_slice(Level::active(), RowMap::LogSoftmax, x, k, out, k)
}

/// `log(sum(exp(row)))` of each row of `k` elements into `out` (one value per row).
pub fn logsumexp<T: Float>(x: &[T], k: usize, out: &mut [T]) -> Result<()> {
    map_slice(Level::active(), RowMap::LogSumExp, x, k, out, 1)
}

/// `out = exp(x)` for `x <= 0` (any `x > 0` gives a wrong value, never undefined behaviour),
/// with the exponential the kernels use: for the floor bench, which measures it alone.
#[doc(hidden)]
pub fn exp_nonpos<T: Float>(x: &[T], out: &mut [T]) -> Result<()> {
    if x.len() != out.len() {
        return Err(Error::Shape(format!(
            "exp_nonpos: out has {} elements, x {}",
            out.len(),
            x.len()
        )));
    }
    kernels::exp_nonpos_map(Level::active(), x, out);
    Ok(())
}

/// Cross-entropy of rows of `k` logits against class indices (`-100` is ignored).
pub fn cross_entropy<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
) -> Result<f64> {
    ce_slices(
        Level::active(),
        x,
        k,
        target,
        options,
        reduction,
        None,
        None,
    )
}

/// Cross-entropy and its gradient with respect to `x`, written into `grad` (same length as
/// `x`); for `Reduction::None`, `losses` receives one loss per row.
pub fn cross_entropy_and_grad<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
    grad: &mut [T],
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    ce_slices(
        Level::active(),
        x,
        k,
        target,
        options,
        reduction,
        Some(grad),
        losses,
    )
}

/// Cross-entropy and its gradient written over the logits `x` themselves (no second buffer of
/// `x`'s size), each block read before it is overwritten; see [`cross_entropy_and_grad`].
pub fn cross_entropy_and_grad_in_place<T: Float>(
    x: &mut [T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    let n = check_rows("x", x.len(), k)?;
    let mut xv = ViewMut::of_slice(x, k);
    ce_call(
        Level::active(),
        Src::Out,
        n,
        target,
        options,
        reduction,
        Some(&mut xv),
        losses,
    )
}

/// Cross-entropy of rows of `k` logits against rows of `k` class probabilities (soft or
/// one-hot labels; `"mean"` divides by the row count).
pub fn cross_entropy_with_probs<T: Float>(
    x: &[T],
    k: usize,
    probs: &[T],
    options: &CeOptions<T>,
    reduction: Reduction,
) -> Result<f64> {
    check_rows("x", x.len(), k)?;
    check_len("probs", probs.len(), x.len())?;
    let (xv, pv) = (View::of_slice(x, k), View::of_slice(probs, k));
    let up = Upstream::Scalar(1.0);
    let loss = ops::Loss::CrossEntropy(options);
    ops::multiclass_loss(
        Level::active(),
        loss,
        Src::View(&xv),
        Targets::Probs(&pv),
        reduction,
        up,
        None,
        None,
    )
}

#[allow(clippy::too_many_arguments)]
fn ce_slices<T: Float>(
    isa: Level,
    x: &[T],
    k: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
    grad: Option<&mut [T]>,
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    let n = check_rows("x", x.len(), k)?;
    let xv = View::of_slice(x, k);
    let mut gv = grad
        .map(|g| check_len("grad", g.len(), x.len()).map(|_| ViewMut::of_slice(g, k)))
        .transpose()?;
    ce_call(
        isa,
        Src::View(&xv),
        n,
        target,
        options,
        reduction,
        gv.as_mut(),
        losses,
    )
}

/// The cross-entropy of `n` rows read from `x` against class indices (`-100` ignored).
#[allow(clippy::too_many_arguments)]
fn ce_call<T: Float>(
    isa: Level,
    x: Src<'_>,
    n: usize,
    target: &[i64],
    options: &CeOptions<T>,
    reduction: Reduction,
    grad: Option<&mut ViewMut<'_>>,
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    check_len("target", target.len(), n)?;
    let tv = View::of_indices(target);
    let mut lv = losses
        .map(|l| check_len("losses", l.len(), n).map(|_| ViewMut::of_slice(l, 1)))
        .transpose()?;
    let targets = Targets::Index {
        view: &tv,
        ignore_index: -100,
        shape: &[n],
    };
    let loss = ops::Loss::CrossEntropy(options);
    let up = Upstream::Scalar(1.0);
    ops::multiclass_loss(isa, loss, x, targets, reduction, up, lv.as_mut(), grad)
}
/// The vector-Jacobian product of softmax, `s * (g - sum(g * s))`, for rows of `k` of the
/// upstream gradient `g` and the softmax output `s`, into `out` (all of one length).
pub fn softmax_backward<T: Float>(g: &[T], s: &[T], k: usize, out: &mut [T]) -> Result<()> {
    backward_slices(Level::active(), false, g, s, k, out)
}

/// The vector-Jacobian product of log-softmax, `g - exp(y) * sum(g)`, for rows of `k` of the
/// upstream gradient `g` and the log-softmax output `y`, into `out` (all of one length).
pub fn log_softmax_backward<T: Float>(g: &[T], y: &[T], k: usize, out: &mut [T]) -> Result<()> {
    backward_slices(Level::active(), true, g, y, k, out)
}

fn backward_slices<T: Float>(
    isa: Level,
    log: bool,
    g: &[T],
    y: &[T],
    k: usize,
    out: &mut [T],
) -> Result<()> {
    check_rows("grad_output", g.len(), k)?;
    check_len("output", y.len(), g.len())?;
    check_len("out", out.len(), g.len())?;
    let (gv, yv) = (View::of_slice(g, k), View::of_slice(y, k));
    ops::softmax_backward::<T>(isa, log, &gv, &yv, &mut ViewMut::of_slice(out, k))
}

/// The negative log-likelihood of rows of `k` log-probabilities against class indices
/// (`-100` is ignored), with optional per-class weights (PyTorch's `F.nll_loss`).
pub fn nll_loss<T: Float>(
    x: &[T],
    k: usize,
    target: &[i64],
    weight: Option<&[T]>,
    reduction: Reduction,
) -> Result<f64> {
    let n = check_rows("x", x.len(), k)?;
    check_len("target", target.len(), n)?;
    if let Some(w) = weight {
        check_len("weight", w.len(), k)?;
    }
    let (xv, tv) = (View::of_slice(x, k), View::of_indices(target));
    let targets = Targets::Index {
        view: &tv,
        ignore_index: -100,
        shape: &[n],
    };
    let up = Upstream::Scalar(1.0);
    ops::multiclass_loss(
        Level::active(),
        ops::Loss::Nll(weight),
        Src::View(&xv),
        targets,
        reduction,
        up,
        None,
        None,
    )
}

/// The operands of a binary loss as slices: `input` and `target` of one length, `weight` of
/// that length too, and `pos_weight` of the row length `k` (one per column, as PyTorch
/// broadcasts it along the last axis).
#[derive(Clone, Copy, Debug)]
pub struct Binary<'a, T> {
    pub input: &'a [T],
    pub target: &'a [T],
    pub k: usize,
    pub weight: Option<&'a [T]>,
    pub pos_weight: Option<&'a [T]>,
}

/// PyTorch's `F.binary_cross_entropy` on probabilities (an input outside `[0, 1]` is an
/// error); `pos_weight` must be `None`.
pub fn binary_cross_entropy<T: Float>(a: Binary<'_, T>, reduction: Reduction) -> Result<f64> {
    if a.pos_weight.is_some() {
        return Err(Error::Value(
            "pos_weight applies to binary_cross_entropy_with_logits only".into(),
        ));
    }
    binary_slices(false, a, reduction, None)
}

/// PyTorch's `F.binary_cross_entropy_with_logits` (the stable form).
pub fn binary_cross_entropy_with_logits<T: Float>(
    a: Binary<'_, T>,
    reduction: Reduction,
) -> Result<f64> {
    binary_slices(true, a, reduction, None)
}

/// [`binary_cross_entropy_with_logits`] and its gradient with respect to `input`, written into
/// `grad` (same length); for `Reduction::None`, `losses` receives the elementwise losses.
pub fn binary_cross_entropy_with_logits_and_grad<T: Float>(
    a: Binary<'_, T>,
    reduction: Reduction,
    grad: &mut [T],
    losses: Option<&mut [f64]>,
) -> Result<f64> {
    binary_slices(true, a, reduction, Some((grad, losses)))
}

#[allow(clippy::type_complexity)]
fn binary_slices<T: Float>(
    logits: bool,
    a: Binary<'_, T>,
    reduction: Reduction,
    outputs: Option<(&mut [T], Option<&mut [f64]>)>,
) -> Result<f64> {
    let (len, k) = (a.input.len(), a.k);
    let n = check_rows("input", len, k)?;
    check_len("target", a.target.len(), len)?;
    if let Some(w) = a.weight {
        check_len("weight", w.len(), len)?;
    }
    if let Some(p) = a.pos_weight {
        check_len("pos_weight", p.len(), k)?;
    }
    let (xv, yv) = (View::of_slice(a.input, k), View::of_slice(a.target, k));
    let wv = a.weight.map(|w| View::of_slice(w, k));
    let pv = a.pos_weight.map(|p| View::repeated_row(p, n));
    let args = ops::BinaryArgs {
        input: Src::View(&xv),
        target: &yv,
        weight: wv.as_ref(),
        pos_weight: pv.as_ref(),
        shape: &[n, k],
    };
    let up = Upstream::Scalar(1.0);
    match outputs {
        None => ops::binary_loss::<T>(Level::active(), logits, args, reduction, up, None, None),
        Some((grad, losses)) => {
            check_len("grad", grad.len(), len)?;
            let mut gv = ViewMut::of_slice(grad, k);
            let mut lv = losses
                .map(|l| check_len("losses", l.len(), len).map(|_| ViewMut::of_slice(l, k)))
                .transpose()?;
            ops::binary_loss::<T>(
                Level::active(),
                logits,
                args,
                reduction,
                up,
                lv.as_mut(),
                Some(&mut gv),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    //! The slice API against its own building blocks and textbook formulas: every function a
    //! Rust caller gets, each checked once here (the numerics are tested in their modules).
    use super::*;

    const X: [f64; 6] = [0.5, -1.0, 2.0, 3.0, 0.0, -0.5];
    const T: [i64; 2] = [2, 0];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn exp_nonpos_is_exp_and_refuses_a_short_out() {
        let x = [0.0, -0.5, -3.0, -700.0, f64::NEG_INFINITY];
        let mut out = [0.0; 5];
        exp_nonpos(&x, &mut out).unwrap();
        assert!(
            x.iter().zip(&out).all(|(&v, &e)| close(e, v.exp())),
            "{out:?}"
        );
        let mut short = [7.0; 4];
        assert!(matches!(exp_nonpos(&x, &mut short), Err(Error::Shape(_))));
        assert_eq!(short, [7.0; 4], "nothing written on an error");
    }

    #[test]
    fn in_place_gradient_equals_the_separate_one() {
        let o = CeOptions::new(3, Some(&[1.0, 2.0, 0.5]), 0.1, 1e-3, None).unwrap();
        let mut grad = [0.0; 6];
        let want = cross_entropy_and_grad(&X, 3, &T, &o, Reduction::Mean, &mut grad, None).unwrap();
        let mut x = X;
        let got =
            cross_entropy_and_grad_in_place(&mut x, 3, &T, &o, Reduction::Mean, None).unwrap();
        assert_eq!(got.to_bits(), want.to_bits());
        assert_eq!(x, grad);
    }

    #[test]
    fn one_hot_probabilities_equal_class_indices() {
        let o = CeOptions::plain(3);
        let one_hot = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let a = cross_entropy_with_probs(&X, 3, &one_hot, &o, Reduction::Sum).unwrap();
        let b = cross_entropy(&X, 3, &T, &o, Reduction::Sum).unwrap();
        assert!(close(a, b), "{a} vs {b}");
    }

    #[test]
    fn nll_of_log_softmax_is_cross_entropy() {
        let mut ls = [0.0; 6];
        log_softmax(&X, 3, &mut ls).unwrap();
        let w = [1.0, 2.0, 0.5];
        let nll = nll_loss(&ls, 3, &T, Some(&w), Reduction::Mean).unwrap();
        let o = CeOptions::new(3, Some(&w), 0.0, 0.0, None).unwrap();
        let ce = cross_entropy(&X, 3, &T, &o, Reduction::Mean).unwrap();
        assert!(close(nll, ce), "{nll} vs {ce}");
        assert!(nll_loss(&ls, 3, &T, Some(&w[..2]), Reduction::Mean).is_err());
    }

    #[test]
    fn backward_functions_follow_their_formulas() {
        let g = [1.0, -2.0, 0.5, 0.0, 3.0, 1.0];
        let (mut s, mut out) = ([0.0; 6], [0.0; 6]);
        softmax(&X, 3, &mut s).unwrap();
        softmax_backward(&g, &s, 3, &mut out).unwrap();
        for r in 0..2 {
            let dot: f64 = (0..3).map(|j| g[3 * r + j] * s[3 * r + j]).sum();
            for j in 0..3 {
                assert!(close(out[3 * r + j], s[3 * r + j] * (g[3 * r + j] - dot)));
            }
        }
        let mut y = [0.0; 6];
        log_softmax(&X, 3, &mut y).unwrap();
        log_softmax_backward(&g, &y, 3, &mut out).unwrap();
        for r in 0..2 {
            let sum: f64 = g[3 * r..3 * r + 3].iter().sum();
            for j in 0..3 {
                assert!(close(
                    out[3 * r + j],
                    g[3 * r + j] - y[3 * r + j].exp() * sum
                ));
            }
        }
        assert!(softmax_backward(&g, &s[..3], 3, &mut out).is_err());
    }

    #[test]
    fn binary_rows_longer_than_a_block_are_cut_into_blocks_of_elements() {
        // One row of two blocks sums as two calls on its halves do (a block's sum, then the
        // blocks in order), which one block over the row did not; and a probability out of
        // range is reported at its place in the row.
        let b = pool::BLOCK_ELEMS;
        let n = 2 * b + 6;
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let x: Vec<f32> = (0..n).map(|_| 60.0 * next() - 30.0).collect();
        let y: Vec<f32> = (0..n).map(|i| (i % 3) as f32 / 2.0).collect();
        let pw: Vec<f32> = (0..n).map(|i| 0.5 + (i % 5) as f32).collect();
        let part = |r: std::ops::Range<usize>, k: usize| Binary {
            input: &x[r.clone()],
            target: &y[r.clone()],
            k,
            weight: None,
            pos_weight: Some(&pw[r.clone()]),
        };
        let halves = binary_cross_entropy_with_logits(part(0..b, b), Reduction::Sum).unwrap()
            + binary_cross_entropy_with_logits(part(b..2 * b, b), Reduction::Sum).unwrap();
        let whole = binary_cross_entropy_with_logits(part(0..2 * b, 2 * b), Reduction::Sum);
        assert_eq!(whole.unwrap().to_bits(), halves.to_bits());
        let mut p: Vec<f32> = x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        p[b + 3 + 7] = 1.5;
        let probs = Binary {
            input: &p,
            pos_weight: None,
            ..part(0..n, b + 3)
        };
        match binary_cross_entropy(probs, Reduction::Mean) {
            Err(Error::Domain { position, .. }) => assert_eq!(position, [1, 7]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_losses_follow_their_formulas() {
        let y = [1.0, 0.0, 0.5, 1.0, 0.0, 1.0];
        let pw = [2.0, 1.0, 0.5];
        let a = Binary {
            input: &X,
            target: &y,
            k: 3,
            weight: None,
            pos_weight: Some(&pw),
        };
        let want: f64 = (0..6)
            .map(|i| {
                let (x, t, p) = (X[i], y[i], pw[i % 3]);
                let sig = 1.0 / (1.0 + (-x).exp());
                -(p * t * sig.ln() + (1.0 - t) * (1.0 - sig).ln())
            })
            .sum();
        let got = binary_cross_entropy_with_logits(a, Reduction::Sum).unwrap();
        assert!(close(got, want), "{got} vs {want}");
        let mut grad = [0.0; 6];
        let with_grad =
            binary_cross_entropy_with_logits_and_grad(a, Reduction::Sum, &mut grad, None).unwrap();
        assert_eq!(with_grad.to_bits(), got.to_bits());
        let probs = [0.2, 0.9, 0.5, 0.7, 0.1, 0.3];
        let p = Binary {
            input: &probs,
            target: &y,
            k: 3,
            weight: None,
            pos_weight: None,
        };
        let bce = binary_cross_entropy(p, Reduction::Mean).unwrap();
        let want: f64 = (0..6)
            .map(|i| -(y[i] * probs[i].ln() + (1.0 - y[i]) * (1.0 - probs[i]).ln()))
            .sum::<f64>()
            / 6.0;
        assert!(close(bce, want), "{bce} vs {want}");
        let bad = Binary { input: &X, ..p };
        assert!(matches!(
            binary_cross_entropy(bad, Reduction::Mean),
            Err(Error::Domain { .. })
        ));
    }
}
