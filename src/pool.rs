//! The thread pool and the block schedule every parallel operation shares.
//!
//! Work is cut into blocks of whole rows whose size depends only on the shape (never on the
//! thread count), and per-block partial sums are combined in block order; that is what makes
//! every reduced loss bitwise identical for any number of threads. Small inputs run on the
//! calling thread and never touch the pool.
//!
//! Blocks go to the pool in waves of about `WAVE_ELEMS` elements. Between waves a caller that
//! asked for it (the Python binding, through [`interruptible`]) gets to check for Ctrl-C, at
//! most every `CHECK_EVERY`, so a call of minutes stays interruptible without the kernels
//! ever touching Python.
//!
//! The pool is our own (not Rayon's global one, so we never fight the host application over
//! it) and is rebuilt lazily: after `set_num_threads`, and in a child made by `os.fork()`,
//! whose copy of the pool has no threads behind it (detected by a changed process id).

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Elements per block: big enough to amortize scheduling, small enough that a block's scratch
/// (gathered rows, converted dtypes) stays in L2; four times as many for rows of 256 to 2048
/// ([`rows_per_block`]), whose scratch is then four times larger too (the binary losses'
/// per-block float64 losses: 512 KiB, plus any gathered operands).
pub const BLOCK_ELEMS: usize = 1 << 14;
/// Below this many elements an operation runs on the calling thread.
pub const PARALLEL_MIN_ELEMS: usize = 1 << 16;
/// Elements per wave: tens of milliseconds of work, so the pause at a wave's end (the slowest
/// thread finishing its last block) costs at most a few percent.
const WAVE_ELEMS: usize = 1 << 24;
/// How often a long operation asks its caller whether to stop.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// The interrupt check of the operation running on this thread, and when it last ran.
struct Interrupt {
    check: fn() -> bool,
    last: Instant,
    stopped: bool,
    /// On a pool thread running the operation for its caller (see
    /// [`in_pool_capped_interruptible`]): the caller's answers, instead of `check`.
    relay: Option<Arc<AtomicBool>>,
}

thread_local! {
    static INTERRUPT: Cell<Option<Interrupt>> = const { Cell::new(None) };
}

/// Runs `f` on this thread with `check` consulted between waves of blocks (at most every
/// `CHECK_EVERY`). Returns `f`'s result and whether `check` asked to stop; if it did, the
/// remaining blocks were skipped, so the result and any output written are partial and must
/// be discarded.
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's
pub fn interruptible<R>(check: fn() -> bool, f: impl FnOnce() -> R) -> (R, bool) {
    let outer = INTERRUPT.replace(Some(Interrupt {
        check,
        last: Instant::now(),
        stopped: false,
        relay: None,
    }));
    let r = f();
    let stopped = INTERRUPT
        .replace(outer)
        .is_some_and(|i: Interrupt| i.stopped);
    (r, stopped)
}

/// Whether this thread's operation should stop now (asks the check when it is due). Only the
/// thread that called [`interruptible`] has a check; on any other thread this is `false`.
pub fn should_stop() -> bool {
    let Some(mut i) = INTERRUPT.take() else {
        return false;
    };
    if let Some(flag) = &i.relay {
        i.stopped = flag.load(Ordering::Relaxed);
    } else if !i.stopped && i.last.elapsed() >= CHECK_EVERY {
        i.stopped = (i.check)();
        i.last = Instant::now();
    }
    let stopped = i.stopped;
    INTERRUPT.set(Some(i));
    stopped
}

struct PoolState {
    threads: usize,
    pool: Option<(Arc<rayon::ThreadPool>, u32)>,
    /// A smaller pool for work capped below `threads` (see [`in_pool_capped`]), and its size.
    capped: Option<(Arc<rayon::ThreadPool>, u32, usize)>,
}

