//! Our own exponential and logarithm, written so that LLVM vectorizes the loops that call them.
//!
//! `std`'s `exp` is a call into libm, which stops auto-vectorization dead; these versions are
//! branch-free straight-line code (compare-and-select, integer bit tricks, Horner polynomials),
//! so a loop over a slice becomes SIMD code on whatever instruction set the crate is compiled
//! for. The method is the classic one: `exp(x) = 2^n * exp(r)` with `n = round(x / ln 2)`,
//! `r = x - n ln 2` reduced exactly with a two-part `ln 2` (Cody–Waite), `exp(r)` from a
//! polynomial on `|r| <= ln(2)/2` (fitted for `f32`, Taylor's for `f64`), and `2^n` built from
//! exponent bits in two halves so that results in the subnormal range and the overflow to
//! `+inf` come out right. The kernels mostly need `exp(x - max) <= 1`; for that case
//! `exp_nonpos_*` builds `2^n` with one shift. Each has an `FMA` form, used where the
//! instruction set fuses multiply-adds.
//!
//! Accuracy, measured by the tests below against `std`'s correctly rounded-in-practice `exp`
//! over a dense sweep of the whole finite range, for every variant: at most 2 ULP for `f32`
//! (degree 6, fitted; 3.8e-9 relative) and at most 2 ULP for `f64` (degree 13; truncation
//! 4e-18), in the normal range; subnormal results may be off by one unit of the smallest
//! subnormal.
//! NaN propagates, `exp(-inf) = 0`, `exp(+inf) = +inf`.
//!
//! [`ln_f64`] is the logarithm of the row sums (`ln s` in every `lse = m + ln s`): there is one
//! per row, and for rows of a few classes libm's `log` took a quarter of the time of a
//! cross-entropy (float32 65536 x 10). `x = 2^e f` with `f` in `[sqrt(1/2), sqrt(2))`, then
//! `ln f = 2 atanh(u)` with `u = (f - 1) / (f + 1)`, `|u| <= 0.1716`, from its odd series to
//! `u^21` (truncation below 1e-18 relative), and `e ln 2` added with a two-part `ln 2`. Plain
//! multiplies and adds, no FMA: every instruction set gives the same bits. Measured by the
//! tests against `std`'s `ln`: at most 2 ULP apart over sweeps of the whole positive range.
//! [`ln_f32`] is the same in `f32` to `u^11`, for the rows stored in `f32` (whose `ln s` is
//! rounded to `f32` in the end): one vector of 16 rows where `f64` takes two, and half the
//! series.

/// `a * b + c`, fused into one rounding when `FMA` (only where the instruction set has it:
/// elsewhere `mul_add` is a slow library call).
#[inline(always)]
fn madd32<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn madd64<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The f32 range reduction: `(t, r)` with `t = x / ln 2 + magic` (its low mantissa bits hold
/// `n = round(x / ln 2)` plus the integer part of `magic - 1.5 * 2^23`) and `r = x - n ln 2`.
#[inline(always)]
fn reduce_f32<const FMA: bool>(x: f32, magic: f32) -> (f32, f32) {
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^15 (LN2_HI has 9 significant bits).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = madd32::<FMA>(x, std::f32::consts::LOG2_E, magic);
    let nf = t - magic;
    (t, madd32::<FMA>(-nf, LN2_LO, madd32::<FMA>(-nf, LN2_HI, x)))
}

/// The coefficients of `exp(r)` on `|r| <= ln(2)/2` for `f32`, highest first: degree 6,
/// those of `r^6 .. r^2` fitted (minimax of the relative error, Lawson's iteration on 20001
/// points, then rounded to `f32`: 3.8e-9 relative, below degree 7's Taylor truncation of 5e-9),
/// those of `r` and 1 exactly 1.
// PERF: one fused multiply-add fewer than Taylor's degree 7 (float32 exp of 8192 in L1:
// BENCHMARKS.md, the Zen 5 section of 2026-12-02).
const EXP_F32: [f32; 7] = [
    0.001_381_461_4,
    0.008_368_71,
    0.041_668_39,
    0.166_665_21,
    0.499_999_94,
    1.0,
    1.0,
];

/// `exp(r)` for `|r| <= ln(2)/2` from [`EXP_F32`], Horner form, each coefficient times
/// `scale` (a power of two, so exactly).
#[inline(always)]
fn poly_f32<const FMA: bool>(r: f32, scale: f32) -> f32 {
    let mut p: f32 = EXP_F32[0] * scale;
    for c in &EXP_F32[1..] {
        p = madd32::<FMA>(p, r, c * scale);
    }
    p
}

/// Adding 1.5 * 2^23 rounds an f32 to the nearest integer, left in the low mantissa bits.
const MAGIC32: f32 = 12_582_912.0;
const MAGIC32_BITS: i32 = 0x4B40_0000;

/// `exp` for `f32`; see the module docs for the error bound. `FMA` fuses the multiply-adds
/// (fewer instructions, a slightly different last bit).
#[inline(always)]
pub fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    // Below -110 the result is 0 even after rounding; above 89 it overflows to +inf.
    // clamp keeps NaN as NaN (f32::max would drop it), and NaN then flows through to the result.
    let xc = x.clamp(-110.0, 89.0);
    let (t, r) = reduce_f32::<FMA>(xc, MAGIC32);
    let n = (t.to_bits() as i32).wrapping_sub(MAGIC32_BITS);
    // 2^n as 2^n1 * 2^n2 with both halves in the normal range for every n in [-159, 128].
    let n1 = n >> 1;
    let n2 = n.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32).wrapping_shl(23));
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32).wrapping_shl(23));
    poly_f32::<FMA>(r, 1.0) * s1 * s2
}

