//! The floor: the kernels' own algorithm written as a plain `std::arch` loop, beside the crate
//! on the same rows, to say how far from it the crate runs (issue #16).
//!
//! The floor loop takes each row in one pass for the maximum and one pass for the sum of
//! `exp(x - max)`, with the crate's exponential (`exp(r) 2^n`, `r` reduced with a two-part
//! `ln 2`, the fitted polynomial of degree 6 in fused multiply-adds, `2^n` built from the
//! bits), one vector accumulator pair, a masked tail, and `ln` from `std` per row; the `ahead`
//! form prefetches rows the crate's distance ahead (8 KiB, at least two rows), so the rows out
//! of cache load while the exps run (on every row length, where the crate prefetches rows of
//! 256 to 2048 only, and not the last odd step and the tail of a row). It has none
//! of what the crate adds: no fixed summation order across instruction sets (it sums in
//! whatever lanes the register has), no `f64` chunk totals, no `log1p` of the rest where the
//! maximum dominates, no NaN or infinity rules, no threads.
//!
//! `cargo bench --bench floor` runs every instruction set the CPU has (AVX-512 and AVX2 on
//! x86-64); one thread (the crate's pool is set to 1). Groups:
//! - `exp of 8192 (in L1)`: the exponential alone, the crate's beside the floor's, and the
//!   floor's with `vscalefps` for the scaling by `2^n` on AVX-512;
//! - `logsumexp of one row of 8192` (32 KiB, in L1): the max and exp-sum per element, the
//!   exponential's cost;
//! - `logsumexp 8192x1000` and `cross_entropy 8192x1000` (mean over class-index targets):
//!   issue #16's medium rows, out of L2.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sce_rs::{CeOptions, Reduction};
use std::hint::black_box;
use std::time::Duration;

