//! NumPy arrays in and out: turning arguments into [`View`]s of the core, allocating results,
//! checking `out=` buffers and guarding against inputs that share memory with them.

use std::os::raw::c_int;
use std::ptr;

use numpy::npyffi::{self, npy_intp, NPY_ARRAY_WRITEABLE, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::dtype::DType;
use crate::error::fmt_index;
use crate::strided::{View, ViewMut};

/// Axes kept in place: every array of up to four dimensions.
pub const AXES: usize = 4;

/// Python objects looked up once: `numpy.asarray` and the scalar types of reduced losses.
struct NumpyRefs {
    asarray: Py<PyAny>,
    float32: Py<PyAny>,
    float64: Py<PyAny>,
    axis_error: Py<PyAny>,
}

static NUMPY: PyOnceLock<NumpyRefs> = PyOnceLock::new();

/// `sce_rs._interop.from_dlpack`, imported on the first argument that needs it.
static FROM_DLPACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A NumPy array of `obj`: itself, a zero-copy DLPack view (PyTorch, JAX, ... tensors), or
/// whatever `numpy.asarray` makes of it (lists, scalars, `__array__`).
fn as_ndarray<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return Ok(a.clone());
    }
    let py = obj.py();
    let converted = if obj.hasattr(pyo3::intern!(py, "__dlpack__"))? {
        let f = FROM_DLPACK.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("sce_rs._interop")?
                    .getattr("from_dlpack")?
                    .unbind(),
            )
        })?;
        f.bind(py).call1((obj, what))?
    } else {
        numpy_refs(py)?.asarray.bind(py).call1((obj,))?
    };
    converted.cast_into::<PyUntypedArray>().map_err(PyErr::from)
}

fn numpy_refs(py: Python<'_>) -> PyResult<&NumpyRefs> {
    NUMPY.get_or_try_init(py, || {
        let np = py.import("numpy")?;
        // numpy.exceptions appeared in NumPy 1.25; 1.24 has the class at the top level.
        let axis_error = match py.import("numpy.exceptions") {
            Ok(m) => m.getattr("AxisError")?,
            Err(_) => np.getattr("AxisError")?,
        };
        Ok(NumpyRefs {
            asarray: np.getattr("asarray")?.unbind(),
            float32: np.getattr("float32")?.unbind(),
            float64: np.getattr("float64")?.unbind(),
            axis_error: axis_error.unbind(),
        })
    })
}

/// `numpy.exceptions.AxisError(axis, ndim, msg_prefix)`.
pub fn axis_error(py: Python<'_>, axis: isize, ndim: usize, prefix: &str) -> PyErr {
    match numpy_refs(py).and_then(|np| np.axis_error.bind(py).call1((axis, ndim, prefix))) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// `numpy.exceptions.AxisError` with a message of our own (no `ndim` to report).
pub fn axis_error_message(py: Python<'_>, msg: &str) -> PyErr {
    match numpy_refs(py).and_then(|np| np.axis_error.bind(py).call1((msg,))) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// A NumPy scalar of the reduced-loss dtype for inputs of `dtype` (float32 for float16 and
/// bfloat16, as the contract says).
pub fn loss_scalar<'py>(py: Python<'py>, value: f64, dtype: DType) -> PyResult<Bound<'py, PyAny>> {
    let np = numpy_refs(py)?;
    match dtype.result() {
        DType::F64 => np.float64.bind(py).call1((value,)),
        // Rounded here: NumPy would warn when it casts a value beyond float32's range to inf.
        _ => np.float32.bind(py).call1(((value as f32) as f64,)),
    }
}