/// `exp(x)` for `x <= 0` (or NaN), the case of every shifted logit `x - max`; same accuracy as
/// [`exp_f32`], with a cheaper scaling: `2^(n + 24)` is normal for every `n` in `[-150, 0]`,
/// so it is one shift of `t`'s bits, and the `2^-24` is folded into the polynomial's
/// coefficients (exact: powers of two), so the one rounding into the subnormal range happens in
/// the final product. Callers guarantee `x <= 0` (it is `x - max` for a row's own max); a
/// positive `x` gives a wrong value (never undefined behavior).
#[inline(always)]
pub fn exp_nonpos_f32<const FMA: bool>(x: f32) -> f32 {
    // exp(-104) < 2^-150 rounds to 0. A comparison, not f32::max, so that NaN gets through.
    let xc = if x < -104.0 { -104.0 } else { x };
    // The low bits of t hold n + 151 in [1, 151]; shifted into the exponent field they are
    // 2^(n + 24) (the magic number's own bits shift out).
    let (t, r) = reduce_f32::<FMA>(xc, MAGIC32 + 151.0);
    let scale = f32::from_bits(t.to_bits().wrapping_shl(23));
    poly_f32::<FMA>(r, 1.0 / 16_777_216.0) * scale
}

/// The f64 range reduction; see [`reduce_f32`].
#[inline(always)]
fn reduce_f64<const FMA: bool>(x: f64, magic: f64) -> (f64, f64) {
    // fdlibm's split of ln 2: n * LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let t = madd64::<FMA>(x, std::f64::consts::LOG2_E, magic);
    let nf = t - magic;
    (t, madd64::<FMA>(-nf, LN2_LO, madd64::<FMA>(-nf, LN2_HI, x)))
}

/// `exp(r)` for `|r| <= ln(2)/2`: Taylor polynomial of degree 13.
#[inline(always)]
fn poly_f64<const FMA: bool>(r: f64) -> f64 {
    // Coefficients 1/k!, highest first.
    const C: [f64; 14] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = C[0];
    for &c in &C[1..] {
        p = madd64::<FMA>(p, r, c);
    }
    p
}

/// 1.5 * 2^52, the f64 rounding constant.
const MAGIC64: f64 = 6_755_399_441_055_744.0;
const MAGIC64_BITS: i64 = 0x4338_0000_0000_0000;

/// `exp` for `f64`; see the module docs for the error bound.
#[inline(always)]
pub fn exp_f64<const FMA: bool>(x: f64) -> f64 {
    let xc = x.clamp(-750.0, 710.0);
    let (t, r) = reduce_f64::<FMA>(xc, MAGIC64);
    let n = (t.to_bits() as i64).wrapping_sub(MAGIC64_BITS);
    let n1 = n >> 1;
    let n2 = n.wrapping_sub(n1);
    let s1 = f64::from_bits((n1.wrapping_add(1023) as u64).wrapping_shl(52));
    let s2 = f64::from_bits((n2.wrapping_add(1023) as u64).wrapping_shl(52));
    poly_f64::<FMA>(r) * s1 * s2
}

