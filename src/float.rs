//! The `Float` trait: the one abstraction the generic kernels are written against.
//!
//! Kernels compute in `f32` or `f64` only. Storage types (float16, bfloat16, integers, bool)
//! are widened into one of these two in row-sized blocks by [`crate::strided`], never
//! inside a kernel loop, so every kernel is instantiated exactly twice.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::dtype::{DType, Elem, FloatElem};

pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    /// The storage dtype that is this type (used to decide whether a block can be read in place).
    const DTYPE: DType;
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;

    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Widen (or round) one stored element into the compute type.
    fn load<E: Elem>(e: E) -> Self;
    /// Round the compute value once into a floating storage type.
    fn store<E: FloatElem>(self) -> E;
    /// The vectorizable exponential of [`crate::math`]; `FMA` fuses its multiply-adds.
    fn exp<const FMA: bool>(self) -> Self;
    /// The cheaper exponential for `self <= 0` (or NaN) of [`crate::math`].
    fn exp_nonpos<const FMA: bool>(self) -> Self;
    /// `log1p(self)` for `self` in `[0, 1]` (a softplus's `log1p(exp(-|x|))`), of [`crate::math`].
    fn log1p_unit<const FMA: bool>(self) -> Self;
    /// `log1p(x)` where `use_log1p`, else `ln(y)`, worked in this type's precision (the `ln s`
    /// of a row's sums, whose result is stored in this type), of [`crate::math`].
    fn log1p_or_ln(use_log1p: bool, x: f64, y: f64) -> f64;
    fn tanh(self) -> Self;
    fn is_nan(self) -> bool;
}

impl Float for f32 {
    const DTYPE: DType = DType::F32;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;

    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn load<E: Elem>(e: E) -> Self {
        e.to_f32()
    }
    #[inline(always)]
    fn store<E: FloatElem>(self) -> E {
        E::from_f32(self)
    }
    #[inline(always)]
    fn exp<const FMA: bool>(self) -> Self {
        crate::math::exp_f32::<FMA>(self)
    }
    #[inline(always)]
    fn exp_nonpos<const FMA: bool>(self) -> Self {
        crate::math::exp_nonpos_f32::<FMA>(self)
    }
    #[inline(always)]
    fn log1p_unit<const FMA: bool>(self) -> Self {
        crate::math::log1p_unit_f32::<FMA>(self)
    }
    // PERF: in f32, one vector for 16 rows where f64 took two, and half the series: float32
    // 65536 x 10 logsumexp took 0.88x the time, x 4 0.85x (AMD EPYC, AVX-512, 2026-12-04).
    #[inline(always)]
    fn log1p_or_ln(use_log1p: bool, x: f64, y: f64) -> f64 {
        f64::from(crate::math::log1p_or_ln_f32(use_log1p, x as f32, y as f32))
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Float for f64 {
    const DTYPE: DType = DType::F64;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;

    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn load<E: Elem>(e: E) -> Self {
        e.to_f64()
    }
    #[inline(always)]
    fn store<E: FloatElem>(self) -> E {
        E::from_f64(self)
    }
    #[inline(always)]
    fn exp<const FMA: bool>(self) -> Self {
        crate::math::exp_f64::<FMA>(self)
    }
    #[inline(always)]
    fn exp_nonpos<const FMA: bool>(self) -> Self {
        crate::math::exp_nonpos_f64::<FMA>(self)
    }
    #[inline(always)]
    fn log1p_unit<const FMA: bool>(self) -> Self {
        crate::math::log1p_unit_f64::<FMA>(self)
    }
    #[inline(always)]
    fn log1p_or_ln(use_log1p: bool, x: f64, y: f64) -> f64 {
        crate::math::log1p_or_ln(use_log1p, x, y)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}