/// The dtype of an array as one the core handles, or `None`.
fn classify(d: &Bound<'_, PyArrayDescr>) -> Option<DType> {
    let size = d.itemsize();
    Some(match (d.kind(), size) {
        (b'b', 1) => DType::Bool,
        (b'i', 1) => DType::I8,
        (b'i', 2) => DType::I16,
        (b'i', 4) => DType::I32,
        (b'i', 8) => DType::I64,
        (b'u', 1) => DType::U8,
        (b'u', 2) => DType::U16,
        (b'u', 4) => DType::U32,
        (b'u', 8) => DType::U64,
        (b'f', 2) => DType::F16,
        (b'f', 4) => DType::F32,
        (b'f', 8) => DType::F64,
        // ml_dtypes' bfloat16 is a user-defined dtype of kind 'V'.
        (b'V', 2) if d.typeobj().name().is_ok_and(|n| n == "bfloat16") => DType::BF16,
        _ => return None,
    })
}

fn dtype_name(d: &Bound<'_, PyArrayDescr>) -> String {
    d.str()
        .map_or_else(|_| "unknown".to_string(), |s| s.to_string())
}

/// An argument converted to a NumPy array of a dtype the core handles.
pub struct Arr<'py> {
    pub arr: Bound<'py, PyUntypedArray>,
    pub dtype: DType,
    ptr: *mut u8,
}

