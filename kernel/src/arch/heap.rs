//! The kernel heap: `linked_list_allocator` over the largest usable RAM
//! range of the boot memory map above the kernel image and boot modules.
use linked_list_allocator::LockedHeap;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// # Safety
/// `[start, start+len)` must be unused RAM, identity mapped, never handed
/// out again.
pub unsafe fn init(start: u64, len: u64) {
    // SAFETY: forwarded from the caller's guarantee.
    unsafe { ALLOCATOR.lock().init(start as *mut u8, len as usize) };
}

pub fn stats() -> (usize, usize) {
    let heap = ALLOCATOR.lock();
    (heap.used(), heap.size())
}
