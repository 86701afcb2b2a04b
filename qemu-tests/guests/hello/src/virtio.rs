//! The guest's side of ftvisor's virtio-mmio devices (virtio 1.2 §4.2.2):
//! discovery, the `virtio-drivers` [`Hal`], interrupts, and raw register
//! access for the hostile tests.
//!
//! Layout (ftvisor README "What the guest sees"): CPUID leaf `0x4000_0001`
//! gives EAX = guest-physical base of slot 0 (`0xFEB0_0000`), EBX = slots,
//! ECX = stride (`0x1000`), EDX = vector of slot 0 (slot i raises EDX + i);
//! slot 0 is virtio-blk, slot 1 virtio-net. Each slot's registers are 0x200
//! bytes. The boot trampoline identity-maps the first 4 GiB with 2 MiB
//! write-back pages, so the slots are mapped; the memory type does not
//! matter because every access to them exits to the hypervisor (EPT has no
//! mapping there), which emulates it.
//!
//! Memory is identity mapped, so the [`Hal`] hands out guest-physical =
//! virtual addresses: DMA pages come from a static pool (bump allocation;
//! `dma_dealloc` does not reuse pages, which bounds the number of device
//! initialisations a test may do) and `share` returns the buffer's address.
//!
//! Register access: every access is one explicit `mov` ([`read32`],
//! [`write32`], [`AsmMmioTransport`]). With plain volatile accesses LLVM may
//! fold a device load into `cmp`/`test` with a memory operand, which
//! ftvisor's MMIO emulation does not decode (it stops the guest), so
//! `virtio-drivers` runs on [`AsmMmioTransport`] instead of its own
//! `MmioTransport`.
//!
//! Interrupts: the guest runs its LAPIC in x2APIC mode; [`irq`] (called
//! from the IDT stub of the slot's vector) reads `InterruptStatus`,
//! acknowledges it with `InterruptACK`, counts the interrupt and sends EOI.
use crate::{hw, idt};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// CPUID leaf describing the devices.
const LAYOUT_LEAF: u32 = 0x4000_0001;
/// Slots this guest knows how to use.
pub const SLOTS: usize = 2;
/// Slot of the virtio-blk device.
pub const BLK: usize = 0;
/// Slot of the virtio-net device.
pub const NET: usize = 1;
/// Bytes of registers per slot.
pub const MMIO_SIZE: usize = 0x200;

/// Register offsets (virtio 1.2 §4.2.2, Table 4.1).
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const CONFIG_GENERATION: usize = 0x0FC;
    pub const CONFIG: usize = 0x100;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0A0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0A4;
}

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
}

/// `InterruptStatus` bit 1: configuration change (here: `NEEDS_RESET`).
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The layout as announced by the hypervisor.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub base: u64,
    pub slots: u32,
    pub stride: u64,
    pub vector: u8,
}

impl Layout {
    /// Guest-physical base of `slot`.
    pub fn slot(&self, slot: usize) -> u64 {
        self.base + slot as u64 * self.stride
    }
}

static BASES: [AtomicU64; SLOTS] = [AtomicU64::new(0), AtomicU64::new(0)];
static VECTOR_BASE: AtomicU32 = AtomicU32::new(0);
/// Interrupts seen per slot.
pub static IRQS: [AtomicU32; SLOTS] = [AtomicU32::new(0), AtomicU32::new(0)];
/// `InterruptStatus` bits seen per slot (or-ed).
pub static ISR_BITS: [AtomicU32; SLOTS] = [AtomicU32::new(0), AtomicU32::new(0)];

/// Reads the layout leaf, checks each slot's magic and device ID, records
/// the slots for [`irq`], enables the x2APIC and interrupts. `Err` says why
/// the devices cannot be used.
pub fn discover() -> Result<Layout, &'static str> {
    if !hw::under_ftvisor() {
        return Err("not under ftvisor (no virtio-mmio layout leaf)");
    }
    if hw::cpuid(0x4000_0000, 0)[0] < LAYOUT_LEAF {
        return Err("the hypervisor's CPUID range has no leaf 0x40000001");
    }
    let [eax, ebx, ecx, edx] = hw::cpuid(LAYOUT_LEAF, 0);
    let l = Layout {
        base: eax.into(),
        slots: ebx,
        stride: ecx.into(),
        vector: edx as u8,
    };
    if (l.slots as usize) < SLOTS || l.stride < MMIO_SIZE as u64 {
        return Err("the layout leaf announces too few slots");
    }
    if l.vector != idt::VIRTIO_VECTORS[0] {
        return Err("the announced vectors are not the ones the IDT handles (0x50, 0x51)");
    }
    for (slot, want) in [(BLK, 2), (NET, 1)] {
        let base = l.slot(slot);
        if read32(base, reg::MAGIC) != 0x7472_6976 || read32(base, reg::VERSION) != 2 {
            return Err("no modern virtio-mmio device at an announced slot");
        }
        if read32(base, reg::DEVICE_ID) != want {
            return Err("unexpected device type at a slot");
        }
        BASES[slot].store(base, Ordering::Relaxed);
    }
    VECTOR_BASE.store(edx & 0xFF, Ordering::Relaxed);
    enable_x2apic();
    // SAFETY: the IDT has handlers for the timer, spurious and both device
    // vectors; the x2APIC is enabled.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    Ok(l)
}

