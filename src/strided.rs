//! Strided views of arrays as "rows": the layout layer between NumPy's arbitrary strides and
//! kernels that only ever see contiguous `&[T]` rows.
//!
//! A [`View`] describes an N-d array as `n_rows` rows of `k` elements: the class axis becomes
//! the row (element stride `k_stride`), every other axis is an "outer" axis enumerated in C
//! order. Blocks of consecutive rows are handed to kernels either in place (when the block is
//! contiguous, aligned and already of the compute type: the fast path every C-contiguous
//! float32/float64 array with `axis=-1` takes) or through a scratch buffer of one block
//! (gather with dtype widening on the way in, scatter with rounding on the way out). Scratch
//! is bounded by the block size, so transposed, reversed, float16 or integer inputs never cost
//! a whole-array copy.
//!
//! Views hold raw pointers; whoever builds one promises the memory stays valid and is not
//! resized while the view is used (the binding keeps the NumPy arrays referenced).

use crate::dtype::{dispatch, dispatch_float, DType, Elem, FloatElem};
use crate::error::{Error, Result};
use crate::float::Float;

/// An array seen as rows along one axis. Strides are in bytes and may be zero or negative.
#[derive(Clone, Debug)]
pub struct View {
    ptr: *mut u8,
    dtype: DType,
    /// Outer axes after dropping length-1 axes and merging axes that step evenly: a C-contiguous
    /// array with `axis=-1` ends up with exactly one.
    outer: Vec<(usize, isize)>,
    n_rows: usize,
    k: usize,
    k_stride: isize,
    /// Read through scratch even when the block could be borrowed in place: set when an output
    /// is written over this very view, so no `&[T]` and `&mut [T]` to the same memory coexist.
    copy_on_read: bool,
}

