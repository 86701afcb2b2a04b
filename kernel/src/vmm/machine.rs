//! The machine around the vCPU: guest RAM, the device bus (UART, virtual
//! LAPIC, the virtio-mmio devices of [`kernel::guestio`]), guest time,
//! randomness and the MSRs outside the VMCS — the kernel's implementation of
//! [`vmx::exit::Platform`].
//!
//! Guest I/O: after every MMIO access to a virtio device the device
//! processes what the guest notified and its outputs go to the backends
//! ([`GuestIo::after_access`]); the run loop calls [`Machine::poll_io`] once
//! per iteration to deliver backend completions and frames as inputs, with
//! their interrupts raised on the virtual LAPIC.
//!
//! Guest time is a virtual TSC: the host TSC scaled to the rate announced
//! to the guest as [`vmx::exit::cpuid::GUEST_TSC_KHZ`]
//! ([`kernel::tsc_scale`], `guest_tsc=`), plus an offset that only grows
//! (HLT with a timer armed skips ahead to the deadline).
use alloc::string::String;
use kernel::devices::absent::{Absent, Access};
use kernel::devices::lapic::{ApicMode, Lapic};
use kernel::devices::uart::{Uart, COM1_BASE, PORT_COUNT};
use kernel::devices::{all_ones, Bus, DeviceSet, MmioDevice, PioDevice};
use kernel::guestio::{GuestIo, Slot};
use kernel::mmio_decode::CpuMode;
use vmx::exit::{MmioRequest, Platform};
use vmx::guest_walk::{self, GuestPhysRead};
use vmx::Error;

/// Device ids on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    Uart,
    Virtio(Slot),
}

/// Guest-visible devices.
pub struct Devices {
    pub uart: Uart,
    /// The virtio-mmio devices and their backends.
    pub io: GuestIo,
}

impl DeviceSet<Dev> for Devices {
    fn pio(&mut self, id: Dev) -> &mut dyn PioDevice {
        match id {
            Dev::Uart => &mut self.uart,
            Dev::Virtio(_) => unreachable!("virtio devices are not on the port bus"),
        }
    }
    fn mmio(&mut self, id: Dev) -> &mut dyn MmioDevice {
        match id {
            Dev::Uart => unreachable!("the UART is not on the MMIO bus"),
            Dev::Virtio(slot) => self.io.mmio_device(slot),
        }
    }
}

/// IA32_STAR .. IA32_KERNEL_GS_BASE: held here and in the physical MSRs
/// (the host never uses SYSCALL or SWAPGS).
pub const SYSCALL_MSRS: [u32; 5] = [
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084,
    0xC000_0102,
];

pub struct Machine {
    ram: &'static mut [u8],
    pub bus: Bus<Dev>,
    pub devices: Devices,
    pub lapic: Lapic,
    tsc_offset: u64,
    /// Host TSC ticks to guest TSC ticks (`guest_tsc=`).
    scale: kernel::tsc_scale::TscScale,
    /// Guest time skipped ahead by [`Machine::skip_to`] (idle HLTs, a
    /// go-live's time floor): guest time no host time passed for.
    pub skipped: u64,
    /// Dirty logging through the EPT, when on (`ept_dirty_test=`).
    pub dirty: Option<DirtyEpt>,
    /// The guest's EPT while no dirty log holds it (a repair takes it).
    pub ept_spare: Option<&'static mut vmx::ept::Ept>,
    /// `ft_test_clone=`: a clone through a state transfer, waiting for
    /// its time or in its pre-copy (`super::clone`).
    pub clone: Option<super::clone::LiveClone>,
    /// Replay: guest time follows the log (the largest time value replayed
    /// so far) instead of this host's TSC, so the device models' timers
    /// run on the recording's clock (issue 15: nothing fires early or
    /// twice, and the clock does not step back, at a go-live).
    log_clock: Option<u64>,
    rng: u64,
    pub exits: [u64; 66],
    /// Guest RIPs at preemption-timer exits (a sample every slice of guest
    /// instructions): where guest time goes, printed at the end.
    pub hot: alloc::collections::BTreeMap<u64, u32>,
    pub console_lines: u64,
    /// Hash of every guest console line (record/replay compare it).
    pub console_hash: u64,
    /// Replay: outputs are discarded (counted and hashed, not printed).
    pub console_quiet: bool,
    /// `guest=linux` (issue 10): PIT, RTC, ACPI PM, I/O APIC, xAPIC page.
    pub linux: Option<super::linux::LinuxDevices>,
    /// FT primary: lines are collected here instead of printed; the
    /// output rule lets them out (`crate::ftlive`, DESIGN.md §1.4).
    pub console_capture: Option<alloc::vec::Vec<String>>,
    /// Unknown ports, MSRs and MMIO pages the guest touched (issue 10).
    pub absent: Absent,
}