/// Reads a 32-bit device register (one `mov`).
pub fn read32(base: u64, offset: usize) -> u32 {
    let v: u32;
    // SAFETY: `base` is a virtio-mmio slot announced by the hypervisor,
    // identity mapped; `offset` is a 4-byte aligned register below 0x200.
    // The load touches device registers only, no Rust-visible memory.
    unsafe {
        core::arch::asm!("mov {v:e}, dword ptr [{a}]", v = out(reg) v,
            a = in(reg) base + offset as u64, options(nostack, preserves_flags))
    };
    v
}

/// Writes a 32-bit device register (one `mov`).
pub fn write32(base: u64, offset: usize, value: u32) {
    // SAFETY: as in `read32`; device registers are not Rust memory.
    unsafe {
        core::arch::asm!("mov dword ptr [{a}], {v:e}", v = in(reg) value,
            a = in(reg) base + offset as u64, options(nostack, preserves_flags))
    };
}

/// Reads one byte of a device's configuration space (one `mov`).
fn read8(base: u64, offset: usize) -> u8 {
    let v: u8;
    // SAFETY: as in `read32`, for a byte of the configuration space.
    unsafe {
        core::arch::asm!("mov {v}, byte ptr [{a}]", v = out(reg_byte) v,
            a = in(reg) base + offset as u64, options(nostack, preserves_flags))
    };
    v
}

const IA32_APIC_BASE: u32 = 0x1B;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_INIT_COUNT: u32 = 0x838;
const X2APIC_DIV_CONF: u32 = 0x83E;

fn enable_x2apic() {
    // SAFETY: x2APIC is part of ftvisor's CPU model; xAPIC first, then
    // x2APIC (SDM Vol. 3A §11.12.5); the IDT handles the spurious vector.
    unsafe {
        let base = hw::rdmsr(IA32_APIC_BASE);
        if base & (1 << 11) == 0 {
            hw::wrmsr(IA32_APIC_BASE, base | (1 << 11));
        }
        hw::wrmsr(IA32_APIC_BASE, base | (1 << 11) | (1 << 10));
        hw::wrmsr(X2APIC_SVR, (1 << 8) | u64::from(idt::SPURIOUS_VECTOR));
        hw::wrmsr(X2APIC_DIV_CONF, 0b1011); // divide by 1
    }
}

/// Called by the IDT for a device vector.
pub fn irq(vector: u8) {
    let slot = usize::from(vector.wrapping_sub(VECTOR_BASE.load(Ordering::Relaxed) as u8));
    if let Some(base) = BASES.get(slot).map(|b| b.load(Ordering::Relaxed)) {
        let bits = read32(base, reg::INTERRUPT_STATUS);
        write32(base, reg::INTERRUPT_ACK, bits);
        ISR_BITS[slot].fetch_or(bits, Ordering::Relaxed);
        IRQS[slot].fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: x2APIC EOI, write 0; x2APIC mode is on (set up by `discover`).
    unsafe { hw::wrmsr(X2APIC_EOI, 0) };
}

/// Waits, halting between checks, until `done()` or `timeout` guest TSC
/// ticks (at most 2^32) passed; a one-shot LAPIC timer bounds each halt.
/// Returns whether `done()` became true.
pub fn wait_until(timeout: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = hw::rdtsc();
    let count = timeout.clamp(1, u64::from(u32::MAX));
    // SAFETY: one-shot timer on the IDT's timer vector (its handler EOIs).
    unsafe {
        hw::wrmsr(X2APIC_LVT_TIMER, u64::from(idt::TIMER_VECTOR));
        hw::wrmsr(X2APIC_INIT_COUNT, count);
    }
    let ok = loop {
        // SAFETY: interrupts off between the check and `sti; hlt` (the STI
        // shadow makes the wake-up race-free); handlers exist for every
        // vector that can arrive.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        if done() {
            break true;
        }
        if hw::rdtsc().wrapping_sub(start) >= count {
            break false;
        }
        // SAFETY: as above.
        unsafe { core::arch::asm!("sti; hlt", options(nomem, nostack)) };
    };
    // SAFETY: stops the timer; interrupts back on.
    unsafe {
        hw::wrmsr(X2APIC_INIT_COUNT, 0);
        core::arch::asm!("sti", options(nomem, nostack));
    }
    ok
}

