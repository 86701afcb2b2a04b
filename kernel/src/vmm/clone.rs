//! A repair's state transfer, end to end within one boot (issue 16,
//! `ft_test_clone=`): from a point in the guest's run, the machine is sent
//! into an `ft::state` transfer exactly as a serving node would send it —
//! pre-copy rounds while the guest runs (every page first, then the pages
//! the guest dirtied meanwhile, found through the EPT's dirty logging and
//! the devices' own log, as `ft::repair::PreCopy` decides), then, with the
//! guest stopped, the last pages, the vCPU (general registers, VMCS guest
//! state, the syscall MSRs, the x87/SSE image) and the device models, and
//! the commit. Then the live state is wrecked (RAM zeroed, the VMCS guest
//! state reset to the boot entry, registers zeroed, MSRs, FPU and devices
//! reset) and the transfer is received and applied through
//! `ft::state::Receiver`, as a joining node would. The guest must go on as
//! if nothing happened: a page the dirty tracking missed would hold its
//! round-0 content and the guest would compute something else.
//!
//! In this one boot a round's pages are copied at once; the guest then
//! runs for as long as a link of `ft_test_clone_link` MB/s (1 GB/s by
//! default) would take to carry them (at least 1 ms of guest time), which
//! is what the next round's dirty set measures.
use alloc::vec::Vec;

use ft::repair::{PreCopy, PreCopyConfig, Step, StopReason};
use ft::state::{Chunk, Expect, Progress, Receiver, Sender, PAGE};
use vmx::exit::GuestRegs;
use vmx::vmcs::{Field, VmcsAccess};

use super::hw::HwVmcs;
use super::machine::{write_syscall_msrs, CloneContext, DirtyEpt, Machine};
use super::transfer;

/// The shortest round.
const MIN_ROUND_NS: u64 = 1_000_000;

/// A clone waiting for its time or in its pre-copy.
pub struct LiveClone {
    ctx: CloneContext,
    start_at: u64,
    link_bytes_per_s: u64,
    ept: Option<&'static mut vmx::ept::Ept>,
    phase: Option<PreCopying>,
}

struct PreCopying {
    sender: Sender,
    out: Vec<u8>,
    precopy: PreCopy,
    round_started: u64,
    round_ns: u64,
    /// Pages sent in each round.
    per_round: Vec<usize>,
    zero_pages: u64,
}

/// What the clone did, for the report line.
pub struct Cloned {
    pub bytes: usize,
    pub per_round: Vec<usize>,
    pub zero_pages: u64,
    pub why: StopReason,
    pub expected_pause_ns: u64,
    pub pause_host_ticks: u64,
    pub rip: u64,
    pub devices: usize,
}

impl LiveClone {
    /// A clone that starts at guest time `start_at` and logs dirty pages
    /// through `ept`.
    pub fn new(
        ctx: CloneContext,
        start_at: u64,
        link_bytes_per_s: u64,
        ept: &'static mut vmx::ept::Ept,
    ) -> Self {
        Self {
            ctx,
            start_at,
            link_bytes_per_s,
            ept: Some(ept),
            phase: None,
        }
    }
}

fn err<E: core::fmt::Debug>(e: E) -> alloc::string::String {
    alloc::format!("{e:?}")
}

/// Appends `pages` (their content now) as round `round`.
fn send_pages(
    p: &mut PreCopying,
    m: &Machine,
    round: u32,
    pages: &[u64],
) -> Result<(), alloc::string::String> {
    p.zero_pages += transfer::encode_pages(&mut p.sender, &mut p.out, m.ram(), round, pages)?;
    p.per_round.push(pages.len());
    Ok(())
}

