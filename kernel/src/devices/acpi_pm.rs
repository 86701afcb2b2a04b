//! ACPI fixed-hardware power management registers (ACPI 6.5 §4.8.3
//! "PM1 Event Grouping", §4.8.3.2 "PM1 Control Registers", §4.8.3.3
//! "Power Management Timer"), one port block as the FADT describes it
//! ([`crate::acpi::fadt`]):
//!
//! | offset | register |
//! |---|---|
//! | 0 (2 bytes) | PM1a_STS: write 1 to clear (TMR_STS bit 0, PWRBTN_STS bit 8, WAK_STS bit 15) |
//! | 2 (2 bytes) | PM1a_EN |
//! | 4 (2 bytes) | PM1a_CNT: SCI_EN (bit 0, always 1: the machine is always in ACPI mode), SLP_TYP (bits 12:10), SLP_EN (bit 13, write-only) |
//! | 8 (4 bytes) | PM_TMR: 32-bit counter at 3.579545 MHz (FADT TMR_VAL_EXT) |
//!
//! Writing SLP_EN = 1 requests the sleep state SLP_TYP; the hypervisor
//! takes it with [`AcpiPm::take_sleep_request`] and powers the guest off
//! when it is the `\_S5_` type. The timer is derived from the guest TSC
//! (`now`), so it is deterministic.
use super::PioDevice;

/// PM timer frequency (ACPI 6.5 §4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// Length of the port block.
pub const PORT_COUNT: u16 = 12;
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
const STS_WRITABLE: u16 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 15);

/// The PM1a event/control block and the PM timer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcpiPm {
    tsc_hz: u64,
    status: u16,
    enable: u16,
    control: u16,
    sleep_request: Option<u8>,
}

impl AcpiPm {
    /// `tsc_hz`: guest TSC ticks per second (the timer's time base).
    pub fn new(tsc_hz: u64) -> Self {
        AcpiPm {
            tsc_hz: tsc_hz.max(1),
            status: 0,
            enable: 0,
            control: SCI_EN,
            sleep_request: None,
        }
    }

    /// The PM timer at guest time `now`.
    pub fn timer(&self, now: u64) -> u32 {
        ((u128::from(now) * u128::from(PM_TIMER_HZ)) / u128::from(self.tsc_hz)) as u32
    }

    /// The earliest guest time at or after `not_before` at which the timer
    /// reads `value`: a replay that answers a PM timer read from the log
    /// (`value`, read by the recording at a time it did not log) moves its
    /// guest clock there, so the timer never reads less after an FT
    /// backup goes live (issue 15: "no clock steps back"). Unique within a
    /// wrap (2^32 ticks, 20 minutes) after `not_before`.
    pub fn time_of(&self, value: u32, not_before: u64) -> u64 {
        let hz = u128::from(self.tsc_hz);
        let pm = u128::from(PM_TIMER_HZ);
        let base = u128::from(not_before) * pm / hz; // unwrapped ticks
        let ahead = u128::from(value.wrapping_sub(base as u32));
        let target = base + ahead;
        // The smallest t with floor(t * pm / hz) >= target.
        let t = (target * hz).div_ceil(pm);
        u64::try_from(t).unwrap_or(u64::MAX).max(not_before)
    }

    /// The SLP_TYP the guest asked for by setting SLP_EN, once.
    pub fn take_sleep_request(&mut self) -> Option<u8> {
        self.sleep_request.take()
    }

    fn reg16_write(&mut self, reg: u16, v: u16) {
        match reg {
            0 => self.status &= !(v & STS_WRITABLE),
            2 => self.enable = v & 0x0721,
            4 => {
                if v & SLP_EN != 0 {
                    self.sleep_request = Some(((v >> 10) & 7) as u8);
                }
                self.control = (v & !SLP_EN & 0x1C06) | SCI_EN;
            }
            _ => {}
        }
    }
}

