//! The extension's global allocator: on Linux, blocks of at least [`MAPPED_MIN`] bytes are
//! mapped from the kernel on allocation and unmapped on free; smaller ones, and every block on
//! other systems, come from the system allocator. Only this extension's Rust allocations go
//! through it, never the host process's.
//!
//! Why: glibc's malloc maps blocks of 128 KiB and more too, but the first time it frees such
//! a block it raises that threshold to the block's size (up to 32 MiB), and from then on
//! serves blocks that large from its heaps, which keep what is freed, fragmented by requests
//! of other sizes. The fused linear cross-entropy allocates and frees gemm's packing buffers
//! (about 1 MiB each) for every product: in a fresh process one call at 512 x 2048 -> 6144
//! grew a heap by 16 to 37 MiB while at most 5.3 MiB were in use at any time (heaptrack), and
//! the peak depended on the heap's layout, not on the work. Mapped blocks keep the resident
//! memory what is in use: 5.5 MiB there. This is glibc's behaviour with its default threshold
//! kept fixed.
//!
//! A fresh mapping costs a page fault per page it touches: at 512 x 256 -> 16000, where each
//! product takes a few milliseconds, faulting its packing buffers in anew cost about 15% of
//! the call. So the blocks freed last (at most [`CACHE_BYTES`] in all) are kept mapped and
//! handed out again to a request of the same page-rounded size, as a loop of products makes.

use std::alloc::{GlobalAlloc, Layout, System};
#[cfg(target_os = "linux")]
use std::ptr::NonNull;
#[cfg(target_os = "linux")]
use std::sync::Mutex;

/// glibc's default mmap threshold, kept fixed.
#[cfg(target_os = "linux")]
const MAPPED_MIN: usize = 128 << 10;
/// Mapped blocks start on a page; no page is smaller than this.
#[cfg(target_os = "linux")]
const MIN_PAGE: usize = 4096;
/// The most bytes of freed blocks kept mapped for reuse, and in how many blocks: the
/// working set of a loop of products (a tile, and the packing buffers of three products, some
/// 6 MiB at 448 x 256 -> 16000) must fit, or each product maps and faults its buffers in anew.
#[cfg(target_os = "linux")]
const CACHE_BYTES: usize = 8 << 20;
#[cfg(target_os = "linux")]
const CACHE_SLOTS: usize = 8;

/// A freed mapping of `len` bytes (page-rounded), kept for reuse, and when it was kept.
#[cfg(target_os = "linux")]
struct Kept {
    ptr: NonNull<u8>,
    len: usize,
    stamp: u64,
}

// SAFETY: a kept mapping is owned by the cache alone (nothing points into it), so any thread
// may take it over.
#[cfg(target_os = "linux")]
unsafe impl Send for Kept {}

/// The kept blocks, and a clock for their stamps.
#[cfg(target_os = "linux")]
static CACHE: Mutex<([Option<Kept>; CACHE_SLOTS], u64)> =
    Mutex::new(([const { None }; CACHE_SLOTS], 0));

#[cfg(target_os = "linux")]
fn rounded(size: usize) -> usize {
    size.div_ceil(MIN_PAGE) * MIN_PAGE
}

/// A kept mapping of exactly `len` bytes, if there is one.
#[cfg(target_os = "linux")]
fn take_kept(len: usize) -> Option<NonNull<u8>> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let slot = cache
        .0
        .iter_mut()
        .find(|k| k.as_ref().is_some_and(|k| k.len == len))?;
    slot.take().map(|k| k.ptr)
}

