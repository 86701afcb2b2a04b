//! The tests the guest runs, one per `test=` value; each returns its exit code.
use crate::{hw, idt, println, BootInfo};
use core::sync::atomic::Ordering;

/// Scratch region of the memory test: 16 MiB at physical 16 MiB.
const MEM_BASE: usize = 16 << 20;
const MEM_BYTES: usize = 16 << 20;
const MEM_PASSES: usize = 2;

/// `test=hello`: identity, CPUID, RDTSC, RDRAND and a deterministic
/// memory-heavy checksum that must match natively and under ftvisor.
pub fn hello(bi: &BootInfo, under: bool) -> u8 {
    let mut code = 0;
    println!("hello from the test guest");
    let (eax, id) = hw::hypervisor_leaf();
    if under {
        println!("hypervisor=ftvisor");
        let rax = hw::hypercall_print("hello via the print hypercall\n");
        if rax == 0 {
            println!("hypercall-print=ok");
        } else {
            println!("hypercall-print=FAILED rax={rax:#x}");
            code = 1;
        }
    } else {
        println!(
            "hypervisor=none (cpuid 0x40000000: eax={eax:#x} id=\"{}\")",
            id.escape_ascii()
        );
    }

    let [max_leaf, b, c, d] = hw::cpuid(0, 0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&b.to_le_bytes());
    vendor[4..8].copy_from_slice(&d.to_le_bytes());
    vendor[8..12].copy_from_slice(&c.to_le_bytes());
    println!(
        "cpu vendor={} max_leaf={max_leaf:#x}",
        core::str::from_utf8(&vendor).unwrap_or("?")
    );

    let t1 = hw::rdtsc();
    let t2 = hw::rdtsc();
    if t2 >= t1 {
        println!("rdtsc=ok (second >= first)");
    } else {
        println!("rdtsc=BACKWARDS first={t1} second={t2}");
        code = 1;
    }

    let has_rdrand = hw::cpuid(1, 0)[2] & (1 << 30) != 0;
    if !has_rdrand {
        println!("rdrand=absent");
    } else if (0..10).find_map(|_| hw::rdrand()).is_some() {
        println!("rdrand=ok");
    } else {
        println!("rdrand=FAILED (10 tries without CF=1)");
        code = 1;
    }

    if let Some(upper) = bi.mem_upper {
        if upper + (1 << 20) < (MEM_BASE + MEM_BYTES) as u64 {
            println!("memory: only {} KiB above 1 MiB; need 32 MiB", upper / 1024);
            return 1;
        }
    }
    println!("checksum={:#018x}", memory_checksum());
    code
}

/// xorshift64* step.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Fill the scratch region from a fixed seed, run `MEM_PASSES` passes of
/// data-dependent random swaps and mixes, then FNV-1a over the words.
fn memory_checksum() -> u64 {
    let n = MEM_BYTES / 8;
    // SAFETY: [16 MiB, 32 MiB) is guest RAM (checked against the multiboot
    // memory size when given), identity mapped, above the image (linked at
    // 1 MiB, well under 1 MiB long) and used by nothing else.
    let buf = unsafe { core::slice::from_raw_parts_mut(MEM_BASE as *mut u64, n) };
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for w in buf.iter_mut() {
        *w = next(&mut state);
    }
    for pass in 0..MEM_PASSES as u64 {
        for i in 0..n {
            let j = ((buf[i] ^ pass.wrapping_mul(0x100_0000_01B3)) % n as u64) as usize;
            let (a, b) = (buf[i], buf[j]);
            buf[i] = b.rotate_left(17) ^ a.wrapping_mul(0x9E37_79B9);
            buf[j] = a.wrapping_add(b);
        }
    }
    buf.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &w| {
        (h ^ w).wrapping_mul(0x100_0000_01B3)
    })
}

const IA32_APIC_BASE: u32 = 0x1B;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_INIT_COUNT: u32 = 0x838;
const X2APIC_DIV_CONF: u32 = 0x83E;
const TIMER_TICKS: u32 = 100;

