//! The jobs written with `std::arch` intrinsics. Turning a block of short rows into lanes
//! (a transposition in registers), which LLVM's vectorizer does badly from generic code (it
//! scatters, or gathers, an element at a time: float32 65536 x 10, a third of the time of a
//! logsumexp). The `f64` total of a chunk's float32 accumulators, which generic code only
//! vectorizes well through memory (`kernels::chunk_sum`). And [`prefetch`], a hint no generic
//! code can give. Every other kernel is generic code the vectorizer handles (see
//! [`crate::isa`]).
//!
//! The intrinsic versions are `unsafe` for one reason only, their instruction set: they are
//! called through the tokens of [`crate::isa`] ([`crate::isa::Avx2`], [`crate::isa::Avx512`]),
//! which exist only on a CPU that has it. They check their slices' lengths themselves and read
//! and write only inside them.

use crate::float::Float;

/// Rows per block: one AVX-512 register of `f32`, two of AVX2.
pub(crate) const ROW_LANES: usize = 16;
/// Columns of a block's lanes: rows have fewer elements than this.
pub(crate) const MAX_K: usize = 16;

/// One block as lanes: `cols[j][l]` is element `j` of row `l`.
pub(crate) type Lanes<T> = [[T; ROW_LANES]; MAX_K];

/// A block of [`Lanes`] on the stack, aligned to a cache line: no column of float32 is split
/// across two lines.
// PERF: in a function whose frame LLVM did not realign, the block sat at whatever alignment
// the stack had in that process: float32 65536 x 10 cross_entropy took 0.95x to 1.12x the
// time of another build from one process to the next.
#[repr(C, align(64))]
pub(crate) struct AlignedLanes<T>(pub Lanes<T>);

/// `cols[j][l] = block[l * k + j]` for the `block.len() / k` rows of `block` (at most
/// [`ROW_LANES`]) and `j < k`; the rest of `cols` is left as it is.
#[inline(always)]
pub(crate) fn rows_to_lanes<T: Copy>(block: &[T], k: usize, cols: &mut Lanes<T>) {
    for (l, row) in block.chunks_exact(k.max(1)).take(ROW_LANES).enumerate() {
        for (col, &v) in cols.iter_mut().zip(row) {
            col[l] = v;
        }
    }
}

/// The inverse of [`rows_to_lanes`]: `block[l * k + j] = cols[j][l]` for the
/// `block.len() / k` rows of `block` (at most [`ROW_LANES`]) and `j < k`.
#[inline(always)]
pub(crate) fn lanes_to_rows<T: Copy>(cols: &Lanes<T>, k: usize, block: &mut [T]) {
    for (l, row) in block.chunks_exact_mut(k.max(1)).take(ROW_LANES).enumerate() {
        for (col, v) in cols.iter().zip(row) {
            *v = col[l];
        }
    }
}

/// Asks the CPU to bring the cache lines of `x` into L1 (`prefetcht0`): a hint, which changes
/// no result and never faults. A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    lines::<T, { std::arch::x86_64::_MM_HINT_T0 }>(x);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// [`prefetch`] for lines about to be written (`prefetchw`): they arrive owned, so the stores
/// that follow do not wait for them (x86-64 CPUs without `prefetchw` run it as a no-op).
#[inline(always)]
pub(crate) fn prefetch_write<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    lines::<T, { std::arch::x86_64::_MM_HINT_ET0 }>(x);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// One prefetch of kind `HINT` per 64 bytes of `x`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lines<T, const HINT: i32>(x: &[T]) {
    let p = x.as_ptr().cast::<i8>();
    for off in (0..std::mem::size_of_val(x)).step_by(64) {
        // SAFETY: `prefetcht0` and `prefetchw` only hint the caches (SSE and a no-op where
        // absent, both in x86-64's baseline encoding space): they neither fault nor change
        // memory or registers, and `p + off` lies inside `x` anyway.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.add(off)) };
    }
}

/// `block` as `f32` when `T` is `f32`.
#[inline(always)]
pub(crate) fn as_f32<T: Float>(block: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32 itself (same type, size and alignment), so the slice is reread as what
    // it is.
    (T::DTYPE == crate::dtype::DType::F32)
        .then(|| unsafe { std::slice::from_raw_parts(block.as_ptr().cast::<f32>(), block.len()) })
}