// SAFETY: a View is a plain description of memory; the builder guarantees the memory outlives
// every use (see the module docs), and rows handed to different threads never overlap for
// outputs (outputs are checked to have no zero strides by the binding and are freshly
// allocated or caller-owned distinct elements).
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// A view of the array at `ptr` with `shape`/`strides` (bytes), rows along `axis`.
    /// `axis = None` makes every element its own row of length one.
    ///
    /// # Safety
    /// `ptr`, `shape` and `strides` must describe valid memory of `dtype` elements that stays
    /// valid (and is writable, if the view is written) for as long as the view is used.
    pub unsafe fn new(
        ptr: *mut u8,
        dtype: DType,
        shape: &[usize],
        strides: &[isize],
        axis: Option<usize>,
    ) -> View {
        debug_assert_eq!(shape.len(), strides.len());
        let (k, k_stride) = match axis {
            Some(a) => (shape[a], strides[a]),
            None => (1, dtype.size() as isize),
        };
        let mut outer: Vec<(usize, isize)> = Vec::with_capacity(shape.len());
        let mut n_rows = 1usize;
        for (d, (&len, &st)) in shape.iter().zip(strides).enumerate() {
            if Some(d) == axis {
                continue;
            }
            n_rows *= len;
            if len == 1 {
                continue;
            }
            match outer.last_mut() {
                Some(last) if last.1 == st * len as isize => *last = (last.0 * len, st),
                _ => outer.push((len, st)),
            }
        }
        let k_stride = if k <= 1 {
            dtype.size() as isize
        } else {
            k_stride
        };
        View {
            ptr,
            dtype,
            outer,
            n_rows,
            k,
            k_stride,
            copy_on_read: false,
        }
    }

    /// A view of a contiguous slice as `data.len() / k` rows of `k` (for the slice API).
    pub fn of_slice<T: Float>(data: &[T], k: usize) -> View {
        let n = data.len().checked_div(k).unwrap_or(0);
        let size = std::mem::size_of::<T>() as isize;
        // SAFETY: the slice describes exactly n*k valid elements of T.
        unsafe {
            View::new(
                data.as_ptr() as *mut u8,
                T::DTYPE,
                &[n, k],
                &[size * k as isize, size],
                Some(1),
            )
        }
    }

    pub fn rows(&self) -> usize {
        self.n_rows
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn set_copy_on_read(&mut self, on: bool) {
        self.copy_on_read = on;
    }

    /// Row `i` as a multi-index into `outer_shape` (C order), for error messages: the view's
    /// own outer axes are merged, so the caller passes the shape the user sees.
    pub fn position(i: usize, outer_shape: &[usize]) -> Vec<usize> {
        let mut pos = vec![0; outer_shape.len()];
        let mut rest = i;
        for (p, &len) in pos.iter_mut().zip(outer_shape).rev() {
            if len > 0 {
                *p = rest % len;
                rest /= len;
            }
        }
        pos
    }

    #[inline]
    fn row_offset(&self, mut i: usize) -> isize {
        match self.outer.as_slice() {
            [] => 0,
            [(_, s)] => i as isize * s,
            outer => {
                let mut off = 0isize;
                for &(len, st) in outer.iter().rev() {
                    off += (i % len) as isize * st;
                    i /= len;
                }
                off
            }
        }
    }

    /// Whether [`View::load`] of rows `r0..r1` as `dtype` borrows them in place (no scratch).
    pub fn loads_in_place(&self, dtype: DType, r0: usize, r1: usize) -> bool {
        !self.copy_on_read && self.contiguous_as(dtype, r0, r1).is_some()
    }

    /// Pointer to row `r` if it is one contiguous, aligned run of `T`, whether or not the view
    /// copies on read: for a caller that has found an output to be this very memory and
    /// works on it in place itself.
    pub fn row_in_place<T: Float>(&self, r: usize) -> Option<*mut T> {
        self.contiguous::<T>(r, r + 1)
    }

    /// Pointer to rows `r0..r1` if they form one contiguous, aligned run of `T`.
    fn contiguous<T: Float>(&self, r0: usize, r1: usize) -> Option<*mut T> {
        self.contiguous_as(T::DTYPE, r0, r1).map(|p| p as *mut T)
    }

    fn contiguous_as(&self, dtype: DType, r0: usize, r1: usize) -> Option<*mut u8> {
        let size = dtype.size() as isize;
        if self.dtype != dtype || self.k_stride != size {
            return None;
        }
        let rows_step_evenly = r1 - r0 <= 1
            || match self.outer.as_slice() {
                [] => true,
                [(_, s)] => *s == size * self.k as isize,
                _ => false,
            };
        if !rows_step_evenly {
            return None;
        }
        // SAFETY: row r0 exists (r0 < n_rows) so the offset stays inside the array.
        let p = unsafe { self.ptr.offset(self.row_offset(r0)) };
        (p as usize % dtype.size() == 0).then_some(p)
    }

    /// Rows `r0..r1` as a contiguous slice of the compute type: borrowed in place when
    /// possible, otherwise gathered (and widened) into `scratch`.
    ///
    /// # Safety
    /// The view's memory must be valid for reads (see [`View::new`]) and not written through
    /// another reference while the returned slice lives.
    pub unsafe fn load<'a, T: Float>(
        &self,
        r0: usize,
        r1: usize,
        scratch: &'a mut Vec<T>,
    ) -> &'a [T] {
        let len = (r1 - r0) * self.k;
        if let Some(p) = self.contiguous::<T>(r0, r1) {
            // SAFETY: `contiguous` checked dtype, stride and alignment; rows r0..r1 are
            // valid elements per the caller's contract.
            let rows = unsafe { std::slice::from_raw_parts(p, len) };
            if !self.copy_on_read {
                return rows;
            }
            // Written over after this read (`out=x`): one memcpy, not the element-wise gather
            // (float32 512 x 128256 `cross_entropy_and_grad(x, t, out=x)`: see BENCHMARKS.md).
            scratch.clear();
            scratch.extend_from_slice(rows);
            return scratch;
        }
        scratch.clear();
        scratch.reserve(len);
        dispatch!(self.dtype, S => unsafe { self.gather::<S, T>(r0, r1, scratch) });
        scratch
    }

    unsafe fn gather<S: Elem, T: Float>(&self, r0: usize, r1: usize, dst: &mut Vec<T>) {
        for i in r0..r1 {
            // SAFETY: every (row, j) with j < k addresses a valid element (View::new contract);
            // unaligned reads because NumPy arrays may be unaligned.
            let row = unsafe { self.ptr.offset(self.row_offset(i)) };
            for j in 0..self.k {
                let e = unsafe {
                    (row.offset(j as isize * self.k_stride) as *const S).read_unaligned()
                };
                dst.push(T::load(e));
            }
        }
    }

    /// Rows `r0..r1` (a view with `k == 1`, e.g. class-index targets) as `i64` indices.
    ///
    /// # Safety
    /// As for [`View::load`].
    pub unsafe fn load_index<'a>(
        &self,
        r0: usize,
        r1: usize,
        scratch: &'a mut Vec<i64>,
    ) -> &'a [i64] {
        if self.k == 1 {
            if let Some(p) = self.contiguous_as(DType::I64, r0, r1) {
                // SAFETY: as in `load`: int64 targets in one contiguous run are read in place.
                return unsafe { std::slice::from_raw_parts(p as *const i64, r1 - r0) };
            }
        }
        scratch.clear();
        scratch.reserve(r1 - r0);
        dispatch!(self.dtype, S => {
            for i in r0..r1 {
                // SAFETY: as in `gather`.
                let e = unsafe { (self.ptr.offset(self.row_offset(i)) as *const S).read_unaligned() };
                scratch.push(e.to_index());
            }
        });
        scratch
    }

    /// Runs `f` on rows `r0..r1` of this (output) view as a contiguous `&mut [T]`: in place when
    /// possible, otherwise in `scratch`, rounded and scattered into the view afterwards.
    ///
    /// # Safety
    /// The view's memory must be valid for writes, rows `r0..r1` must not be accessed by anyone
    /// else meanwhile, and the view must be of a floating dtype.
    pub unsafe fn store<T: Float, R>(
        &self,
        r0: usize,
        r1: usize,
        scratch: &mut Vec<T>,
        f: impl FnOnce(&mut [T]) -> R,
    ) -> R {
        let len = (r1 - r0) * self.k;
        if let Some(p) = self.contiguous::<T>(r0, r1) {
            // SAFETY: see `load`; exclusive access is the caller's promise.
            return f(unsafe { std::slice::from_raw_parts_mut(p, len) });
        }
        scratch.clear();
        scratch.resize(len, T::ZERO);
        let r = f(scratch);
        dispatch_float!(self.dtype, S => unsafe { self.scatter::<S, T>(r0, r1, scratch) },
            _ => unreachable!("outputs are floating arrays"));
        r
    }

    unsafe fn scatter<S: FloatElem, T: Float>(&self, r0: usize, r1: usize, src: &[T]) {
        let mut it = src.iter();
        for i in r0..r1 {
            // SAFETY: as in `gather`, for writes.
            let row = unsafe { self.ptr.offset(self.row_offset(i)) };
            for j in 0..self.k {
                let v: S = it.next().copied().unwrap_or(T::ZERO).store();
                unsafe { (row.offset(j as isize * self.k_stride) as *mut S).write_unaligned(v) };
            }
        }
    }
}