/// The physical IA32_STAR..KERNEL_GS_BASE (they carry guest values; a
/// replay restores the ones the guest started with).
pub fn read_syscall_msrs() -> [u64; 5] {
    // SAFETY: architectural MSRs present on every x86-64 CPU.
    SYSCALL_MSRS.map(|m| unsafe { x86::msr::rdmsr(m) })
}

pub fn write_syscall_msrs(values: &[u64; 5]) {
    for (m, v) in SYSCALL_MSRS.iter().zip(values) {
        // SAFETY: the host never executes SYSCALL or SWAPGS (see `wrmsr`).
        unsafe { x86::msr::wrmsr(*m, *v) };
    }
}

pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Guest RAM as seen by the page walker.
struct RamReader<'a>(&'a [u8]);

impl GuestPhysRead for RamReader<'_> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let a = usize::try_from(gpa).ok()?;
        Some(u64::from_le_bytes(
            self.0.get(a..a.checked_add(8)?)?.try_into().ok()?,
        ))
    }
    fn read_u32(&self, gpa: u64) -> Option<u32> {
        let a = usize::try_from(gpa).ok()?;
        Some(u32::from_le_bytes(
            self.0.get(a..a.checked_add(4)?)?.try_into().ok()?,
        ))
    }
}

/// The bytes of the instruction behind an MMIO exit (fetched page by page
/// through the guest's page tables: it may cross a page) and its CPU mode.
pub fn fetch_instruction(
    ram: &[u8],
    req: &MmioRequest<'_>,
) -> Result<([u8; 15], usize, CpuMode), &'static str> {
    let mode = match req.code_bits {
        64 => CpuMode::Bits64,
        32 => CpuMode::Bits32,
        _ => CpuMode::Bits16,
    };
    let linear = if req.code_bits == 64 {
        req.rip
    } else {
        req.cs_base.wrapping_add(req.rip)
    };
    let mut insn = [0u8; 15];
    let mut got = 0;
    while got < insn.len() {
        let lin = linear.wrapping_add(got as u64);
        let Ok(gpa) = guest_walk::translate(&req.paging, &RamReader(ram), lin) else {
            break;
        };
        let in_page = (4096 - (lin & 0xfff) as usize).min(insn.len() - got);
        let Some(src) = usize::try_from(gpa)
            .ok()
            .and_then(|a| ram.get(a..a.checked_add(in_page)?))
        else {
            break;
        };
        insn[got..got + in_page].copy_from_slice(src);
        got += in_page;
    }
    if got == 0 {
        return Err("cannot fetch the instruction that accessed MMIO");
    }
    Ok((insn, got, mode))
}

impl Machine {
    /// `scale`: host TSC ticks to guest TSC ticks.
    pub fn new(ram: &'static mut [u8], io: GuestIo, scale: kernel::tsc_scale::TscScale) -> Machine {
        let mut bus = Bus::new();
        bus.insert_pio(COM1_BASE, PORT_COUNT, Dev::Uart)
            .expect("empty bus");
        for slot in Slot::ALL {
            bus.insert_mmio(slot.base(), slot.size(), Dev::Virtio(slot))
                .expect("the virtio slots are disjoint and above guest RAM");
        }
        let start = scale.guest(host_tsc());
        Machine {
            ram,
            bus,
            devices: Devices {
                uart: Uart::new(None),
                io,
            },
            lapic: Lapic::with_mode(ApicMode::XApic, 40),
            // Guest TSC starts at 0.
            tsc_offset: 0u64.wrapping_sub(start),
            scale,
            skipped: 0,
            dirty: None,
            ept_spare: None,
            clone: None,
            log_clock: None,
            rng: start | 1,
            exits: [0; 66],
            hot: alloc::collections::BTreeMap::new(),
            console_lines: 0,
            console_hash: ft::replay::HASH_SEED,
            console_quiet: false,
            linux: None,
            console_capture: None,
            absent: Absent::default(),
        }
    }

    /// Guest time now (virtual TSC): this host's TSC plus the offset, or in
    /// a replay the log's time ([`Machine::follow_log_time`]).
    pub fn now(&self) -> u64 {
        match self.log_clock {
            Some(t) => t,
            None => self.scale.guest(host_tsc()).wrapping_add(self.tsc_offset),
        }
    }

