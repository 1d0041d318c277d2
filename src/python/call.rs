//! Running a core operation from Python: the GIL released around large work, Ctrl-C checked
//! between waves of blocks, and scratch that cannot be allocated turned into `MemoryError`
//! before anything runs.

use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

use crate::dtype::DType;
use crate::strided::{View, ViewMut};

/// Work (elements) above which the GIL is released while the kernel runs; below it the
/// release/re-acquire round trip costs more than it frees.
pub(super) const GIL_RELEASE_MIN: usize = 1 << 15;

thread_local! {
    /// The exception a signal handler raised while this thread's kernel ran without the GIL.
    static INTERRUPTED: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// Runs the pending signal handlers (Python runs them on the main thread only); true if one
/// raised, typically `KeyboardInterrupt` from Ctrl-C.
pub(super) fn signal_raised() -> bool {
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            INTERRUPTED.with(|slot| *slot.borrow_mut() = Some(e));
            true
        }
    })
}

/// Raises NumPy's `MemoryError` when `bytes` of scratch cannot be had, instead of letting
/// Rust abort the interpreter on a failed allocation (a zero-stride view can describe a row
/// of 2^40 elements in a few bytes, and gathering it would need terabytes).
pub(super) fn ensure_allocatable(f: &str, bytes: usize) -> PyResult<()> {
    // Small amounts always succeed in practice; probing them would only cost time.
    if bytes < 1 << 26 {
        return Ok(());
    }
    Vec::<u8>::new().try_reserve_exact(bytes).map_err(|_| {
        PyMemoryError::new_err(format!(
            "{f}: cannot allocate the {bytes} bytes of scratch this input needs (a row is gathered whole when it is not contiguous)"
        ))
    })
}

/// The row length whose scratch a call may need: 0 when every view reads and writes its rows
/// in place, their row length when any of them gathers (blocks of long rows are one row).
/// Each view is given as `(row length, rows, whether its first row is used in place)`.
pub(super) fn gathered_row(views: impl IntoIterator<Item = (usize, usize, bool)>) -> usize {
    // PERF: an iterator, not a slice, so that a call with an optional view collects no Vec.
    let (mut longest, mut gathers) = (0, false);
    for (k, rows, in_place) in views {
        longest = longest.max(k);
        gathers |= rows != 0 && !in_place;
    }
    if gathers {
        longest
    } else {
        0
    }
}

/// [`gathered_row`]'s description of an input view.
pub(super) fn read_rows(v: &View<'_>, compute: DType) -> (usize, usize, bool) {
    (v.k(), v.rows(), v.loads_in_place(compute, 0, 1))
}

/// [`gathered_row`]'s description of an output view.
pub(super) fn written_rows(v: &ViewMut<'_>, compute: DType) -> (usize, usize, bool) {
    (v.k(), v.rows(), v.stores_in_place(compute, 0, 1))
}

/// Runs `f` with the GIL released when the work is large enough to be worth it, after
/// checking that scratch for a few rows of `row` elements can be allocated. A long run
/// checks for signals between waves of blocks (see [`crate::pool::interruptible`]); if a
/// handler raised, the partial result is dropped and its exception returned.
pub(super) fn run<R: Send>(
    py: Python<'_>,
    f_name: &str,
    elems: usize,
    row: usize,
    f: impl FnOnce() -> R + Send,
) -> PyResult<R> {
    // Up to four gathered rows of 8-byte values per block (input, target, upstream, output).
    ensure_allocatable(f_name, row.saturating_mul(32))?;
    if elems < GIL_RELEASE_MIN {
        return Ok(f());
    }
    let (r, stopped) = py.detach(|| crate::pool::interruptible(signal_raised, f));
    match INTERRUPTED.with(|slot| slot.borrow_mut().take()) {
        Some(e) if stopped => Err(e),
        _ => Ok(r),
    }
}
