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

impl Clock {
    pub fn calibrate() -> Clock {
        // SAFETY: ring 0; programs PIT channel 2 and the speaker gate at
        // port 0x61 (speaker output kept off), nothing else.
        let measured = unsafe {
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
        };
        match measured {
            Some(hz) if hz > 1_000_000 => Clock {
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