/// `test=timer`: x2APIC periodic timer at `count=` (default 1_000_000) TSC
/// ticks, 100 interrupts, mean interval within 10% of the programmed count.
pub fn timer(bi: &BootInfo) -> u8 {
    if hw::cpuid(1, 0)[2] & (1 << 21) == 0 {
        println!("timer: x2apic absent");
        return 7;
    }
    let count: u32 = match crate::option(bi.cmdline, "count").map(str::parse) {
        None => 1_000_000,
        Some(Ok(c)) if c > 0 => c,
        Some(_) => {
            println!("timer: bad count= (want 1..=4294967295)");
            return 2;
        }
    };
    // SAFETY: x2APIC exists (CPUID.1:ECX bit 21). Enable xAPIC first, then
    // x2APIC (SDM Vol. 3A §11.12.5: x2APIC mode is entered from xAPIC mode);
    // the IDT has handlers for the timer and spurious vectors, and interrupts
    // stay off until the loop below.
    unsafe {
        let base = hw::rdmsr(IA32_APIC_BASE);
        if base & (1 << 11) == 0 {
            hw::wrmsr(IA32_APIC_BASE, base | (1 << 11));
        }
        hw::wrmsr(IA32_APIC_BASE, base | (1 << 11) | (1 << 10));
        hw::wrmsr(X2APIC_SVR, (1 << 8) | u64::from(idt::SPURIOUS_VECTOR));
        hw::wrmsr(X2APIC_DIV_CONF, 0b1011); // divide by 1
        hw::wrmsr(
            X2APIC_LVT_TIMER,
            (1 << 17) | u64::from(idt::TIMER_VECTOR), // periodic
        );
    }
    idt::TICKS.store(0, Ordering::Relaxed);
    let start = hw::rdtsc();
    // SAFETY: arms the timer configured above.
    unsafe { hw::wrmsr(X2APIC_INIT_COUNT, u64::from(count)) };
    loop {
        // SAFETY: interrupts are off between the check and `sti; hlt`; the
        // STI shadow makes the wake-up race-free.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        if idt::TICKS.load(Ordering::Relaxed) >= TIMER_TICKS {
            break;
        }
        // SAFETY: as above; handlers for every vector that can arrive exist.
        unsafe { core::arch::asm!("sti; hlt", options(nomem, nostack)) };
    }
    // SAFETY: masks and stops the timer; interrupts are off.
    unsafe {
        hw::wrmsr(X2APIC_LVT_TIMER, 1 << 16);
        hw::wrmsr(X2APIC_INIT_COUNT, 0);
        hw::wrmsr(X2APIC_EOI, 0);
    }
    // SAFETY: the timer is masked and interrupts are off: the handler no
    // longer writes the stamps.
    let stamps = unsafe { &*core::ptr::addr_of!(idt::TICK_TSC) };
    let (mut sum, mut min, mut max) = (0u64, u64::MAX, 0u64);
    let mut prev = start;
    for &t in &stamps[..TIMER_TICKS as usize] {
        let d = t.wrapping_sub(prev);
        sum += d;
        min = min.min(d);
        max = max.max(d);
        prev = t;
    }
    let mean = sum / u64::from(TIMER_TICKS);
    println!("timer: ticks={TIMER_TICKS} programmed={count} mean={mean} min={min} max={max}");
    let n = u64::from(count);
    if mean.abs_diff(n) * 10 <= n {
        0
    } else {
        println!("timer: mean {mean} is not within 10% of the programmed {count} TSC ticks");
        1
    }
}

/// `test=hostile-unmapped`: read from guest-physical 3.75 GiB, outside RAM
/// and any MMIO. ftvisor stops the guest; natively the value is printed.
pub fn hostile_unmapped() -> u8 {
    println!("hostile: touching unmapped memory");
    hw::serial_drain();
    // SAFETY: deliberately hostile; the address is identity mapped by the boot
    // page tables (first 4 GiB), so the read cannot page-fault the guest.
    let v = unsafe { (0xF000_0000usize as *const u64).read_volatile() };
    println!("hostile: unmapped read returned {v:#018x}; still running");
    0
}

/// `test=hostile-msr`: WRMSR to IA32_VMX_BASIC (0x480, read-only) and
/// IA32_FEATURE_CONTROL (0x3A); each must raise #GP.
pub fn hostile_msr() -> u8 {
    idt::EXPECT_GP_ON_WRMSR.store(true, Ordering::Relaxed);
    for msr in [0x480u32, 0x3A] {
        let before = idt::GP_COUNT.load(Ordering::Relaxed);
        // SAFETY: deliberately hostile; the #GP handler skips the 2-byte
        // `wrmsr` and counts the fault.
        unsafe { hw::wrmsr(msr, 0) };
        if idt::GP_COUNT.load(Ordering::Relaxed) == before {
            println!("hostile: wrmsr succeeded (msr={msr:#x})");
        }
    }
    idt::EXPECT_GP_ON_WRMSR.store(false, Ordering::Relaxed);
    if idt::GP_COUNT.load(Ordering::Relaxed) == 2 {
        0
    } else {
        1
    }
}

/// `test=hostile-hypercall`: unknown function and bad buffers must be
/// rejected with the specified RAX values. Natively there is nobody to
/// answer `vmcall` (#UD on Intel, and KVM on AMD emulates it its own way), so
/// the test is skipped with code 7.
pub fn hostile_hypercall() -> u8 {
    if !hw::under_ftvisor() {
        println!("hostile: not under ftvisor; vmcall not tried (skipped)");
        return 7;
    }
    let checks = [
        ("unknown function 0xdead", 0xdead, 0, 0, hw::HC_ERR_FUNCTION),
        (
            "print from 0xffffffff0000 len 16",
            hw::HC_PRINT,
            0xFFFF_FFFF_0000,
            16,
            hw::HC_ERR_BAD_BUFFER,
        ),
        (
            "print len 1<<40",
            hw::HC_PRINT,
            MEM_BASE as u64,
            1 << 40,
            hw::HC_ERR_BAD_BUFFER,
        ),
    ];
    let mut ok = true;
    for (what, function, b, c, want) in checks {
        let got = hw::vmcall(function, b, c);
        if got != want {
            println!("hostile: {what}: rax={got:#x}, want {want:#x}");
            ok = false;
        }
    }
    if ok {
        println!("hostile: hypercalls rejected");
        0
    } else {
        1
    }
}

/// `test=hostile-triple`: empty IDT, then `int3` → triple fault.
pub fn hostile_triple() -> u8 {
    println!("hostile: triple fault next");
    hw::serial_drain();
    idt::load_empty();
    // SAFETY: deliberately hostile: with a zero-limit IDT the breakpoint
    // escalates to #GP, #DF and a triple fault (shutdown).
    unsafe { core::arch::asm!("int3", options(nomem, nostack)) };
    println!("hostile: survived a triple fault?");
    1
}

/// `test=hostile-cli-loop`: spin forever with interrupts off.
pub fn hostile_cli_loop() -> u8 {
    println!("hostile: cli loop");
    hw::serial_drain();
    // SAFETY: deliberately hostile: never returns and touches no memory.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn, nomem, nostack)) }
}
