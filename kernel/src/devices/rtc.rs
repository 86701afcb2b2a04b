//! CMOS real-time clock, Motorola MC146818 (data sheet "MC146818A
//! Real-Time Clock Plus RAM": Table 3 "Time, Calendar and Alarm Data
//! Modes", registers A-D) behind the PC's index/data ports 0x70/0x71
//! (bit 7 of the index is the NMI mask and is ignored), with 128 bytes of
//! CMOS RAM and the century at index 0x32 (FADT CENTURY).
//!
//! **The wall-clock time is a non-deterministic input.** The model never
//! reads a clock: the hypervisor hands it the time once with
//! [`Rtc::set_wall_clock`] (Unix seconds at a guest TSC value), which is
//! the one call the FT layer logs and replays; after that every register
//! read is a pure function of that input, the guest's own writes and `now`
//! (guest TSC). No update-ended/periodic/alarm interrupts are generated
//! (register C reads 0); UIP (register A bit 7) is always clear.
use super::PioDevice;

/// Ports 0x70 (index) and 0x71 (data).
pub const BASE: u16 = 0x70;
pub const PORT_COUNT: u16 = 2;
/// CMOS index of the century register.
pub const CENTURY: u8 = 0x32;
const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_C: u8 = 0x0C;
const REG_D: u8 = 0x0D;
const B_SET: u8 = 1 << 7;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday (MC146818 convention).
    pub weekday: u8,
}

/// Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    /// From Unix seconds (UTC).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let s = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        DateTime {
            year: y.clamp(0, 9999) as u32,
            month: m,
            day: d,
            hour: (s / 3600) as u8,
            minute: (s / 60 % 60) as u8,
            second: (s % 60) as u8,
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// To Unix seconds.
    pub fn to_unix(&self) -> i64 {
        days_from_civil(
            self.year.into(),
            self.month.clamp(1, 12),
            self.day.clamp(1, 31),
        ) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// The RTC and CMOS RAM. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rtc {
    tsc_hz: u64,
    index: u8,
    #[serde(with = "super::snapshot::bytes128")]
    cmos: [u8; 128],
    /// Unix seconds at guest TSC `base_tsc` (the logged input, adjusted by
    /// the guest's own clock writes).
    base_unix: i64,
    base_tsc: u64,
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}
fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0xF)
}

impl Rtc {
    /// An RTC reading 1970-01-01 00:00:00 at TSC 0 until
    /// [`Rtc::set_wall_clock`]; 24-hour BCD mode as a PC BIOS leaves it.
    pub fn new(tsc_hz: u64) -> Self {
        let mut cmos = [0u8; 128];
        cmos[REG_A as usize] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        cmos[REG_B as usize] = B_24H;
        cmos[REG_D as usize] = 0x80; // valid RAM and time
        Rtc {
            tsc_hz: tsc_hz.max(1),
            index: 0,
            cmos,
            base_unix: 0,
            base_tsc: 0,
        }
    }

    /// The non-deterministic input: the wall clock reads `unix_secs` at
    /// guest TSC `now`. The FT primary logs this call; the backup replays it.
    pub fn set_wall_clock(&mut self, unix_secs: i64, now: u64) {
        self.base_unix = unix_secs;
        self.base_tsc = now;
    }

    /// The time the clock shows at `now`.
    pub fn time(&self, now: u64) -> DateTime {
        let elapsed = now.saturating_sub(self.base_tsc) / self.tsc_hz;
        DateTime::from_unix(self.base_unix + elapsed as i64)
    }

    fn encode(&self, v: u8) -> u8 {
        if self.cmos[REG_B as usize] & B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }
    fn decode(&self, v: u8) -> u8 {
        if self.cmos[REG_B as usize] & B_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.cmos[REG_B as usize] & B_24H != 0 {
            return self.encode(h);
        }
        let pm = u8::from(h >= 12) << 7;
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.cmos[REG_B as usize] & B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7F) % 12;
        h + if v & 0x80 != 0 { 12 } else { 0 }
    }

    fn read(&mut self, reg: u8, now: u64) -> u8 {
        let frozen = self.cmos[REG_B as usize] & B_SET != 0;
        let t = self.time(now);
        match reg {
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | CENTURY if frozen => self.cmos[reg as usize],
            0x00 => self.encode(t.second),
            0x02 => self.encode(t.minute),
            0x04 => self.encode_hour(t.hour),
            0x06 => self.encode(t.weekday),
            0x07 => self.encode(t.day),
            0x08 => self.encode(t.month),
            0x09 => self.encode((t.year % 100) as u8),
            CENTURY => self.encode((t.year / 100) as u8),
            REG_A => self.cmos[REG_A as usize] & 0x7F, // UIP never set
            REG_C => 0,
            r => self.cmos[usize::from(r & 0x7F)],
        }
    }

    fn write(&mut self, reg: u8, v: u8, now: u64) {
        match reg {
            REG_B => {
                let was_set = self.cmos[REG_B as usize] & B_SET != 0;
                if v & B_SET != 0 && !was_set {
                    // Freeze: snapshot the time registers for the guest to edit.
                    for r in [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, CENTURY] {
                        let cur = self.read(r, now);
                        self.cmos[r as usize] = cur;
                    }
                }
                self.cmos[REG_B as usize] = v;
                if was_set && v & B_SET == 0 {
                    self.commit(now);
                }
            }
            REG_C | REG_D => {}
            REG_A => self.cmos[REG_A as usize] = v & 0x7F,
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | CENTURY => {
                self.cmos[reg as usize] = v;
                if self.cmos[REG_B as usize] & B_SET == 0 {
                    self.commit(now);
                }
            }
            r => self.cmos[usize::from(r & 0x7F)] = v,
        }
    }

    /// The guest set the clock: the stored time registers become the base.
    fn commit(&mut self, now: u64) {
        let c = &self.cmos;
        let year =
            u32::from(self.decode(c[CENTURY as usize])) * 100 + u32::from(self.decode(c[0x09]));
        let t = DateTime {
            year,
            month: self.decode(c[0x08]),
            day: self.decode(c[0x07]),
            hour: self.decode_hour(c[0x04]),
            minute: self.decode(c[0x02]),
            second: self.decode(c[0x00]),
            weekday: 1,
        };
        self.base_unix = t.to_unix();
        self.base_tsc = now;
    }
}

