//! Binary cross-entropy, elementwise: on probabilities (PyTorch's `binary_cross_entropy`,
//! each log clamped at -100) and on logits, PyTorch's
//!
//! ```text
//! loss = (1 - y)·x - l·log σ(x),   l = 1 + (pos_weight - 1)·y,   log σ(x) = min(x, 0) - log1p(e)
//! d loss / d x = l·σ(x) - pos_weight·y,   e = exp(-|x|)
//! ```
//!
//! each times the element weight, computed in forms where nothing cancels for labels in
//! `[0, 1]` and positive weights: `loss = (x >= 0 ? (1 - y)·x : -pos_weight·y·x) + l·log1p(e)`
//! and the gradient over one denominator, `((1 - y) - pos_weight·y·e) / (1 + e)` at `x >= 0`,
//! `((1 - y)·e - pos_weight·y) / (1 + e)` below. PyTorch's own forms lose every digit of a
//! confident prediction's loss or gradient (`x = -40, y = 0`: a loss of 4e-18 comes out 0).
//! `e` and the softplus `log1p(e)` are taken in the input's precision with the crate's
//! vectorizable `exp` and `log1p` ([`crate::math`], at most 2 ULP each; `float32` runs twice
//! the lanes of `float64`) and everything after them in `f64`, so a loss or gradient of such
//! labels is within a few ULP of its input's precision (tested). Where `x` is infinite the
//! loss is PyTorch's form, NaN where it gives NaN. On probabilities, the logs are taken in
//! `f64` ([`ln_f64`], [`log1p_or_ln`]).
//!
//! libm's `log1p` and `exp`, called per element in `f64`, took about 37 ns an element (float32
//! 8192 x 1000 on an Intel Xeon), five times PyTorch's time. Each step of [`STEP`] elements
//! takes its transcendentals in loops of their own over stack arrays, which LLVM turns into
//! SIMD code for the [`Arith`]'s instruction set, and then combines them with the targets and
//! the optional weights.

use std::ops::Range;

use crate::float::Float;
use crate::isa::Arith;
use crate::math::{ln_f64, log1p_or_ln};

use super::cross_entropy::Scale;

/// Elements per step: the stack arrays of a step stay in L1.
const STEP: usize = 256;

/// The optional weights of the elements `at`, or `ones` (of at least that length).
// PERF: an `Option` read inside the loops became a masked load from the null pointer, with
// an empty mask, that stalls on every vector (a quarter of the time of float32 8192 x 1000
// on an Intel Xeon); multiplying by a one is exact, so the results are the same.
#[inline(always)]
fn or_ones<'a, T: Float>(v: Option<&'a [T]>, at: Range<usize>, ones: &'a [T]) -> &'a [T] {
    match v {
        Some(v) => &v[at],
        None => &ones[..at.len()],
    }
}

/// A running sum in eight interleaved partial sums (element `j` into `j % 8`), added pairwise
/// at the end: a fixed order, the same on every instruction set and thread count, whose adds
/// do not wait on each other (one running sum waited four cycles an element). Fed a step at
/// a time while the step's losses are in L1.
struct LaneSum([f64; 8]);

impl LaneSum {
    /// Adds a step that starts at a multiple of eight elements.
    #[inline(always)]
    fn add(&mut self, v: &[f64]) {
        let mut chunks = v.chunks_exact(8);
        for c in &mut chunks {
            for (a, &b) in self.0.iter_mut().zip(c) {
                *a += b;
            }
        }
        for (a, &b) in self.0.iter_mut().zip(chunks.remainder()) {
            *a += b;
        }
    }

    fn total(self) -> f64 {
        let [a, b, c, d, e, f, g, h] = self.0;
        ((a + b) + (c + d)) + ((e + f) + (g + h))
    }
}

/// The sum of the losses of `binary_cross_entropy(p, y, weight)`, each also written into
/// `out` when given. Returns `Err(i)` for the first `p[i]` outside `[0, 1]` (NaN included, as
/// in PyTorch), before anything is written.
#[inline(always)]
fn bce_with<T: Float, A: Arith>(
    p: &[T],
    y: &[T],
    w: Option<&[T]>,
    mut out: Option<&mut [f64]>,
    _a: A,
) -> Result<f64, usize> {
    if let Some(bad) = p
        .iter()
        .position(|&v| !(v.to_f64() >= 0.0 && v.to_f64() <= 1.0))
    {
        return Err(bad);
    }
    let (mut log_1mp, mut loss, ones) = ([0.0f64; STEP], [0.0f64; STEP], [T::ONE; STEP]);
    let mut sum = LaneSum([0.0; 8]);
    for (pc, c) in p.chunks(STEP).zip(0..) {
        let at = c * STEP..c * STEP + pc.len();
        let (yc, wc) = (&y[at.clone()], or_ones(w, at.clone(), &ones));
        let (l1, o) = (&mut log_1mp[..pc.len()], &mut loss[..pc.len()]);
        for (l, &pj) in l1.iter_mut().zip(pc) {
            *l = log1p_or_ln(true, -pj.to_f64(), 0.0).max(-100.0);
        }
        // The log of p in `o` itself, then the loss over it.
        for (l, &pj) in o.iter_mut().zip(pc) {
            *l = ln_f64(pj.to_f64()).max(-100.0);
        }
        for (j, l) in o.iter_mut().enumerate() {
            let yj = yc[j].to_f64();
            *l = wc[j].to_f64() * ((yj - 1.0) * l1[j] - yj * *l);
        }
        sum.add(o);
        if let Some(out) = out.as_mut() {
            out[at].copy_from_slice(o);
        }
    }
    Ok(sum.total())
}