impl<'py> Arr<'py> {
    /// Converts `obj` (an array or anything `numpy.asarray` takes). Unsupported dtypes are a
    /// `TypeError` naming the dtype and the argument.
    pub fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        let mut arr = as_ndarray(obj, what)?;
        let descr = arr.dtype();
        let Some(dtype) = classify(&descr) else {
            return Err(PyTypeError::new_err(format!(
                "{what} has unsupported dtype {}; expected float16, bfloat16, float32, float64, an integer or a bool dtype",
                dtype_name(&descr)
            )));
        };
        if descr.is_native_byteorder() == Some(false) {
            let native = descr.call_method1("newbyteorder", ("=",))?;
            arr = arr
                .call_method1("astype", (native,))?
                .cast_into::<PyUntypedArray>()
                .map_err(PyErr::from)?;
        }
        Ok(Self::wrap(arr, dtype))
    }

    #[inline(always)]
    fn wrap(arr: Bound<'py, PyUntypedArray>, dtype: DType) -> Self {
        // SAFETY: as_array_ptr points at the live PyArrayObject that `arr` keeps alive.
        let ptr = unsafe { (*arr.as_array_ptr()).fields.data as *mut u8 };
        Arr { arr, dtype, ptr }
    }

    /// The array's shape, read from NumPy's own object.
    // PERF: not copied into the Arr: a copy of a few axes just written, read back by wider
    // loads when the Arr moved, stalled the store buffer (tens of ns on a tiny array's call).
    #[inline(always)]
    pub fn shape(&self) -> &[usize] {
        self.arr.shape()
    }

    /// Its strides in bytes.
    #[inline(always)]
    pub fn strides(&self) -> &[isize] {
        self.arr.strides()
    }

    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    pub fn size(&self) -> usize {
        self.shape().iter().product()
    }

    /// The array as rows along `axis` (`None`: one row per element, in C order), for reading.
    #[inline(always)]
    pub fn view(&self, axis: Option<usize>) -> View<'_> {
        // SAFETY: ptr/shape/strides come from the live array, which `self` keeps referenced
        // for the borrow. The binding writes no input: one that shares memory with an output
        // was copied first or is read from that output itself (`guard_against`). Another
        // Python thread writing the array meanwhile is a race in the caller's program, as with
        // any NumPy function that releases the GIL.
        unsafe { View::from_raw(self.ptr, self.dtype, self.shape(), self.strides(), axis) }
    }

    /// The array as rows along `axis`, for writing; an error if two of its elements share
    /// memory (an `out=` made by `as_strided`, say).
    #[inline(always)]
    pub fn view_mut(&mut self, axis: Option<usize>) -> crate::Result<ViewMut<'_>> {
        // SAFETY: as in `view`; outputs are fresh arrays or the caller's `out=`, which no
        // input viewed during the call shares memory with (`guard_against`).
        unsafe { ViewMut::from_raw(self.ptr, self.dtype, self.shape(), self.strides(), axis) }
    }

    /// This fresh C-contiguous array seen as `n` rows of `k` elements, for writing (results
    /// whose rows span several trailing axes, like the Jacobian's `K x K`).
    pub fn rows_mut(&mut self, n: usize, k: usize) -> crate::Result<ViewMut<'_>> {
        let size = self.dtype.size() as isize;
        let contiguous =
            self.size() == 0 || self.strides() == crate::strided::c_strides(self.shape(), size);
        if n * k != self.size() || !contiguous {
            return Err(crate::Error::Shape(format!(
                "{} is not {n} contiguous rows of {k}",
                fmt_index(self.shape())
            )));
        }
        // SAFETY: as in `view_mut`; checked above to be exactly n * k contiguous elements.
        unsafe {
            ViewMut::from_raw(
                self.ptr,
                self.dtype,
                &[n, k],
                &[size * k as isize, size],
                Some(1),
            )
        }
    }

    /// The array read as if broadcast to `shape` (zero strides on broadcast axes).
    pub fn broadcast_view(
        &self,
        shape: &[usize],
        axis: Option<usize>,
        what: &str,
    ) -> PyResult<View<'_>> {
        let strides = crate::strided::broadcast_strides(self.shape(), self.strides(), shape)
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "{what} of shape {} does not broadcast to the input shape {}",
                    fmt_index(self.shape()),
                    fmt_index(shape)
                ))
            })?;
        // SAFETY: as in `view`; broadcast strides only revisit elements of the array.
        Ok(unsafe { View::from_raw(self.ptr, self.dtype, shape, &strides, axis) })
    }

    /// The byte range the array's elements occupy, or `None` when it has none.
    fn extent(&self) -> Option<(usize, usize)> {
        if self.shape().contains(&0) {
            return None;
        }
        let (mut lo, mut hi) = (self.ptr as isize, self.ptr as isize);
        for (&len, &st) in self.shape().iter().zip(self.strides()) {
            let span = (len as isize - 1) * st;
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        Some((lo as usize, hi as usize + self.dtype.size()))
    }

    fn same_layout(&self, other: &Arr<'_>) -> bool {
        self.ptr == other.ptr
            && self.shape() == other.shape()
            && self.strides() == other.strides()
            && self.dtype == other.dtype
    }

    /// Prepares this input for an operation that writes `out`: if they share memory with the
    /// very same layout (in place), the input is read block by block through scratch before
    /// each block is written (`copy_on_read`); any other overlap copies the input first.
    /// Returns whether the view must read through scratch.
    pub fn guard_against(&mut self, out: &Arr<'_>) -> PyResult<bool> {
        let (Some(a), Some(b)) = (self.extent(), out.extent()) else {
            return Ok(false);
        };
        if a.1 <= b.0 || b.1 <= a.0 {
            return Ok(false);
        }
        if self.same_layout(out) {
            return Ok(true);
        }
        let copy = self
            .arr
            .call_method0("copy")?
            .cast_into::<PyUntypedArray>()
            .map_err(PyErr::from)?;
        *self = Arr::wrap(copy, self.dtype);
        Ok(false)
    }

    /// Prepares the inputs of a call that writes `out`: `main` (the one read and written row
    /// block by row block) may stay in place, and the result says whether it must read
    /// through scratch; every other input that shares memory with `out` is copied whole first,
    /// since its blocks need not line up with the blocks being written.
    pub fn guard_inputs<'a>(
        out: &Arr<'_>,
        main: &mut Arr<'py>,
        others: impl IntoIterator<Item = Option<&'a mut Arr<'py>>>,
    ) -> PyResult<bool>
    where
        'py: 'a,
    {
        for other in others.into_iter().flatten() {
            if other.guard_against(out)? {
                let copy = other
                    .arr
                    .call_method0("copy")?
                    .cast_into::<PyUntypedArray>()
                    .map_err(PyErr::from)?;
                *other = Arr::wrap(copy, other.dtype);
            }
        }
        main.guard_against(out)
    }

    /// A fresh C-contiguous array of `shape` and `dtype` (a float dtype; float16/bfloat16
    /// take their descriptor from `like`).
    pub fn empty(
        py: Python<'py>,
        shape: &[usize],
        dtype: DType,
        like: &Arr<'py>,
    ) -> PyResult<Arr<'py>> {
        let descr = match dtype {
            DType::F32 => numpy::dtype::<f32>(py),
            DType::F64 => numpy::dtype::<f64>(py),
            d if d == like.dtype => like.arr.dtype(),
            DType::F16 => PyArrayDescr::new(py, "float16")?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "cannot make a {} result",
                    other.name()
                )));
            }
        };
        // PERF: the shape as it is, not a copy: `npy_intp` is `isize`, of `usize`'s size, and
        // copying the axes just before NumPy read them back stalled the store buffer.
        let dims = shape.as_ptr() as *mut npy_intp;
        // SAFETY: NewFromDescr steals the descriptor reference `into_dtype_ptr` hands over;
        // it only reads `dims` (`npy_intp const *` in NumPy's C API), `shape.len()` values
        // that outlive the call and are below `isize::MAX` (axes of arrays that exist); a
        // NULL result is turned into the pending Python error.
        let arr = unsafe {
            let p = PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
                descr.into_dtype_ptr(),
                shape.len() as c_int,
                dims,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            );
            Bound::from_owned_ptr_or_err(py, p)?.cast_into_unchecked::<PyUntypedArray>()
        };
        Ok(Arr::wrap(arr, dtype))
    }

    /// Checks a caller's `out=` buffer: an ndarray of exactly `shape` and `dtype`, writable,
    /// with no two elements at the same address along an axis.
    pub fn out(obj: &Bound<'py, PyAny>, shape: &[usize], dtype: DType) -> PyResult<Arr<'py>> {
        let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
            PyTypeError::new_err(format!(
                "out must be a numpy.ndarray, got {}",
                obj.get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
            ))
        })?;
        let descr = arr.dtype();
        let got = classify(&descr).filter(|_| descr.is_native_byteorder() != Some(false));
        if got != Some(dtype) {
            return Err(PyTypeError::new_err(format!(
                "out has dtype {} but the result is {}",
                dtype_name(&descr),
                dtype.name()
            )));
        }
        if arr.shape() != shape {
            return Err(PyValueError::new_err(format!(
                "out has shape {} but the result has shape {}",
                fmt_index(arr.shape()),
                fmt_index(shape)
            )));
        }
        // SAFETY: reading the flags of the live array object.
        let flags = unsafe { (*arr.as_array_ptr()).fields.flags };
        if flags & NPY_ARRAY_WRITEABLE == 0 {
            return Err(PyValueError::new_err("out is read-only"));
        }
        // An empty array has no elements to share: NumPy gives `empty((3, 0))` strides (0, 0).
        let empty = arr.shape().contains(&0);
        if !empty
            && arr
                .shape()
                .iter()
                .zip(arr.strides())
                .any(|(&len, &st)| len > 1 && st == 0)
        {
            return Err(PyValueError::new_err(
                "out has a zero stride (several elements share memory); pass an array that owns distinct elements",
            ));
        }
        Ok(Arr::wrap(arr.clone(), dtype))
    }

    /// The array itself, or the NumPy scalar inside a 0-d array (as NumPy's reductions return).
    pub fn into_result(self) -> PyResult<Bound<'py, PyAny>> {
        if self.shape().is_empty() {
            let py = self.arr.py();
            self.arr.as_any().get_item(pyo3::types::PyTuple::empty(py))
        } else {
            Ok(self.arr.into_any())
        }
    }
}