/// Uniform in [-3, 3) from a fixed xorshift, as the kernels bench draws its logits.
fn logits(len: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (6.0 * ((s >> 11) as f64 / (1u64 << 53) as f64) - 3.0) as f32
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    // exp_nonpos_f32's constants: 1.5 * 2^23 + 151 rounds x / ln 2 into the low bits and
    // leaves n + 151 there; the polynomial's coefficients carry the 2^-24 of the scaling.
    const MAGIC: f32 = 12_582_912.0 + 151.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const S: f32 = 1.0 / 16_777_216.0;
    const POLY: [f32; 7] = [
        S * 0.001_381_461_4,
        S * 0.008_368_71,
        S * 0.041_668_39,
        S * 0.166_665_21,
        S * 0.499_999_94,
        S,
        S,
    ];

    /// `exp(x)` for `x <= 0`, 16 lanes, the crate's algorithm.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let magic = _mm512_set1_ps(MAGIC);
        let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
        let nf = _mm512_sub_ps(t, magic);
        let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_LO), r);
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_castps_si512(t)));
        let mut p = _mm512_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        _mm512_mul_ps(p, scale)
    }

    /// `exp(x)` for `x <= 0`, 8 lanes, the crate's algorithm.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-104.0));
        let magic = _mm256_set1_ps(MAGIC);
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
        let nf = _mm256_sub_ps(t, magic);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_LO), r);
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(t)));
        let mut p = _mm256_set1_ps(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        _mm256_mul_ps(p, scale)
    }

    /// [`exp16`] with the scaling by `2^n` done by `vscalefps` (`n` rounded by
    /// `vrndscaleps`), which scales into the subnormal range with one rounding, so the
    /// polynomial keeps its plain coefficients: one instruction fewer (issue #16 asks what
    /// it is worth).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16_scalef(x: __m512) -> __m512 {
        // Still clamped: -inf would make r NaN.
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(POLY[0] / S);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c / S));
        }
        _mm512_scalef_ps(p, n)
    }

    /// `out = exp(x)` for `x <= 0`, 16 lanes at a time ([`exp16_scalef`] where `SCALEF`,
    /// else [`exp16`]), a masked last step.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_map_avx512<const SCALEF: bool>(x: &[f32], out: &mut [f32]) {
        let exp = |v| if SCALEF { exp16_scalef(v) } else { exp16(v) };
        assert_eq!(x.len(), out.len());
        let (steps, tail) = (x.len() / 16, x.len() % 16);
        for i in 0..steps {
            // SAFETY: elements 16 i..16 i + 16 lie inside both slices.
            unsafe {
                let v = exp(_mm512_loadu_ps(x.as_ptr().add(16 * i)));
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), v);
            }
        }
        let mask = ((1u32 << tail) - 1) as __mmask16;
        // SAFETY: the mask reads and writes only the last `tail` elements.
        unsafe {
            let v = exp(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(16 * steps)));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(16 * steps), mask, v);
        }
    }

    /// `out = exp(x)` for `x <= 0` with [`exp8`], 8 lanes at a time and a scalar tail.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_map_avx2(x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), out.len());
        let mut oc = out.chunks_exact_mut(8);
        let mut xc = x.chunks_exact(8);
        for (o, v) in (&mut oc).zip(&mut xc) {
            // SAFETY: 8 readable and 8 writable f32.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), exp8(_mm256_loadu_ps(v.as_ptr()))) };
        }
        let (o, v) = (oc.into_remainder(), xc.remainder());
        let mut a = [0f32; 8];
        a[..v.len()].copy_from_slice(v);
        let mut e = [0f32; 8];
        // SAFETY: 8 readable and 8 writable f32.
        unsafe { _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_loadu_ps(a.as_ptr()))) };
        o.copy_from_slice(&e[..o.len()]);
    }

    /// With `AHEAD`, the row 8 KiB (at least two rows) after row `r` of `x`, as the crate's
    /// passes of exps prefetch it; else, or past the end, row `r` itself (in cache already).
    fn ahead<const AHEAD: bool>(x: &[f32], r: usize, k: usize) -> *const f32 {
        let d = (8192 / (4 * k)).max(2);
        let row = |i: usize| x.get(i * k..(i + 1) * k).map(<[f32]>::as_ptr);
        (if AHEAD { row(r + d) } else { None }).unwrap_or(x[r * k..].as_ptr())
    }

    /// The log-sum-exp of each row of `k` (AVX-512: 16-wide steps, a masked last step);
    /// `AHEAD`: the pass of the exps prefetches the row [`ahead`] gives.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn lse_rows_avx512<const AHEAD: bool>(x: &[f32], k: usize, out: &mut [f32]) {
        let tail = (k % 16) as u32;
        let mask = ((1u32 << tail) - 1) as __mmask16;
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        for (r, (row, o)) in x.chunks_exact(k).zip(out).enumerate() {
            let (steps, p, q) = (k / 16, row.as_ptr(), ahead::<AHEAD>(x, r, k));
            let (mut m0, mut m1) = (ninf, ninf);
            let mut i = 0;
            while i + 2 <= steps {
                // SAFETY: elements 16 i..16 i + 32 lie inside the row.
                m0 = _mm512_max_ps(m0, unsafe { _mm512_loadu_ps(p.add(16 * i)) });
                m1 = _mm512_max_ps(m1, unsafe { _mm512_loadu_ps(p.add(16 * i + 16)) });
                i += 2;
            }
            if i < steps {
                // SAFETY: as above, one step.
                m0 = _mm512_max_ps(m0, unsafe { _mm512_loadu_ps(p.add(16 * i)) });
            }
            // SAFETY: the mask reads only the row's last `tail` elements.
            let last = unsafe { _mm512_mask_loadu_ps(ninf, mask, p.add(16 * steps)) };
            let m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), last));
            let mv = _mm512_set1_ps(m);
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut i = 0;
            while i + 2 <= steps {
                // SAFETY: as above.
                let (a, b) = unsafe {
                    (
                        _mm512_loadu_ps(p.add(16 * i)),
                        _mm512_loadu_ps(p.add(16 * i + 16)),
                    )
                };
                s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(a, mv)));
                s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(b, mv)));
                if AHEAD {
                    // SAFETY: `q` is a row of `k` elements, as `p`; a hint, it reads nothing.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(q.add(16 * i).cast());
                        _mm_prefetch::<_MM_HINT_T0>(q.add(16 * i + 16).cast());
                    }
                }
                i += 2;
            }
            if i < steps {
                // SAFETY: as above.
                let a = unsafe { _mm512_loadu_ps(p.add(16 * i)) };
                s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(a, mv)));
            }
            let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(last, mv)));
            let s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), e));
            *o = m + (s as f64).ln() as f32;
        }
    }

    /// The log-sum-exp of each row of `k` (AVX2: 8-wide steps, a masked last step); `AHEAD`:
    /// the pass of the exps prefetches the row [`ahead`] gives.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn lse_rows_avx2<const AHEAD: bool>(x: &[f32], k: usize, out: &mut [f32]) {
        let tail = k % 8;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail as i32), lanes);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let hmax = |v: __m256| {
            let mut a = [0f32; 8];
            // SAFETY: 8 writable f32.
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
            a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
        };
        let hsum = |v: __m256| {
            let mut a = [0f32; 8];
            // SAFETY: 8 writable f32.
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
            a.iter().sum::<f32>()
        };
        for (r, (row, o)) in x.chunks_exact(k).zip(out).enumerate() {
            let (steps, p, q) = (k / 8, row.as_ptr(), ahead::<AHEAD>(x, r, k));
            let (mut m0, mut m1) = (ninf, ninf);
            let mut i = 0;
            while i + 2 <= steps {
                // SAFETY: elements 8 i..8 i + 16 lie inside the row.
                m0 = _mm256_max_ps(m0, unsafe { _mm256_loadu_ps(p.add(8 * i)) });
                m1 = _mm256_max_ps(m1, unsafe { _mm256_loadu_ps(p.add(8 * i + 8)) });
                i += 2;
            }
            if i < steps {
                // SAFETY: as above, one step.
                m0 = _mm256_max_ps(m0, unsafe { _mm256_loadu_ps(p.add(8 * i)) });
            }
            // SAFETY: the mask reads only the row's last `tail` elements.
            let last = unsafe { _mm256_maskload_ps(p.add(8 * steps), mask) };
            let last_m = _mm256_blendv_ps(ninf, last, _mm256_castsi256_ps(mask));
            let m = hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), last_m));
            let mv = _mm256_set1_ps(m);
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 2 <= steps {
                // SAFETY: as above.
                let (a, b) = unsafe {
                    (
                        _mm256_loadu_ps(p.add(8 * i)),
                        _mm256_loadu_ps(p.add(8 * i + 8)),
                    )
                };
                s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(a, mv)));
                s1 = _mm256_add_ps(s1, exp8(_mm256_sub_ps(b, mv)));
                if AHEAD {
                    // SAFETY: `q` is a row of `k` elements, as `p`; a hint, it reads nothing.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(q.add(8 * i).cast()) };
                }
                i += 2;
            }
            if i < steps {
                // SAFETY: as above.
                let a = unsafe { _mm256_loadu_ps(p.add(8 * i)) };
                s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(a, mv)));
            }
            let e = _mm256_and_ps(exp8(_mm256_sub_ps(last, mv)), _mm256_castsi256_ps(mask));
            let s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), e));
            *o = m + (s as f64).ln() as f32;
        }
    }
}