static STATE: Mutex<PoolState> = Mutex::new(PoolState {
    threads: 0,
    pool: None,
    capped: None,
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
        if st.capped.as_ref().is_some_and(|&(_, _, size)| size >= n) {
            st.capped = None;
        }
    }
    Ok(())
}

/// The pool for `threads` threads, or `None` to run serially (1 thread, or it failed to start).
fn pool() -> Option<Arc<rayon::ThreadPool>> {
    capped_pool(usize::MAX)
}

/// The pool of `min(threads, max)` threads: the shared one when `threads <= max`, else the
/// capped one (rebuilt when `max` changes). `None` to run serially.
fn capped_pool(max: usize) -> Option<Arc<rayon::ThreadPool>> {
    let mut st = lock();
    if st.threads == 0 {
        st.threads = default_threads();
    }
    let size = st.threads.min(max);
    if size <= 1 {
        return None;
    }
    let pid = std::process::id();
    let slot = if size == st.threads {
        match st.pool.take() {
            Some((p, owner)) if owner == pid => Some((p, owner, size)),
            other => forget_stale(other.map(|(p, owner)| (p, owner, size))),
        }
    } else {
        match st.capped.take() {
            Some((p, owner, n)) if owner == pid && n == size => Some((p, owner, n)),
            other => forget_stale(other),
        }
    };
    let (p, _, _) = match slot {
        Some(kept) => kept,
        None => (
            rayon::ThreadPoolBuilder::new()
                .num_threads(size)
                .thread_name(|i| format!("sce_rs-{i}"))
                .build()
                .ok()
                .map(Arc::new)?,
            pid,
            size,
        ),
    };
    if size == st.threads {
        st.pool = Some((p.clone(), pid));
    } else {
        st.capped = Some((p.clone(), pid, size));
    }
    Some(p)
}

/// Drops a pool that is not wanted any more, or leaks it when it belongs to the parent of a
/// forked child: its threads do not exist here, and dropping the copy would try to talk to
/// them (a few hundred bytes).
fn forget_stale<T>(
    stale: Option<(Arc<rayon::ThreadPool>, u32, T)>,
) -> Option<(Arc<rayon::ThreadPool>, u32, T)> {
    if let Some((p, owner, _)) = stale {
        if owner == std::process::id() {
            drop(p); // its threads exit once idle; in-flight users hold their own Arc
        } else {
            std::mem::forget(p);
        }
    }
    None
}

/// Runs `f(threads)` inside the pool when more than one thread is configured, so that Rayon
/// work inside `f` (GEMMs included) runs on the pool's threads; `f(1)` on this thread otherwise.
pub fn in_pool<R: Send>(f: impl FnOnce(usize) -> R + Send) -> R {
    in_pool_capped(usize::MAX, f)
}

/// [`in_pool`] on at most `max` threads: for work each of whose threads keeps memory of its
/// own (the GEMMs' packing buffers are per thread and live as long as it), so that memory is
/// bounded by `max`, not by the machine's cores. Below the configured count this is a second
/// pool of `max` threads, kept for the next such call.
pub fn in_pool_capped<R: Send>(max: usize, f: impl FnOnce(usize) -> R + Send) -> R {
    match capped_pool(max) {
        Some(p) => {
            let n = p.current_num_threads();
            p.install(|| f(n))
        }
        None => f(1),
    }
}