impl PioDevice for AcpiPm {
    fn pio_read(&mut self, offset: u16, size: u8, now: u64) -> u32 {
        let word = match offset & !1 {
            0 => u32::from(self.status) | (u32::from(self.enable) << 16),
            2 => u32::from(self.enable),
            4 => u32::from(self.control),
            8..=11 => return self.timer(now) >> (8 * u32::from(offset - 8)),
            _ => 0xFFFF_FFFF,
        };
        let v = word >> (8 * u32::from(offset & 1));
        match size {
            1 => v & 0xFF,
            2 => v & 0xFFFF,
            _ => v,
        }
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32, _now: u64) {
        match (offset, size) {
            (0 | 2 | 4, 2) => self.reg16_write(offset, value as u16),
            (0, 4) => {
                self.reg16_write(0, value as u16);
                self.reg16_write(2, (value >> 16) as u16);
            }
            // Byte writes: merge into the 16-bit register.
            (0..=5, 1) => {
                let reg = offset & !1;
                let cur = match reg {
                    0 => 0, // write-1-to-clear: other byte clears nothing
                    2 => self.enable,
                    _ => self.control & !SLP_EN,
                };
                let shift = 8 * (offset & 1);
                let v = (cur & !(0xFF << shift)) | ((value as u16 & 0xFF) << shift);
                self.reg16_write(reg, v);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_inverts_the_timer_forward_from_a_floor() {
        let pm = AcpiPm::new(1_000_000_000);
        for (floor, later) in [
            (0u64, 5_000),
            (123_456_789, 7_000_000),
            (1_199_000_000_000, 2_000_000_000),
        ] {
            let t = floor + later;
            let v = pm.timer(t);
            let found = pm.time_of(v, floor);
            assert!(found <= t && found >= floor, "{floor} {later}: {found}");
            assert_eq!(pm.timer(found), v, "the timer reads the value there");
            assert!(pm.timer(found.saturating_sub(1)) != v || found == floor);
        }
        // A value the timer showed at the floor: the floor itself.
        assert_eq!(pm.time_of(pm.timer(999_999), 999_999), 999_999);
    }

    #[test]
    fn timer_runs_at_3_58_mhz_from_guest_tsc() {
        let mut pm = AcpiPm::new(1_000_000_000);
        assert_eq!(pm.pio_read(8, 4, 0), 0);
        assert_eq!(pm.pio_read(8, 4, 1_000_000_000), PM_TIMER_HZ as u32);
        // 32-bit wrap (TMR_VAL_EXT).
        let t = (1u64 << 32) * 1_000_000_000 / PM_TIMER_HZ + 1000;
        assert!(pm.pio_read(8, 4, t) < 10);
    }

    #[test]
    fn sci_en_set_and_s5_request() {
        let mut pm = AcpiPm::new(1_000_000_000);
        assert_eq!(pm.pio_read(4, 2, 0) & 1, 1, "always in ACPI mode");
        // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN.
        pm.pio_write(4, 2, 5 << 10, 0);
        assert_eq!(pm.take_sleep_request(), None);
        assert_eq!(pm.pio_read(4, 2, 0), (5 << 10) | 1);
        pm.pio_write(4, 2, (5 << 10) | SLP_EN as u32, 0);
        assert_eq!(pm.take_sleep_request(), Some(5));
        assert_eq!(pm.take_sleep_request(), None, "taken once");
        assert_eq!(
            pm.pio_read(4, 2, 0) & u32::from(SLP_EN),
            0,
            "SLP_EN reads 0"
        );
        // A byte write to the high half sets SLP_EN too.
        pm.pio_write(5, 1, 0x20 | (5 << 2), 0);
        assert_eq!(pm.take_sleep_request(), Some(5));
    }

    #[test]
    fn status_is_write_one_to_clear_and_enable_holds() {
        let mut pm = AcpiPm::new(1);
        pm.status = 0x8101;
        pm.pio_write(0, 2, 0x0001, 0);
        assert_eq!(pm.pio_read(0, 2, 0), 0x8100);
        pm.pio_write(0, 4, 0x0120_FFFF, 0);
        assert_eq!(pm.pio_read(0, 2, 0), 0);
        assert_eq!(pm.pio_read(2, 2, 0), 0x0120);
        assert_eq!(pm.pio_read(6, 2, 0), 0xFFFF, "hole");
    }
}