/// `exp(x)` for `x <= 0` (or NaN); see [`exp_nonpos_f32`]. Here the offset is `2^54` and the
/// low bits of `t` hold `n + 1077` for `n` in `[-1076, 0]`.
#[inline(always)]
pub fn exp_nonpos_f64<const FMA: bool>(x: f64) -> f64 {
    let xc = if x < -746.0 { -746.0 } else { x };
    let (t, r) = reduce_f64::<FMA>(xc, MAGIC64 + 1077.0);
    let scale = f64::from_bits(t.to_bits().wrapping_shl(52));
    poly_f64::<FMA>(r) * scale * (1.0 / 18_014_398_509_481_984.0)
}

/// Defines `$name`, `log1p(t)` for `t` in `[0, 1]` in `$t`, from `$terms` terms of the
/// series below (`$madd` fuses its multiply-adds when `FMA`).
macro_rules! log1p_unit {
    ($(#[$doc:meta])* $name:ident, $t:ty, $madd:ident, $terms:expr) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name<const FMA: bool>(t: $t) -> $t {
            let s = t / (2.0 + t);
            let s2 = s * s;
            // p = 1/3 + s^2/5 + ..., by Horner from its last term; the loop is unrolled and
            // its quotients folded into constants.
            let mut p = 1.0 / (2 * $terms + 1) as $t;
            for n in (1..$terms).rev() {
                p = $madd::<FMA>(p, s2, 1.0 / (2 * n + 1) as $t);
            }
            let two_s = s + s;
            $madd::<FMA>(two_s * s2, p, two_s)
        }
    };
}

log1p_unit!(
    /// `log1p(t)` for `t` in `[0, 1]`: the `log1p(exp(-|x|))` of a binary loss's softplus, where
    /// the general [`log1p_or_ln`] spent two divisions. `log1p(t) = 2 atanh(s)` with
    /// `s = t / (2 + t)` in `[0, 1/3]`, from the odd series `2s (1 + s^2/3 + s^4/5 + ...)` to
    /// `s^15` (truncation below 2e-9 relative, a thirtieth of an `f32` ULP): one division, the
    /// only rounding of note beside `2 + t`'s. Measured by the tests against `std`'s `ln_1p`
    /// over a dense sweep of `[0, 1]` with subnormals: at most 2 ULP. NaN propagates; outside
    /// `[0, 1]` the result is not a logarithm.
    log1p_unit_f32,
    f32,
    madd32,
    7
);
log1p_unit!(
    /// [`log1p_unit_f32`] for `f64`: the series to `s^35` (truncation below 2e-19 relative).
    /// Measured: at most 2 ULP from `std`'s `ln_1p`.
    log1p_unit_f64,
    f64,
    madd64,
    17
);