/// Checks that `shape` broadcasts to `to` (NumPy rules) and returns the strides that read an
/// array of `shape`/`strides` as if it had shape `to` (zero strides on broadcast axes).
pub fn broadcast_strides(shape: &[usize], strides: &[isize], to: &[usize]) -> Result<Vec<isize>> {
    let fail = || {
        Error::Shape(format!(
            "shape {} cannot be broadcast to {}",
            crate::error::fmt_index(shape),
            crate::error::fmt_index(to)
        ))
    };
    if shape.len() > to.len() {
        return Err(fail());
    }
    let lead = to.len() - shape.len();
    let mut out = vec![0isize; to.len()];
    for (d, &len) in to.iter().enumerate() {
        if d < lead {
            continue;
        }
        let (l, s) = (shape[d - lead], strides[d - lead]);
        if l == len {
            out[d] = if len == 1 { 0 } else { s };
        } else if l == 1 {
            out[d] = 0;
        } else {
            return Err(fail());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_view_gathers_columns() {
        // 2x3 row-major data viewed with rows along axis 0 (i.e. the columns).
        let data: Vec<f64> = vec![0., 1., 2., 10., 11., 12.];
        let v = unsafe {
            View::new(
                data.as_ptr() as *mut u8,
                DType::F64,
                &[2, 3],
                &[24, 8],
                Some(0),
            )
        };
        assert_eq!((v.rows(), v.k()), (3, 2));
        let mut s = Vec::new();
        let got = unsafe { v.load::<f64>(0, 3, &mut s) }.to_vec();
        assert_eq!(got, vec![0., 10., 1., 11., 2., 12.]);
    }

    #[test]
    fn contiguous_rows_are_borrowed_in_place() {
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v = View::of_slice(&data, 4);
        let mut s = Vec::new();
        let got = unsafe { v.load::<f32>(1, 3, &mut s) };
        assert_eq!(got.as_ptr(), data[4..].as_ptr());
        assert!(s.capacity() == 0);
    }

    #[test]
    fn widening_and_negative_strides() {
        let data: Vec<i16> = vec![1, 2, 3, 4];
        let base = unsafe { (data.as_ptr() as *mut u8).add(6) };
        let v = unsafe { View::new(base, DType::I16, &[4], &[-2], Some(0)) };
        let mut s = Vec::new();
        assert_eq!(unsafe { v.load::<f64>(0, 1, &mut s) }, &[4., 3., 2., 1.]);
    }

    #[test]
    fn broadcasting_rules() {
        assert_eq!(broadcast_strides(&[3], &[8], &[2, 3]).unwrap(), vec![0, 8]);
        assert_eq!(
            broadcast_strides(&[1, 3], &[24, 8], &[2, 3]).unwrap(),
            vec![0, 8]
        );
        assert!(broadcast_strides(&[2], &[8], &[2, 3]).is_err());
        assert!(broadcast_strides(&[2, 2, 3], &[8, 8, 8], &[2, 3]).is_err());
    }
}