/// The floor loops this CPU can run, by name.
#[allow(clippy::type_complexity)]
fn floors() -> Vec<(&'static str, fn(&[f32], usize, &mut [f32]))> {
    let mut v: Vec<(&'static str, fn(&[f32], usize, &mut [f32]))> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU was just detected to have AVX-512F.
            v.push(("floor avx512", |x, k, o| unsafe {
                x86::lse_rows_avx512::<false>(x, k, o)
            }));
            // SAFETY: as above.
            v.push(("floor avx512 ahead", |x, k, o| unsafe {
                x86::lse_rows_avx512::<true>(x, k, o)
            }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU was just detected to have AVX2 and FMA.
            v.push(("floor avx2", |x, k, o| unsafe {
                x86::lse_rows_avx2::<false>(x, k, o)
            }));
            // SAFETY: as above.
            v.push(("floor avx2 ahead", |x, k, o| unsafe {
                x86::lse_rows_avx2::<true>(x, k, o)
            }));
        }
    }
    v
}

/// The floor's exponential maps this CPU can run, by name.
#[allow(clippy::type_complexity)]
fn exp_floors() -> Vec<(&'static str, Box<dyn Fn(&[f32], &mut [f32])>)> {
    let mut v: Vec<(&'static str, Box<dyn Fn(&[f32], &mut [f32])>)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY (both): the CPU was just detected to have AVX-512F.
            v.push((
                "floor avx512",
                Box::new(|x, o| unsafe { x86::exp_map_avx512::<false>(x, o) }),
            ));
            v.push((
                "floor avx512 vscalefps",
                Box::new(|x, o| unsafe { x86::exp_map_avx512::<true>(x, o) }),
            ));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU was just detected to have AVX2 and FMA.
            v.push((
                "floor avx2",
                Box::new(|x, o| unsafe { x86::exp_map_avx2(x, o) }),
            ));
        }
    }
    v
}

