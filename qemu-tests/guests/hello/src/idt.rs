//! The guest's IDT (Intel SDM Vol. 3A §6.14): stubs for exceptions 0-31,
//! the timer vector 0x40, the virtio device vectors 0x50/0x51
//! ([`crate::virtio`]) and the APIC spurious vector 0xFF, all funnelled to
//! [`trap`]. An unexpected exception prints its vector, error code and RIP
//! and exits with code 5; the hostile MSR test can ask for #GP to be skipped.
use crate::hw;
use core::mem::size_of;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub const TIMER_VECTOR: u8 = 0x40;
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Vectors ftvisor's virtio-mmio slots 0 and 1 raise.
pub const VIRTIO_VECTORS: [u8; 2] = [0x50, 0x51];
const CODE_SELECTOR: u16 = 0x08; // boot GDT's 64-bit code segment

core::arch::global_asm!(
    r#"
.macro STUB_NOERR n
guest_isr\n:
    push $0
    push $\n
    jmp guest_isr_common
.endm
.macro STUB_ERR n
guest_isr\n:
    push $\n
    jmp guest_isr_common
.endm

.section .text.guest_isr, "ax"
.irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,64,80,81,255
STUB_NOERR \n
.endr
.irp n, 8,10,11,12,13,14,17,21,29,30
STUB_ERR \n
.endr

guest_isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    call guest_trap
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq

.section .rodata.guest_isr, "a"
.balign 8
.global guest_isr_table
guest_isr_table:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,64,80,81,255
    .quad guest_isr\n
.endr
"#,
    options(att_syntax)
);

/// Registers saved by `guest_isr_common`, lowest address first.
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _zero: u32,
}

const EMPTY: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    _zero: 0,
};

static mut IDT: [Gate; 256] = [EMPTY; 256];

extern "C" {
    static guest_isr_table: [u64; 36];
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Timer ticks seen and where [`crate::tests`] wants their TSC stamps.
pub static TICKS: AtomicU32 = AtomicU32::new(0);
pub static mut TICK_TSC: [u64; TICK_SLOTS] = [0; TICK_SLOTS];
pub const TICK_SLOTS: usize = 128;

/// When set, #GP skips the faulting 2-byte `wrmsr` and counts the fault.
pub static EXPECT_GP_ON_WRMSR: AtomicBool = AtomicBool::new(false);
pub static GP_COUNT: AtomicU32 = AtomicU32::new(0);

fn load(base: u64, limit: u16) {
    let ptr = Pointer { limit, base };
    // SAFETY: `ptr` describes either the static IDT filled in by `init` or a
    // deliberately empty one (hostile triple-fault test).
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack)) };
}

pub fn init() {
    // SAFETY: single CPU, interrupts off; the IDT is written before `lidt`,
    // and `guest_isr_table` holds the 36 stub addresses emitted above in the
    // order vectors 0..=31, 0x40, 0x50, 0x51, 0xFF.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    // SAFETY: see above; the table is immutable after link time.
    let table = unsafe { &*core::ptr::addr_of!(guest_isr_table) };
    for (i, &handler) in table.iter().enumerate() {
        let vector = match i {
            0..=31 => i,
            32 => usize::from(TIMER_VECTOR),
            33 | 34 => usize::from(VIRTIO_VECTORS[i - 33]),
            _ => usize::from(SPURIOUS_VECTOR),
        };
        idt[vector] = Gate {
            offset_low: handler as u16,
            selector: CODE_SELECTOR,
            ist: 0,
            type_attr: 0x8E, // present, DPL0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _zero: 0,
        };
    }
    load(idt.as_ptr() as u64, (size_of::<[Gate; 256]>() - 1) as u16);
}

/// Loads an IDT with limit 0: the next exception escalates to a triple fault.
pub fn load_empty() {
    load(0, 0);
}

#[no_mangle]
extern "C" fn guest_trap(frame: &mut TrapFrame) {
    match frame.vector {
        v if v == u64::from(TIMER_VECTOR) => {
            let tsc = hw::rdtsc();
            let n = TICKS.load(Ordering::Relaxed);
            if (n as usize) < TICK_SLOTS {
                // SAFETY: single CPU; the test loop reads the stamps only after
                // masking the timer, so nothing aliases this write.
                unsafe { (*core::ptr::addr_of_mut!(TICK_TSC))[n as usize] = tsc };
            }
            TICKS.store(n + 1, Ordering::Relaxed);
            // SAFETY: x2APIC EOI (MSR 0x80B), written with 0; x2APIC mode is on
            // whenever the timer vector can fire.
            unsafe { hw::wrmsr(0x80B, 0) };
        }
        v if VIRTIO_VECTORS.iter().any(|&d| u64::from(d) == v) => crate::virtio::irq(v as u8),
        v if v == u64::from(SPURIOUS_VECTOR) => {} // no EOI for spurious
        13 if EXPECT_GP_ON_WRMSR.load(Ordering::Relaxed) => {
            crate::println!(
                "hostile: #GP on wrmsr ecx={:#x} rip={:#x} error_code={:#x}",
                frame.rcx,
                frame.rip,
                frame.error_code
            );
            GP_COUNT.fetch_add(1, Ordering::Relaxed);
            frame.rip += 2; // skip `wrmsr` (0F 30)
        }
        v => {
            crate::println!(
                "guest EXCEPTION vector={} error_code={:#x} rip={:#x} rsp={:#x} rax={:#x} rcx={:#x}",
                v,
                frame.error_code,
                frame.rip,
                frame.rsp,
                frame.rax,
                frame.rcx
            );
            hw::exit(5);
        }
    }
}
