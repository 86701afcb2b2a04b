//! The guest's virtual local APIC, x2APIC MSR interface only (Intel SDM
//! Vol. 3A ch. 12 "Advanced Programmable Interrupt Controller (APIC)":
//! 12.4.4 IA32_APIC_BASE, 12.5.4 APIC timer, 12.8 interrupt handling,
//! 12.12 x2APIC, Table 12-6 x2APIC register address map, Figure 12-27
//! x2APIC state transitions).
//!
//! One processor, APIC ID 0, version 0x14 with six LVT entries (timer,
//! thermal, performance, LINT0, LINT1, error). In xAPIC mode the registers
//! are reached through the memory-mapped page ([`Lapic::xapic_read`],
//! [`Lapic::xapic_write`], SDM 12.4.1 and Table 12-1 "Local APIC Register
//! Address Map"; the caller maps it at IA32_APIC_BASE) and every x2APIC MSR
//! access faults; in x2APIC mode it is the other way round. Linux without
//! interrupt remapping stays in (or returns to) xAPIC mode.
//!
//! The timer counts guest TSC ticks divided by the divide configuration.
//! One-shot, periodic and TSC-deadline modes are supported. The hypervisor
//! arms its own timer at [`Lapic::next_deadline`] and calls [`Lapic::tick`];
//! every register access also brings the timer up to `now` first.
//! Periodic re-arming is relative to the previous deadline, so the rate is
//! exact. If several periods elapsed before `tick` ran, the timer fires
//! **once** and the deadline jumps to the first one after `now` (the missed
//! periods are counted in [`Lapic::missed_periods`]); real hardware has a
//! single IRR bit per vector, so back-to-back expiries would coalesce too.
//!
//! Interrupt delivery follows SDM 12.8.3-12.8.5: IRR/ISR bitmaps, the
//! processor priority PPR = max(TPR, class of highest ISR), a vector is
//! deliverable when its class is above PPR's; EOI clears the highest ISR bit.
//! Only edge-triggered fixed interrupts exist (TMR reads zero).
use super::IrqLine;

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// First x2APIC register MSR.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC register MSR.
pub const MSR_X2APIC_LAST: u32 = 0x8FF;
/// The default APIC base address.
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;
/// The value of the version register: version 0x14, max LVT entry 5.
pub const VERSION: u32 = 0x0005_0014;

const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;
const LVT_MASK: u32 = 1 << 16;
const SVR_ENABLE: u32 = 1 << 8;
const ESR_RECEIVED_ILLEGAL_VECTOR: u32 = 1 << 6;
/// Writable bits of LVT timer, thermal, perf, LINT0, LINT1, error.
const LVT_WRITABLE: [u32; 6] = [0x700FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF];

/// The guest must get a #GP (SDM 12.12.1.2: unknown, reserved or read-only
/// x2APIC MSR, illegal IA32_APIC_BASE value or transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Inject #GP(0); the instruction does not retire.
    GeneralProtection,
}

/// The APIC's hardware mode (IA32_APIC_BASE EN and EXTD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: globally disabled.
    Disabled,
    /// EN = 1, EXTD = 0: xAPIC (no MMIO page in this model).
    XApic,
    /// EN = 1, EXTD = 1: x2APIC.
    X2Apic,
}

/// LVT timer mode (bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// 0: count down once.
    OneShot,
    /// 1: reload from the initial count.
    Periodic,
    /// 2: fire when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
}

/// A local APIC. Plain data: `Clone` it to snapshot, compare with `==`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lapic {
    apic_base: u64,
    max_phys_bits: u8,
    tpr: u8,
    svr: u32,
    esr: u32,
    esr_pending: u32,
    icr: u64,
    /// xAPIC logical destination and destination format registers.
    ldr: u32,
    dfr: u32,
    /// Timer, thermal, perf, LINT0, LINT1, error.
    lvt: [u32; 6],
    irr: [u32; 8],
    isr: [u32; 8],
    timer_initial: u32,
    dcr: u32,
    /// Guest TSC of the next timer expiry, if armed.
    deadline: Option<u64>,
    tsc_deadline: u64,
    missed_periods: u64,
}

impl Lapic {
    /// A reset APIC already in x2APIC mode at [`DEFAULT_BASE`], as a BSP.
    /// `max_phys_bits`: the guest's MAXPHYADDR (IA32_APIC_BASE bits at and
    /// above it are reserved).
    pub fn new(max_phys_bits: u8) -> Self {
        Self::with_mode(ApicMode::X2Apic, max_phys_bits)
    }

