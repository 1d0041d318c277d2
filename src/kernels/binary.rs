//! Binary cross-entropy, elementwise: on probabilities (PyTorch's `binary_cross_entropy`,
//! each log clamped at -100) and on logits in the stable form PyTorch uses,
//!
//! ```text
//! loss = (1 - y)·x - l·log σ(x),   l = 1 + (pos_weight - 1)·y,   log σ(x) = min(x, 0) - log1p(exp(-|x|))
//! d loss / d x = l·σ(x) - pos_weight·y
//! ```
//!
//! each times the element weight. Values are formed in `f64` (these kernels are bound by the
//! transcendental calls, not by memory).

use crate::float::Float;

#[inline]
fn opt<T: Float>(v: Option<&[T]>, i: usize) -> f64 {
    v.map_or(1.0, |v| v[i].to_f64())
}

/// Losses of `binary_cross_entropy(p, y, weight)` into `out`. Returns `Err(i)` for the first
/// `p[i]` outside `[0, 1]` (NaN included, as in PyTorch), before anything is written.
pub fn bce<T: Float>(p: &[T], y: &[T], w: Option<&[T]>, out: &mut [f64]) -> Result<(), usize> {
    if let Some(bad) = p
        .iter()
        .position(|&v| !(v.to_f64() >= 0.0 && v.to_f64() <= 1.0))
    {
        return Err(bad);
    }
    for (i, o) in out.iter_mut().enumerate() {
        let (pi, yi) = (p[i].to_f64(), y[i].to_f64());
        let log_p = pi.ln().max(-100.0);
        let log_1mp = (-pi).ln_1p().max(-100.0);
        *o = opt(w, i) * ((yi - 1.0) * log_1mp - yi * log_p);
    }
    Ok(())
}

#[inline]
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Losses of `binary_cross_entropy_with_logits(x, y, weight, pos_weight)` into `out`; with
/// `grad`, also `scale_i * d loss_i / d x_i` into it.
pub fn bce_with_logits<T: Float>(
    x: &[T],
    y: &[T],
    w: Option<&[T]>,
    pos_weight: Option<&[T]>,
    out: &mut [f64],
    mut grad: Option<(&mut [T], super::cross_entropy::Scale<'_, T>)>,
) {
    for (i, o) in out.iter_mut().enumerate() {
        let (xi, yi, wi) = (x[i].to_f64(), y[i].to_f64(), opt(w, i));
        let pw = opt(pos_weight, i);
        let l = 1.0 + (pw - 1.0) * yi;
        let log_sig = xi.min(0.0) - (-xi.abs()).exp().ln_1p();
        *o = wi * ((1.0 - yi) * xi - l * log_sig);
        if let Some((g, scale)) = grad.as_mut() {
            g[i] = T::from_f64(scale.at(i) * wi * (l * sigmoid(xi) - pw * yi));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cross_entropy::Scale;

    #[test]
    fn logits_form_matches_probability_form() {
        let x = [-3.0f64, -0.2, 0.0, 1.5, 8.0];
        let y = [0.0f64, 1.0, 0.3, 1.0, 0.0];
        let p: Vec<f64> = x.iter().map(|&v| sigmoid(v)).collect();
        let (mut a, mut b) = ([0.0; 5], [0.0; 5]);
        bce(&p, &y, None, &mut a).unwrap();
        bce_with_logits(&x, &y, None, None, &mut b, None);
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
            &x,
            &y,
            Some(&w),
            Some(&pw),
            &mut l,
            Some((&mut g, Scale::Uniform(1.0))),
        );
        for i in 0..4 {
            let h = 1e-6;
            let (mut lp, mut lm) = ([0.0; 4], [0.0; 4]);
            let (mut xp, mut xm) = (x, x);
            xp[i] += h;
            xm[i] -= h;
            bce_with_logits(&xp, &y, Some(&w), Some(&pw), &mut lp, None);
            bce_with_logits(&xm, &y, Some(&w), Some(&pw), &mut lm, None);
            assert!((g[i] - (lp[i] - lm[i]) / (2.0 * h)).abs() < 1e-7);
        }
    }

    #[test]
    fn out_of_range_probability_is_reported() {
        let mut o = [0.0; 3];
        assert_eq!(
            bce(&[0.5f64, f64::NAN, 2.0], &[1.0, 0.0, 0.0], None, &mut o),
            Err(1)
        );
        assert_eq!(o, [0.0; 3]);
    }
}
