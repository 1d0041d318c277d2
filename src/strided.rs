//! Strided views of arrays as "rows": the layout layer between NumPy's arbitrary strides and
//! kernels that only ever see contiguous `&[T]` rows. It is the one module that turns raw
//! pointers into slices; everything above it is safe code.
//!
//! A view describes an N-d array as `n_rows` rows of `k` elements: the class axis becomes the
//! row (element stride `k_stride`), every other axis is an "outer" axis enumerated in C order.
//! Blocks of consecutive rows are handed to kernels either in place (when the block is
//! contiguous, aligned and already of the compute type: the fast path every C-contiguous
//! float32/float64 array with `axis=-1` takes) or through a scratch buffer of one block
//! (gather with dtype widening on the way in, scatter with rounding on the way out). Scratch
//! is bounded by the block size, so transposed, reversed, float16 or integer inputs never cost
//! a whole-array copy.
//!
//! Borrowing is the compiler's to check, as with ndarray's `ArrayView`/`ArrayViewMut`:
//! - [`View<'a>`] reads memory borrowed for `'a` (like `&'a [T]`), shared freely between
//!   threads.
//! - [`ViewMut<'a>`] owns the right to write its memory for `'a` (like `&'a mut [T]`). It is
//!   cut into [`RowsMut`] pieces of disjoint row ranges ([`ViewMut::split`]); a piece is the
//!   only way to write, so two threads can never write the same row, and an operation written
//!   over its own input (`out=x`) reads each block from the very piece that writes it
//!   ([`RowsMut::read`]).
//!
//! Views of NumPy memory are made by the binding through the `unsafe` constructors, whose
//! contracts say what the binding checks (the array outlives the borrow; an output has no two
//! elements at one address; inputs that overlap an output were copied first).

use std::marker::PhantomData;
use std::ops::Range;

use crate::dtype::{dispatch, dispatch_float, DType, Elem, FloatElem};
use crate::error::{Error, Result};
use crate::float::Float;

