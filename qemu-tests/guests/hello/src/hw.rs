//! Hardware access of the test guest: port I/O, the polled 16550 console at
//! 0x3F8, MSRs, CPUID/RDTSC, hypervisor detection and the ftvisor hypercalls,
//! and the exit path (hypercall under ftvisor, `isa-debug-exit` natively).
use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3F8;
/// Marker the runner looks for on the serial line (same as the hypervisor's).
const EXIT_MARKER: &str = "FTVISOR-EXIT code=";

/// Hypercall function numbers (RAX on `vmcall`).
pub const HC_PRINT: u64 = 0;
pub const HC_EXIT: u64 = 1;
/// Hypercall result: unknown function.
pub const HC_ERR_FUNCTION: u64 = u64::MAX;
/// Hypercall result: bad guest pointer or length.
pub const HC_ERR_BAD_BUFFER: u64 = u64::MAX - 1;

static UNDER_FTVISOR: AtomicBool = AtomicBool::new(false);

pub fn outb(port: u16, value: u8) {
    // SAFETY: ring 0; the guest only writes the console, the debug-exit and
    // the Bochs shutdown ports, none of which change memory mappings.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: ring 0; reading the UART status has no memory-safety effect.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) };
    value
}

/// 115200 8N1, FIFO on, interrupts off (the console is polled).
pub fn serial_init() {
    outb(COM1 + 1, 0x00); // IER: no interrupts
    outb(COM1 + 3, 0x80); // LCR: DLAB
    outb(COM1, 0x01); // DLL: 115200
    outb(COM1 + 1, 0x00); // DLM
    outb(COM1 + 3, 0x03); // LCR: 8N1
    outb(COM1 + 2, 0xC7); // FCR: enable + clear FIFOs
    outb(COM1 + 4, 0x0B); // MCR: DTR, RTS, OUT2
}

fn serial_putb(b: u8) {
    // Bounded wait for LSR.THRE (bit 5); write anyway when it never comes.
    for _ in 0..100_000 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// Bounded wait for LSR.TEMT (bit 6): the last byte has left the UART
/// (Bochs would otherwise cut the exit marker short at shutdown).
pub fn serial_drain() {
    for _ in 0..1_000_000 {
        if inb(COM1 + 5) & 0x40 != 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// The serial console as a [`core::fmt::Write`] sink.
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        s.bytes().for_each(serial_putb);
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::hw::Serial, $($arg)*);
    }};
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: ring 0; callers only read architectural MSRs whose presence
    // they checked (IA32_APIC_BASE).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// `msr` must exist and `value` be valid for it (or a #GP handler be
/// installed that expects the fault, as the hostile test does).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    };
}

pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // CPUID exists on every x86-64 CPU and has no side effects.
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged-safe and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One RDRAND attempt: `Some(value)` when CF=1.
pub fn rdrand() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: only called after CPUID.1:ECX.RDRAND[bit 30] said it exists.
    unsafe {
        asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
    };
    (ok != 0).then_some(value)
}

/// The 12-byte hypervisor vendor string of CPUID leaf 0x4000_0000 (EBX, ECX,
/// EDX) and its EAX.
pub fn hypervisor_leaf() -> (u32, [u8; 12]) {
    let [eax, ebx, ecx, edx] = cpuid(0x4000_0000, 0);
    let mut id = [0u8; 12];
    id[0..4].copy_from_slice(&ebx.to_le_bytes());
    id[4..8].copy_from_slice(&ecx.to_le_bytes());
    id[8..12].copy_from_slice(&edx.to_le_bytes());
    (eax, id)
}

/// Detects ftvisor (CPUID 0x4000_0000 = EAX 0x4000_0000, "ftvisor-hv\0\0")
/// and remembers the answer for [`exit`].
pub fn detect_ftvisor() -> bool {
    let (eax, id) = hypervisor_leaf();
    let found = eax >= 0x4000_0000 && &id == b"ftvisor-hv\0\0";
    UNDER_FTVISOR.store(found, Ordering::Relaxed);
    found
}

pub fn under_ftvisor() -> bool {
    UNDER_FTVISOR.load(Ordering::Relaxed)
}

/// `vmcall` with RAX = `function`, RBX = `b`, RCX = `c`; returns RAX.
/// Natively (no hypervisor) this raises #UD.
pub fn vmcall(function: u64, b: u64, c: u64) -> u64 {
    let mut rax = function;
    // SAFETY: the hypercall only reads guest memory named by RBX/RCX and
    // returns in RAX; RBX is reserved by LLVM, so it is swapped in and out
    // around the instruction.
    unsafe {
        asm!(
            "xchg {b}, rbx",
            "vmcall",
            "xchg {b}, rbx",
            b = inout(reg) b => _,
            inout("rax") rax,
            inout("rcx") c => _,
            options(nostack),
        )
    };
    rax
}

/// Print hypercall of `s`; returns RAX (0 on success).
pub fn hypercall_print(s: &str) -> u64 {
    vmcall(HC_PRINT, s.as_ptr() as u64, s.len() as u64)
}

/// Ends the test with `code`: the exit hypercall under ftvisor (the
/// hypervisor prints the exit marker), natively the marker on COM1 and QEMU's
/// `isa-debug-exit` (status `2 * code + 1`) or Bochs's shutdown port.
pub fn exit(code: u8) -> ! {
    if under_ftvisor() {
        vmcall(HC_EXIT, u64::from(code), 0);
        println!("guest: exit hypercall returned; halting");
    } else {
        println!("{EXIT_MARKER}{code}");
        serial_drain();
        outb(0xF4, code);
        for b in b"Shutdown" {
            outb(0x8900, *b);
        }
    }
    halt_forever()
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops the CPU; nothing runs after this.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}
