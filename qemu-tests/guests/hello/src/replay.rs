//! `test=replay`: the record/replay workload (issue 8). Interrupts at an
//! irregular rate — the x2APIC one-shot timer reprogrammed every round with
//! a count drawn from RDRAND and RDTSC — land in the middle of a memory
//! workload that mixes plain loads/stores with `rep movsb`/`rep stosq`
//! copies; every eighth round waits in HLT instead. Each round logs one
//! RDRAND, two RDTSCs (one in the interrupt handler) and the interrupt.
//!
//! Options: `rounds=` (default 250), `min=`/`span=` (timer count range in
//! TSC ticks, default 20000 + 0..100000), `mem=` (KiB of the working set,
//! default 1024), `progress=` (a `replay: round N` line every N rounds,
//! default 0 = none: console output for the FT pair's output rule),
//! `burst=` (with `progress=`: that many `replay: burst N line J` lines
//! after each progress line, back to back: `ft-console-failover`), `io=1`
//! (virtio-blk sector writes/reads and virtio-net loopback frames each
//! round, completed from inside the work loop: the hypervisor must run
//! `guest_net=loopback` and a disk; default 0 = no device I/O). The
//! final line carries a hash of everything the guest
//! read and computed, so record and replay consoles must match exactly.
use crate::{hw, idt, println, BootInfo};
use core::sync::atomic::Ordering;

const IA32_APIC_BASE: u32 = 0x1B;
const X2APIC_EOI: u32 = 0x80B;
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_INIT_COUNT: u32 = 0x838;
const X2APIC_DIV_CONF: u32 = 0x83E;
/// Working set: physical 16 MiB upwards (as the `hello` checksum).
const BASE: usize = 16 << 20;

fn opt(bi: &BootInfo, key: &str, default: u64) -> u64 {
    crate::option(bi.cmdline, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x100_0000_01B3)
}

/// One step of work on the buffer: a few data-dependent swaps, and every
/// 16th step a `rep movsb` of 1 KiB and a `rep stosq` of 64 quadwords.
fn step(buf: &mut [u64], state: &mut u64, n: u64) -> u64 {
    let len = buf.len() as u64;
    for _ in 0..8 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let i = (*state % len) as usize;
        let j = ((buf[i] ^ n) % len) as usize;
        let (a, b) = (buf[i], buf[j]);
        buf[i] = b.rotate_left(17) ^ a.wrapping_mul(0x9E37_79B9);
        buf[j] = a.wrapping_add(b);
    }
    if n.is_multiple_of(16) && len >= 1024 {
        let half = len as usize / 2;
        let from = (*state as usize) % (half - 256);
        let to = half + (n as usize * 8) % (half - 256);
        let src = buf[from..].as_ptr();
        let dst = buf[to..].as_mut_ptr();
        // SAFETY: both ranges (1 KiB, 128 quadwords) lie inside `buf` and
        // do not overlap (one in each half); DF is clear (ABI).
        unsafe {
            core::arch::asm!("rep movsb", inout("rcx") 1024usize => _,
                inout("rsi") src => _, inout("rdi") dst => _, options(nostack));
        }
        let fill = buf[to..].as_mut_ptr().wrapping_add(128);
        // SAFETY: 64 quadwords after the copy, still inside the upper half.
        unsafe {
            core::arch::asm!("rep stosq", inout("rcx") 64usize => _,
                inout("rdi") fill => _, in("rax") *state, options(nostack));
        }
    }
    buf[(n % len) as usize]
}