/// A short list of `Copy` values, kept in place up to `N` and on the heap beyond: an array's
/// axes (its shape, its strides, a layout's outer axes), of which a call builds several.
// PERF: a malloc/free pair per list, five to eight lists a call, cost a tenth of a call on a
// tiny array (see BENCHMARKS.md, the cost per call).
#[derive(Clone)]
pub enum Dims<T, const N: usize> {
    Inline { len: usize, items: [T; N] },
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> Dims<T, N> {
    pub fn new() -> Self {
        Dims::Inline {
            len: 0,
            items: [T::default(); N],
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Dims::Inline { len, items } => &items[..*len],
            Dims::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Dims::Inline { len, items } => &mut items[..*len],
            Dims::Heap(v) => v,
        }
    }

    pub fn push(&mut self, item: T) {
        match self {
            Dims::Inline { len, items } if *len < N => {
                items[*len] = item;
                *len += 1;
            }
            Dims::Inline { items, .. } => {
                let mut v = items.to_vec();
                v.push(item);
                *self = Dims::Heap(v);
            }
            Dims::Heap(v) => v.push(item),
        }
    }
}

impl<T: Copy + Default, const N: usize> Default for Dims<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> From<&[T]> for Dims<T, N> {
    fn from(s: &[T]) -> Self {
        if s.len() > N {
            return Dims::Heap(s.to_vec());
        }
        let mut items = [T::default(); N];
        items[..s.len()].copy_from_slice(s);
        Dims::Inline {
            len: s.len(),
            items,
        }
    }
}

impl<T: Copy + Default, const N: usize> std::ops::Deref for Dims<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy + Default, const N: usize> std::ops::DerefMut for Dims<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Copy + Default + std::fmt::Debug, const N: usize> std::fmt::Debug for Dims<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for Dims<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<[T]> for Dims<T, N> {
    fn eq(&self, other: &[T]) -> bool {
        self.as_slice() == other
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<&[T]> for Dims<T, N> {
    fn eq(&self, other: &&[T]) -> bool {
        self.as_slice() == *other
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<Vec<T>> for Dims<T, N> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize, const M: usize> PartialEq<[T; M]>
    for Dims<T, N>
{
    fn eq(&self, other: &[T; M]) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default, const N: usize> Extend<T> for Dims<T, N> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for item in iter {
            self.push(item);
        }
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for Dims<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut d = Dims::new();
        d.extend(iter);
        d
    }
}

impl<'a, T: Copy + Default, const N: usize> IntoIterator for &'a Dims<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// A layout's outer axes as `(length, stride)`: two in place, enough for every array of up to
/// three dimensions, and for a C-contiguous array of any rank, whose outer axes merge into one.
type Outer = Dims<(usize, isize), 2>;

/// Where an array's rows are, relative to its base pointer. Strides are in bytes and may be
/// zero (inputs only) or negative.
#[derive(Clone, Debug)]
struct Layout {
    dtype: DType,
    /// Outer axes after dropping length-1 axes and merging axes that step evenly: a C-contiguous
    /// array with `axis=-1` ends up with exactly one.
    outer: Outer,
    n_rows: usize,
    k: usize,
    k_stride: isize,
}

impl Layout {
    /// `axis = None` makes every element its own row of length one.
    #[inline(always)]
    fn new(dtype: DType, shape: &[usize], strides: &[isize], axis: Option<usize>) -> Layout {
        assert_eq!(shape.len(), strides.len(), "one stride per axis");
        let (k, k_stride) = match axis {
            Some(a) => (shape[a], strides[a]),
            None => (1, dtype.size() as isize),
        };
        let k_stride = if k <= 1 {
            dtype.size() as isize
        } else {
            k_stride
        };
        // PERF: inlined, with the views' constructors, into the binding's calls, and the first
        // two outer axes kept in locals rather than pushed into `outer` in memory: eight-byte
        // stores read back by the sixteen-byte loads of a move stall store-to-load forwarding
        // (tens of ns on a tiny array's call, see BENCHMARKS.md).
        let (mut first, mut second, mut more): (_, _, Vec<(usize, isize)>) =
            ((0, 0), (0, 0), Vec::new());
        let mut n_outer = 0usize;
        let mut n_rows = 1usize;
        for (d, (&len, &st)) in shape.iter().zip(strides).enumerate() {
            if Some(d) == axis {
                continue;
            }
            n_rows *= len;
            if len == 1 {
                continue;
            }
            let last = match n_outer {
                0 => None,
                1 => Some(&mut first),
                2 => Some(&mut second),
                _ => more.last_mut(),
            };
            match last {
                Some(last) if last.1 == st * len as isize => *last = (last.0 * len, st),
                _ => {
                    match n_outer {
                        0 => first = (len, st),
                        1 => second = (len, st),
                        _ => more.push((len, st)),
                    }
                    n_outer += 1;
                }
            }
        }
        let outer = if n_outer <= 2 {
            Dims::Inline {
                len: n_outer,
                items: [first, second],
            }
        } else {
            let mut all = vec![first, second];
            all.extend(more);
            Dims::Heap(all)
        };
        Layout {
            dtype,
            outer,
            n_rows,
            k,
            k_stride,
        }
    }

    /// The same elements with every one its own row of length one, in the rows' order (row
    /// by row, then along each row): the same memory, so every guarantee of `self` holds.
    fn elements(&self) -> Layout {
        let outer = self.outer.as_slice();
        let mut shape: Vec<usize> = outer.iter().map(|&(len, _)| len).collect();
        let mut strides: Vec<isize> = outer.iter().map(|&(_, st)| st).collect();
        shape.push(self.k);
        strides.push(self.k_stride);
        Layout::new(self.dtype, &shape, &strides, None)
    }

    /// C-contiguous rows of `k` elements of `T`.
    fn rows_of<T: Float>(len: usize, k: usize) -> Layout {
        let n = len.checked_div(k).unwrap_or(0);
        let size = std::mem::size_of::<T>() as isize;
        Layout::new(T::DTYPE, &[n, k], &[size * k as isize, size], Some(1))
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

    /// The byte offset of rows `r0..r1` (`r0 < n_rows`) if they form one contiguous run of
    /// `dtype` that starts aligned at `base`.
    #[inline]
    fn contiguous(&self, base: *const u8, dtype: DType, r0: usize, r1: usize) -> Option<isize> {
        let size = dtype.size() as isize;
        if self.dtype != dtype || self.k_stride != size || r0 >= self.n_rows {
            return None;
        }
        let rows_step_evenly = r1 - r0 <= 1
            || match self.outer.as_slice() {
                [] => true,
                [(_, s)] => *s == size * self.k as isize,
                _ => false,
            };
        let off = self.row_offset(r0);
        let aligned = (base as usize)
            .wrapping_add(off as usize)
            .is_multiple_of(dtype.size());
        (rows_step_evenly && aligned).then_some(off)
    }

    fn check_range(&self, r0: usize, r1: usize) {
        assert!(
            r0 <= r1 && r1 <= self.n_rows,
            "rows {r0}..{r1} of a view of {} rows",
            self.n_rows
        );
    }

    /// Whether no two (row, element) positions share an address, so that rows cut apart
    /// can be written by different threads. Sufficient test: with the axes sorted by stride,
    /// each stride clears the whole extent of the axes below it. Layouts that interleave
    /// without overlapping fail it too; they are rare enough to be refused.
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
    fn distinct_elements(&self) -> bool {
        if self.n_rows == 0 || self.k == 0 {
            return true;
        }
        let size = self.dtype.size() as isize;
        // PERF: fresh results and C-contiguous `out=` (every call's common case) without the
        // allocation and sort below.
        let c_rows = match self.outer.as_slice() {
            [] => true,
            [(_, st)] => *st == size * self.k as isize,
            _ => false,
        };
        if self.k_stride == size && c_rows {
            return true;
        }
        let mut axes: Vec<(usize, usize)> = self
            .outer
            .as_slice()
            .iter()
            .map(|&(len, st)| (len, st.unsigned_abs()))
            .chain(std::iter::once((self.k, self.k_stride.unsigned_abs())))
            .filter(|&(len, _)| len > 1)
            .collect();
        axes.sort_by_key(|&(_, st)| st);
        let mut extent = self.dtype.size();
        for (len, st) in axes {
            if st < extent {
                return false;
            }
            extent = st.saturating_mul(len - 1).saturating_add(extent);
        }
        true
    }
}

/// Reads rows `r0..r1` of the array at `base` into `dst`, widened to `T`.
///
/// # Safety
/// `base` and `layout` must describe memory valid for reads of every element of those rows.
unsafe fn gather<S: Elem, T: Float>(
    base: *const u8,
    layout: &Layout,
    r0: usize,
    r1: usize,
    dst: &mut Vec<T>,
) {
    for i in r0..r1 {
        // SAFETY: every (row, j) with j < k addresses a valid element (the caller's contract);
        // unaligned reads because NumPy arrays may be unaligned.
        unsafe {
            let row = base.offset(layout.row_offset(i));
            for j in 0..layout.k {
                let e = (row.offset(j as isize * layout.k_stride) as *const S).read_unaligned();
                dst.push(T::load(e));
            }
        }
    }
}

/// Rows `r0..r1` as a contiguous slice of `T`: borrowed when they are one aligned run of `T`
/// (and `copy` is false), otherwise gathered (and widened) into `scratch`.
///
/// # Safety
/// `base`/`layout` must describe memory valid for reads of those rows for `'s`, not written
/// by anyone while the returned slice lives.
unsafe fn load<'s, T: Float>(
    base: *const u8,
    layout: &Layout,
    r0: usize,
    r1: usize,
    copy: bool,
    scratch: &'s mut Vec<T>,
) -> &'s [T] {
    layout.check_range(r0, r1);
    let len = (r1 - r0) * layout.k;
    if let Some(off) = layout.contiguous(base, T::DTYPE, r0, r1) {
        // SAFETY: `contiguous` checked dtype, stride and alignment; the rows are valid and
        // unwritten per the caller's contract.
        let rows = unsafe { std::slice::from_raw_parts(base.offset(off) as *const T, len) };
        if !copy {
            return rows;
        }
        // PERF: one memcpy instead of the element-wise gather (float32 512 x 128256
        // `cross_entropy_and_grad(x, t, out=x)`: see BENCHMARKS.md).
        scratch.clear();
        scratch.extend_from_slice(rows);
        return scratch;
    }
    scratch.clear();
    scratch.reserve(len);
    // SAFETY: the caller's contract.
    dispatch!(layout.dtype, S => unsafe { gather::<S, T>(base, layout, r0, r1, scratch) });
    scratch
}

/// An array read as rows along one axis, borrowed for `'a`.
#[derive(Clone, Debug)]
pub struct View<'a> {
    ptr: *const u8,
    layout: Layout,
    _borrow: PhantomData<&'a [u8]>,
}

// SAFETY: a View only ever reads, like `&'a [u8]`, which is Send and Sync; its constructors'
// contracts exclude writers for `'a`.
unsafe impl Send for View<'_> {}
unsafe impl Sync for View<'_> {}

impl<'a> View<'a> {
    /// A view of the array at `ptr` with `shape`/`strides` (bytes), rows along `axis`
    /// (`None`: every element its own row of length one).
    ///
    /// # Safety
    /// `ptr`, `shape` and `strides` must describe memory of `dtype` elements valid for reads
    /// for all of `'a`, which nothing writes during `'a`.
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
    #[inline(always)]
    pub unsafe fn from_raw(
        ptr: *const u8,
        dtype: DType,
        shape: &[usize],
        strides: &[isize],
        axis: Option<usize>,
    ) -> View<'a> {
        View {
            ptr,
            layout: Layout::new(dtype, shape, strides, axis),
            _borrow: PhantomData,
        }
    }