/// `block` as `f32` when `T` is `f32`.
#[inline(always)]
pub(crate) fn as_f32_mut<T: Float>(block: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`; the borrow is moved, not duplicated.
    (T::DTYPE == crate::dtype::DType::F32).then(|| unsafe {
        std::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<f32>(), block.len())
    })
}

/// `cols` as `f32` lanes when `T` is `f32`.
#[inline(always)]
pub(crate) fn as_f32_lanes<T: Float>(cols: &Lanes<T>) -> Option<&Lanes<f32>> {
    // SAFETY: as in `as_f32`.
    (T::DTYPE == crate::dtype::DType::F32)
        .then(|| unsafe { &*(cols as *const Lanes<T>).cast::<Lanes<f32>>() })
}

/// `cols` as `f32` lanes when `T` is `f32`.
#[inline(always)]
pub(crate) fn as_f32_lanes_mut<T: Float>(cols: &mut Lanes<T>) -> Option<&mut Lanes<f32>> {
    // SAFETY: as in `as_f32`; the borrow is moved, not duplicated.
    (T::DTYPE == crate::dtype::DType::F32)
        .then(|| unsafe { &mut *(cols as *mut Lanes<T>).cast::<Lanes<f32>>() })
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{Lanes, MAX_K, ROW_LANES};
    use std::arch::x86_64::*;

    /// [`super::rows_to_lanes`] of a full block with AVX-512: 16 masked row loads and a 16 x 16
    /// transposition in four rounds of shuffles.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn rows_to_lanes_avx512(block: &[f32], k: usize, cols: &mut Lanes<f32>) {
        assert!(k > 0 && k < MAX_K && block.len() == ROW_LANES * k);
        // PERF: loads under a mask of the row's `k` elements, not full-width loads with a
        // copy of the block's end for those that would run past it: their address selects
        // and the reloads of the fresh copy took a fifth of float32 65536 x 10
        // cross_entropy (masked: 0.77-0.92x the time at 65536 x 10, 0.72-0.95x at x 2).
        let mask = ((1u32 << k) - 1) as __mmask16;
        let mut r = [_mm512_setzero_ps(); 16];
        for (l, v) in r.iter_mut().enumerate() {
            // SAFETY: the mask reads elements l * k..l * k + k, inside the block (l < 16);
            // masked-off elements are neither read nor faulted on.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, block.as_ptr().add(l * k)) };
        }
        let out = transpose16(r);
        for (col, v) in cols.iter_mut().zip(out).take(k) {
            // SAFETY: a column holds 16 f32.
            unsafe { _mm512_storeu_ps(col.as_mut_ptr(), v) };
        }
    }

    /// The 16 x 16 transposition of `r` (register `i`, element `j` to register `j`, element
    /// `i`): pairs of rows interleaved by element, then by pairs of elements, then the 128-bit
    /// lanes of four registers gathered into each result.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // t2[4i + c] holds, in its 128-bit lane q, element 4q + c of rows 4i..4i + 4.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut t2 = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            t2[4 * i] = pairs_lo(a, c);
            t2[4 * i + 1] = pairs_hi(a, c);
            t2[4 * i + 2] = pairs_lo(b, d);
            t2[4 * i + 3] = pairs_hi(b, d);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let (a, b, e, f) = (t2[c], t2[4 + c], t2[8 + c], t2[12 + c]);
            let ab_lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
            let ab_hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
            let ef_lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(e, f);
            let ef_hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(e, f);
            out[c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_lo, ef_lo);
            out[4 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_lo, ef_lo);
            out[8 + c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_hi, ef_hi);
            out[12 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_hi, ef_hi);
        }
        out
    }

    /// [`super::lanes_to_rows`] of a full block with AVX-512: the transposition back, and
    /// each row stored under a mask of its `k` elements.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn lanes_to_rows_avx512(cols: &Lanes<f32>, k: usize, block: &mut [f32]) {
        assert!(k > 0 && k < MAX_K && block.len() == ROW_LANES * k);
        let mut r = [_mm512_setzero_ps(); 16];
        for (v, col) in r.iter_mut().zip(cols) {
            // SAFETY: a column holds 16 f32.
            *v = unsafe { _mm512_loadu_ps(col.as_ptr()) };
        }
        let mask = ((1u32 << k) - 1) as __mmask16;
        for (l, v) in transpose16(r).into_iter().enumerate() {
            // SAFETY: the mask writes elements l * k..l * k + k, inside the block (l < 16);
            // masked-off elements are neither written nor faulted on.
            unsafe { _mm512_mask_storeu_ps(block.as_mut_ptr().add(l * k), mask, v) };
        }
    }

    /// The pairs of elements at even (`lo`) or odd (`hi`) pair positions of `a` and `b`, in
    /// turn.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pairs_lo(a: __m512, b: __m512) -> __m512 {
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pairs_hi(a: __m512, b: __m512) -> __m512 {
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    }

    /// [`super::rows_to_lanes`] of a full block with AVX2: 8 x 8 transpositions of rows
    /// 0..8 and 8..16 for elements 0..8, and 8..16 when `k > 8`.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn rows_to_lanes_avx2(block: &[f32], k: usize, cols: &mut Lanes<f32>) {
        assert!(k > 0 && k < MAX_K && block.len() == ROW_LANES * k);
        for half in 0..2 {
            for c0 in (0..k).step_by(8) {
                // The lanes below the row's remaining `k - c0` elements.
                let mask = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32((k - c0) as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, v) in r.iter_mut().enumerate() {
                    let at = (8 * half + i) * k + c0;
                    // SAFETY: the mask reads elements at..at + min(8, k - c0), inside the
                    // row (8 * half + i < 16); masked-off elements are neither read nor
                    // faulted on.
                    *v = unsafe { _mm256_maskload_ps(block.as_ptr().add(at), mask) };
                }
                for (j, v) in transpose8(r).into_iter().take(k - c0).enumerate() {
                    // SAFETY: 8 * half + 8 <= 16, the length of a column.
                    unsafe { _mm256_storeu_ps(cols[c0 + j].as_mut_ptr().add(8 * half), v) };
                }
            }
        }
    }

    /// [`super::lanes_to_rows`] of a full block with AVX2: the transpositions back, and the
    /// rows stored 8 elements at a time in row order into a copy with room past its end (a
    /// store's elements past its row are written again by the rows after it), then copied.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn lanes_to_rows_avx2(cols: &Lanes<f32>, k: usize, block: &mut [f32]) {
        assert!(k > 0 && k < MAX_K && block.len() == ROW_LANES * k);
        let mut buf = [0.0f32; ROW_LANES * MAX_K + 16];
        for half in 0..2 {
            let mut pieces = [[_mm256_setzero_ps(); 8]; 2];
            for (c, piece) in pieces.iter_mut().enumerate().take(k.div_ceil(8)) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (v, col) in r.iter_mut().zip(&cols[8 * c..]) {
                    // SAFETY: elements 8 * half..8 * half + 8 of a column of 16.
                    *v = unsafe { _mm256_loadu_ps(col.as_ptr().add(8 * half)) };
                }
                *piece = transpose8(r);
            }
            for i in 0..8 {
                let at = (8 * half + i) * k;
                for (c, piece) in pieces.iter().enumerate().take(k.div_ceil(8)) {
                    // at + 8 * c + 8 <= 15 * 15 + 16 < buf.len().
                    let dst = &mut buf[at + 8 * c..at + 8 * c + 8];
                    // SAFETY: 8 writable elements.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), piece[i]) };
                }
            }
        }
        block.copy_from_slice(&buf[..block.len()]);
    }

    /// The 8 x 8 transposition of `r`: pairs of rows interleaved by element, then by pairs of
    /// elements, then the 128-bit halves exchanged.
    #[inline]
    #[target_feature(enable = "avx")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let mut t = [_mm256_setzero_ps(); 8];
        for p in 0..4 {
            t[2 * p] = _mm256_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm256_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4g + c] holds element c (lane 0) and c + 4 (lane 1) of rows 4g..4g + 4.
        let mut u = [_mm256_setzero_ps(); 8];
        for g in 0..2 {
            let (a, b) = (t[4 * g], t[4 * g + 2]);
            u[4 * g] = _mm256_shuffle_ps::<0x44>(a, b);
            u[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(a, b);
            let (a, b) = (t[4 * g + 1], t[4 * g + 3]);
            u[4 * g + 2] = _mm256_shuffle_ps::<0x44>(a, b);
            u[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(a, b);
        }
        let mut out = [_mm256_setzero_ps(); 8];
        for j in 0..4 {
            out[j] = _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j]);
            out[4 + j] = _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j]);
        }
        out
    }

    /// `kernels::lanes_total` of 16 float32 accumulators widened to `f64`, then `tail`: the
    /// same additions in the same pairs (halves of 8, of 4, of 2), so the same bits, with the
    /// accumulators left in a register.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn lanes_total_avx512(acc: &[f32; 16], tail: f32) -> f64 {
        // SAFETY: 16 readable f32.
        let v = unsafe { _mm512_loadu_ps(acc.as_ptr()) };
        let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(v),
        )));
        let a = _mm512_add_pd(lo, hi);
        let b = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd::<1>(a));
        let c = _mm_add_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd::<1>(b));
        (_mm_cvtsd_f64(c) + _mm_cvtsd_f64(_mm_unpackhi_pd(c, c))) + f64::from(tail)
    }

    /// [`lanes_total_avx512`] with AVX: the accumulators in two registers.
    ///
    /// # Safety
    /// The CPU supports AVX.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(crate) unsafe fn lanes_total_avx2(acc: &[f32; 16], tail: f32) -> f64 {
        // SAFETY: 16 readable f32.
        let (v0, v1) = unsafe {
            (
                _mm256_loadu_ps(acc.as_ptr()),
                _mm256_loadu_ps(acc.as_ptr().add(8)),
            )
        };
        // a[l] = acc[l] + acc[l + 8]: lanes 0..4, then 4..8.
        let a0 = _mm256_add_pd(
            _mm256_cvtps_pd(_mm256_castps256_ps128(v0)),
            _mm256_cvtps_pd(_mm256_castps256_ps128(v1)),
        );
        let a1 = _mm256_add_pd(
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v0)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v1)),
        );
        let b = _mm256_add_pd(a0, a1);
        let c = _mm_add_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd::<1>(b));
        (_mm_cvtsd_f64(c) + _mm_cvtsd_f64(_mm_unpackhi_pd(c, c))) + f64::from(tail)
    }
}