pub fn run(bi: &BootInfo) -> u8 {
    if hw::cpuid(1, 0)[2] & (1 << 21) == 0 || hw::cpuid(1, 0)[2] & (1 << 30) == 0 {
        println!("replay: needs x2apic and rdrand");
        return 7;
    }
    let rounds = opt(bi, "rounds", 250);
    let min = opt(bi, "min", 20_000);
    let span = opt(bi, "span", 100_000).max(1);
    let kib = opt(bi, "mem", 1024).clamp(16, 16 << 10) as usize;
    let progress = opt(bi, "progress", 0);
    let burst = opt(bi, "burst", 0);
    let mut io = if opt(bi, "io", 0) != 0 {
        match crate::virtio_tests::ReplayIo::new() {
            Ok(io) => Some(io),
            Err(why) => {
                println!("replay: io=1 but no devices: {why}");
                return 1;
            }
        }
    } else {
        None
    };
    if let Some(upper) = bi.mem_upper {
        if upper + (1 << 20) < (BASE + kib * 1024) as u64 {
            println!("replay: not enough memory for mem={kib}");
            return 1;
        }
    }
    // SAFETY: [16 MiB, 16 MiB + mem) is guest RAM (checked above), identity
    // mapped, unused by anything else.
    let buf = unsafe { core::slice::from_raw_parts_mut(BASE as *mut u64, kib * 128) };
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (i, w) in buf.iter_mut().enumerate() {
        *w = (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ state;
        state = state.rotate_left(5);
    }
    // SAFETY: x2APIC exists (checked); as in `tests::timer`: xAPIC first,
    // then x2APIC; one-shot timer on the vector the IDT handles.
    unsafe {
        let base = hw::rdmsr(IA32_APIC_BASE);
        if base & (1 << 11) == 0 {
            hw::wrmsr(IA32_APIC_BASE, base | (1 << 11));
        }
        hw::wrmsr(IA32_APIC_BASE, base | (1 << 11) | (1 << 10));
        hw::wrmsr(X2APIC_SVR, (1 << 8) | u64::from(idt::SPURIOUS_VECTOR));
        hw::wrmsr(X2APIC_DIV_CONF, 0b1011);
        hw::wrmsr(X2APIC_LVT_TIMER, u64::from(idt::TIMER_VECTOR));
    }
    idt::TICKS.store(0, Ordering::Relaxed);
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    let (mut steps, mut halts) = (0u64, 0u64);
    let t0 = hw::rdtsc();
    for round in 0..rounds {
        let rnd = hw::rdrand().unwrap_or(0);
        let t = hw::rdtsc();
        h = mix(mix(h, rnd), t);
        let count = min + (rnd ^ t) % span;
        // SAFETY: arms the one-shot timer configured above.
        unsafe { hw::wrmsr(X2APIC_INIT_COUNT, count) };
        if let Some(io) = io.as_mut() {
            io.begin(h);
        }
        let want = round as u32 + 1;
        if round % 8 == 7 {
            halts += 1;
            loop {
                // SAFETY: the STI shadow makes the check-then-halt race-free.
                unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
                if idt::TICKS.load(Ordering::Relaxed) >= want {
                    break;
                }
                // SAFETY: the timer handler exists; it wakes the HLT.
                unsafe { core::arch::asm!("sti; hlt", options(nomem, nostack)) };
            }
        } else {
            // SAFETY: interrupts on while working: the timer lands anywhere.
            unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
            while idt::TICKS.load(Ordering::Relaxed) < want {
                steps += 1;
                h = mix(h, step(buf, &mut state, steps));
                if let Some(io) = io.as_mut() {
                    io.poll();
                }
            }
        }
        if let Some(io) = io.as_mut() {
            // SAFETY: interrupts on: the device completions land anywhere
            // in this work (the one-shot timer has fired).
            unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
            while !io.poll() {
                steps += 1;
                h = mix(h, step(buf, &mut state, steps));
            }
            h = mix(h, io.hash);
        }
        // SAFETY: back to interrupts off between rounds.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        if progress > 0 && (round + 1).is_multiple_of(progress) {
            println!("replay: round {} steps={steps} hash={h:#018x}", round + 1);
            for j in 1..=burst {
                println!("replay: burst {} line {j}", (round + 1) / progress);
            }
        }
    }
    let t1 = hw::rdtsc();
    // SAFETY: mask and stop the timer; interrupts are off.
    unsafe {
        hw::wrmsr(X2APIC_LVT_TIMER, 1 << 16);
        hw::wrmsr(X2APIC_INIT_COUNT, 0);
        hw::wrmsr(X2APIC_EOI, 0);
    }
    // SAFETY: the timer is masked: the handler no longer writes the stamps.
    let stamps = unsafe { &*core::ptr::addr_of!(idt::TICK_TSC) };
    for &s in stamps.iter() {
        h = mix(h, s);
    }
    let sum = buf.iter().fold(0xCBF2_9CE4_8422_2325u64, |a, &w| mix(a, w));
    let ticks = idt::TICKS.load(Ordering::Relaxed);
    let tsc = t1.wrapping_sub(t0).max(1);
    println!(
        "replay: rounds={rounds} ticks={ticks} halts={halts} steps={steps} tsc={tsc} rate={} steps/Mtick",
        steps * 1_000_000 / tsc
    );
    let mut io_ok = true;
    if let Some(io) = io.as_ref() {
        println!(
            "replay: io: sector reads={} frames looped back={} errors={} hash={:#018x} blk irqs={} net irqs={}",
            io.reads,
            io.frames,
            io.errors,
            io.hash,
            crate::virtio::IRQS[crate::virtio::BLK].load(Ordering::Relaxed),
            crate::virtio::IRQS[crate::virtio::NET].load(Ordering::Relaxed),
        );
        io_ok = io.errors == 0 && io.reads > 0 && io.frames > 0;
    }
    println!("replay: hash={h:#018x} memory={sum:#018x}");
    u8::from(u64::from(ticks) != rounds || !io_ok)
}