    /// Guest time is `t` from here (a repair's joining node takes the
    /// serving node's clock at the transfer's point).
    pub fn set_now(&mut self, t: u64) {
        self.tsc_offset = t.wrapping_sub(self.scale.guest(host_tsc()));
        if let Some(c) = self.log_clock.as_mut() {
            *c = t;
        }
    }

    /// Replay from here: guest time is the log's, starting at the time now.
    pub fn start_log_time(&mut self) {
        self.log_clock = Some(self.now());
    }

    /// Replay: the log showed guest time `t` (an RDTSC result, a timer
    /// interrupt's deadline); time never goes back.
    pub fn follow_log_time(&mut self, t: u64) {
        if let Some(c) = self.log_clock.as_mut() {
            *c = (*c).max(t);
        }
    }

    /// The replay ends (an FT backup goes live): guest time runs on this
    /// host's TSC again, from where the log left it.
    pub fn end_log_time(&mut self) {
        if let Some(t) = self.log_clock.take() {
            self.tsc_offset = t.wrapping_sub(self.scale.guest(host_tsc()));
        }
    }

    /// Host TSC ticks (what the VMX preemption timer counts) for a span of
    /// `guest_ticks` of guest time.
    pub fn host_ticks(&self, guest_ticks: u64) -> u64 {
        self.scale.host(guest_ticks)
    }

    /// Moves guest time forward to `t` (HLT until a timer deadline).
    pub fn skip_to(&mut self, t: u64) {
        let now = self.now();
        if t > now {
            self.skipped += t - now;
            self.tsc_offset = self.tsc_offset.wrapping_add(t - now);
        }
    }

    /// Forwards complete guest console lines to COM1 with the guest prefix
    /// (hashed and counted; not printed when `console_quiet`).
    pub fn flush_console(&mut self) {
        while let Some(line) = self.devices.uart.take_output() {
            self.console_line(&line);
        }
    }

    fn console_line(&mut self, line: &str) {
        self.console_lines += 1;
        self.console_hash = ft::replay::hash_bytes(self.console_hash, line.as_bytes());
        if let Some(held) = self.console_capture.as_mut() {
            held.push(String::from(line));
        } else if !self.console_quiet {
            println!("guest: {line}");
        }
    }

    /// Guest RAM (for snapshots and state hashes).
    pub fn ram(&self) -> &[u8] {
        self.ram
    }

    /// Guest RAM, writable (a repair's transfer writes pages into it).
    pub fn ram_mut(&mut self) -> &mut [u8] {
        self.ram
    }

    /// Gives guest RAM back (to restore a snapshot into it).
    pub fn into_ram(self) -> &'static mut [u8] {
        self.ram
    }

    /// Prints the guest's device layout and backends.
    pub fn announce_io(&self) {
        for line in self.devices.io.describe() {
            println!("guestio: {line}");
        }
    }

    /// Once per run-loop iteration (not while replaying): delivers what the
    /// device backends finished since the last call, through the single
    /// input entry point [`GuestIo::input`], raising interrupts on the LAPIC.
    pub fn poll_io(&mut self) {
        self.poll_io_with(|_, _| {});
    }

    /// [`Self::poll_io`] in record mode: `seen` logs each input just
    /// before it is applied.
    pub fn poll_io_with(&mut self, seen: impl FnMut(Slot, &kernel::devices::virtio::GuestInput)) {
        let delivered = self.with_virtio_irq(|io, ram, irq| io.poll_with(ram, irq, seen));
        if delivered > 0 {
            self.print_io_notices();
        }
    }

    /// Replay: applies an input taken from the log through the same single
    /// input point [`GuestIo::input`] (a refusal is refused as it was when
    /// recorded, and noted).
    pub fn apply_input(&mut self, slot: Slot, input: kernel::devices::virtio::GuestInput) {
        if self
            .with_virtio_irq(|io, ram, irq| io.input(slot, input, ram, irq))
            .is_err()
        {
            self.print_io_notices();
        }
    }

    /// Runs `f` on the guest I/O devices with the interrupt line they
    /// raise: the LAPIC's fixed vectors for the test guest; for a
    /// `guest=linux` guest the I/O APIC pins the DSDT announces, synced
    /// after `f` (the same path when recording, replaying or neither).
    fn with_virtio_irq<R>(
        &mut self,
        f: impl FnOnce(&mut GuestIo, &mut [u8], &mut dyn kernel::devices::IrqLine) -> R,
    ) -> R {
        match self.linux.as_mut() {
            Some(l) => {
                let mut events = super::linux::VirtioEvents::default();
                let r = f(&mut self.devices.io, self.ram, &mut events);
                l.sync_virtio(&self.devices.io, events, &mut self.lapic);
                r
            }
            None => f(&mut self.devices.io, self.ram, &mut self.lapic),
        }
    }

    /// Whether a device backend still owes the guest an input (a halted
    /// guest is then waiting for it, not dead).
    pub fn io_busy(&self) -> bool {
        self.devices.io.busy()
    }

    /// End-of-run counters of the guest's devices.
    pub fn report_io(&self) {
        println!("guestio: {}", self.devices.io.summary());
        println!("hypervisor: {}", self.absent.summary());
    }

    /// Counts an access to absent hardware; reports the first of its kind.
    fn note_absent(&mut self, access: Access, addr: u64) {
        if let Some(s) = self.absent.note(access, addr) {
            println!("hypervisor: {}", Absent::first_time(&s));
        }
    }

    fn print_io_notices(&mut self) {
        for n in self.devices.io.take_notices() {
            println!("guestio: {n}");
        }
    }

    pub fn flush_console_partial(&mut self) {
        self.devices.uart.flush_partial();
        self.flush_console();
    }
}

