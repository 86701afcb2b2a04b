//! The PC platform a Linux guest needs beyond the test guest's machine
//! (issue 10): the 8254 PIT (ports 0x40-0x43, port B 0x61), the CMOS RTC
//! (0x70/0x71), the ACPI PM1a/PM-timer block (0x600, [`AcpiPlatform`]),
//! the I/O APIC at 0xFEC00000 and the LAPIC's xAPIC page at 0xFEE00000,
//! on their own bus, consulted by [`super::machine::Machine`] before its
//! own. Loading: [`load`] (bzImage + initrd + ACPI tables).
use kernel::acpi::AcpiPlatform;
use kernel::devices::acpi_pm::{self, AcpiPm};
use kernel::devices::ioapic::{self, Ioapic};
use kernel::devices::lapic::Lapic;
use kernel::devices::pit::{self, Pit};
use kernel::devices::rtc::{self, Rtc};
use kernel::devices::{Bus, DeviceSet, IrqLine, MmioDevice, PioDevice};
use kernel::guestio::{GuestIo, Slot, VECTOR_BASE};
use kernel::loader::GuestStart;
use vmx::exit::MmioRequest;

/// The platform the ACPI tables describe.
pub const PLATFORM: AcpiPlatform = AcpiPlatform::ftvisor();

/// Loads the bzImage `image` with `initrd` and `cmdline`; exits with
/// BAD_CONFIG on a bad image.
pub fn load(image: &[u8], initrd: Option<&[u8]>, cmdline: &str, ram: &mut [u8]) -> GuestStart {
    match kernel::loader::linux::load(image, initrd, cmdline, ram, &PLATFORM) {
        Ok(l) => {
            println!(
                "linux: boot protocol {}.{:02}, kernel {:#x}..{:#x} (init_size), initrd {:x?}, RSDP {:#x}",
                l.header.version >> 8,
                l.header.version & 0xff,
                l.kernel_addr,
                l.kernel_addr + u64::from(l.header.init_size),
                l.initrd,
                l.rsdp
            );
            l.start
        }
        Err(e) => {
            println!("hypervisor: guest image rejected: {e}");
            crate::arch::exit::exit(kernel::exitcode::BAD_CONFIG);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    Pit,
    Rtc,
    Pm,
    Ioapic,
    Lapic,
}

/// The models (plain data).
pub struct Models {
    pub pit: Pit,
    pub rtc: Rtc,
    pub pm: AcpiPm,
    pub ioapic: Ioapic,
}

struct WithLapic<'a> {
    m: &'a mut Models,
    lapic: &'a mut Lapic,
}

impl DeviceSet<Id> for WithLapic<'_> {
    fn pio(&mut self, id: Id) -> &mut dyn PioDevice {
        match id {
            Id::Pit => &mut self.m.pit,
            Id::Rtc => &mut self.m.rtc,
            Id::Pm => &mut self.m.pm,
            _ => unreachable!("not a port device"),
        }
    }
    fn mmio(&mut self, id: Id) -> &mut dyn MmioDevice {
        match id {
            Id::Ioapic => &mut self.m.ioapic,
            Id::Lapic => self.lapic,
            _ => unreachable!("not an MMIO device"),
        }
    }
}

/// The Linux platform devices and their bus.
pub struct LinuxDevices {
    bus: Bus<Id>,
    pub models: Models,
    /// The guest entered S5 through PM1a_CNT.
    pub powered_off: bool,
}

impl LinuxDevices {
    /// `tsc_hz`: guest TSC rate; `now`: guest TSC at boot. The RTC's wall
    /// clock is the boot's one non-deterministic input here (read from the
    /// host's CMOS clock; FT logs it with the other inputs).
    pub fn new(tsc_hz: u64, now: u64) -> Self {
        let mut bus = Bus::new();
        let claims = [
            bus.insert_pio(pit::BASE, pit::PORT_COUNT, Id::Pit),
            bus.insert_pio(rtc::BASE, rtc::PORT_COUNT, Id::Rtc),
            bus.insert_pio(PLATFORM.pm1a_evt, acpi_pm::PORT_COUNT, Id::Pm),
            bus.insert_mmio(ioapic::BASE, ioapic::LEN, Id::Ioapic),
            bus.insert_mmio(u64::from(PLATFORM.lapic_addr), 0x1000, Id::Lapic),
        ];
        assert!(claims.iter().all(|c| c.is_ok()), "fixed, disjoint ranges");
        let mut rtc = Rtc::new(tsc_hz);
        rtc.set_wall_clock(host_wall_clock(), now);
        LinuxDevices {
            bus,
            models: Models {
                pit: Pit::new(tsc_hz),
                rtc,
                pm: AcpiPm::new(tsc_hz),
                ioapic: Ioapic::new(PLATFORM.ioapic.map_or(1, |i| i.0)),
            },
            powered_off: false,
        }
    }

    pub fn port_in(&mut self, lapic: &mut Lapic, port: u16, size: u8, now: u64) -> Option<u32> {
        if !claims_port(port) {
            return None;
        }
        self.bus.resolve_pio(port, size).ok()?;
        let mut set = WithLapic {
            m: &mut self.models,
            lapic,
        };
        self.bus.pio_read(&mut set, port, size, now).ok()
    }

    /// A replayed `IN` of `value` from `port`: if it is the PM timer, the
    /// earliest guest time at or after `not_before` at which it reads so
    /// (the replay's clock follows it, [`AcpiPm::time_of`]).
    pub fn pm_timer_time(&self, port: u16, size: u8, value: u32, not_before: u64) -> Option<u64> {
        (port == PLATFORM.pm1a_evt + 8 && size == 4)
            .then(|| self.models.pm.time_of(value, not_before))
    }