/// Defines `$ln`, the natural logarithm in `$t` (stored as `$bits`: `$mant` mantissa bits, an
/// exponent field `$emask` biased by `$bias`, `$one` the bits of 1.0) from the series of the
/// module docs to `u^(2 $terms + 1)` with `ln 2` in two parts (the high part's low bits zero,
/// so `e * LN2_HI` is exact), and `$log1p_or_ln` on it (see [`log1p_or_ln`]). `ln(0) = -inf`,
/// `ln(+inf) = +inf`, NaN and negative inputs give NaN, and subnormal inputs are scaled into
/// the normal range by `2^$sub` first. Plain multiplies and adds, no FMA: every instruction
/// set gives the same bits.
macro_rules! ln_and_log1p {
    ($(#[$doc:meta])* $ln:ident, $(#[$doc1p:meta])* $log1p_or_ln:ident, $t:ty, $bits:ty,
     $mant:expr, $emask:expr, $bias:expr, $one:expr, $sub:expr, $ln2:expr, $terms:expr) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $ln(x: $t) -> $t {
            const LN2: ($bits, $bits) = $ln2;
            const LN2_HI: $t = <$t>::from_bits(LN2.0);
            const LN2_LO: $t = <$t>::from_bits(LN2.1);
            const SCALE_SUB: $t = (1u64 << $sub) as $t;
            let sub = x < <$t>::MIN_POSITIVE;
            let bits = (if sub { x * SCALE_SUB } else { x }).to_bits();
            let biased = ((bits >> $mant) & $emask) as i32 - if sub { $bias + $sub } else { $bias };
            let m = <$t>::from_bits((bits & ((1 << $mant) - 1)) | $one);
            let high = m > core::f64::consts::SQRT_2 as $t;
            let f = if high { m * 0.5 } else { m };
            let e = (biased + i32::from(high)) as $t;
            // f - 1 is exact (Sterbenz); the quotient carries the one rounding of note.
            let u = (f - 1.0) / (f + 1.0);
            let u2 = u * u;
            // p = 1/3 + u^2/5 + ..., by Horner from its last term (unrolled, quotients folded).
            let mut p = 1.0 / (2 * $terms + 1) as $t;
            for n in (1..$terms).rev() {
                p = p * u2 + 1.0 / (2 * n + 1) as $t;
            }
            let two_u = u + u;
            let ln = e * LN2_HI + (two_u + (two_u * u2 * p + e * LN2_LO));
            // Outside the positive finite numbers the bit arithmetic means nothing: +inf gives
            // +inf, zero -inf, NaN and negatives NaN, as `ln` does.
            if x > 0.0 && x < <$t>::INFINITY {
                ln
            } else if x == 0.0 {
                <$t>::NEG_INFINITY
            } else if x == <$t>::INFINITY {
                x
            } else {
                <$t>::NAN
            }
        }

        $(#[$doc1p])*
        #[inline(always)]
        pub fn $log1p_or_ln(use_log1p: bool, x: $t, y: $t) -> $t {
            let u = if use_log1p { 1.0 + x } else { y };
            // For u outside the positive finite numbers, the logarithm alone has the answer
            // (and u - 1 would make the correction NaN). It never returns -0, so adding the 0
            // keeps its bits.
            let c = if use_log1p && u > 0.0 && u < <$t>::INFINITY {
                (x - (u - 1.0)) / u
            } else {
                0.0
            };
            $ln(u) + c
        }
    };
}

ln_and_log1p!(
    /// Natural logarithm of an `f64`, to `u^21` (truncation below 1e-18 relative). Measured by
    /// the tests against `std`'s `ln`: at most 2 ULP apart over sweeps of the whole positive
    /// range.
    ln_f64,
    /// `log1p(x)` where `use_log1p`, else `ln(y)`, with one logarithm and selects instead of a
    /// branch, so that a loop picking one or the other per row vectorizes and never
    /// mispredicts. The `ln(y)` half is bitwise [`ln_f64`]. The `log1p` half is for the `ln s`
    /// of a row whose maximum dominates its sum: `s = 1 + rest` with `rest` far below 1 would
    /// round the rest away before `ln`. With `u = 1 + x` rounded, `ln(1 + x) = ln u + ln(1 +
    /// c/u)` where `c = x - (u - 1)` is the rounding error of `u` (exact for `x` in `[-1, 1]`,
    /// and negligible beside `ln u >= ln 2` above), so `ln u + c/u` leaves an error of order
    /// `(c/u)^2`, far below an ULP. Measured by the tests against `std`'s `ln_1p` over sweeps
    /// of `[-1, 2^60]` (log-spaced down to subnormals near 0, dense near 0 and 1): at most 2
    /// ULP apart. `log1p(-1) = -inf`, `log1p(+inf) = +inf`, NaN and `x < -1` give NaN.
    log1p_or_ln,
    f64,
    u64,
    52,
    0x7ff,
    1023,
    0x3ff0_0000_0000_0000,
    54,
    (0x3fe6_2e42_fee0_0000, 0x3dea_39ef_3579_3c76),
    10
);
ln_and_log1p!(
    /// [`ln_f64`] in `f32`, to `u^11` (truncation below 2e-9 relative, a thirtieth of an `f32`
    /// ULP). Measured by the tests against `std`'s `ln` (of the `f64`, rounded): at most 2 ULP.
    ln_f32,
    /// [`log1p_or_ln`] in `f32`, on [`ln_f32`]: the `ln s` of float32 rows (see
    /// [`crate::float::Float::log1p_or_ln`]). Measured by the tests against `std`'s `ln_1p`
    /// (of the `f64`, rounded): at most 2 ULP.
    log1p_or_ln_f32,
    f32,
    u32,
    23,
    0xff,
    127,
    0x3f80_0000,
    25,
    (0x3f31_7200, 0x35bf_be8e),
    5
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The log1p half of [`log1p_or_ln`] alone.
    fn log1p_f64(x: f64) -> f64 {
        log1p_or_ln(true, x, 0.0)
    }

    /// ln_f64 against std's ln: dense sweeps of [0.5, 2] (where ln is smallest relative to x),
    /// of the sums a row can have ([1, 2^40]), log-spaced over the whole positive range with
    /// subnormals, and the special values.
    #[test]
    fn ln_max_ulp_and_special_values() {
        let mut worst = 0;
        let n = 2_000_000;
        let lin = |lo: f64, hi: f64| (0..=n).map(move |i| lo + (hi - lo) * (i as f64) / (n as f64));
        let log_spaced = (0..=n).map(|i| 2f64.powf(-1074.0 + 2098.0 * i as f64 / n as f64));
        let near_one = (1..=100_000).flat_map(|i| {
            let d = i as f64 * f64::EPSILON;
            [1.0 + d, 1.0 - d / 2.0]
        });
        for x in lin(0.5, 2.0)
            .chain(lin(1.0, 64.0))
            .chain(lin(1.0, 2f64.powi(40)))
            .chain(log_spaced)
            .chain(near_one)
        {
            let (got, want) = (ln_f64(x), x.ln());
            // The ln half of log1p_or_ln keeps ln_f64's bits (it adds a 0).
            assert_eq!(log1p_or_ln(false, x, x).to_bits(), got.to_bits(), "x={x}");
            if want == 0.0 {
                assert_eq!(got, 0.0, "x={x}");
                continue;
            }
            worst = worst.max(ulp_f64(got, want));
        }
        assert!(worst <= 2, "ln_f64 is {worst} ULP from std");
        assert_eq!(ln_f64(0.0), f64::NEG_INFINITY);
        assert_eq!(ln_f64(-0.0), f64::NEG_INFINITY);
        assert_eq!(ln_f64(f64::INFINITY), f64::INFINITY);
        assert!(ln_f64(f64::NAN).is_nan() && ln_f64(-1.0).is_nan());
        assert!(ln_f64(f64::NEG_INFINITY).is_nan());
        assert_eq!(ln_f64(f64::from_bits(1)), f64::from_bits(1).ln());
        assert_eq!(ln_f64(f64::MAX), f64::MAX.ln());
        for y in [0.0, -0.0, f64::INFINITY, f64::NAN, -1.0, f64::NEG_INFINITY] {
            let (got, want) = (log1p_or_ln(false, 0.5, y), ln_f64(y));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "y={y}"
            );
        }
    }

    /// log1p_f64 against std's ln_1p: log-spaced over `[2^-1074, 2^60]` and its negatives down
    /// to -1, dense near 0 (where the rounding of `1 + x` is everything) and near 1.
    #[test]
    fn log1p_max_ulp_and_special_values() {
        let n = 2_000_000;
        let log_spaced = (0..=n).map(|i| 2f64.powf(-1074.0 + 1134.0 * i as f64 / n as f64));
        let dense =
            |lo: f64, hi: f64| (0..=n).map(move |i| lo + (hi - lo) * (i as f64) / (n as f64));
        let mut worst = 0;
        for x in log_spaced
            .clone()
            .chain(log_spaced.filter(|&x| x < 1.0).map(|x| -x))
            .chain(dense(-1e-6, 1e-6))
            .chain(dense(0.5, 2.0))
            .chain(dense(-0.999, 0.0))
        {
            let (got, want) = (log1p_f64(x), x.ln_1p());
            worst = worst.max(ulp_f64(got, want));
        }
        assert!(worst <= 2, "log1p_f64 is {worst} ULP from std");
        assert_eq!(log1p_f64(0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(log1p_f64(-1.0), f64::NEG_INFINITY);
        assert_eq!(log1p_f64(f64::INFINITY), f64::INFINITY);
        assert!(log1p_f64(f64::NAN).is_nan() && log1p_f64(-2.0).is_nan());
        assert_eq!(log1p_f64(f64::from_bits(1)), f64::from_bits(1));
        // The row the issue names: logsumexp([0, -40]) = log1p(exp(-40)) = 4.248e-18.
        let rest = (-40f64).exp();
        assert_eq!(log1p_f64(rest), rest.ln_1p());
    }

    /// ln_f32 and the ln half of log1p_or_ln_f32 against std's ln of the f64 (rounded): every
    /// 61st positive f32 bit pattern (subnormals to the largest, about 35 million), every f32
    /// of [0.5, 2] near 1, and the special values.
    #[test]
    fn ln_f32_max_ulp_and_special_values() {
        let near_one = (0.5f32.to_bits()..=2.0f32.to_bits()).step_by(7);
        let mut worst = 0;
        for b in (1..f32::INFINITY.to_bits()).step_by(61).chain(near_one) {
            let x = f32::from_bits(b);
            let (got, want) = (ln_f32(x), f64::from(x).ln() as f32);
            assert_eq!(
                log1p_or_ln_f32(false, 0.5, x).to_bits(),
                got.to_bits(),
                "x={x}"
            );
            if want == 0.0 {
                assert_eq!(got, 0.0, "x={x}");
                continue;
            }
            worst = worst.max(ulp_f32(got, want));
        }
        assert!(worst <= 2, "ln_f32 is {worst} ULP from std");
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32(f32::NAN).is_nan() && ln_f32(-1.0).is_nan());
        assert!(ln_f32(f32::NEG_INFINITY).is_nan());
        assert_eq!(ln_f32(f32::MAX), f64::from(f32::MAX).ln() as f32);
    }

    /// The log1p half of log1p_or_ln_f32 against std's ln_1p of the f64 (rounded): every 31st
    /// f32 bit pattern of (0, 2^30] and of [-1, 0), where the rounding of `1 + x` is
    /// everything near 0, and the ends.
    #[test]
    fn log1p_f32_max_ulp_and_special_values() {
        let pos = (1..=2f32.powi(30).to_bits()).step_by(31);
        let neg = ((-0f32).to_bits() + 1..=(-1f32).to_bits()).step_by(31);
        let mut worst = 0;
        for b in pos.chain(neg) {
            let x = f32::from_bits(b);
            let (got, want) = (log1p_or_ln_f32(true, x, 0.0), f64::from(x).ln_1p() as f32);
            worst = worst.max(ulp_f32(got, want));
        }
        assert!(
            worst <= 2,
            "log1p_or_ln_f32 is {worst} ULP from std's log1p"
        );
        let log1p = |x: f32| log1p_or_ln_f32(true, x, 0.0);
        assert_eq!(log1p(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(log1p(-1.0), f32::NEG_INFINITY);
        assert_eq!(log1p(f32::INFINITY), f32::INFINITY);
        assert!(log1p(f32::NAN).is_nan() && log1p(-2.0).is_nan());
        assert_eq!(log1p(f32::from_bits(1)), f32::from_bits(1));
        // SciPy's row in float32: logsumexp([0, -20]) = log1p(exp(-20)) = 2.06e-9.
        let rest = (-20f32).exp();
        assert_eq!(log1p(rest), f64::from(rest).ln_1p() as f32);
    }

    /// `log1p_unit` against `std`'s `ln_1p` (rounded to `f32` for the `f32` form) over every
    /// `f32` in `[0, 1]` spaced by 97 bits (subnormals included) and a dense linear sweep,
    /// with and without FMA; the ends and NaN exactly.
    #[test]
    fn log1p_unit_max_ulp() {
        let mut ts: Vec<f64> = (0..=1.0f32.to_bits())
            .step_by(97)
            .map(|b| f64::from(f32::from_bits(b)))
            .collect();
        ts.extend((0..=1 << 20).map(|i| f64::from(i) / f64::from(1 << 20)));
        let (mut worst32, mut worst64) = (0, 0);
        for &t in &ts {
            let want = t.ln_1p();
            let t32 = t as f32;
            let want32 = f64::from(t32).ln_1p() as f32;
            for got in [log1p_unit_f32::<true>(t32), log1p_unit_f32::<false>(t32)] {
                worst32 = worst32.max(ulp_f32(got, want32));
            }
            for got in [log1p_unit_f64::<true>(t), log1p_unit_f64::<false>(t)] {
                worst64 = worst64.max(ulp_f64(got, want));
            }
        }
        assert!(
            worst32 <= 2 && worst64 <= 2,
            "f32 {worst32} ULP, f64 {worst64} ULP"
        );
        assert_eq!(log1p_unit_f64::<true>(0.0).to_bits(), 0);
        assert_eq!(log1p_unit_f32::<true>(1.0), std::f32::consts::LN_2);
        assert!(log1p_unit_f64::<true>(f64::NAN).is_nan());
        assert!(log1p_unit_f32::<false>(f32::NAN).is_nan());
    }

    fn ulp_f32(a: f32, b: f32) -> u32 {
        ((a.to_bits() as i64) - (b.to_bits() as i64)).unsigned_abs() as u32
    }
    fn ulp_f64(a: f64, b: f64) -> u64 {
        ((a.to_bits() as i128) - (b.to_bits() as i128)).unsigned_abs() as u64
    }

    /// Every 97th f32 bit pattern between -103.5 and `hi` (about 10 million points up to
    /// 88.7); returns the worst error in ULP among normal results and checks subnormal ones to
    /// within one unit of the smallest subnormal.
    fn f32_sweep(exp: fn(f32) -> f32, hi: f32) -> u32 {
        let mut worst = 0;
        let mut x = -103.5f32;
        while x < hi {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            if want.is_normal() {
                worst = worst.max(ulp_f32(got, want));
            } else {
                assert!(
                    (got - want).abs() <= f32::from_bits(1),
                    "x={x}: {got} vs {want}"
                );
            }
            x = f32::from_bits(if x < 0.0 {
                x.to_bits() - 97
            } else {
                x.to_bits() + 97
            });
            if x == 0.0 || x.to_bits() == 0x8000_0000 || (x < 0.0 && x > -1e-30) {
                x = 1e-30;
            }
        }
        worst
    }

    /// 2 million points over `[-708, hi]` and 2 million over `[-1, min(1, hi)]`; subnormal
    /// results on `[-745, -708]` within one unit of the smallest subnormal.
    fn f64_sweep(exp: fn(f64) -> f64, hi: f64) -> u64 {
        let mut worst = 0;
        let n = 2_000_000;
        let grid =
            |lo: f64, hi: f64| (0..=n).map(move |i| lo + (hi - lo) * (i as f64) / (n as f64));
        for x in grid(-708.0, hi).chain(grid(-1.0, hi.min(1.0))) {
            worst = worst.max(ulp_f64(exp(x), x.exp()));
        }
        for x in grid(-745.0, -708.0).step_by(97) {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= f64::from_bits(1),
                "x={x}: {got} vs {want}"
            );
        }
        worst
    }

    #[test]
    fn exp_max_ulp_over_sweeps() {
        for (name, worst) in [
            ("f32", f32_sweep(exp_f32::<false>, 88.72) as u64),
            ("f32 fma", f32_sweep(exp_f32::<true>, 88.72) as u64),
            ("f32 nonpos", f32_sweep(exp_nonpos_f32::<false>, 0.0) as u64),
            (
                "f32 nonpos fma",
                f32_sweep(exp_nonpos_f32::<true>, 0.0) as u64,
            ),
            ("f64", f64_sweep(exp_f64::<false>, 709.0)),
            ("f64 fma", f64_sweep(exp_f64::<true>, 709.0)),
            ("f64 nonpos", f64_sweep(exp_nonpos_f64::<false>, 0.0)),
            ("f64 nonpos fma", f64_sweep(exp_nonpos_f64::<true>, 0.0)),
        ] {
            assert!(worst <= 2, "{name}: max error {worst} ulp");
        }
    }

    #[test]
    fn exp_special_values() {
        special_values::<false>();
        special_values::<true>();
        for exp in [exp_nonpos_f32::<false>, exp_nonpos_f32::<true>] {
            assert!(exp(f32::NAN).is_nan());
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(-104.0), 0.0);
            assert_eq!(exp(-0.0), 1.0);
            assert_eq!(exp(-103.0), f32::from_bits(1)); // exp(-103) = 1.4e-45
        }
        for exp in [exp_nonpos_f64::<false>, exp_nonpos_f64::<true>] {
            assert!(exp(f64::NAN).is_nan());
            assert_eq!(exp(f64::NEG_INFINITY), 0.0);
            assert_eq!(exp(-746.0), 0.0);
            assert_eq!(exp(0.0), 1.0);
        }
    }

    fn special_values<const FMA: bool>() {
        let exp_f32 = exp_f32::<FMA>;
        let exp_f64 = exp_f64::<FMA>;
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f64(f64::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f64(f64::INFINITY), f64::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f64(710.0), f64::INFINITY);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f32(-105.0), 0.0);
        assert_eq!(exp_f64(-746.0), 0.0);
        // subnormal results
        let want = (-100.0f64).exp() as f32;
        assert!((exp_f32(-100.0) - want).abs() <= f32::from_bits(1));
    }
}