    /// A reset APIC in the given mode.
    pub fn with_mode(mode: ApicMode, max_phys_bits: u8) -> Self {
        let bits = match mode {
            ApicMode::Disabled => 0,
            ApicMode::XApic => BASE_EN,
            ApicMode::X2Apic => BASE_EN | BASE_EXTD,
        };
        let mut apic = Self {
            apic_base: DEFAULT_BASE | BASE_BSP | bits,
            max_phys_bits: max_phys_bits.min(52),
            tpr: 0,
            svr: 0,
            esr: 0,
            esr_pending: 0,
            icr: 0,
            ldr: 0,
            dfr: u32::MAX,
            lvt: [0; 6],
            irr: [0; 8],
            isr: [0; 8],
            timer_initial: 0,
            dcr: 0,
            deadline: None,
            tsc_deadline: 0,
            missed_periods: 0,
        };
        apic.reset_registers();
        apic
    }

    /// Whether this model owns `msr` (IA32_APIC_BASE, IA32_TSC_DEADLINE,
    /// the x2APIC range).
    pub fn handles_msr(msr: u32) -> bool {
        matches!(
            msr,
            MSR_APIC_BASE | MSR_TSC_DEADLINE | MSR_X2APIC_FIRST..=MSR_X2APIC_LAST
        )
    }

    /// The hardware mode.
    pub fn mode(&self) -> ApicMode {
        match (
            self.apic_base & BASE_EN != 0,
            self.apic_base & BASE_EXTD != 0,
        ) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// Guest RDMSR.
    pub fn rdmsr(&mut self, msr: u32, now: u64) -> Result<u64, Fault> {
        self.tick(now);
        match msr {
            MSR_APIC_BASE => return Ok(self.apic_base),
            MSR_TSC_DEADLINE => {
                return Ok(match self.timer_mode() {
                    TimerMode::TscDeadline => self.tsc_deadline,
                    _ => 0,
                })
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST if self.mode() == ApicMode::X2Apic => {}
            _ => return Err(Fault::GeneralProtection),
        }
        self.read_reg(msr & 0xFF, now)
    }

    /// A register by its x2APIC index (MSR - 0x800).
    fn read_reg(&self, reg: u32, now: u64) -> Result<u64, Fault> {
        let v: u32 = match reg {
            0x02 => 0,
            0x03 => VERSION,
            0x08 => self.tpr.into(),
            0x0A => self.ppr().into(),
            0x0D => 1, // cluster 0, bit (ID & 15)
            0x0F => self.svr,
            r @ 0x10..=0x17 => self.isr[(r - 0x10) as usize],
            0x18..=0x1F => 0,
            r @ 0x20..=0x27 => self.irr[(r - 0x20) as usize],
            0x28 => self.esr,
            0x30 => return Ok(self.icr),
            r @ 0x32..=0x37 => self.lvt[(r - 0x32) as usize],
            0x38 => self.timer_initial,
            0x39 => self.current_count(now),
            0x3E => self.dcr,
            _ => return Err(Fault::GeneralProtection),
        };
        Ok(v.into())
    }

    /// Guest WRMSR.
    pub fn wrmsr(&mut self, msr: u32, value: u64, now: u64) -> Result<(), Fault> {
        self.tick(now);
        match msr {
            MSR_APIC_BASE => return self.set_apic_base(value),
            MSR_TSC_DEADLINE => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline = value;
                    self.deadline = (value != 0).then_some(value);
                }
                return Ok(());
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST if self.mode() == ApicMode::X2Apic => {}
            _ => return Err(Fault::GeneralProtection),
        }
        self.write_reg(msr & 0xFF, value, now)
    }

    /// xAPIC MMIO load of the 32-bit register at `offset` in the APIC page
    /// (SDM Table 12-1: register index = offset >> 4). Outside xAPIC mode,
    /// unaligned or unknown offsets read 0.
    pub fn xapic_read(&mut self, offset: u64, now: u64) -> u32 {
        self.tick(now);
        if self.mode() != ApicMode::XApic || offset & 0xF != 0 || offset >= 0x400 {
            return 0;
        }
        match (offset >> 4) as u32 {
            0x02 => 0, // APIC ID 0 in bits 31:24
            0x0D => self.ldr,
            0x0E => self.dfr,
            0x30 => self.icr as u32,
            0x31 => (self.icr >> 32) as u32,
            0x3F => 0, // no SELF IPI register in xAPIC mode
            reg => self.read_reg(reg, now).map_or(0, |v| v as u32),
        }
    }

    /// xAPIC MMIO store to the register at `offset`. Read-only and unknown
    /// registers ignore writes (no #GP in xAPIC mode); a write to ICR low
    /// sends the IPI with the destination held in ICR high (bits 31:24).
    pub fn xapic_write(&mut self, offset: u64, value: u32, now: u64) {
        self.tick(now);
        if self.mode() != ApicMode::XApic || offset & 0xF != 0 || offset >= 0x400 {
            return;
        }
        match (offset >> 4) as u32 {
            0x0B => self.eoi(),
            0x0D => self.ldr = value & 0xFF00_0000,
            0x0E => self.dfr = value | 0x0FFF_FFFF,
            0x30 => {
                let dest = (self.icr >> 56) << 32;
                self.write_icr(dest | u64::from(value));
                self.icr = (self.icr & 0xFFFF_FFFF) | (dest << 24);
            }
            0x31 => self.icr = (self.icr & 0xFFFF_FFFF) | (u64::from(value & 0xFF00_0000) << 32),
            0x28 => self.esr = core::mem::take(&mut self.esr_pending),
            0x3F => {}
            reg => {
                let _ = self.write_reg(reg, value.into(), now);
            }
        }
    }

    fn write_reg(&mut self, reg: u32, value: u64, now: u64) -> Result<(), Fault> {
        if reg == 0x30 {
            self.write_icr(value);
            return Ok(());
        }
        let v = u32::try_from(value).map_err(|_| Fault::GeneralProtection)?;
        match reg {
            0x08 => self.tpr = v as u8,
            0x0B if v == 0 => self.eoi(),
            0x0F => {
                self.svr = v & 0x1FF;
                if v & SVR_ENABLE == 0 {
                    self.lvt.iter_mut().for_each(|l| *l |= LVT_MASK);
                }
            }
            0x28 if v == 0 => self.esr = core::mem::take(&mut self.esr_pending),
            r @ 0x32..=0x37 => self.write_lvt((r - 0x32) as usize, v),
            0x38 => {
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.timer_initial = v;
                    self.deadline = (v != 0).then(|| now.saturating_add(self.period()));
                }
            }
            0x3E => {
                let count = self.current_count(now);
                self.dcr = v & 0xB;
                if self.deadline.is_some() && self.timer_mode() != TimerMode::TscDeadline {
                    self.deadline = Some(now.saturating_add(u64::from(count) * self.divisor()));
                }
            }
            0x3F if v <= 0xFF => self.raise(v as u8),
            _ => return Err(Fault::GeneralProtection),
        }
        Ok(())
    }