    /// Whether an `IN` at `port` is answered by a device here: all of them
    /// depend on time (PIT, RTC, PM timer and status), so record/replay
    /// logs their values.
    pub fn claims_port(&self, port: u16, size: u8) -> bool {
        claims_port(port) && self.bus.resolve_pio(port, size).is_ok()
    }

    /// Returns whether a device here claimed the port.
    pub fn port_out(
        &mut self,
        lapic: &mut Lapic,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
    ) -> bool {
        if !claims_port(port) || self.bus.resolve_pio(port, size).is_err() {
            return false;
        }
        let mut set = WithLapic {
            m: &mut self.models,
            lapic,
        };
        let _ = self.bus.pio_write(&mut set, port, size, value, now);
        if let Some(typ) = self.models.pm.take_sleep_request() {
            if typ == PLATFORM.s5_slp_typ {
                self.powered_off = true;
            }
        }
        true
    }

    /// Drives ISA IRQ `irq` (the MADT maps IRQ n to GSI n except 0 → 2).
    pub fn set_isa_irq(&mut self, irq: u8, level: bool, lapic: &mut Lapic) {
        let gsi = if irq == 0 { 2 } else { usize::from(irq) };
        self.models.ioapic.set_irq(gsi, level, lapic);
    }

    /// The virtio-mmio slots' interrupt lines onto their I/O APIC pins
    /// (DSDT `LNRO0005`): each pin is asserted while the slot's
    /// `InterruptStatus` is non-zero; `raised` holds the slots that
    /// signalled a new event since the last call ([`VirtioEvents`]).
    pub fn sync_virtio(&mut self, io: &GuestIo, raised: VirtioEvents, lapic: &mut Lapic) {
        for slot in Slot::ALL {
            let asserted = io.interrupt_status(slot) != 0;
            let event = raised.0 & (1 << slot as u8) != 0;
            self.models
                .ioapic
                .drive(slot.gsi() as usize, asserted, event, lapic);
        }
    }

    /// An MMIO exit at `gpa`: `None` when no device here claims it.
    /// Every value a load returns passes through `on_read` (record/replay:
    /// these registers depend on time and on interrupt timing).
    pub fn mmio(
        &mut self,
        lapic: &mut Lapic,
        ram: &[u8],
        gpa: u64,
        req: &mut MmioRequest<'_>,
        now: u64,
        on_read: &mut dyn FnMut(u64) -> u64,
    ) -> Option<Result<(), &'static str>> {
        let target = self.bus.resolve_mmio(gpa, 1).ok()?;
        let (insn, got, mode) = match super::machine::fetch_instruction(ram, req) {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let mut set = WithLapic {
            m: &mut self.models,
            lapic,
        };
        let result = kernel::mmio::emulate_with(
            &mut self.bus,
            &mut set,
            gpa,
            &insn[..got],
            mode,
            &mut req.regs.gpr,
            now,
            on_read,
        )?;
        if target.id == Id::Ioapic {
            set.m.ioapic.after_write(set.lapic);
        }
        Some(result.map(|len| req.instruction_len = len as u64))
    }
}

/// The PIT's bus range runs from its counters (0x40-0x43) to port B
/// (0x61): the ports in between belong to no device here (absent hardware,
/// counted by the machine), the keyboard controller's 0x60 among them.
fn claims_port(port: u16) -> bool {
    !(pit::BASE + 4..pit::BASE + 0x21).contains(&port)
}

/// An MMIO access outside guest RAM and every device window: absent
/// hardware, as on a PC with nothing decoding the address — a load reads
/// all ones, a store is dropped; the instruction completes.
pub fn absent_mmio(ram: &[u8], req: &mut MmioRequest<'_>) -> Result<(), &'static str> {
    let (insn, got, mode) = super::machine::fetch_instruction(ram, req)?;
    let Ok(decoded) = kernel::mmio_decode::decode(&insn[..got], mode) else {
        return Err("MMIO access to absent hardware by an instruction ftvisor does not emulate");
    };
    decoded.op.complete_read(&mut req.regs.gpr, u64::MAX);
    req.instruction_len = u64::from(decoded.len);
    Ok(())
}

/// For a Linux guest the virtio devices' fixed vectors are not delivered:
/// this line records which slots raised one, for
/// [`LinuxDevices::sync_virtio`].
#[derive(Debug, Default, Clone, Copy)]
pub struct VirtioEvents(pub u8);

impl IrqLine for VirtioEvents {
    fn raise(&mut self, vector: u8) {
        if let Some(slot) = vector.checked_sub(VECTOR_BASE).filter(|s| *s < 8) {
            self.0 |= 1 << slot;
        }
    }
}

/// The host's CMOS clock as Unix seconds (binary or BCD, 24-hour assumed
/// as firmware leaves it); 0 if it reads as nonsense.
fn host_wall_clock() -> i64 {
    let read = |reg: u8| -> u8 {
        // SAFETY: CMOS index/data ports; reading the clock has no side
        // effects beyond the index latch, which nothing else uses.
        unsafe {
            x86::io::outb(0x70, reg);
            x86::io::inb(0x71)
        }
    };
    let mut guard = 0;
    while read(0x0A) & 0x80 != 0 && guard < 100_000 {
        guard += 1;
    }
    let binary = read(0x0B) & 4 != 0;
    let dec = |v: u8| if binary { v } else { (v >> 4) * 10 + (v & 0xF) };
    let t = rtc::DateTime {
        year: 2000 + u32::from(dec(read(0x09))),
        month: dec(read(0x08)),
        day: dec(read(0x07)),
        hour: dec(read(0x04) & 0x7F),
        minute: dec(read(0x02)),
        second: dec(read(0x00)),
        weekday: 1,
    };
    t.to_unix().max(0)
}
