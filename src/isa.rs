//! Runtime instruction-set dispatch.
//!
//! The wheel is compiled for each architecture's baseline (SSE2 on x86-64), so it runs on any
//! machine. The hot kernels are additionally compiled, from the same generic source, inside
//! `#[target_feature]` wrappers for wider instruction sets (see [`isa_dispatch!`]); the best
//! set the CPU supports is detected once and used for every later call. `SCE_RS_FORCE_ISA`
//! (read once, at the first call) or [`force`] selects a lower one, so the tests exercise every
//! path on one machine; asking for a set the CPU lacks falls back to the best it has.
//!
//! Every path sums in the same order (a fixed lane count, independent of the vector width), so
//! results never depend on the thread count or the vector width. The AVX2 and AVX-512 copies
//! use fused multiply-add inside `exp` ([`Arith`]) and so agree bitwise with each other; the
//! SSE2 baseline rounds its multiply-adds twice and may differ from them in the last bits.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::float::Float;

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The architecture's baseline: SSE2 on x86-64, NEON on aarch64, plain code elsewhere.
    Baseline = 1,
    /// x86-64 with AVX2 and FMA (Haswell, Zen and later).
    Avx2 = 2,
    /// x86-64 with AVX-512 F/BW/DQ/VL (Skylake-X, Ice Lake, Zen 4 and later).
    Avx512 = 3,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    /// The name `simd_backend()` reports and `SCE_RS_FORCE_ISA` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline if cfg!(target_arch = "x86_64") => "sse2",
            Isa::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Isa::Baseline => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name; `"scalar"` is accepted everywhere as the baseline.
    pub fn from_name(s: &str) -> Option<Isa> {
        let s = s.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .or_else(|| matches!(s.as_str(), "scalar" | "baseline").then_some(Isa::Baseline))
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            3 => Isa::Avx512,
            2 => Isa::Avx2,
            _ => Isa::Baseline,
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl");
        if avx512 {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// 0 until the first call resolves it.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level the kernels use now.
#[inline]
pub fn active() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let wanted = std::env::var("SCE_RS_FORCE_ISA")
                .ok()
                .and_then(|s| Isa::from_name(&s));
            force(wanted.unwrap_or(Isa::Avx512))
        }
        v => Isa::from_u8(v),
    }
}

/// Uses `wanted`, or the best level below it that the CPU supports, for later calls; returns
/// the level chosen. Results do not depend on it (see the module docs), only speed does.
pub fn force(wanted: Isa) -> Isa {
    let chosen = capped(wanted);
    ACTIVE.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// `wanted`, or the best level below it that the CPU supports.
fn capped(wanted: Isa) -> Isa {
    wanted.min(detected())
}

/// The arithmetic a copy of a kernel is compiled with, passed down as a zero-sized value so
/// that one generic source yields both copies: [`Fused`] where the instruction set has fused
/// multiply-add (`mul_add` is one instruction there and a slow library call elsewhere),
/// [`Unfused`] otherwise.
pub trait Arith: Copy + Send + Sync + 'static {
    fn exp<T: Float>(self, x: T) -> T;
    /// `exp(x)` for `x <= 0`: every `x - max` of a softmax.
    fn exp_nonpos<T: Float>(self, x: T) -> T;
}

#[derive(Clone, Copy, Debug)]
pub struct Unfused;

#[derive(Clone, Copy, Debug)]
pub struct Fused;

impl Arith for Unfused {
    #[inline(always)]
    fn exp<T: Float>(self, x: T) -> T {
        x.exp::<false>()
    }
    #[inline(always)]
    fn exp_nonpos<T: Float>(self, x: T) -> T {
        x.exp_nonpos::<false>()
    }
}

impl Arith for Fused {
    #[inline(always)]
    fn exp<T: Float>(self, x: T) -> T {
        x.exp::<true>()
    }
    #[inline(always)]
    fn exp_nonpos<T: Float>(self, x: T) -> T {
        x.exp_nonpos::<true>()
    }
}

/// The arithmetic of the baseline copy: aarch64's baseline (NEON) has fused multiply-add.
#[cfg(target_arch = "aarch64")]
pub type BaselineArith = Fused;
#[cfg(not(target_arch = "aarch64"))]
pub type BaselineArith = Unfused;

/// Defines `pub fn $name` that runs `$imp` (an `#[inline(always)]` generic function with the
/// same signature plus a last [`Arith`] argument) compiled for the [`active`] instruction set. Generic parameters go in
/// square brackets: `pub fn softmax[T: Float](x: &[T], out: &mut [T]) = softmax_rows;`.
macro_rules! isa_dispatch {
    ($(
        $(#[$meta:meta])*
        pub fn $name:ident [$($gen:tt)*] ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:ident;
    )*) => {$(
        $(#[$meta])*
        #[inline]
        pub fn $name<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg,)* $crate::isa::Fused)
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg,)* $crate::isa::Fused)
                }
                match $crate::isa::active() {
                    // SAFETY: `active` only returns a level the CPU was detected to support.
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Baseline => {}
                }
            }
            $imp($($arg,)* $crate::isa::BaselineArith {})
        }
    )*};
}
pub(crate) use isa_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_capped_by_the_cpu() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert_eq!(Isa::from_name(" Scalar "), Some(Isa::Baseline));
        assert_eq!(Isa::from_name("avx9"), None);
        // Without touching the level in use: other tests running meanwhile compare results
        // bitwise, and the baseline may differ from the others in the last bits.
        let best = detected();
        assert_eq!(capped(Isa::Avx512), best);
        assert_eq!(capped(Isa::Baseline), Isa::Baseline);
        assert!(capped(Isa::Avx2) <= best);
    }
}