/// [`in_pool_capped`] with all of `f` on one thread of the pool (so that everything `f`
/// allocates comes from one allocator arena) and [`should_stop`] working inside it: the
/// caller's check (Python handles signals on its main thread only) keeps running on the
/// calling thread, every `CHECK_EVERY` while `f` runs, and its answer is relayed to `f`.
pub fn in_pool_capped_interruptible<R: Send>(max: usize, f: impl FnOnce(usize) -> R + Send) -> R {
    let Some(p) = capped_pool(max) else {
        return f(1);
    };
    let threads = p.current_num_threads();
    let check = INTERRUPT.with(|slot| {
        let i = slot.take();
        let check = i.as_ref().filter(|i| i.relay.is_none()).map(|i| i.check);
        slot.set(i);
        check
    });
    let Some(check) = check else {
        return p.install(|| f(threads));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = AtomicBool::new(false);
    let caller = std::thread::current();
    let mut out = None;
    p.in_place_scope(|s| {
        s.spawn(|_| {
            // Wakes the caller however `f` ends (a panic included, which the scope re-raises).
            struct Finish<'a>(&'a AtomicBool, &'a std::thread::Thread);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                    self.1.unpark();
                }
            }
            let _finish = Finish(&done, &caller);
            let outer = INTERRUPT.replace(Some(Interrupt {
                check,
                last: Instant::now(),
                stopped: false,
                relay: Some(stop.clone()),
            }));
            out = Some(f(threads));
            INTERRUPT.set(outer);
        });
        while !done.load(Ordering::Acquire) {
            std::thread::park_timeout(CHECK_EVERY);
            if !done.load(Ordering::Acquire) && should_stop() {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    out.expect("the pool ran the operation")
}

/// Rows per block for rows of `k` elements: blocks of [`BLOCK_ELEMS`], or four times that
/// for rows whose passes prefetch the rows ahead, since the first rows of a block come in
/// unfetched (a block's passes prefetch only within it).
// PERF: float32 8192 x 1000 and 4096 x 2048 (blocks of 16 and 8 rows before, two of them
// unfetched): cross_entropy 0.93-0.94x the time, softmax(out=) 0.93-0.96x, log_softmax(out=)
// 0.93-0.97x; rows of 300 unchanged (Intel Xeon, BENCHMARKS.md).
pub fn rows_per_block(k: usize) -> usize {
    let elems = if crate::kernels::prefetches_rows(k) {
        4 * BLOCK_ELEMS
    } else {
        BLOCK_ELEMS
    };
    (elems / k.max(1)).max(1)
}

/// The blocks of rows covering `0..n_rows` for rows of `k` elements: consecutive ranges that
/// depend only on `(n_rows, k)`.
pub fn block_ranges(
    n_rows: usize,
    k: usize,
) -> impl ExactSizeIterator<Item = Range<usize>> + Clone {
    let per = rows_per_block(k);
    (0..n_rows.div_ceil(per)).map(move |b| b * per..((b + 1) * per).min(n_rows))
}

/// [`for_blocks_with`] without payloads: the tests' form.
#[cfg(test)]
pub fn for_blocks<R, F>(n_rows: usize, k: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(Range<usize>) -> R + Sync + Send,
{
    let units = std::iter::repeat_n((), n_rows.div_ceil(rows_per_block(k)));
    for_blocks_with(n_rows, k, units, |r, ()| f(r))
}

/// Runs `f` on consecutive blocks of rows covering `0..n_rows` ([`block_ranges`]) and returns
/// the results in block order. They run in parallel when the work is large enough and more
/// than one thread is configured. Under [`interruptible`] the result may stop short of the
/// last block. Each call gets one payload, moved into it: the pieces of the outputs that block
/// writes (`ViewMut::split` over [`block_ranges`]), so each thread owns what it writes. Panics
/// unless there is exactly one payload per block.
///
/// The payloads come as an iterator, taken one per block as the blocks run (on the pool,
/// a wave at a time), so a call of one block allocates nothing for them.
pub fn for_blocks_with<I, P, R, F>(n_rows: usize, k: usize, payloads: I, f: F) -> Vec<R>
where
    I: IntoIterator<Item = P>,
    I::IntoIter: ExactSizeIterator,
    P: Send,
    R: Send,
    F: Fn(Range<usize>, P) -> R + Sync + Send,
{
    let per = rows_per_block(k);
    let n_blocks = n_rows.div_ceil(per);
    let payloads = payloads.into_iter();
    assert_eq!(payloads.len(), n_blocks, "one payload per block");
    let big = n_rows.saturating_mul(k.max(1)) >= PARALLEL_MIN_ELEMS && n_blocks > 1;
    let pool = if big { pool() } else { None };
    let per_wave = (WAVE_ELEMS / per.saturating_mul(k.max(1))).max(1);
    let mut blocks = block_ranges(n_rows, k).zip(payloads);
    let mut out = Vec::with_capacity(n_blocks);
    let run = |(r, p): (Range<usize>, P)| f(r, p);
    let Some(pool) = pool else {
        // On the calling thread, with no wave collected: a call on a tiny array pays for no
        // allocation here beyond its results.
        for (done, block) in (1..).zip(blocks) {
            out.push(run(block));
            if done % per_wave == 0 && done < n_blocks && should_stop() {
                break;
            }
        }
        return out;
    };
    let mut left = n_blocks;
    while left > 0 {
        let wave: Vec<_> = blocks.by_ref().take(per_wave).collect();
        left -= wave.len();
        pool.install(|| out.par_extend(wave.into_par_iter().map(run)));
        if left > 0 && should_stop() {
            break;
        }
    }
    out
}

/// Adds per-block partial sums in block order (the fixed order behind thread-count
/// independent results).
pub fn ordered_sum(parts: impl IntoIterator<Item = f64>) -> f64 {
    parts.into_iter().fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of one row of 2^24 elements: one block per wave, so every block boundary is a
    /// chance to stop. The blocks only sleep; nothing reads that many elements.
    fn slow_blocks() -> Vec<usize> {
        for_blocks(1000, WAVE_ELEMS, |r| {
            std::thread::sleep(Duration::from_millis(1));
            r.start
        })
    }

    #[test]
    fn an_interrupt_check_that_fires_stops_between_waves() {
        let (done, stopped) = interruptible(|| true, slow_blocks);
        assert!(stopped);
        assert!(
            !done.is_empty() && done.len() < 1000,
            "{} blocks ran",
            done.len()
        );
        assert_eq!(
            done,
            (0..done.len()).collect::<Vec<_>>(),
            "a prefix, in order"
        );
    }

    #[test]
    fn a_quiet_check_runs_everything_and_nesting_restores_the_outer_check() {
        let (done, stopped) = interruptible(|| false, slow_blocks);
        assert!(!stopped);
        assert_eq!(done.len(), 1000);
        let ((_, inner), outer) = interruptible(|| true, || interruptible(|| false, || ()));
        assert!(!inner && !outer);
        assert!(!should_stop(), "no check is left installed");
    }

    /// Work moved onto the pool still sees the caller's check (other tests change the thread
    /// count meanwhile; with one thread the work runs here, which must hold too), on at most
    /// `max` threads, and a panic in it comes back instead of leaving the caller waiting.
    #[test]
    fn capped_work_on_the_pool_sees_the_callers_check() {
        let wait_for_stop = |threads: usize| {
            assert!(threads <= 2 && rayon::current_num_threads() >= threads);
            let start = Instant::now();
            while !should_stop() {
                if start.elapsed() > Duration::from_secs(20) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            true
        };
        let (seen, stopped) =
            interruptible(|| true, || in_pool_capped_interruptible(2, wait_for_stop));
        assert!(seen && stopped);
        let quiet = || {
            in_pool_capped_interruptible(2, |_| {
                std::thread::sleep(3 * CHECK_EVERY);
                should_stop()
            })
        };
        assert_eq!(interruptible(|| false, quiet), (false, false));
        assert!(!quiet(), "no check outside interruptible");
        let panicked = std::panic::catch_unwind(|| {
            interruptible(
                || false,
                || in_pool_capped_interruptible(2, |_| panic!("in the pool")),
            )
        });
        assert!(panicked.is_err());
        assert_eq!(in_pool_capped(1, |threads| threads), 1);
    }
}