    /// A contiguous slice as `data.len() / k` rows of `k` (the slice API).
    pub fn of_slice<T: Float>(data: &'a [T], k: usize) -> View<'a> {
        View {
            ptr: data.as_ptr() as *const u8,
            layout: Layout::rows_of::<T>(data.len(), k),
            _borrow: PhantomData,
        }
    }

    /// `row` read as `n` rows (a zero row stride): a per-column operand broadcast over rows.
    pub fn repeated_row<T: Float>(row: &'a [T], n: usize) -> View<'a> {
        let size = std::mem::size_of::<T>() as isize;
        View {
            ptr: row.as_ptr() as *const u8,
            layout: Layout::new(T::DTYPE, &[n, row.len()], &[0, size], Some(1)),
            _borrow: PhantomData,
        }
    }

    /// Class indices, one per row.
    pub fn of_indices(data: &'a [i64]) -> View<'a> {
        View {
            ptr: data.as_ptr() as *const u8,
            layout: Layout::new(DType::I64, &[data.len()], &[8], None),
            _borrow: PhantomData,
        }
    }

    pub fn rows(&self) -> usize {
        self.layout.n_rows
    }
    pub fn k(&self) -> usize {
        self.layout.k
    }

    /// The same array with every element its own row of length one (see [`Layout::elements`]):
    /// how an elementwise operation cuts rows longer than a block.
    pub fn elements(&self) -> View<'a> {
        View {
            ptr: self.ptr,
            layout: self.layout.elements(),
            _borrow: PhantomData,
        }
    }

    /// Whether [`View::load`] of rows `r0..r1` as `dtype` borrows them in place (no scratch).
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
    pub fn loads_in_place(&self, dtype: DType, r0: usize, r1: usize) -> bool {
        self.layout.contiguous(self.ptr, dtype, r0, r1).is_some()
    }

    /// Rows `r0..r1` as a contiguous slice of the compute type: borrowed in place when
    /// possible, otherwise gathered (and widened) into `scratch`. Panics if the rows are not
    /// the view's.
    pub fn load<'s, T: Float>(&'s self, r0: usize, r1: usize, scratch: &'s mut Vec<T>) -> &'s [T] {
        // SAFETY: the constructors' contract: the memory is valid and unwritten for 'a.
        unsafe { load(self.ptr, &self.layout, r0, r1, false, scratch) }
    }

    /// Rows `r0..r1` (a view with `k == 1`, e.g. class-index targets) as `i64` indices.
    pub fn load_index<'s>(&'s self, r0: usize, r1: usize, scratch: &'s mut Vec<i64>) -> &'s [i64] {
        let l = &self.layout;
        l.check_range(r0, r1);
        if l.k == 1 {
            if let Some(off) = l.contiguous(self.ptr, DType::I64, r0, r1) {
                // SAFETY: as in `load`: int64 targets in one aligned run are read in place.
                return unsafe {
                    std::slice::from_raw_parts(self.ptr.offset(off) as *const i64, r1 - r0)
                };
            }
        }
        scratch.clear();
        scratch.reserve(r1 - r0);
        dispatch!(l.dtype, S => {
            for i in r0..r1 {
                // SAFETY: as in `gather`: element 0 of row i is valid (checked range).
                let e = unsafe { (self.ptr.offset(l.row_offset(i)) as *const S).read_unaligned() };
                scratch.push(e.to_index());
            }
        });
        scratch
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
}

/// An array written as rows along one axis, exclusively borrowed for `'a`. Writing goes
/// through the [`RowsMut`] pieces it is cut into.
#[derive(Debug)]
pub struct ViewMut<'a> {
    ptr: *mut u8,
    layout: Layout,
    _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: like `&'a mut [u8]`: whoever holds the ViewMut is the only one with access.
unsafe impl Send for ViewMut<'_> {}

impl<'a> ViewMut<'a> {
    /// A view for writing the floating-point array at `ptr` (see [`View::from_raw`]).
    /// Returns `Error::Value` when two of its elements share an address (a zero stride, or
    /// rows that overlap), since its rows are written in parallel.
    ///
    /// # Safety
    /// `ptr`, `shape` and `strides` must describe memory of `dtype` elements valid for reads
    /// and writes for all of `'a`, which nothing else reads or writes during `'a`.
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
    #[inline(always)]
    pub unsafe fn from_raw(
        ptr: *mut u8,
        dtype: DType,
        shape: &[usize],
        strides: &[isize],
        axis: Option<usize>,
    ) -> Result<ViewMut<'a>> {
        let layout = Layout::new(dtype, shape, strides, axis);
        if !dtype.is_float() {
            return Err(Error::Value(format!(
                "an output must be of a floating dtype, got {}",
                dtype.name()
            )));
        }
        if !layout.distinct_elements() {
            return Err(Error::Value(
                "out has elements that share memory (overlapping strides); pass an array whose elements are all distinct".into(),
            ));
        }
        Ok(ViewMut {
            ptr,
            layout,
            _borrow: PhantomData,
        })
    }

    /// A contiguous slice as `data.len() / k` rows of `k` (the slice API).
    pub fn of_slice<T: Float>(data: &'a mut [T], k: usize) -> ViewMut<'a> {
        ViewMut {
            ptr: data.as_mut_ptr() as *mut u8,
            layout: Layout::rows_of::<T>(data.len(), k),
            _borrow: PhantomData,
        }
    }

    pub fn rows(&self) -> usize {
        self.layout.n_rows
    }
    pub fn k(&self) -> usize {
        self.layout.k
    }

    /// [`View::elements`] for writing, for as long as `self` is borrowed: the same distinct
    /// elements, so it needs no new check.
    pub fn elements(&mut self) -> ViewMut<'_> {
        ViewMut {
            ptr: self.ptr,
            layout: self.layout.elements(),
            _borrow: PhantomData,
        }
    }

    /// Whether rows `r0..r1` are written in place (no scratch) when computed as `dtype`.
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
    pub fn stores_in_place(&self, dtype: DType, r0: usize, r1: usize) -> bool {
        self.layout.contiguous(self.ptr, dtype, r0, r1).is_some()
    }

    /// Every row, as one piece.
    pub fn all(&mut self) -> RowsMut<'_> {
        self.piece(0..self.layout.n_rows)
    }

    /// The pieces of consecutive, disjoint row ranges `ranges` (ascending), each made as it is
    /// taken. Taking a piece whose range overlaps the one before or leaves the view panics.
    pub fn split<I>(&mut self, ranges: I) -> impl ExactSizeIterator<Item = RowsMut<'_>>
    where
        I: IntoIterator<Item = Range<usize>>,
        I::IntoIter: ExactSizeIterator,
    {
        // PERF: lazily, so that no Vec of pieces is allocated (a tiny array's one block: see
        // BENCHMARKS.md, the cost per call). The pieces borrow `self` mutably as a whole, so
        // nothing else can cut it while they live, and this one iterator checks each range
        // against the one before as it hands it out.
        let this = &*self;
        let mut next = 0;
        ranges.into_iter().map(move |r| {
            assert!(r.start >= next, "row ranges must be disjoint and ascending");
            this.layout.check_range(r.start, r.end);
            next = r.end;
            this.piece(r)
        })
    }

    fn piece(&self, rows: Range<usize>) -> RowsMut<'_> {
        RowsMut {
            ptr: self.ptr,
            layout: &self.layout,
            rows,
            _borrow: PhantomData,
        }
    }
}

/// The right to read and write rows `rows` of a [`ViewMut`], and nobody else's.
#[derive(Debug)]
pub struct RowsMut<'v> {
    ptr: *mut u8,
    layout: &'v Layout,
    rows: Range<usize>,
    _borrow: PhantomData<&'v mut [u8]>,
}