/// Keeps a freed mapping, unmapping the longest-kept ones to make room; false (the caller
/// unmaps it) when it is larger than the whole cache.
#[cfg(target_os = "linux")]
fn keep(ptr: NonNull<u8>, len: usize) -> bool {
    if len > CACHE_BYTES {
        return false;
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let (slots, clock) = &mut *cache;
    *clock += 1;
    loop {
        let held: usize = slots.iter().flatten().map(|k| k.len).sum();
        if held + len <= CACHE_BYTES {
            if let Some(slot) = slots.iter_mut().find(|k| k.is_none()) {
                *slot = Some(Kept {
                    ptr,
                    len,
                    stamp: *clock,
                });
                return true;
            }
        }
        let oldest = slots
            .iter_mut()
            .filter(|k| k.is_some())
            .min_by_key(|k| k.as_ref().map_or(0, |k| k.stamp));
        let Some(old) = oldest.and_then(Option::take) else {
            return false;
        };
        // SAFETY: a kept block is a mapping of `old.len` bytes made by `map` that nothing
        // uses; taken out of the cache, nothing can hand it out again.
        unsafe { libc::munmap(old.ptr.as_ptr().cast(), old.len) };
    }
}

pub struct Allocator;

/// Frees a mapped block: keeps it for reuse or unmaps it. Out of line so that freeing a small
/// block (a few a call) stays a test and a jump to the system allocator, without the
/// register saves the cache's code needs (20 instructions per free, see BENCHMARKS.md).
///
/// # Safety
/// `ptr` must start a mapping of `size` bytes (rounded up to pages) that this allocator
/// handed out (from [`get`], or moved by `realloc`) and that nothing uses any more.
#[cfg(target_os = "linux")]
#[cold]
#[inline(never)]
unsafe fn release(ptr: *mut u8, size: usize) {
    let len = rounded(size);
    if NonNull::new(ptr).is_some_and(|p| keep(p, len)) {
        return;
    }
    // SAFETY: `ptr` is the start of a mapping of `len` bytes made by `map` (the caller's
    // contract) that nothing uses any more.
    unsafe { libc::munmap(ptr.cast(), len) };
}

#[cfg(target_os = "linux")]
fn mapped(layout: &Layout) -> bool {
    layout.size() >= MAPPED_MIN && layout.align() <= MIN_PAGE
}

/// A block of `size` bytes: a kept mapping of that size (zeroed first when asked), or a fresh
/// one (whose pages are zero).
#[cfg(target_os = "linux")]
fn get(size: usize, zeroed: bool) -> *mut u8 {
    match take_kept(rounded(size)) {
        Some(p) => {
            if zeroed {
                // SAFETY: the kept mapping is at least `size` bytes and nothing else uses it.
                unsafe { p.as_ptr().write_bytes(0, size) };
            }
            p.as_ptr()
        }
        None => map(size),
    }
}

#[cfg(target_os = "linux")]
fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; failure is reported as MAP_FAILED and checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is either the system allocator's or an anonymous mapping of
// `rounded(layout.size())` bytes (page-aligned, so aligned for any `align <= MIN_PAGE`), and
// `mapped(layout)` tells which, from the same layout Rust passes back on free and realloc.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if mapped(&layout) {
            return get(layout.size(), false);
        }
        // SAFETY: the caller's contract for `layout` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if mapped(&layout) {
            return get(layout.size(), true);
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(target_os = "linux")]
        if mapped(&layout) {
            // SAFETY: a block of a mapped layout is a mapping of that size (see the impl's
            // SAFETY), and the caller frees it.
            return unsafe { release(ptr, layout.size()) };
        }
        // SAFETY: `ptr` came from the system allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the caller guarantees that `new_size`, rounded up to `layout.align()`,
            // does not overflow isize, which is all `Layout` asks.
            let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            match (mapped(&layout), mapped(&new)) {
                (false, false) => {}
                (true, true) => {
                    // SAFETY: `ptr` starts a mapping of `layout.size()` bytes (rounded up to
                    // pages, as the kernel rounds); the kernel moves it if it must and reports
                    // failure as MAP_FAILED.
                    let p = unsafe {
                        libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                    };
                    return if p == libc::MAP_FAILED {
                        std::ptr::null_mut()
                    } else {
                        p.cast()
                    };
                }
                _ => {
                    // SAFETY: `new` is a valid layout (above); on success both blocks are
                    // live and at least `min(old, new)` bytes long, and the old one is freed
                    // with its own layout.
                    unsafe {
                        let p = self.alloc(new);
                        if !p.is_null() {
                            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                            self.dealloc(ptr, layout);
                        }
                        return p;
                    }
                }
            }
        }
        // SAFETY: `ptr` came from the system allocator with `layout`; the caller's contract
        // for `new_size` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