/// Pages of the DMA pool.
const POOL_PAGES: usize = 256;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[u8; POOL_PAGES * PAGE_SIZE]>);

// SAFETY: the guest has one CPU and the pool is handed out in disjoint
// pieces by an atomic bump pointer.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([0; POOL_PAGES * PAGE_SIZE]));
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Identity-mapped [`Hal`] over a static page pool.
pub struct IdentityHal;

// SAFETY: `dma_alloc` returns page-aligned, zeroed, disjoint pieces of a
// static pool whose virtual address is its guest-physical address (identity
// map); `share` returns the identity-mapped address of memory the caller
// keeps alive; nothing is ever remapped.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = POOL_NEXT.fetch_add(pages, Ordering::Relaxed);
        if first + pages > POOL_PAGES {
            return (0, NonNull::dangling());
        }
        // SAFETY: pages [first, first + pages) of the pool were never handed
        // out before (bump allocation) and lie inside it.
        let ptr = unsafe { POOL.0.get().cast::<u8>().add(first * PAGE_SIZE) };
        // SAFETY: as above; zeroing memory nobody else references.
        unsafe { core::ptr::write_bytes(ptr, 0, pages * PAGE_SIZE) };
        let vaddr = NonNull::new(ptr).expect("the pool is not at address 0");
        (ptr as u64, vaddr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0 // bump allocator: pages are not reused
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("MMIO is not at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The `virtio-drivers` transport of `slot`.
pub fn transport(layout: &Layout, slot: usize) -> Result<AsmMmioTransport, &'static str> {
    let base = layout.slot(slot);
    let device_type = DeviceType::try_from(read32(base, reg::DEVICE_ID))
        .map_err(|_| "unknown virtio device type")?;
    Ok(AsmMmioTransport { base, device_type })
}

/// A modern virtio-mmio transport (virtio 1.2 §4.2.2, `Version` 2) whose
/// register accesses are single `mov` instructions.
pub struct AsmMmioTransport {
    base: u64,
    device_type: DeviceType,
}

impl AsmMmioTransport {
    fn r(&self, offset: usize) -> u32 {
        read32(self.base, offset)
    }
    fn w(&mut self, offset: usize, value: u32) {
        write32(self.base, offset, value)
    }
}

impl Transport for AsmMmioTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.w(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.r(reg::DEVICE_FEATURES);
        self.w(reg::DEVICE_FEATURES_SEL, 1);
        u64::from(low) | (u64::from(self.r(reg::DEVICE_FEATURES)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, driver_features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.w(reg::QUEUE_SEL, queue.into());
        self.r(reg::QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.w(reg::QUEUE_NOTIFY, queue.into());
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.r(reg::STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.w(reg::STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.w(reg::QUEUE_SEL, queue.into());
        self.w(reg::QUEUE_NUM, size);
        for (lo, hi, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, descriptors),
            (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, driver_area),
            (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, device_area),
        ] {
            self.w(lo, addr as u32);
            self.w(hi, (addr >> 32) as u32);
        }
        self.w(reg::QUEUE_READY, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.w(reg::QUEUE_SEL, queue.into());
        self.w(reg::QUEUE_READY, 0);
        for off in [
            reg::QUEUE_NUM,
            reg::QUEUE_DESC_LOW,
            reg::QUEUE_DESC_HIGH,
            reg::QUEUE_DRIVER_LOW,
            reg::QUEUE_DRIVER_HIGH,
            reg::QUEUE_DEVICE_LOW,
            reg::QUEUE_DEVICE_HIGH,
        ] {
            self.w(off, 0);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.w(reg::QUEUE_SEL, queue.into());
        self.r(reg::QUEUE_READY) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let bits = self.r(reg::INTERRUPT_STATUS);
        if bits != 0 {
            self.w(reg::INTERRUPT_ACK, bits);
        }
        InterruptStatus::from_bits_truncate(bits)
    }

    fn read_config_generation(&self) -> u32 {
        self.r(reg::CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let mut value = T::new_zeroed();
        let bytes = value.as_mut_bytes();
        if offset + bytes.len() > MMIO_SIZE - reg::CONFIG {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = read8(self.base, reg::CONFIG + offset + i);
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> virtio_drivers::Result<()> {
        // ftvisor's devices have no writable configuration fields.
        Err(virtio_drivers::Error::Unsupported)
    }
}
