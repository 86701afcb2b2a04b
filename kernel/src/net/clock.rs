//! Time for smoltcp: the TSC, calibrated once against PIT channel 2 (Intel
//! 8254 datasheet: mode 0 "interrupt on terminal count", OUT2 readable at
//! port 0x61 bit 5; input clock 1.193182 MHz).
//!
//! No timer interrupt runs in the hypervisor, so time is read by RDTSC. In
//! Bochs with `clock: sync=none` both the PIT and the TSC follow emulated
//! instructions, so this is guest time, not wall time. If the PIT never
//! signals, a nominal 2 GHz is assumed and reported.
use smoltcp::time::Instant;

use drivers::smoltcp;

const PIT_HZ: u64 = 1_193_182;
/// 10 ms of PIT ticks.
const CALIBRATION_TICKS: u16 = 11_932;
const NOMINAL_HZ: u64 = 2_000_000_000;

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and only reads the TSC.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A TSC-based monotonic clock.
#[derive(Clone, Copy)]
pub struct Clock {
    start: u64,
    pub hz: u64,
    pub calibrated: bool,
}

/// The host TSC rate measured against the PIT, once per boot (0: not yet;
/// 1: the PIT never signalled).
static MEASURED_HZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The host TSC's rate in Hz, measured against PIT channel 2 the first
/// time it is asked (10 ms of PIT time); `None` if the PIT never signals.
pub fn tsc_hz() -> Option<u64> {
    use core::sync::atomic::Ordering;
    let mut hz = MEASURED_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        hz = measure().filter(|&h| h > 1_000_000).unwrap_or(1);
        MEASURED_HZ.store(hz, Ordering::Relaxed);
    }
    (hz > 1).then_some(hz)
}

fn measure() -> Option<u64> {
    // SAFETY: ring 0; programs PIT channel 2 and the speaker gate at
    // port 0x61 (speaker output kept off), nothing else.
    unsafe {
        let gate = x86::io::inb(0x61);
        x86::io::outb(0x61, (gate & !0x02) & !0x01);
        x86::io::outb(0x43, 0b1011_0000); // ch 2, lo/hi byte, mode 0, binary
        x86::io::outb(0x42, (CALIBRATION_TICKS & 0xFF) as u8);
        x86::io::outb(0x42, (CALIBRATION_TICKS >> 8) as u8);
        let start = rdtsc();
        x86::io::outb(0x61, ((gate & !0x02) & !0x01) | 0x01); // gate on: count
        let mut spins = 0u64;
        let mut done = false;
        while spins < 200_000_000 {
            if x86::io::inb(0x61) & 0x20 != 0 {
                done = true;
                break;
            }
            spins += 1;
        }
        let end = rdtsc();
        x86::io::outb(0x61, gate);
        done.then(|| (end - start) * PIT_HZ / u64::from(CALIBRATION_TICKS))
    }
}

impl Clock {
    pub fn calibrate() -> Clock {
        match tsc_hz() {
            Some(hz) => Clock {
                start: rdtsc(),
                hz,
                calibrated: true,
            },
            _ => Clock {
                start: rdtsc(),
                hz: NOMINAL_HZ,
                calibrated: false,
            },
        }
    }

    pub fn micros(&self) -> u64 {
        let d = rdtsc().wrapping_sub(self.start);
        (u128::from(d) * 1_000_000 / u128::from(self.hz)) as u64
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.micros() as i64)
    }
}