// SAFETY: pieces cover disjoint row ranges of a ViewMut whose elements are all distinct
// (checked by its constructors), so a piece's memory is touched by no other piece: moving it
// to another thread is like moving a `&mut [u8]`.
unsafe impl Send for RowsMut<'_> {}

impl RowsMut<'_> {
    /// The piece of rows `rows` (within this one's) for as long as it is borrowed.
    pub fn sub(&mut self, rows: Range<usize>) -> RowsMut<'_> {
        assert!(
            self.rows.start <= rows.start && rows.start <= rows.end && rows.end <= self.rows.end,
            "rows {rows:?} are not within {:?}",
            self.rows
        );
        RowsMut {
            ptr: self.ptr,
            layout: self.layout,
            rows,
            _borrow: PhantomData,
        }
    }

    /// The piece's current values as `T`, copied into `scratch`: for an operation written
    /// over its own input, which reads a block before overwriting it.
    pub fn read<'s, T: Float>(&self, scratch: &'s mut Vec<T>) -> &'s [T] {
        // SAFETY: this piece has its rows to itself (see `Send` above), and no `&mut` to them
        // can be made while `self` is borrowed here; with `copy` the result is `scratch`,
        // never the rows themselves, so it may outlive this borrow.
        unsafe {
            load(
                self.ptr,
                self.layout,
                self.rows.start,
                self.rows.end,
                true,
                scratch,
            )
        }
    }

    /// Runs `f` on the rows as a contiguous `&mut [T]`: in place when possible, otherwise in
    /// `scratch` (holding zeros, or the current values when `keep`), rounded and scattered
    /// into the array afterwards.
    fn with_rows<T: Float, R>(
        &mut self,
        scratch: &mut Vec<T>,
        keep: bool,
        f: impl FnOnce(&mut [T]) -> R,
    ) -> R {
        let (r0, r1) = (self.rows.start, self.rows.end);
        if let Some(off) = self.layout.contiguous(self.ptr, T::DTYPE, r0, r1) {
            // SAFETY: `contiguous` checked dtype, stride and alignment; the rows are this
            // piece's alone and valid for writes (ViewMut's contract), and `&mut self` is held.
            let rows = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.offset(off) as *mut T,
                    (r1 - r0) * self.layout.k,
                )
            };
            return f(rows);
        }
        if keep {
            // SAFETY: as in `read`.
            unsafe {
                dispatch!(self.layout.dtype, S => {
                    scratch.clear();
                    gather::<S, T>(self.ptr, self.layout, r0, r1, scratch)
                })
            };
        } else {
            scratch.clear();
            scratch.resize((r1 - r0) * self.layout.k, T::ZERO);
        }
        let r = f(scratch);
        dispatch_float!(self.layout.dtype, S => self.scatter::<S, T>(scratch),
            _ => unreachable!("ViewMut checks that outputs are floating arrays"));
        r
    }

    /// Runs `f` on the rows (contents unspecified: `f` writes every element).
    pub fn store<T: Float, R>(&mut self, scratch: &mut Vec<T>, f: impl FnOnce(&mut [T]) -> R) -> R {
        self.with_rows(scratch, false, f)
    }

    /// Runs `f` on the rows holding their current values (read, modified, written back).
    pub fn update<T: Float, R>(
        &mut self,
        scratch: &mut Vec<T>,
        f: impl FnOnce(&mut [T]) -> R,
    ) -> R {
        self.with_rows(scratch, true, f)
    }

    fn scatter<S: FloatElem, T: Float>(&mut self, src: &[T]) {
        let l = self.layout;
        let (r0, r1) = (self.rows.start, self.rows.end);
        if let Some(off) = l.contiguous(self.ptr, l.dtype, r0, r1) {
            // PERF: rows in one aligned run of the storage type (float64 losses rounded into
            // a float32 array) are converted in one loop that vectorizes, where the loop
            // below computed each element's address (float32 1-d `reduction="none"`: see
            // BENCHMARKS.md).
            // SAFETY: `contiguous` checked that rows r0..r1 are one aligned run of `S` at
            // `off`, and this piece alone may write them (ViewMut's contract).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.ptr.offset(off) as *mut S, (r1 - r0) * l.k)
            };
            let n = src.len().min(dst.len());
            for (d, &v) in dst.iter_mut().zip(&src[..n]) {
                *d = v.store();
            }
            dst[n..].fill(T::ZERO.store());
            return;
        }
        let mut it = src.iter();
        for i in self.rows.clone() {
            // SAFETY: every (row, j) of this piece is a valid element that only this piece
            // writes (ViewMut's contract); unaligned writes as in `gather`.
            unsafe {
                let row = self.ptr.offset(l.row_offset(i));
                for j in 0..l.k {
                    let v: S = it.next().copied().unwrap_or(T::ZERO).store();
                    (row.offset(j as isize * l.k_stride) as *mut S).write_unaligned(v);
                }
            }
        }
    }
}