/// One step of the clone at the top of a run-loop iteration (guest time
/// `now`). `Ok(Some(clone))`: not finished; `Ok(None)` with the report
/// printed: done; `Err`: the guest cannot go on.
pub fn step(
    mut c: LiveClone,
    vmcs: &mut HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    now: u64,
) -> Result<Option<LiveClone>, alloc::string::String> {
    let Some(p) = c.phase.as_mut() else {
        if now < c.start_at {
            return Ok(Some(c));
        }
        // Round 0: every page, with the guest's writes logged from here.
        let ept = c.ept.take().ok_or("no EPT")?;
        m.dirty = Some(DirtyEpt::start(ept, u64::MAX));
        m.devices.io.dirty.take_round();
        let total = (m.ram().len() / PAGE) as u64;
        let mut p = PreCopying {
            sender: Sender::new(),
            out: Vec::new(),
            precopy: PreCopy::new(PreCopyConfig::default(), total),
            round_started: now,
            round_ns: 0,
            per_round: Vec::new(),
            zero_pages: 0,
        };
        p.sender
            .push(
                Chunk::Begin {
                    cluster: 0,
                    sender: 0,
                    guest_id: [0; 16],
                    machine: c.ctx.machine,
                    generation: 0,
                    ram_bytes: m.ram().len() as u64,
                },
                &mut p.out,
            )
            .map_err(err)?;
        let Step::Send { pages, .. } = p.precopy.start() else {
            return Err("round 0 is not a send".into());
        };
        send_pages(&mut p, m, 0, &pages)?;
        // The copy took host time the guest did not run: the round starts
        // after it (a real transfer runs beside the guest).
        p.round_started = m.now();
        p.round_ns = round_ns(pages.len(), c.link_bytes_per_s);
        c.phase = Some(p);
        return Ok(Some(c));
    };
    if now < p.round_started + p.round_ns {
        return Ok(Some(c));
    }
    let mut dirty = m.dirty.as_mut().map(DirtyEpt::round).unwrap_or_default();
    dirty.extend(m.devices.io.dirty.take_round());
    match p.precopy.round_done(now - p.round_started, dirty) {
        None => Err("the pre-copy ended twice".into()),
        Some(Step::Send { round, pages }) => {
            send_pages(p, m, round, &pages)?;
            p.round_started = m.now();
            p.round_ns = round_ns(pages.len(), c.link_bytes_per_s);
            Ok(Some(c))
        }
        Some(Step::StopAndCopy {
            round,
            pages,
            why,
            expected_pause_ns,
        }) => {
            let t0 = super::machine::host_tsc();
            send_pages(p, m, round, &pages)?;
            let mut p = c.phase.take().ok_or("no pre-copy")?;
            if let Some(d) = m.dirty.take() {
                d.ept.stop_dirty_log();
                super::machine::invept_single(d.ept.pointer());
            }
            let rip = vmcs.get(Field::GuestRip);
            let devices = stop_and_copy(&mut p, vmcs, regs, m)?;
            wreck(vmcs, regs, m, &c.ctx)?;
            receive(&p.out, vmcs, regs, m, &c.ctx)?;
            let pause_host_ticks = super::machine::host_tsc().wrapping_sub(t0);
            let done = Cloned {
                bytes: p.out.len(),
                per_round: p.per_round,
                zero_pages: p.zero_pages,
                why,
                expected_pause_ns,
                pause_host_ticks,
                rip,
                devices,
            };
            println!(
                "clone: the machine went through a state transfer of {} bytes: pre-copy rounds of {:?} pages ({} zero in all), stopped for {:?} with {} pages left (expected pause {} us at the link rate), then the vCPU and {} device models; wrecked and restored from it in {} host ticks; the guest goes on at RIP {:#x}",
                done.bytes,
                done.per_round,
                done.zero_pages,
                done.why,
                done.per_round.last().copied().unwrap_or(0),
                done.expected_pause_ns / 1000,
                done.devices,
                done.pause_host_ticks,
                done.rip
            );
            Ok(None)
        }
    }
}

/// Guest time a round of `pages` pages takes on the nominal link.
fn round_ns(pages: usize, link_bytes_per_s: u64) -> u64 {
    (pages as u64 * PAGE as u64 * 1_000_000_000 / link_bytes_per_s.max(1)).max(MIN_ROUND_NS)
}

/// The stopped vCPU, the devices and the commit; how many device models.
fn stop_and_copy(
    p: &mut PreCopying,
    vmcs: &HwVmcs,
    regs: &mut GuestRegs,
    m: &Machine,
) -> Result<usize, alloc::string::String> {
    let count = transfer::encode_stopped(&mut p.sender, &mut p.out, vmcs, regs, m)?;
    p.sender
        .push(
            Chunk::commit(ft::log::ExecPoint::default(), m.now(), 0),
            &mut p.out,
        )
        .map_err(err)?;
    Ok(count)
}

/// Wrecks what was sent: a receiver must bring every bit back.
fn wreck(
    vmcs: &mut HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    ctx: &CloneContext,
) -> Result<(), alloc::string::String> {
    m.ram_mut().fill(0);
    *regs = GuestRegs::default();
    super::setup::write_guest_state(vmcs, &ctx.caps, ctx.start, regs)
        .map_err(|e| alloc::format!("{e}"))?;
    m.lapic = kernel::devices::lapic::Lapic::with_mode(kernel::devices::lapic::ApicMode::XApic, 40);
    m.devices.uart = kernel::devices::uart::Uart::new(None);
    m.devices.io.blk = kernel::devices::virtio::mmio::VirtioMmio::new(
        kernel::devices::virtio::blk::Blk::new(0, b""),
        0,
    );
    m.devices.io.net = kernel::devices::virtio::mmio::VirtioMmio::new(
        kernel::devices::virtio::net::Net::new([0; 6]),
        0,
    );
    if let Some(l) = m.linux.as_mut() {
        l.models.ioapic = kernel::devices::ioapic::Ioapic::new(0);
        l.models.pit = kernel::devices::pit::Pit::new(1);
        l.models.rtc = kernel::devices::rtc::Rtc::new(1);
        l.models.pm = kernel::devices::acpi_pm::AcpiPm::new(1);
    }
    write_syscall_msrs(&[0; 5]);
    crate::arch::guestregs::restore(0, [0; 5]);
    Ok(())
}

/// Receives the transfer as a joining node does (pages into RAM, the rest
/// staged until the commit verifies) and applies it.
fn receive(
    bytes: &[u8],
    vmcs: &mut HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    ctx: &CloneContext,
) -> Result<(), alloc::string::String> {
    let mut r = Receiver::new(Expect {
        cluster: 0,
        guest_id: Some([0; 16]),
        machine: ctx.machine,
    });
    let ram = m.ram_mut();
    let staged = match r.push(bytes, &mut |p, data| transfer::write_page(ram, p, data)) {
        Ok(Progress::Complete(s)) => s,
        Ok(Progress::Receiving) => return Err("the transfer did not complete".into()),
        Err(why) => return Err(alloc::format!("{why}")),
    };
    transfer::apply(&staged, vmcs, regs, m)
}
