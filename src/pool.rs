//! The thread pool and the block schedule every parallel operation shares.
//!
//! Work is cut into blocks of whole rows whose size depends only on the shape (never on the
//! thread count), and per-block partial sums are combined in block order; that is what makes
//! every reduced loss bitwise identical for any number of threads. Small inputs run on the
//! calling thread and never touch the pool.
//!
//! The pool is our own (not Rayon's global one, so we never fight the host application over
//! it) and is rebuilt lazily: after `set_num_threads`, and in a child made by `os.fork()`,
//! whose copy of the pool has no threads behind it (detected by a changed process id).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Elements per block: big enough to amortize scheduling, small enough that a block's scratch
/// (gathered rows, converted dtypes) stays in L2.
pub const BLOCK_ELEMS: usize = 1 << 14;
/// Below this many elements an operation runs on the calling thread.
pub const PARALLEL_MIN_ELEMS: usize = 1 << 16;

struct PoolState {
    threads: usize,
    pool: Option<(Arc<rayon::ThreadPool>, u32)>,
}

static STATE: Mutex<PoolState> = Mutex::new(PoolState {
    threads: 0,
    pool: None,
});

fn lock() -> std::sync::MutexGuard<'static, PoolState> {
    // A panic while holding the lock cannot leave PoolState inconsistent; keep going.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn default_threads() -> usize {
    std::env::var("SCE_RS_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The number of threads parallel operations use.
pub fn num_threads() -> usize {
    let mut st = lock();
    if st.threads == 0 {
        st.threads = default_threads();
    }
    st.threads
}

/// Sets the number of threads (at least 1) for later operations.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Value(
            "the number of threads must be at least 1, got 0".into(),
        ));
    }
    let mut st = lock();
    if st.threads != n {
        st.threads = n;
        if let Some((old, _)) = st.pool.take() {
            drop(old); // its threads exit once idle; in-flight users hold their own Arc
        }
    }
    Ok(())
}

/// The pool for `threads` threads, or `None` to run serially (1 thread, or it failed to start).
fn pool() -> Option<Arc<rayon::ThreadPool>> {
    let mut st = lock();
    if st.threads == 0 {
        st.threads = default_threads();
    }
    if st.threads == 1 {
        return None;
    }
    let pid = std::process::id();
    match &st.pool {
        Some((p, owner)) if *owner == pid => return Some(p.clone()),
        Some(_) => {
            // Forked child: the threads of the parent's pool do not exist here. Dropping the
            // copy would try to talk to them, so leak it instead (a few hundred bytes).
            if let Some((stale, _)) = st.pool.take() {
                std::mem::forget(stale);
            }
        }
        None => {}
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(st.threads)
        .thread_name(|i| format!("sce_rs-{i}"))
        .build()
        .ok()
        .map(Arc::new)?;
    st.pool = Some((built.clone(), pid));
    Some(built)
}

/// Rows per block for rows of `k` elements.
pub fn rows_per_block(k: usize) -> usize {
    (BLOCK_ELEMS / k.max(1)).max(1)
}

/// Runs `f` on consecutive blocks of rows covering `0..n_rows` and returns the results in
/// block order. Blocks depend only on `(n_rows, k)`; they run in parallel when the work is
/// large enough and more than one thread is configured.
pub fn for_blocks<R, F>(n_rows: usize, k: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(Range<usize>) -> R + Sync + Send,
{
    let per = rows_per_block(k);
    let n_blocks = n_rows.div_ceil(per);
    let block = |b: usize| f(b * per..((b + 1) * per).min(n_rows));
    let big = n_rows.saturating_mul(k.max(1)) >= PARALLEL_MIN_ELEMS && n_blocks > 1;
    match if big { pool() } else { None } {
        Some(p) => p.install(|| (0..n_blocks).into_par_iter().map(block).collect()),
        None => (0..n_blocks).map(block).collect(),
    }
}

/// Adds per-block partial sums in block order (the fixed order behind thread-count
/// independent results).
pub fn ordered_sum(parts: &[f64]) -> f64 {
    parts.iter().fold(0.0, |a, &b| a + b)
}