/// C-order byte strides of `shape` for `size`-byte elements.
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
pub fn c_strides(shape: &[usize], size: isize) -> Vec<isize> {
    let mut strides = vec![0; shape.len()];
    let mut s = size;
    for d in (0..shape.len()).rev() {
        strides[d] = s;
        s *= shape[d].max(1) as isize;
    }
    strides
}

/// Checks that `shape` broadcasts to `to` (NumPy rules) and returns the strides that read an
/// array of `shape`/`strides` as if it had shape `to` (zero strides on broadcast axes).
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
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

    /// The columns of `data`, a row-major 2x3 array: rows along axis 0.
    fn columns(data: &[f64]) -> View<'_> {
        assert_eq!(data.len(), 6);
        // SAFETY: `data` holds the 2x3 array and outlives the view; nothing writes it.
        unsafe {
            View::from_raw(
                data.as_ptr() as *const u8,
                DType::F64,
                &[2, 3],
                &[24, 8],
                Some(0),
            )
        }
    }

    #[test]
    fn transposed_view_gathers_columns() {
        // 2x3 row-major data viewed with rows along axis 0 (i.e. the columns).
        let data: Vec<f64> = vec![0., 1., 2., 10., 11., 12.];
        let v = columns(&data);
        assert_eq!((v.rows(), v.k()), (3, 2));
        let mut s = Vec::new();
        let got = v.load::<f64>(0, 3, &mut s).to_vec();
        assert_eq!(got, vec![0., 10., 1., 11., 2., 12.]);
    }

    #[test]
    fn elements_are_the_rows_read_in_order_one_at_a_time() {
        // Columns of a 2x3 array (rows along axis 0), a repeated row, and a contiguous slice:
        // as rows of one element they read the same values in the same order.
        let data: Vec<f64> = vec![0., 1., 2., 10., 11., 12.];
        let cols = columns(&data);
        let rep = View::repeated_row(&data[..3], 2);
        let flat = View::of_slice(&data, 3);
        for v in [cols, rep, flat] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let e = v.elements();
            assert_eq!((e.rows(), e.k()), (v.rows() * v.k(), 1));
            let rows = v.load::<f64>(0, v.rows(), &mut a).to_vec();
            assert_eq!(e.load::<f64>(0, e.rows(), &mut b), rows);
            assert_eq!(e.load::<f64>(2, 4, &mut b), &rows[2..4]);
        }
        let mut out = vec![0.0f32; 6];
        {
            let mut o = ViewMut::of_slice(&mut out, 6);
            let mut e = o.elements();
            let mut pieces = e.split([0..4, 4..6]);
            let mut s = Vec::new();
            pieces
                .next()
                .unwrap()
                .store::<f32, _>(&mut s, |w| w.fill(1.0));
            pieces
                .next()
                .unwrap()
                .store::<f32, _>(&mut s, |w| w.fill(2.0));
        }
        assert_eq!(out, [1., 1., 1., 1., 2., 2.]);
        let empty = View::of_slice::<f32>(&[], 5).elements();
        assert_eq!(empty.rows(), 0);
    }

    #[test]
    fn contiguous_rows_are_borrowed_in_place() {
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v = View::of_slice(&data, 4);
        let mut s = Vec::new();
        let got = v.load::<f32>(1, 3, &mut s);
        assert_eq!(got.as_ptr(), data[4..].as_ptr());
        assert!(s.capacity() == 0);
    }

    #[test]
    fn dims_hold_the_same_values_in_place_and_on_the_heap() {
        let mut d = Dims::<isize, 2>::new();
        for (i, v) in [3, -1, 4, 1].into_iter().enumerate() {
            d.push(v);
            assert_eq!(d.len(), i + 1);
            assert_eq!(matches!(d, Dims::Heap(_)), i >= 2, "heap from the third on");
        }
        assert_eq!(d, [3, -1, 4, 1]);
        assert_eq!(d, Dims::<isize, 2>::from(&[3, -1, 4, 1][..]));
        let short = Dims::<isize, 2>::from(&[7][..]);
        assert!(matches!(short, Dims::Inline { len: 1, .. }));
        assert_eq!(short, vec![7]);
        assert_ne!(
            short,
            Dims::<isize, 2>::from(&[7, 0][..]),
            "unused slots do not count"
        );
        *d.last_mut().unwrap() = 9;
        assert_eq!(d.iter().sum::<isize>(), 15);
        let mut c: Dims<usize, 2> = (5..7).collect();
        assert!(matches!(c, Dims::Inline { len: 2, .. }));
        c.extend([7, 8]);
        assert_eq!(c, [5, 6, 7, 8]);
    }

    #[test]
    fn more_outer_axes_than_kept_in_place() {
        // A Fortran-order 2x2x2x2x2x3 float64 array, rows along the last axis: its five outer
        // axes do not merge, so they go to the heap; every row is still read and written.
        let shape = [2, 2, 2, 2, 2, 3];
        let strides: Vec<isize> = (0..6).map(|d| 8 << d).collect();
        let mut data: Vec<f64> = (0..96).map(f64::from).collect();
        let expect = |row: usize| -> Vec<f64> {
            // Row `row` in C order over the outer axes: axis d's index is bit (4 - d) of row.
            let base: usize = (0..5).map(|d| ((row >> (4 - d)) & 1) << d).sum();
            (0..3).map(|j| (base + 32 * j) as f64).collect()
        };
        // SAFETY: the strides address elements 0..96 of `data`, which outlives the views.
        let v = unsafe {
            View::from_raw(
                data.as_ptr() as *const u8,
                DType::F64,
                &shape,
                &strides,
                Some(5),
            )
        };
        assert!(matches!(v.layout.outer, Dims::Heap(ref a) if a.len() == 5));
        let mut s = Vec::new();
        let got = v.load::<f64>(0, 32, &mut s).to_vec();
        assert_eq!(got, (0..32).flat_map(expect).collect::<Vec<_>>());
        // SAFETY: as above; the view above is no longer used.
        let mut w = unsafe {
            ViewMut::from_raw(
                data.as_mut_ptr() as *mut u8,
                DType::F64,
                &shape,
                &strides,
                Some(5),
            )
        }
        .expect("Fortran order has distinct elements");
        w.all()
            .update::<f64, _>(&mut s, |rows| rows.iter_mut().for_each(|x| *x += 0.5));
        assert_eq!(
            data,
            (0..96).map(|i| f64::from(i) + 0.5).collect::<Vec<_>>()
        );
    }

    #[test]
    fn widening_and_negative_strides() {
        let data: Vec<i16> = vec![1, 2, 3, 4];
        // SAFETY: the last element is inside `data`; with stride -2 the view reads all four.
        let v = unsafe {
            View::from_raw(
                data.as_ptr().add(3) as *const u8,
                DType::I16,
                &[4],
                &[-2],
                Some(0),
            )
        };
        let mut s = Vec::new();
        assert_eq!(v.load::<f64>(0, 1, &mut s), &[4., 3., 2., 1.]);
    }

    fn writable(shape: &[usize], strides: &[isize], axis: Option<usize>) -> bool {
        let mut data = vec![0.0f64; 64];
        // SAFETY: from element 24 of `data`, every layout below stays inside its 64 elements.
        unsafe {
            let base = data.as_mut_ptr().add(24) as *mut u8;
            ViewMut::from_raw(base, DType::F64, shape, strides, axis).is_ok()
        }
    }

    #[test]
    fn outputs_whose_elements_share_memory_are_refused() {
        assert!(writable(&[3, 4], &[32, 8], Some(1)));
        assert!(writable(&[3, 4], &[8, 24], Some(0)), "Fortran order");
        assert!(writable(&[2, 3], &[-24, 8], Some(1)), "reversed rows");
        assert!(
            writable(&[4, 2], &[8, 32], Some(1)),
            "interleaved, distinct"
        );
        assert!(
            !writable(&[3, 4], &[8, 8], Some(1)),
            "rows overlap (as_strided)"
        );
        assert!(!writable(&[3, 4], &[0, 8], Some(1)), "zero stride");
        assert!(!writable(&[3, 4], &[32, 4], Some(1)), "elements overlap");
        assert!(writable(&[0, 4], &[8, 8], Some(1)), "no elements");
        assert!(
            writable(&[1, 4], &[0, 8], Some(1)),
            "length-one axes never repeat"
        );
    }

    #[test]
    fn pieces_write_their_own_rows_in_place_or_through_scratch() {
        let mut data = vec![0.0f32; 12];
        let mut v = ViewMut::of_slice(&mut data, 4);
        for (i, mut p) in v.split([0..1, 1..3]).enumerate() {
            let mut s = Vec::new();
            p.store::<f32, _>(&mut s, |o| o.fill(i as f32 + 1.0));
            assert!(s.is_empty(), "contiguous float32 rows are written in place");
        }
        assert_eq!(
            &data[..8],
            &[1.0; 4]
                .iter()
                .chain(&[2.0; 4])
                .copied()
                .collect::<Vec<_>>()[..]
        );
        // A transposed float64 output takes the scatter path; `update` sees the old values.
        let mut t = vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        // SAFETY: `t` holds the 2x3 array and nothing else touches it meanwhile.
        let mut v = unsafe {
            ViewMut::from_raw(
                t.as_mut_ptr() as *mut u8,
                DType::F64,
                &[2, 3],
                &[24, 8],
                Some(0),
            )
        }
        .unwrap();
        let mut s = Vec::new();
        v.all().update::<f64, _>(&mut s, |o| {
            assert_eq!(o, &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
            o.iter_mut().for_each(|x| *x *= 10.0);
        });
        assert_eq!(t, vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
    }

    #[test]
    #[should_panic(expected = "disjoint")]
    fn overlapping_pieces_cannot_be_made() {
        let mut data = vec![0.0f32; 12];
        let mut v = ViewMut::of_slice(&mut data, 4);
        let _ = v.split([0..2, 1..3]).count();
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
