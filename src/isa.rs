//! Runtime instruction-set dispatch.
//!
//! The wheel is compiled for each architecture's baseline (SSE2 on x86-64), so it runs on any
//! machine. The hot kernels are additionally compiled, from the same generic source, inside
//! `#[target_feature]` wrappers for wider instruction sets (see [`isa_dispatch!`]); the best
//! set the CPU supports is detected once and used for every later call. `SCE_RS_FORCE_ISA`
//! (read once, at the first call) or [`force`] selects a lower one, so the tests exercise every
//! path on one machine; asking for a set the CPU lacks falls back to the best it has.
//!
//! That choice is global, but it is read only at the API boundary: each call of the slice API,
//! the Python binding or the fused linear cross-entropy takes one [`Level`] at its top and
//! passes it down, through `ops`, to every dispatched kernel. A `Level` can only hold a set the
//! CPU supports, so the kernels' `unsafe` calls stay sound whatever a safe caller passes, and a
//! call never mixes levels even when [`force`] runs meanwhile.
//!
//! Every path sums in the same order (a fixed lane count, independent of the vector width), so
//! results never depend on the thread count or the vector width. The AVX2 and AVX-512 copies
//! use fused multiply-add inside `exp` ([`Arith`]) and so agree bitwise with each other; the
//! SSE2 baseline rounds its multiply-adds twice and may differ from them in the last bits.
//!
//! The AVX2 and AVX-512 copies pass their kernels a token ([`Avx2`], [`Avx512`]) as their
//! [`Arith`]: a value only those copies can make, so a kernel that holds one may call the few
//! intrinsics of [`crate::simd`] for that instruction set, soundly, from generic code.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::float::Float;
use crate::simd::{self, Lanes};

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

/// The size in bytes of this CPU's largest cache (its last level), as CPUID describes it
/// (leaf 0x8000001D on AMD and Hygon where the CPU has it, leaf 4 on the others, as Linux
/// reads them); `None` where it says nothing (or off x86-64). Read once. Only a tuning input:
/// see [`crate::kernels::fetches_out`].
pub fn last_level_cache() -> Option<usize> {
    static LLC: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *LLC.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__cpuid_count, CpuidResult};
            // SAFETY: CPUID exists on every x86-64 CPU and only reads; the functions are safe
            // from Rust 1.94 on, `unsafe` below that (the crate builds from 1.89).
            #[allow(unused_unsafe)]
            let cpuid =
                |leaf: u32, sub: u32| -> CpuidResult { unsafe { __cpuid_count(leaf, sub) } };
            // The largest cache a deterministic-parameters leaf lists (subleaves until type 0).
            let largest = |leaf: u32| {
                (0..16)
                    .map(|sub| cpuid(leaf, sub))
                    .take_while(|r| r.eax & 0x1f != 0)
                    .filter_map(|r| {
                        let ways = (r.ebx >> 22) as usize + 1;
                        let parts = ((r.ebx >> 12) & 0x3ff) as usize + 1;
                        let line = (r.ebx & 0xfff) as usize + 1;
                        let sets = r.ecx as usize + 1;
                        ways.checked_mul(parts)?
                            .checked_mul(line)?
                            .checked_mul(sets)
                    })
                    .max()
            };
            let v = cpuid(0, 0);
            let vendor = [v.ebx, v.edx, v.ecx].map(u32::to_le_bytes).concat();
            let amd = vendor == *b"AuthenticAMD" || vendor == *b"HygonGenuine";
            if amd {
                let topoext = cpuid(0x8000_0000, 0).eax >= 0x8000_001d
                    && (cpuid(0x8000_0001, 0).ecx >> 22) & 1 == 1;
                topoext.then(|| largest(0x8000_001d)).flatten()
            } else {
                (v.eax >= 4).then(|| largest(4)).flatten()
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    })
}

