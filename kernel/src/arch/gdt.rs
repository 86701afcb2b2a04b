//! The kernel's GDT with a 64-bit TSS (Intel SDM Vol. 3A §3.4.5, §8.2.3).
//! VMX needs a usable TR in the host state (SDM Vol. 3C §27.2.3), and the
//! double-fault handler runs on IST1 so a stack overflow still reports.
use core::mem::size_of;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;

#[repr(C, packed)]
pub struct Tss {
    _reserved0: u32,
    pub rsp: [u64; 3],
    _reserved1: u64,
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    pub iomap_base: u16,
}

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST1_STACK: Stack = Stack([0; IST_STACK_SIZE]);

static mut TSS: Tss = Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
};

static mut GDT: [u64; 5] = [
    0,
    0x00AF_9A00_0000_FFFF, // 0x08 64-bit code, DPL0
    0x00CF_9200_0000_FFFF, // 0x10 data
    0,                     // 0x18 TSS low (filled in init)
    0,                     // 0x20 TSS high
];

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

#[allow(dead_code)] // host state of the VMCS (vmx world switch)
/// Base address of the TSS (host-state TR base for the VMCS).
pub fn tss_base() -> u64 {
    core::ptr::addr_of!(TSS) as u64
}

#[allow(dead_code)] // host state of the VMCS (vmx world switch)
/// Base address of the GDT (host-state GDTR base for the VMCS).
pub fn gdt_base() -> u64 {
    core::ptr::addr_of!(GDT) as u64
}

pub fn init() {
    // SAFETY: runs once on the single CPU before interrupts are enabled;
    // nothing else references GDT/TSS yet. The descriptor encodes the TSS
    // address and limit per SDM Vol. 3A Figure 8-4.
    unsafe {
        let tss = core::ptr::addr_of_mut!(TSS);
        let stack_top = core::ptr::addr_of!(IST1_STACK) as u64 + IST_STACK_SIZE as u64;
        (*tss).ist[0] = stack_top;
        let base = tss as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xFFFF)
            | ((base & 0xFF_FFFF) << 16)
            | (0x89u64 << 40) // present, type 9 = available 64-bit TSS
            | (((limit >> 16) & 0xF) << 48)
            | (((base >> 24) & 0xFF) << 56);
        let gdt = core::ptr::addr_of_mut!(GDT);
        (*gdt)[3] = low;
        (*gdt)[4] = base >> 32;
        let ptr = Pointer {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: gdt as u64,
        };
        core::arch::asm!(
            "lgdt [{ptr}]",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            ds = in(reg) KERNEL_DS as u64,
            cs = in(reg) KERNEL_CS as u64,
            tss = in(reg) TSS_SEL as u64,
            tmp = out(reg) _,
        );
    }
}