    /// Fire the timer if its deadline is at or before `now` (see the module
    /// docs for periodic catch-up).
    pub fn tick(&mut self, now: u64) {
        let Some(due) = self.deadline.filter(|&d| d <= now) else {
            return;
        };
        let lvt = self.lvt[0];
        if lvt & LVT_MASK == 0 {
            self.raise(lvt as u8);
        }
        self.deadline = match self.timer_mode() {
            TimerMode::Periodic => {
                let period = self.period();
                let missed = (now - due) / period;
                self.missed_periods += missed;
                Some(due.saturating_add((missed + 1) * period))
            }
            TimerMode::TscDeadline => {
                self.tsc_deadline = 0;
                None
            }
            TimerMode::OneShot => None,
        };
    }

    /// Guest TSC at which the timer next delivers an interrupt (`None`:
    /// disarmed or masked). Arm the preemption timer for it, or skip to it
    /// when the guest halts.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadline.filter(|_| self.lvt[0] & LVT_MASK == 0)
    }

    /// Periodic expiries skipped because `tick` ran late.
    pub fn missed_periods(&self) -> u64 {
        self.missed_periods
    }

    /// The vector to inject now, if any: the highest IRR vector whose
    /// priority class is above the processor priority (TPR and ISR).
    pub fn pending_vector(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = highest(&self.irr)?;
        (v & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// The hypervisor injected `vector`: move it from IRR to ISR.
    pub fn ack(&mut self, vector: u8) {
        clear_bit(&mut self.irr, vector);
        set_bit(&mut self.isr, vector);
    }

    /// End of interrupt: retire the highest in-service vector.
    pub fn eoi(&mut self) {
        if let Some(v) = highest(&self.isr) {
            clear_bit(&mut self.isr, v);
        }
    }

    /// The task-priority register (also CR8 << 4 for a 64-bit guest).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Processor priority (SDM 12.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The timer mode from the LVT timer register (reserved mode 3 acts as
    /// one-shot).
    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt[0] >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// TSC ticks per timer count (divide configuration, SDM Figure 12-10).
    pub fn divisor(&self) -> u64 {
        let code = (self.dcr & 3) | ((self.dcr >> 1) & 4);
        1 << ((code + 1) & 7)
    }

    fn period(&self) -> u64 {
        u64::from(self.timer_initial) * self.divisor()
    }

    /// Current-count register: counts left, rounded up to whole counts.
    fn current_count(&self, now: u64) -> u32 {
        let Some(d) = self.deadline else { return 0 };
        let div = self.divisor();
        let remaining = match self.timer_mode() {
            TimerMode::TscDeadline => return 0,
            _ if d > now => d - now,
            TimerMode::Periodic => self.period() - (now - d) % self.period(),
            TimerMode::OneShot => 0,
        };
        remaining.div_ceil(div).min(self.timer_initial.into()) as u32
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let old_mode = self.timer_mode();
        let mut v = (self.lvt[index] & !LVT_WRITABLE[index]) | (value & LVT_WRITABLE[index]);
        if self.svr & SVR_ENABLE == 0 {
            v |= LVT_MASK;
        }
        self.lvt[index] = v;
        let new_mode = self.timer_mode();
        if index == 0
            && old_mode != new_mode
            && (old_mode == TimerMode::TscDeadline || new_mode == TimerMode::TscDeadline)
        {
            self.timer_initial = 0;
            self.tsc_deadline = 0;
            self.deadline = None;
        }
    }

    /// Uniprocessor: only fixed interrupts to ourselves are delivered
    /// (shorthand self or all-including-self, or destination ID 0).
    fn write_icr(&mut self, value: u64) {
        self.icr = value & !(1 << 12);
        let fixed = (value >> 8) & 7 == 0;
        let to_self = match (value >> 18) & 3 {
            0 => value >> 32 == 0,
            1 | 2 => true,
            _ => false,
        };
        if fixed && to_self {
            self.raise(value as u8);
        }
    }

    fn set_apic_base(&mut self, value: u64) -> Result<(), Fault> {
        let reserved = 0x2FF | (u64::MAX << self.max_phys_bits);
        let en = value & BASE_EN != 0;
        let extd = value & BASE_EXTD != 0;
        let new = match (en, extd) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(Fault::GeneralProtection),
        };
        let illegal = matches!(
            (self.mode(), new),
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)
        );
        if value & reserved & !BASE_BSP != 0 || illegal {
            return Err(Fault::GeneralProtection);
        }
        if new == ApicMode::Disabled {
            self.reset_registers();
        }
        self.apic_base = value | BASE_BSP;
        Ok(())
    }

    /// Power-up register state (SDM 12.4.7.1), keeping IA32_APIC_BASE.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.svr = 0xFF;
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.lvt = [LVT_MASK; 6];
        self.irr = [0; 8];
        self.isr = [0; 8];
        self.timer_initial = 0;
        self.dcr = 0;
        self.deadline = None;
        self.tsc_deadline = 0;
    }
}