/// A level this CPU supports: what every dispatched kernel ([`isa_dispatch!`]) takes to pick
/// the copy it runs. The field is private and every constructor caps the level by [`detected`],
/// so no safe caller can make one the CPU lacks: that is what keeps the `unsafe` calls of the
/// `#[target_feature]` copies sound. A call reads the level once, at the API boundary
/// ([`Level::active`]), and passes it down; nothing below reads the global choice, so tests can
/// run every level side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Level(Isa);

impl Level {
    /// The best level the CPU supports.
    pub fn best() -> Level {
        Level(detected())
    }

    /// `wanted`, or the best level below it that the CPU supports.
    pub fn capped(wanted: Isa) -> Level {
        Level(wanted.min(detected()))
    }

    /// The level calls use now: `SCE_RS_FORCE_ISA` (read at the first call) or [`force`]'s
    /// choice, capped by the CPU; the best level otherwise.
    #[inline]
    pub fn active() -> Level {
        match ACTIVE.load(Ordering::Relaxed) {
            0 => std::env::var("SCE_RS_FORCE_ISA")
                .ok()
                .and_then(|s| Isa::from_name(&s))
                .map_or_else(Level::best, Level::capped)
                .make_active(),
            // Only `make_active` stores, and it stores a `Level`.
            v => Level(Isa::from_u8(v)),
        }
    }

    fn make_active(self) -> Level {
        ACTIVE.store(self.0 as u8, Ordering::Relaxed);
        self
    }

    /// The instruction set this level runs.
    pub fn isa(self) -> Isa {
        self.0
    }

    /// Every level this CPU supports, lowest first: what tests run side by side.
    #[cfg(test)]
    pub fn supported() -> Vec<Level> {
        let mut all: Vec<Level> = Isa::ALL.into_iter().map(Level::capped).collect();
        all.dedup();
        all
    }
}

/// 0 until the first call resolves it; otherwise a level capped by the CPU, as `Isa as u8`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level the kernels use now, as `simd_backend()` reports it.
pub fn active() -> Isa {
    Level::active().isa()
}

/// Uses `wanted`, or the best level below it that the CPU supports, for later calls; returns
/// the level chosen. Results do not depend on it (see the module docs), only speed does.
/// Calls already running keep the level they read when they started.
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's `_force_simd_backend`
pub fn force(wanted: Isa) -> Isa {
    Level::capped(wanted).make_active().isa()
}

/// The arithmetic a copy of a kernel is compiled with, passed down as a zero-sized value so
/// that one generic source yields both copies: [`Fused`] where the instruction set has fused
/// multiply-add (`mul_add` is one instruction there and a slow library call elsewhere),
/// [`Unfused`] otherwise.
pub trait Arith: Copy + Send + Sync + 'static {
    fn exp<T: Float>(self, x: T) -> T;
    /// `exp(x)` for `x <= 0`: every `x - max` of a softmax.
    fn exp_nonpos<T: Float>(self, x: T) -> T;
    /// `log1p(t)` for `t` in `[0, 1]`: [`Float::log1p_unit`].
    fn log1p_unit<T: Float>(self, t: T) -> T;
    /// [`simd::rows_to_lanes`]: a block of short rows as lanes. The instruction sets with a
    /// transposition in registers override it for full blocks of `f32`.
    #[inline(always)]
    fn rows_to_lanes<T: Float>(self, block: &[T], k: usize, cols: &mut Lanes<T>) {
        simd::rows_to_lanes(block, k, cols);
    }
    /// [`simd::lanes_to_rows`], the way back; overridden as [`Arith::rows_to_lanes`] is.
    #[inline(always)]
    fn lanes_to_rows<T: Float>(self, cols: &Lanes<T>, k: usize, block: &mut [T]) {
        simd::lanes_to_rows(cols, k, block);
    }
    /// Whether both transpositions of `T` run in registers here (float32 on AVX2 and
    /// AVX-512): a path that transposes twice only pays off then.
    #[inline(always)]
    fn lanes_in_registers<T: Float>(self) -> bool {
        false
    }
    /// `kernels::lanes_total_t` of a chunk's 16 float32 accumulators and its tail, where the
    /// token has it in registers (the same bits); `None` elsewhere, and for other types.
    #[inline(always)]
    fn lanes_total_f32<T: Float>(self, acc: &[T; 16], tail: T) -> Option<f64> {
        let _ = (acc, tail);
        None
    }
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
    #[inline(always)]
    fn log1p_unit<T: Float>(self, t: T) -> T {
        t.log1p_unit::<false>()
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
    #[inline(always)]
    fn log1p_unit<T: Float>(self, t: T) -> T {
        t.log1p_unit::<true>()
    }
}

