//! Running the guest under VMX: bring-up (VMXON, VMCS, EPT, guest RAM,
//! loader) and the run loop — interrupt injection, guest time, the
//! watchdog, and the reaction to each exit (Intel SDM Vol. 3C §24-28).
mod hw;
mod machine;
mod setup;
mod switch;

use alloc::alloc::{alloc_zeroed, Layout};
use kernel::config::Config;
use kernel::exitcode;
use machine::Machine;
use vmx::caps::VmxCaps;
use vmx::exit::{self, intwin::INTERRUPT_WINDOW_EXITING, Action, GuestRegs, Stop};
use vmx::vmcs::{Field, VmcsAccess};

/// Upper bound on one stretch of guest execution between exits, in
/// preemption-timer units (guest instructions in Bochs).
const SLICE: u64 = 2_000_000;

/// Why the run loop ended.
struct Ended {
    stop: Stop,
    exits: u64,
}

fn fail(what: &str, e: vmx::Error) -> ! {
    println!("hypervisor: {what}: {e}");
    crate::arch::exit::exit(exitcode::FAILURE)
}

/// Loads the guest and runs it until it stops; never returns.
pub fn run(config: &Config, caps: &VmxCaps, image: &[u8], guest_cmdline: &str) -> ! {
    let controls = setup::controls(caps).unwrap_or_else(|e| fail("VMX controls", e));
    hw::enable(caps).unwrap_or_else(|e| fail("VMXON", e));
    let mut vmcs = hw::HwVmcs::new(caps).unwrap_or_else(|e| fail("VMCS", e));

    let size = config.guest_mem as usize;
    let layout = Layout::from_size_align(size, 2 << 20).expect("2 MiB-aligned layout");
    // SAFETY: non-zero size; the block is never freed and is identity
    // mapped, so it is both the guest RAM slice and its host-physical base.
    let base = unsafe { alloc_zeroed(layout) };
    if base.is_null() {
        println!(
            "hypervisor: cannot allocate {} MiB of guest RAM (heap too small)",
            size >> 20
        );
        crate::arch::exit::exit(exitcode::BAD_CONFIG);
    }
    // SAFETY: `base` points to `size` zeroed bytes owned by the guest only.
    let ram: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(base, size) };
    let start = match kernel::loader::multiboot::load(image, guest_cmdline, ram) {
        Ok(s) => s,
        Err(e) => {
            println!("hypervisor: {e}");
            crate::arch::exit::exit(exitcode::BAD_CONFIG);
        }
    };
    let ept = vmx::ept::Ept::new(size as u64, base as u64).unwrap_or_else(|e| fail("EPT", e));
    println!(
        "hypervisor: VMCS {:#x}, guest RAM {} MiB at host {:#x}, EPT {:#x}, entry {:?}, cmdline \"{}\"",
        vmcs.region,
        size >> 20,
        base as u64,
        ept.pointer(),
        start,
        guest_cmdline
    );
    let mut regs = GuestRegs::default();
    let setup = setup::write_controls(&mut vmcs, &controls, caps, ept.pointer())
        .and_then(|_| setup::write_host_state(&mut vmcs, switch::exit_entry()))
        .and_then(|_| setup::write_guest_state(&mut vmcs, caps, start, &mut regs));
    if let Err(e) = setup {
        fail("VMCS setup", e);
    }
    let mut machine = Machine::new(ram);
    let watchdog_ticks = config.watchdog_secs * exit::cpuid::GUEST_TSC_KHZ as u64 * 1000;
    let t0 = machine::host_tsc();
    let ended = run_loop(&mut vmcs, &mut regs, &mut machine, watchdog_ticks);
    let host_ticks = machine::host_tsc().wrapping_sub(t0);
    machine.flush_console_partial();
    report(&ended, &machine, host_ticks);
    let code = match ended.stop {
        Stop::GuestExit { code } => code,
        _ => exitcode::GUEST_STOPPED,
    };
    crate::arch::exit::exit(code)
}

