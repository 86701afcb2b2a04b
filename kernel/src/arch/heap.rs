//! The kernel heap: `linked_list_allocator` over the largest usable RAM
//! range of the boot memory map above the kernel image and boot modules,
//! with its high-water mark (issue 15: the status line shows heap in use
//! and its peak, so unbounded growth is visible).
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};
use linked_list_allocator::LockedHeap;

/// The heap, and the most it ever had in use.
struct Counted {
    heap: LockedHeap,
    peak: AtomicUsize,
}

// SAFETY: every call is forwarded to `linked_list_allocator`'s heap under
// its lock, exactly as its own `GlobalAlloc` for `LockedHeap` does; the
// peak is only a counter.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut heap = self.heap.lock();
        let p = heap
            .allocate_first_fit(layout)
            .map_or(null_mut(), |p| p.as_ptr());
        self.peak.fetch_max(heap.used(), Ordering::Relaxed);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with this `layout` (the
            // `GlobalAlloc` contract).
            unsafe { self.heap.lock().deallocate(p, layout) };
        }
    }
}

#[global_allocator]
static ALLOCATOR: Counted = Counted {
    heap: LockedHeap::empty(),
    peak: AtomicUsize::new(0),
};

/// # Safety
/// `[start, start+len)` must be unused RAM, identity mapped, never handed
/// out again.
pub unsafe fn init(start: u64, len: u64) {
    // SAFETY: forwarded from the caller's guarantee.
    unsafe { ALLOCATOR.heap.lock().init(start as *mut u8, len as usize) };
}

/// Bytes in use and the heap's size.
pub fn stats() -> (usize, usize) {
    let heap = ALLOCATOR.heap.lock();
    (heap.used(), heap.size())
}

/// The most bytes ever in use at once.
pub fn peak() -> usize {
    ALLOCATOR.peak.load(Ordering::Relaxed)
}