/// [`Fused`] on a CPU with AVX2 and FMA: the arithmetic of `isa_dispatch!`'s AVX2 copy, with
/// its intrinsics. Only that copy makes one ([`Avx2::new`]), so holding one proves the CPU has
/// them.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

/// [`Fused`] on a CPU with AVX-512 F/BW/DQ/VL; see [`Avx2`].
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx2 {
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn new() -> Avx2 {
        Avx2(())
    }
}

impl Avx512 {
    /// # Safety
    /// The CPU supports AVX-512 F/BW/DQ/VL, AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn new() -> Avx512 {
        Avx512(())
    }
}

/// `block` has `ROW_LANES` rows: a block the intrinsic transpositions take.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn full_block<T>(block: &[T], k: usize) -> bool {
    k > 0 && k < simd::MAX_K && block.len() == simd::ROW_LANES * k
}

/// The [`Arith`] of a token: [`Fused`]'s exponentials, and the transpositions of full float32
/// blocks in registers by `$to` and `$back` and the totals of float32 chunk sums by `$total`
/// (`simd::x86`), which need the token's instruction set.
macro_rules! token_arith {
    ($token:ident, $to:ident, $back:ident, $total:ident) => {
        impl Arith for $token {
            #[inline(always)]
            fn exp<T: Float>(self, x: T) -> T {
                Fused.exp(x)
            }
            #[inline(always)]
            fn exp_nonpos<T: Float>(self, x: T) -> T {
                Fused.exp_nonpos(x)
            }
            #[inline(always)]
            fn log1p_unit<T: Float>(self, t: T) -> T {
                Fused.log1p_unit(t)
            }
            #[inline(always)]
            fn lanes_in_registers<T: Float>(self) -> bool {
                cfg!(target_arch = "x86_64") && T::DTYPE == crate::dtype::DType::F32
            }
            #[inline(always)]
            fn lanes_total_f32<T: Float>(self, acc: &[T; 16], tail: T) -> Option<f64> {
                #[cfg(target_arch = "x86_64")]
                if let Some(acc) = simd::as_f32(acc) {
                    let acc: &[f32; 16] = acc.try_into().expect("16 lanes");
                    // SAFETY: the token exists only on a CPU with the instruction set
                    // `$total` is compiled for (the contract of its `new`). `tail` is an f32,
                    // exact through f64.
                    return Some(unsafe { simd::x86::$total(acc, tail.to_f64() as f32) });
                }
                let _ = (acc, tail);
                None
            }
            #[inline(always)]
            fn rows_to_lanes<T: Float>(self, block: &[T], k: usize, cols: &mut Lanes<T>) {
                #[cfg(target_arch = "x86_64")]
                if let (Some(b), Some(c), true) = (
                    simd::as_f32(block),
                    simd::as_f32_lanes_mut(cols),
                    full_block(block, k),
                ) {
                    // SAFETY: the token exists only on a CPU with the instruction set `$to`
                    // is compiled for (the contract of its `new`).
                    return unsafe { simd::x86::$to(b, k, c) };
                }
                simd::rows_to_lanes(block, k, cols);
            }
            #[inline(always)]
            fn lanes_to_rows<T: Float>(self, cols: &Lanes<T>, k: usize, block: &mut [T]) {
                #[cfg(target_arch = "x86_64")]
                if let (Some(c), true) = (simd::as_f32_lanes(cols), full_block(block, k)) {
                    let b = simd::as_f32_mut(block).expect("T is f32");
                    // SAFETY: as above, for `$back`.
                    return unsafe { simd::x86::$back(c, k, b) };
                }
                simd::lanes_to_rows(cols, k, block);
            }
        }
    };
}