impl IrqLine for Lapic {
    /// Accept a fixed, edge-triggered interrupt. Dropped while the APIC is
    /// hardware- or software-disabled; vectors 0-15 are illegal and only
    /// set ESR "received illegal vector".
    fn raise(&mut self, vector: u8) {
        if self.mode() == ApicMode::Disabled || self.svr & SVR_ENABLE == 0 {
            return;
        }
        if vector < 16 {
            self.esr_pending |= ESR_RECEIVED_ILLEGAL_VECTOR;
            return;
        }
        set_bit(&mut self.irr, vector);
    }
}

fn set_bit(map: &mut [u32; 8], v: u8) {
    map[usize::from(v >> 5)] |= 1 << (v & 31);
}

fn clear_bit(map: &mut [u32; 8], v: u8) {
    map[usize::from(v >> 5)] &= !(1 << (v & 31));
}

fn highest(map: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&i| map[i] != 0)
        .map(|i| (i as u8) * 32 + (31 - map[i].leading_zeros() as u8))
}

#[cfg(test)]
#[path = "lapic_tests.rs"]
mod tests;

/// The xAPIC page as an MMIO device (32-bit registers; wider or narrower
/// accesses use the register at the aligned offset).
impl super::MmioDevice for Lapic {
    fn mmio_read(&mut self, offset: u64, _size: u8, now: u64) -> u64 {
        self.xapic_read(offset, now).into()
    }
    fn mmio_write(&mut self, offset: u64, _size: u8, value: u64, now: u64) {
        self.xapic_write(offset, value as u32, now);
    }
}