fn report(ended: &Ended, m: &Machine, host_ticks: u64) {
    match &ended.stop {
        Stop::GuestExit { code } => println!("hypervisor: guest exited with code {code}"),
        Stop::TripleFault { rip } => {
            println!("hypervisor: guest stopped: triple fault (RIP {rip:#x})")
        }
        Stop::UnmappedAccess { gpa, access, rip } => println!(
            "hypervisor: guest stopped: {access} of unmapped guest-physical {gpa:#x} (neither RAM nor a device) at RIP {rip:#x}"
        ),
        Stop::DeadHalt { rip } => println!(
            "hypervisor: guest stopped: HLT with no way to wake up (interrupts off or no timer) at RIP {rip:#x}"
        ),
        Stop::Watchdog { rip, ticks } => println!(
            "hypervisor: guest stopped: watchdog: interrupts disabled for {ticks} guest TSC ticks, RIP {rip:#x}"
        ),
        Stop::Unsupported { reason, what, rip } => println!(
            "hypervisor: guest stopped: unsupported exit {reason}: {what} at RIP {rip:#x}"
        ),
        Stop::EntryFailure { reason, qualification } => println!(
            "hypervisor: guest stopped: VM entry failed (reason {reason}, qualification {qualification:#x})"
        ),
        Stop::Vmx(e) => println!("hypervisor: guest stopped: {e}"),
    }
    let mut line = alloc::string::String::new();
    for (reason, n) in m.exits.iter().enumerate().filter(|(_, n)| **n > 0) {
        line.push_str(&alloc::format!(" {reason}:{n}"));
    }
    println!(
        "hypervisor: {} exits in {} host TSC ticks; by reason:{}",
        ended.exits, host_ticks, line
    );
}

fn run_loop(
    vmcs: &mut hw::HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    watchdog_ticks: u64,
) -> Ended {
    let mut launched = false;
    let mut halted = false;
    let mut exits = 0u64;
    let mut irq_off_since: Option<u64> = None;
    let stop = |stop: Stop, exits: u64| Ended { stop, exits };
    loop {
        let now = m.now();
        m.lapic.tick(now);
        let rflags = vmcs.get(Field::GuestRflags);
        let interruptible =
            rflags & (1 << 9) != 0 && vmcs.get(Field::GuestInterruptibility) & 0b11 == 0;
        let event_pending = vmcs.get(Field::EntryInterruptionInfo) & (1 << 31) != 0;
        let mut proc = vmcs.get(Field::ProcBasedControls) & !INTERRUPT_WINDOW_EXITING;
        let pending = m.lapic.pending_vector();
        if let Some(vector) = pending {
            if interruptible && !event_pending {
                if let Err(e) = exit::inject_interrupt(vmcs, vector) {
                    return stop(Stop::Vmx(e), exits);
                }
                m.lapic.ack(vector);
                halted = false;
            } else {
                proc |= INTERRUPT_WINDOW_EXITING;
            }
        }
        if halted {
            match m.lapic.next_deadline() {
                Some(deadline) if rflags & (1 << 9) != 0 => {
                    m.skip_to(deadline);
                    continue;
                }
                _ => {
                    return stop(
                        Stop::DeadHalt {
                            rip: vmcs.get(Field::GuestRip),
                        },
                        exits,
                    );
                }
            }
        }
        // Watchdog: interrupts continuously disabled for too long.
        if rflags & (1 << 9) == 0 {
            let since = *irq_off_since.get_or_insert(now);
            if now.wrapping_sub(since) > watchdog_ticks {
                return stop(
                    Stop::Watchdog {
                        rip: vmcs.get(Field::GuestRip),
                        ticks: now - since,
                    },
                    exits,
                );
            }
        } else {
            irq_off_since = None;
        }
        let mut slice = SLICE;
        if pending.is_none() {
            if let Some(deadline) = m.lapic.next_deadline() {
                slice = slice.min(deadline.saturating_sub(now).max(1));
            }
        }
        let armed = vmcs
            .write(Field::ProcBasedControls, proc)
            .and_then(|_| vmcs.write(Field::PreemptionTimerValue, slice));
        if let Err(e) = armed {
            return stop(Stop::Vmx(e), exits);
        }
        // SAFETY: the VMCS is current and complete (host state written in
        // setup, HOST_RIP = vmx_exit) and EPT confines the guest to its RAM.
        let entry = unsafe { switch::enter(regs, launched) };
        match entry {
            switch::Entry::Exited => {}
            switch::Entry::FailInvalid => {
                return stop(
                    Stop::Vmx(vmx::Error::VmFailInvalid {
                        instruction: "VM entry",
                    }),
                    exits,
                )
            }
            switch::Entry::FailValid => {
                let number = vmcs.get(Field::VmInstructionError);
                let instruction = if launched { "VMRESUME" } else { "VMLAUNCH" };
                return stop(
                    Stop::Vmx(vmx::Error::VmFailValid {
                        instruction,
                        number,
                    }),
                    exits,
                );
            }
        }
        launched = true;
        exits += 1;
        let reason = vmcs.get(Field::ExitReason) as u16 as usize;
        if let Some(n) = m.exits.get_mut(reason) {
            *n += 1;
        }
        // A pending injection was delivered by this entry.
        let action = exit::handle(vmcs, regs, m);
        m.flush_console();
        match action {
            Ok(Action::Resume) => {}
            Ok(Action::Halt) => halted = true,
            Ok(Action::Stop(s)) => return stop(s, exits),
            Err(e) => return stop(Stop::Vmx(e), exits),
        }
    }
}
