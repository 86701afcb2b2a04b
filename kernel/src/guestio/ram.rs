//! Guest RAM as the virtio devices see it: [`GuestRam`], a bounds-checked
//! [`GuestMemory`] over the guest's RAM block (guest-physical 0 up to its
//! size, the range EPT maps), and [`DirtyLog`], the pages the hypervisor
//! itself wrote (device DMA: used rings, read data, received frames).
//!
//! Live state transfer (DESIGN.md §1.9) copies guest RAM while the guest
//! runs and re-sends what changed; the guest CPU's own stores are tracked
//! through the EPT (`vmx::ept` dirty logging), the hypervisor's stores on
//! the guest's behalf by this log (its own rounds: [`DirtyLog::take_round`]).
use alloc::vec;
use alloc::vec::Vec;

use crate::devices::virtio::{GuestMemory, MemError};

/// Granule of dirty tracking: one 4 KiB page.
pub const PAGE: u64 = 4096;

/// One bit per guest page written by the hypervisor since the last
/// [`DirtyLog::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyLog {
    bits: Vec<u64>,
    /// The same, since the last [`DirtyLog::take_round`] (a repair's
    /// pre-copy round), independent of [`DirtyLog::take`].
    round: Vec<u64>,
    pages: u64,
    marked: u64,
    digest: u64,
}

impl DirtyLog {
    /// A clean log for `ram_bytes` of guest RAM.
    pub fn new(ram_bytes: u64) -> Self {
        let pages = ram_bytes.div_ceil(PAGE);
        Self {
            bits: vec![0; pages.div_ceil(64) as usize],
            round: vec![0; pages.div_ceil(64) as usize],
            pages,
            marked: 0,
            digest: ft::replay::HASH_SEED,
        }
    }

    /// Folds a write of `data` at `gpa` into [`DirtyLog::digest`].
    pub fn absorb(&mut self, gpa: u64, data: &[u8]) {
        self.digest = ft::replay::hash_bytes(
            ft::replay::hash_words(self.digest, [gpa, data.len() as u64]),
            data,
        );
    }

    /// Folds an input the devices refused (slot tag, what) into
    /// [`DirtyLog::digest`]: the recording side refused the same input at
    /// the same point, so a replay that refuses one the recording took
    /// (or takes one it refused) diverges at the next checkpoint, as a
    /// different write would (issue 15, "a refused input is a
    /// divergence").
    pub fn absorb_refusal(&mut self, slot: u64, what: u64) {
        self.digest = ft::replay::hash_words(self.digest, [u64::MAX, slot, what]);
    }

    /// A digest of every write logged since boot, in order (addresses and
    /// bytes): the last word of a checkpoint's state (issue 15), so that a
    /// replay fed other input data than the recording diverges at the next
    /// checkpoint. [`DirtyLog::take`] does not reset it.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Continues from another node's digest (a repair's new backup takes
    /// the serving node's at the transfer's commit).
    pub fn set_digest(&mut self, digest: u64) {
        self.digest = digest;
    }

    /// Mark the pages of `[gpa, gpa + len)` (the part inside RAM).
    pub fn mark(&mut self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / PAGE;
        let last = gpa.saturating_add(len - 1) / PAGE;
        for page in first..=last.min(self.pages.saturating_sub(1)) {
            let (w, b) = ((page / 64) as usize, page % 64);
            self.round[w] |= 1 << b;
            if self.bits[w] & (1 << b) == 0 {
                self.bits[w] |= 1 << b;
                self.marked += 1;
            }
        }
    }

    /// The pages written since the last call, ascending (a pre-copy
    /// round's share of the hypervisor's writes); [`DirtyLog::take`] and
    /// the counts are unaffected.
    pub fn take_round(&mut self) -> Vec<u64> {
        drain_bits(&mut self.round, Vec::new())
    }

    /// Whether page number `page` is dirty.
    pub fn is_dirty(&self, page: u64) -> bool {
        page < self.pages && self.bits[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Dirty pages now.
    pub fn count(&self) -> u64 {
        self.marked
    }

    /// The dirty page numbers, ascending; the log is clean afterwards.
    pub fn take(&mut self) -> Vec<u64> {
        let out = drain_bits(&mut self.bits, Vec::with_capacity(self.marked as usize));
        self.marked = 0;
        out
    }
}

/// The guest's RAM block (guest-physical 0 = `ram[0]`) with writes logged.
pub struct GuestRam<'a> {
    ram: &'a mut [u8],
    dirty: &'a mut DirtyLog,
}

impl<'a> GuestRam<'a> {
    /// View `ram` as guest-physical `[0, ram.len())`, logging writes in
    /// `dirty`.
    pub fn new(ram: &'a mut [u8], dirty: &'a mut DirtyLog) -> Self {
        Self { ram, dirty }
    }

    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        let err = MemError {
            gpa,
            len: len as u64,
        };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        (end <= self.ram.len()).then_some(start..end).ok_or(err)
    }
}

impl GuestMemory for GuestRam<'_> {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len)
            .is_some_and(|end| end <= self.ram.len() as u64)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.ram[r]);
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(gpa, data.len())?;
        self.ram[r].copy_from_slice(data);
        self.dirty.mark(gpa, data.len() as u64);
        self.dirty.absorb(gpa, data);
        Ok(())
    }
}

/// Appends the numbers of the bits set in `words` to `out`, ascending, and
/// clears them.
fn drain_bits(words: &mut [u64], mut out: Vec<u64>) -> Vec<u64> {
    for (w, word) in words.iter_mut().enumerate() {
        let mut x = core::mem::take(word);
        while x != 0 {
            out.push(w as u64 * 64 + u64::from(x.trailing_zeros()));
            x &= x - 1;
        }
    }
    out
}