impl PioDevice for Rtc {
    fn pio_read(&mut self, offset: u16, _size: u8, now: u64) -> u32 {
        match offset {
            0 => 0xFF, // the index port is write-only
            _ => self.read(self.index, now).into(),
        }
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32, now: u64) {
        match offset {
            0 => self.index = value as u8 & 0x7F,
            _ => self.write(self.index, value as u8, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000;

    fn rd(r: &mut Rtc, reg: u8, now: u64) -> u8 {
        r.pio_write(0, 1, reg.into(), now);
        r.pio_read(1, 1, now) as u8
    }

    #[test]
    fn dates_round_trip() {
        // 2024-02-29 13:45:07 UTC, a Thursday.
        let t = DateTime::from_unix(1_709_214_307);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2024, 2, 29, 13, 45, 7, 5)
        );
        assert_eq!(t.to_unix(), 1_709_214_307);
        for s in [0i64, 86_399, 951_782_400, 4_102_444_800, 1_234_567_890] {
            assert_eq!(DateTime::from_unix(s).to_unix(), s);
        }
    }

    #[test]
    fn reads_bcd_time_from_the_logged_wall_clock() {
        let mut r = Rtc::new(HZ);
        r.set_wall_clock(1_709_214_307, 5 * HZ);
        let now = 5 * HZ + 3 * HZ + 1; // three seconds later
        assert_eq!(rd(&mut r, 0x00, now), 0x10);
        assert_eq!(rd(&mut r, 0x02, now), 0x45);
        assert_eq!(rd(&mut r, 0x04, now), 0x13);
        assert_eq!(rd(&mut r, 0x07, now), 0x29);
        assert_eq!(rd(&mut r, 0x08, now), 0x02);
        assert_eq!(rd(&mut r, 0x09, now), 0x24);
        assert_eq!(rd(&mut r, CENTURY, now), 0x20);
        assert_eq!(rd(&mut r, REG_A, now) & 0x80, 0, "UIP clear");
        assert_eq!(rd(&mut r, REG_D, now), 0x80);
        // NMI-mask bit in the index is ignored.
        r.pio_write(0, 1, 0x80 | 0x09, now);
        assert_eq!(r.pio_read(1, 1, now), 0x24);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut r = Rtc::new(HZ);
        r.set_wall_clock(1_709_214_307, 0);
        r.pio_write(0, 1, REG_B.into(), 0);
        r.pio_write(1, 1, B_BINARY.into(), 0); // binary, 12-hour
        assert_eq!(rd(&mut r, 0x04, 0), 0x80 | 1, "1 PM");
        assert_eq!(rd(&mut r, 0x02, 0), 45);
    }

    #[test]
    fn guest_sets_the_clock_with_the_set_bit() {
        let mut r = Rtc::new(HZ);
        r.set_wall_clock(0, 0);
        let wr = |r: &mut Rtc, reg: u8, v: u8| {
            r.pio_write(0, 1, reg.into(), 10);
            r.pio_write(1, 1, v.into(), 10);
        };
        wr(&mut r, REG_B, B_SET | B_24H);
        wr(&mut r, 0x09, 0x30);
        wr(&mut r, CENTURY, 0x20);
        wr(&mut r, 0x08, 0x06);
        wr(&mut r, 0x07, 0x15);
        wr(&mut r, 0x04, 0x08);
        wr(&mut r, REG_B, B_24H);
        let t = r.time(10 + 61 * HZ);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2030, 6, 15, 8, 1, 1)
        );
    }

    #[test]
    fn cmos_ram_holds_bytes() {
        let mut r = Rtc::new(HZ);
        r.pio_write(0, 1, 0x40, 0);
        r.pio_write(1, 1, 0x5A, 0);
        assert_eq!(rd(&mut r, 0x40, 0), 0x5A);
        assert_eq!(r.pio_read(0, 1, 0), 0xFF);
    }
}