/// `exp` alone over a row of 8192 in L1, the crate's (as its kernels run it) beside the floor
/// maps, each checked against `std` first.
fn exp_alone(c: &mut Criterion, backend: &str) {
    let x: Vec<f32> = logits(8192).iter().map(|v| v * 10.0 - 30.0).collect();
    let want: Vec<f64> = x.iter().map(|&v| f64::from(v).exp()).collect();
    let close = |got: &[f32]| {
        got.iter()
            .zip(&want)
            .all(|(&g, &w)| (f64::from(g) - w).abs() <= 4.0 * f64::from(f32::EPSILON) * w)
    };
    let mut out = vec![0f32; x.len()];
    let mut g = c.benchmark_group("exp of 8192 (in L1)");
    g.throughput(Throughput::Elements(x.len() as u64));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    sce_rs::exp_nonpos(&x, &mut out).unwrap();
    assert!(close(&out), "sce_rs's exp");
    g.bench_function(format!("sce_rs {backend}"), |b| {
        b.iter(|| sce_rs::exp_nonpos(black_box(&x), &mut out).unwrap())
    });
    for (name, f) in exp_floors() {
        f(&x, &mut out);
        assert!(close(&out), "{name}'s exp");
        g.bench_function(name, |b| b.iter(|| f(black_box(&x), &mut out)));
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    sce_rs::set_num_threads(1).expect("one thread");
    let backend = sce_rs::simd_backend();
    exp_alone(c, backend);
    for (n, k) in [(1usize, 8192usize), (8192, 1000)] {
        let x = logits(n * k);
        let t: Vec<i64> = (0..n).map(|i| ((i * 7919) % k) as i64).collect();
        let mut out = vec![0f32; n];
        let mut g = c.benchmark_group(format!("logsumexp {n}x{k}"));
        g.throughput(Throughput::Elements((n * k) as u64));
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.bench_function(format!("sce_rs {backend}"), |b| {
            b.iter(|| sce_rs::logsumexp(black_box(&x), k, &mut out).unwrap())
        });
        for (name, f) in floors() {
            let mut check = vec![0f32; n];
            f(&x, k, &mut check);
            sce_rs::logsumexp(&x, k, &mut out).unwrap();
            // The floor computes the same thing (its sums are rounded in another order).
            assert!(check
                .iter()
                .zip(&out)
                .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)));
            g.bench_function(name, |b| b.iter(|| f(black_box(&x), k, &mut out)));
        }
        g.finish();
        if n == 1 {
            continue;
        }
        let opts = CeOptions::<f32>::plain(k);
        let mut g = c.benchmark_group(format!("cross_entropy {n}x{k}"));
        g.throughput(Throughput::Elements((n * k) as u64));
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.bench_function(format!("sce_rs {backend}"), |b| {
            b.iter(|| sce_rs::cross_entropy(black_box(&x), k, &t, &opts, Reduction::Mean).unwrap())
        });
        for (name, f) in floors() {
            let mut lse = vec![0f32; n];
            g.bench_function(name, |b| {
                b.iter(|| {
                    f(black_box(&x), k, &mut lse);
                    let total: f64 = (lse.iter().zip(&t).enumerate())
                        .map(|(i, (&l, &c))| f64::from(l - x[i * k + c as usize]))
                        .sum();
                    total / n as f64
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, all);
criterion_main!(benches);