/// The sum of the losses of `binary_cross_entropy_with_logits(x, y, weight, pos_weight)`,
/// each also written into `out` when given; with `grad`, `scale_i * d loss_i / d x_i` into it.
#[inline(always)]
fn bce_with_logits_with<T: Float, A: Arith>(
    x: &[T],
    y: &[T],
    w: Option<&[T]>,
    pos_weight: Option<&[T]>,
    mut out: Option<&mut [f64]>,
    mut grad: Option<(&mut [T], Scale<'_, T>)>,
    a: A,
) -> f64 {
    let (mut e, mut softplus, ones) = ([T::ZERO; STEP], [T::ZERO; STEP], [T::ONE; STEP]);
    let mut loss = [0.0f64; STEP];
    let mut sum = LaneSum([0.0; 8]);
    for (xc, c) in x.chunks(STEP).zip(0..) {
        let n = xc.len();
        let at = c * STEP..c * STEP + n;
        let yc = &y[at.clone()];
        let o = &mut loss[..n];
        let wc = or_ones(w, at.clone(), &ones);
        let pc = or_ones(pos_weight, at.clone(), &ones);
        let (e, softplus) = (&mut e[..n], &mut softplus[..n]);
        for (ej, &xj) in e.iter_mut().zip(xc) {
            *ej = a.exp_nonpos(if xj > T::ZERO { -xj } else { xj });
        }
        for (s, &ej) in softplus.iter_mut().zip(&*e) {
            *s = a.log1p_unit(ej);
        }
        for (j, l) in o.iter_mut().enumerate() {
            let (xj, yj, pw) = (xc[j].to_f64(), yc[j].to_f64(), pc[j].to_f64());
            let lw = 1.0 + (pw - 1.0) * yj;
            let sp = softplus[j].to_f64();
            // (1 - y)·x - l·(min(x, 0) - sp) with its x terms gathered: nothing cancels for
            // labels in [0, 1] and positive weights (a loss of 4e-18 at x = -40, y = 0 was 0).
            let gathered = if xj >= 0.0 {
                (1.0 - yj) * xj
            } else {
                -pw * yj * xj
            } + lw * sp;
            // PyTorch's form where x is infinite: its NaN for y = 1 at x = -inf.
            let pytorch = (1.0 - yj) * xj - lw * (xj.min(0.0) - sp);
            *l = wc[j].to_f64() * if xj.is_finite() { gathered } else { pytorch };
        }
        sum.add(o);
        if let Some(out) = out.as_mut() {
            out[at.clone()].copy_from_slice(o);
        }
        if let Some((g, scale)) = grad.as_mut() {
            let g = &mut g[at.clone()];
            // l·σ(x) - pw·y over one denominator: at x >= 0, ((1 - y) - pw·y·e) / (1 + e), and
            // at x < 0, ((1 - y)·e - pw·y) / (1 + e). `σ(x) - 1` of y = 1 at x = 30 lost all
            // but three digits before, and was 0 from 37 on.
            let d = |j: usize| {
                let (xj, yj, pw) = (xc[j].to_f64(), yc[j].to_f64(), pc[j].to_f64());
                let ej = e[j].to_f64();
                let num = if xj >= 0.0 {
                    (1.0 - yj) - pw * yj * ej
                } else {
                    (1.0 - yj) * ej - pw * yj
                };
                wc[j].to_f64() * num / (1.0 + ej)
            };
            // PERF: one loop per kind of scale; a match on it inside kept the loop scalar
            // (float32 8192 x 1000 with its gradient: 28 ms against 59 ms on an Intel Xeon).
            match scale.after(at.start) {
                Scale::Uniform(s) => {
                    for (j, gj) in g.iter_mut().enumerate() {
                        *gj = T::from_f64(s * d(j));
                    }
                }
                Scale::PerRow(u) => {
                    debug_assert!(u.len() >= g.len(), "one scale per element");
                    for (j, (gj, uj)) in g.iter_mut().zip(u).enumerate() {
                        *gj = T::from_f64(uj.to_f64() * d(j));
                    }
                }
            }
        }
    }
    sum.total()
}

crate::isa::isa_dispatch! {
    pub fn bce[T: Float](
        p: &[T],
        y: &[T],
        w: Option<&[T]>,
        out: Option<&mut [f64]>,
    ) -> Result<f64, usize> = bce_with;
    pub fn bce_with_logits[T: Float](
        x: &[T],
        y: &[T],
        w: Option<&[T]>,
        pos_weight: Option<&[T]>,
        out: Option<&mut [f64]>,
        grad: Option<(&mut [T], Scale<'_, T>)>,
    ) -> f64 = bce_with_logits_with;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Level;

    fn sigmoid(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            x.exp() / (1.0 + x.exp())
        }
    }

    #[test]
    fn logits_form_matches_probability_form() {
        let x = [-3.0f64, -0.2, 0.0, 1.5, 8.0];
        let y = [0.0f64, 1.0, 0.3, 1.0, 0.0];
        let p: Vec<f64> = x.iter().map(|&v| sigmoid(v)).collect();
        let (mut a, mut b) = ([0.0; 5], [0.0; 5]);
        bce(Level::best(), &p, &y, None, Some(&mut a)).unwrap();
        bce_with_logits(Level::best(), &x, &y, None, None, Some(&mut b), None);
        for (u, v) in a.iter().zip(b) {
            assert!((u - v).abs() < 1e-12);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = [-3.0f64, -0.2, 0.4, 1.5];
        let y = [0.0f64, 1.0, 0.3, 1.0];
        let w = [0.5f64, 2.0, 1.0, 0.7];
        let pw = [3.0f64, 0.5, 2.0, 1.0];
        let mut g = [0.0; 4];
        let mut l = [0.0; 4];
        bce_with_logits(
            Level::best(),
            &x,
            &y,
            Some(&w),
            Some(&pw),
            Some(&mut l),
            Some((&mut g, Scale::Uniform(1.0))),
        );
        for i in 0..4 {
            let h = 1e-6;
            let (mut lp, mut lm) = ([0.0; 4], [0.0; 4]);
            let (mut xp, mut xm) = (x, x);
            xp[i] += h;
            xm[i] -= h;
            bce_with_logits(
                Level::best(),
                &xp,
                &y,
                Some(&w),
                Some(&pw),
                Some(&mut lp),
                None,
            );
            bce_with_logits(
                Level::best(),
                &xm,
                &y,
                Some(&w),
                Some(&pw),
                Some(&mut lm),
                None,
            );
            assert!((g[i] - (lp[i] - lm[i]) / (2.0 * h)).abs() < 1e-7);
        }
    }

    #[test]
    fn out_of_range_probability_is_reported() {
        let mut o = [0.0; 3];
        assert_eq!(
            bce(
                Level::best(),
                &[0.5f64, f64::NAN, 2.0],
                &[1.0, 0.0, 0.0],
                None,
                Some(&mut o)
            ),
            Err(1)
        );
        assert_eq!(o, [0.0; 3]);
    }
    /// Every level and both precisions against libm's `exp` and `log1p` in `f64`, in the
    /// forms that do not cancel, over a ragged number of steps with weights, positive weights
    /// and a per-element scale, on logits out to +-60 (confident rows whose PyTorch loss or
    /// gradient cancels) and the special values. The bound is relative to the value (its terms
    /// add, so none cancels): `8ε` of the input's precision, for at most 2 ULP in `e` and 2 in
    /// its `log1p` plus the roundings after them. The probability form against libm likewise;
    /// non-finite values bitwise. Levels with the same arithmetic give the same bits.
    fn check_against_libm<T: Float>(eps: f64) {
        let special = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e30,
            -1e30,
            750.0,
            -750.0,
            1e-30,
            36.0,
            -40.0,
        ];
        let n = 3 * STEP + 17;
        let x: Vec<T> = (0..n)
            .map(|i| {
                special
                    .get(i % 97)
                    .copied()
                    .unwrap_or((i as f64 * 0.7).sin() * 60.0)
            })
            .map(T::from_f64)
            .collect();
        let y: Vec<T> = (0..n)
            .map(|i| T::from_f64([0.0, 1.0, 0.25][i % 3]))
            .collect();
        let w: Vec<T> = (0..n).map(|i| T::from_f64(0.5 + (i % 5) as f64)).collect();
        let pw: Vec<T> = (0..n).map(|i| T::from_f64(0.25 + (i % 7) as f64)).collect();
        let up: Vec<T> = (0..n).map(|i| T::from_f64(1.0 - (i % 4) as f64)).collect();
        // NaN is refused as a probability (tested above).
        let p: Vec<T> = x
            .iter()
            .map(|&v| T::from_f64(if v.is_nan() { 0.5 } else { sigmoid(v.to_f64()) }))
            .collect();
        let close = |got: f64, want: f64| {
            got.to_bits() == want.to_bits()
                || (got.is_nan() && want.is_nan())
                || (got - want).abs() <= eps * want.abs()
        };
        let f = |v: &[T], i: usize| v[i].to_f64();
        let mut first: Option<(Vec<f64>, Vec<T>)> = None;
        for isa in Level::supported() {
            let (mut l, mut g) = (vec![0.0; n], vec![T::ZERO; n]);
            let total = bce_with_logits(
                isa,
                &x,
                &y,
                Some(&w),
                Some(&pw),
                Some(&mut l),
                Some((&mut g, Scale::PerRow(&up))),
            );
            let mut lp = vec![0.0; n];
            let total_p = bce(isa, &p, &y, Some(&w), Some(&mut lp)).unwrap();
            // The sums in their fixed order: eight interleaved partial sums, added pairwise,
            // the same with or without the losses written out.
            let lanes = |v: &[f64]| {
                let mut acc = [0.0f64; 8];
                for (j, &x) in v.iter().enumerate() {
                    acc[j % 8] += x;
                }
                ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
            };
            let finite: Vec<usize> = (0..n).filter(|&i| f(&x, i).is_finite()).collect();
            let pick = |v: &[T]| finite.iter().map(|&i| v[i]).collect::<Vec<T>>();
            let (xf, yf, wf, pf) = (pick(&x), pick(&y), pick(&w), pick(&pw));
            let mut lf = vec![0.0; finite.len()];
            let sum_f = bce_with_logits(isa, &xf, &yf, Some(&wf), Some(&pf), Some(&mut lf), None);
            let alone = bce_with_logits(isa, &xf, &yf, Some(&wf), Some(&pf), None, None);
            assert_eq!(sum_f.to_bits(), lanes(&lf).to_bits(), "{isa:?} sum");
            assert_eq!(
                alone.to_bits(),
                sum_f.to_bits(),
                "{isa:?} sum without losses"
            );
            assert!(total.is_nan(), "the infinite logits give NaN");
            assert_eq!(total_p.to_bits(), lanes(&lp).to_bits(), "{isa:?} bce sum");
            let alone_p = bce(isa, &p, &y, Some(&w), None).unwrap();
            assert_eq!(
                alone_p.to_bits(),
                total_p.to_bits(),
                "{isa:?} bce sum alone"
            );
            for i in 0..n {
                let (xi, yi, pwi, wi) = (f(&x, i), f(&y, i), f(&pw, i), f(&w, i));
                let lw = 1.0 + (pwi - 1.0) * yi;
                let e = (-xi.abs()).exp();
                let loss = if xi.is_finite() {
                    let lin = if xi >= 0.0 {
                        (1.0 - yi) * xi
                    } else {
                        -pwi * yi * xi
                    };
                    wi * (lin + lw * e.ln_1p())
                } else {
                    wi * ((1.0 - yi) * xi - lw * (xi.min(0.0) - e.ln_1p()))
                };
                let num = if xi >= 0.0 {
                    (1.0 - yi) - pwi * yi * e
                } else {
                    (1.0 - yi) * e - pwi * yi
                };
                let grad = T::from_f64(f(&up, i) * wi * num / (1.0 + e)).to_f64();
                assert!(
                    close(l[i], loss),
                    "{isa:?} loss [{i}] x={xi}: {} vs {loss}",
                    l[i]
                );
                let gi = f(&g, i);
                assert!(close(gi, grad), "{isa:?} grad [{i}] x={xi}: {gi} vs {grad}");
                let pi = f(&p, i);
                let want = wi * ((yi - 1.0) * (-pi).ln_1p().max(-100.0) - yi * pi.ln().max(-100.0));
                assert!(
                    close(lp[i], want),
                    "{isa:?} bce [{i}] p={pi}: {} vs {want}",
                    lp[i]
                );
            }
            if isa.isa() != crate::isa::Isa::Baseline {
                match &first {
                    None => first = Some((l, g)),
                    Some((l0, g0)) => {
                        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(l0), bits(&l), "{isa:?} losses differ from AVX2's");
                        assert!(
                            g0.iter()
                                .zip(&g)
                                .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()),
                            "{isa:?} gradient differs from AVX2's"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_level_matches_libm_without_cancelling() {
        check_against_libm::<f64>(8.0 * f64::EPSILON);
        check_against_libm::<f32>(8.0 * f64::from(f32::EPSILON));
    }
}