token_arith!(
    Avx2,
    rows_to_lanes_avx2,
    lanes_to_rows_avx2,
    lanes_total_avx2
);
token_arith!(
    Avx512,
    rows_to_lanes_avx512,
    lanes_to_rows_avx512,
    lanes_total_avx512
);

/// The arithmetic of the baseline copy: aarch64's baseline (NEON) has fused multiply-add.
#[cfg(target_arch = "aarch64")]
pub type BaselineArith = Fused;
#[cfg(not(target_arch = "aarch64"))]
pub type BaselineArith = Unfused;

/// Defines `pub fn $name` that runs `$imp` (an `#[inline(always)]` generic function with the
/// same signature plus a last [`Arith`] argument) compiled for the instruction set of a
/// [`Level`], which the defined function takes as its first argument. Generic parameters go
/// in square brackets: `pub fn softmax[T: Float](x: &[T], out: &mut [T]) = softmax_rows;`
/// defines `softmax(isa: Level, x: &[T], out: &mut [T])`.
macro_rules! isa_dispatch {
    ($(
        $(#[$meta:meta])*
        pub fn $name:ident [$($gen:tt)*] ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:path;
    )*) => {$(
        $(#[$meta])*
        #[inline]
        pub fn $name<$($gen)*>(isa: $crate::isa::Level, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: this copy runs only where the CPU has AVX2 and FMA (below).
                    $imp($($arg,)* unsafe { $crate::isa::Avx2::new() })
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: this copy runs only where the CPU has AVX-512 (below).
                    $imp($($arg,)* unsafe { $crate::isa::Avx512::new() })
                }
                match isa.isa() {
                    // SAFETY: a `Level` only ever holds a level the CPU was detected to
                    // support (its field is private and every constructor caps it).
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Baseline => {}
                }
            }
            let _ = isa; // the baseline copy is the only one off x86-64
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
        assert_eq!(Level::best().isa(), best);
        assert_eq!(Level::capped(Isa::Avx512).isa(), best);
        assert_eq!(Level::capped(Isa::Baseline).isa(), Isa::Baseline);
        assert!(Level::capped(Isa::Avx2).isa() <= best);
        assert!(Level::active().isa() <= best);
    }

    /// On Linux, the kernel lists each CPU's caches in sysfs from the same CPUID leaves:
    /// where [`last_level_cache`] reads a size, it is the largest cache of one of the CPUs
    /// (cores may differ, and the test runs on any of them).
    #[test]
    fn last_level_cache_is_the_largest_cache_linux_lists() {
        let Some(llc) = last_level_cache() else {
            return; // CPUID gave no size: the output's prefetch stays on, as before it existed
        };
        let Ok(cpus) = std::fs::read_dir("/sys/devices/system/cpu") else {
            return; // not Linux: nothing to compare
        };
        let largest_per_cpu: Vec<usize> = cpus
            .filter_map(|cpu| std::fs::read_dir(cpu.ok()?.path().join("cache")).ok())
            .filter_map(|caches| {
                caches
                    .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
                    .filter_map(|s| Some(s.trim().strip_suffix('K')?.parse::<usize>().ok()? << 10))
                    .max()
            })
            .collect();
        if !largest_per_cpu.is_empty() {
            assert!(
                largest_per_cpu.contains(&llc),
                "{llc} not in {largest_per_cpu:?}"
            );
        }
    }
}