impl Machine {
    /// `guest=linux`: the UART's interrupt line is ISA IRQ 4 on the I/O APIC.
    fn sync_linux_irqs(&mut self) {
        if let Some(l) = self.linux.as_mut() {
            l.set_isa_irq(4, self.devices.uart.irq_level(), &mut self.lapic);
        }
    }
}

impl Platform for Machine {
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let now = self.now();
        if let Some(l) = self.linux.as_mut() {
            if let Some(v) = l.port_in(&mut self.lapic, port, size, now) {
                return v;
            }
        }
        let v = match self.bus.pio_read(&mut self.devices, port, size, now) {
            Ok(v) => v,
            Err(_) => {
                self.note_absent(Access::PortRead, port.into());
                all_ones(size)
            }
        };
        self.sync_linux_irqs();
        v
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        let now = self.now();
        if let Some(l) = self.linux.as_mut() {
            if l.port_out(&mut self.lapic, port, size, value, now) {
                return;
            }
        }
        if self
            .bus
            .pio_write(&mut self.devices, port, size, value, now)
            .is_err()
        {
            self.note_absent(Access::PortWrite, port.into());
        }
        self.sync_linux_irqs();
    }

    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        if Lapic::handles_msr(msr) {
            let now = self.now();
            return self.lapic.rdmsr(msr, now).ok();
        }
        if SYSCALL_MSRS.contains(&msr) {
            // From the CPU: the guest's SWAPGS swaps KERNEL_GS_BASE there
            // without an exit, so a copy kept at WRMSR would be stale.
            // SAFETY: an architectural MSR present on every x86-64 CPU.
            return Some(unsafe { x86::msr::rdmsr(msr) });
        }
        match msr {
            0x3A => Some(1),        // IA32_FEATURE_CONTROL: locked, VMX off
            0x8B => Some(0),        // IA32_BIOS_SIGN_ID
            0x1A0 => Some(1),       // IA32_MISC_ENABLE: fast strings
            0xC000_0103 => Some(0), // IA32_TSC_AUX
            _ => {
                self.note_absent(Access::MsrRead, msr.into());
                None
            }
        }
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        if Lapic::handles_msr(msr) {
            let now = self.now();
            return self.lapic.wrmsr(msr, value, now).is_ok();
        }
        if SYSCALL_MSRS.contains(&msr) {
            // SAFETY: the host never executes SYSCALL or SWAPGS, so these
            // MSRs belong to the guest; writing them has no host effect.
            unsafe { x86::msr::wrmsr(msr, value) };
            return true;
        }
        match msr {
            0x8B => true,              // microcode update trigger: ignored
            0x1A0 => value == 1,       // MISC_ENABLE: only the value we report
            0xC000_0103 => value == 0, // IA32_TSC_AUX (RDTSCP): one CPU, number 0
            _ => {
                self.note_absent(Access::MsrWrite, msr.into());
                false
            }
        }
    }

    fn rdtsc(&mut self) -> u64 {
        self.now()
    }

    fn random(&mut self, seed: bool) -> u64 {
        // The CPU's generator where it has one (the value is logged like
        // RDTSC either way); else xorshift64* seeded from the TSC, which
        // the boot warns about.
        if let Some(v) = crate::arch::entropy::hardware(seed) {
            return v;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn mmio(&mut self, gpa: u64, req: &mut MmioRequest<'_>) -> Option<Result<(), &'static str>> {
        self.mmio_with(gpa, req, &mut |v| v)
    }

    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Error> {
        let err = Error::GuestAddress {
            gpa,
            len: buf.len() as u64,
        };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(buf.len()).ok_or(err)?;
        let src = self.ram.get(start..end).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn console(&mut self, text: &str) {
        let mut s = String::from(text);
        if s.ends_with('\n') {
            s.pop();
        }
        for line in s.split('\n') {
            self.console_line(line);
        }
    }

    fn dirty_write(&mut self, gpa: u64) -> bool {
        self.dirty
            .as_mut()
            .is_some_and(|d| d.ept.on_write_violation(gpa))
    }
}

/// What a same-boot clone (`super::clone`) needs besides the machine.
#[derive(Clone, Copy)]
pub struct CloneContext {
    pub machine: ft::log::MachineId,
    pub caps: vmx::caps::VmxCaps,
    pub start: kernel::loader::GuestStart,
}

/// Dirty logging of guest RAM through the EPT (issue 16, a repair's
/// pre-copy; `vmx::ept`): the EPT it write-protects and what it found.
pub struct DirtyEpt {
    pub ept: &'static mut vmx::ept::Ept,
    /// Rounds taken, pages handed over over all rounds.
    pub rounds: u64,
    pub pages: u64,
    /// Guest time between rounds, and when the next one is due.
    pub every: u64,
    pub next_round: u64,
}

impl DirtyEpt {
    /// Starts logging on `ept` (cached translations invalidated).
    pub fn start(ept: &'static mut vmx::ept::Ept, every: u64) -> Self {
        ept.start_dirty_log();
        invept_single(ept.pointer());
        Self {
            ept,
            rounds: 0,
            pages: 0,
            every,
            next_round: every,
        }
    }

    /// One round: the pages written since the last, protected again.
    pub fn round(&mut self) -> alloc::vec::Vec<u64> {
        let pages = self.ept.take_dirty();
        invept_single(self.ept.pointer());
        self.rounds += 1;
        self.pages += pages.len() as u64;
        pages
    }
}

/// INVEPT, single-context (SDM Vol. 3C §31.3 "INVEPT"): drops the cached
/// translations of the EPT at `eptp` after permissions were reduced.
pub fn invept_single(eptp: u64) {
    let descriptor: [u64; 2] = [eptp, 0];
    // SAFETY: VMX root operation (VMXON done before any guest runs); the
    // descriptor is a valid 128-bit operand naming the guest's EPT; type 1
    // (single-context) is supported wherever EPT is (checked at boot).
    unsafe {
        core::arch::asm!(
            "invept {}, [{}]",
            in(reg) 1u64,
            in(reg) descriptor.as_ptr(),
            options(nostack, readonly)
        );
    }
}

impl Machine {
    /// [`Platform::mmio`]; loads from the `guest=linux` platform devices
    /// (LAPIC page, I/O APIC) pass through `on_read` (record/replay).
    pub fn mmio_with(
        &mut self,
        gpa: u64,
        req: &mut MmioRequest<'_>,
        on_read: &mut dyn FnMut(u64) -> u64,
    ) -> Option<Result<(), &'static str>> {
        let now = self.now();
        if let Some(l) = self.linux.as_mut() {
            if let Some(r) = l.mmio(&mut self.lapic, self.ram, gpa, req, now, on_read) {
                return Some(r);
            }
        }
        // Only fetch and decode when a device claims the address.
        let Ok(target) = self.bus.resolve_mmio(gpa, 1) else {
            // `guest=linux`: outside RAM and the device windows is absent
            // hardware (reads all ones, writes ignored); the test guest
            // is stopped there (`None`, vmx-hostile-unmapped).
            self.linux.as_ref()?;
            let access = if req.is_write {
                Access::MmioWrite
            } else {
                Access::MmioRead
            };
            self.note_absent(access, gpa);
            return Some(super::linux::absent_mmio(self.ram, req));
        };
        let (insn, got, mode) = match fetch_instruction(self.ram, req) {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        let now = self.now();
        let result = kernel::mmio::emulate(
            &mut self.bus,
            &mut self.devices,
            gpa,
            &insn[..got],
            mode,
            &mut req.regs.gpr,
            now,
        )?;
        if matches!(target.id, Dev::Virtio(_)) {
            // The guest may have notified a queue or reset the device.
            match self.linux.as_mut() {
                Some(l) => {
                    // InterruptACK may have lowered the line.
                    let mut events = super::linux::VirtioEvents::default();
                    self.devices.io.after_access(self.ram, &mut events);
                    l.sync_virtio(&self.devices.io, events, &mut self.lapic);
                }
                None => self.devices.io.after_access(self.ram, &mut self.lapic),
            }
            self.print_io_notices();
        }
        Some(result.map(|len| req.instruction_len = len as u64))
    }
}
