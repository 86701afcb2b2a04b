//! Repair in the run loop (issue 16; DESIGN.md §1.9, seeds/004 FT
//! VMotion): the serving node's side of a state transfer to a joining
//! node, beside its running guest, and the joining node's start from it.
//!
//! **Serving** ([`serve`], at the top of every run-loop iteration while
//! the FT node acts alone and a joiner has asked through the node's
//! [`RepairLink`]): dirty logging starts (EPT write protection and the
//! devices' own log); round 0 sends every page, each later round the pages
//! dirtied during the one before, as `ft::repair::PreCopy` decides from
//! the bandwidth the link showed; pages are encoded only as the link
//! drains, so each goes out with its content of that moment and a later
//! write to it is in the next round. When `PreCopy` says stop, the guest
//! is stopped at the first iteration where its disk owes it nothing (a
//! request in flight would complete into the old pair only), the last
//! dirty pages, the vCPU, the device models and the tallies are encoded;
//! the node takes the flag's next generation for the new pair (through
//! the link: `ft::node::Node::begin_repair`), the commit goes out, and the
//! guest waits, its clock stopped, until the new backup acknowledged the
//! session ([`RepairLink::await_pair`]); then it runs on as a paired
//! primary recording from that exact point. A pair that does not form in
//! time leaves the node alone again, its guest running. A link that fails
//! before the commit leaves the node serving alone, dirty logging off,
//! ready for a new attempt.
//!
//! **Joining** ([`apply_received`]): the pages are written into guest RAM
//! as they arrive (the guest does not run yet); once the commit verified,
//! the vCPU, devices and tallies are applied, the execution counter and
//! guest time set to the commit's point, and the node joins as a backup.
use alloc::string::String;
use alloc::vec::Vec;

use ft::log::{ExecPoint, MachineId};
use ft::repair::{PreCopy, PreCopyConfig, Step, StopReason};
use ft::replay::{Recorder, Tape};
use ft::state::{Chunk, Sender, Staged, PAGE, PAGES_PER_CHUNK};
use vmx::counter::ExecCounter;
use vmx::exit::GuestRegs;

use super::hw::HwVmcs;
use super::machine::{DirtyEpt, Machine};
use super::transfer;

/// Queue more pages only while less than this is waiting to leave.
const QUEUE_BOUND: usize = 512 * 1024;

/// The serving node's link to a joining node (the FT node's adapter).
pub trait RepairLink {
    /// The joiner's node id, once its request arrived and checked.
    fn joiner(&mut self) -> Option<u64>;
    /// Bytes queued and not yet sent and acknowledged.
    fn queued(&self) -> usize;
    /// Queues bytes to the joiner.
    fn send(&mut self, bytes: &[u8]);
    /// The connection failed (reset, closed, bad bytes), with the reason.
    fn failed(&mut self) -> Option<String>;
    /// What the Begin names: cluster, this node's id, the guest id, the
    /// machine, the flag generation now.
    fn identity(&self) -> (u64, u64, [u8; 16], MachineId, u64);
    /// Takes the flag's next generation for the pair with `joiner`
    /// (`Node::begin_repair`, on the guest disk's session `io`, the one
    /// registered for the LUN's reservation) and turns the node into its
    /// primary.
    fn form_pair(&mut self, joiner: u64, io: &mut kernel::guestio::GuestIo) -> Result<u64, String>;
    /// After the commit, the guest stopped at `at` (guest time
    /// `guest_ns`): waits, keeping the network and the node's timers going,
    /// until the new pair's session started (the new backup acknowledged
    /// the Hello: it runs from the commit's point) or did not form in time
    /// (the node arbitrated and acts alone again, `Err`), or the node
    /// halted (`Err`).
    fn await_pair(
        &mut self,
        io: &mut kernel::guestio::GuestIo,
        at: ExecPoint,
        guest_ns: u64,
    ) -> Result<(), String>;
    /// Ends the attempt (closes the connection, takes the next joiner).
    fn abort(&mut self, why: &str);
    /// Progress for the status line: percent of the current round sent,
    /// rounds, dirty pages per second of the last round.
    fn progress(&mut self, percent: u64, round: u32, dirty_per_s: u64);
}

/// A transfer under way on the serving node.
pub struct Serving {
    joiner: u64,
    sender: Sender,
    precopy: PreCopy,
    round: u32,
    pages: Vec<u64>,
    next: usize,
    round_started: u64,
    /// The stop was decided: the pages it named, why, what it expected.
    stop: Option<(Vec<u64>, StopReason, u64)>,
    per_round: Vec<usize>,
    zero: u64,
    bytes: u64,
    dirty_per_s: u64,
    started: u64,
}

/// Where the guest stands at the top of a run-loop iteration.
#[derive(Debug, Clone, Copy)]
pub struct GuestAt {
    pub at: ExecPoint,
    /// In a HLT (the run loop keeps that state, not the VMCS).
    pub halted: bool,
}

/// What [`serve`] left: the transfer still under way, or none.
pub type Served = Result<Option<Serving>, String>;

fn stop_logging(m: &mut Machine) -> Vec<u64> {
    let Some(mut d) = m.dirty.take() else {
        return Vec::new();
    };
    let last = d.round();
    d.ept.stop_dirty_log();
    super::machine::invept_single(d.ept.pointer());
    m.ept_spare = Some(d.ept);
    last
}

fn start(link: &mut dyn RepairLink, m: &mut Machine, joiner: u64) -> Result<Serving, String> {
    let ept = m
        .ept_spare
        .take()
        .ok_or("the EPT is in use by another dirty log")?;
    m.dirty = Some(DirtyEpt::start(ept, u64::MAX));
    m.devices.io.dirty.take_round();
    let (cluster, me, guest_id, machine, generation) = link.identity();
    let total = (m.ram().len() / PAGE) as u64;
    let mut sender = Sender::new();
    let mut out = Vec::new();
    sender
        .push(
            Chunk::Begin {
                cluster,
                sender: me,
                guest_id,
                machine,
                generation,
                ram_bytes: m.ram().len() as u64,
            },
            &mut out,
        )
        .map_err(|e| alloc::format!("{e:?}"))?;
    link.send(&out);
    let mut precopy = PreCopy::new(PreCopyConfig::default(), total);
    let Step::Send { pages, .. } = precopy.start() else {
        return Err("round 0 is not a send".into());
    };
    println!(
        "ft: repair: node {joiner} joins: pre-copy of {} MiB of guest RAM while the guest runs (dirty logging on)",
        m.ram().len() >> 20
    );
    Ok(Serving {
        joiner,
        sender,
        precopy,
        round: 0,
        pages,
        next: 0,
        round_started: m.now(),
        stop: None,
        per_round: Vec::new(),
        zero: 0,
        bytes: out.len() as u64,
        dirty_per_s: 0,
        started: m.now(),
    })
}

/// One step of the serving side at the top of a run-loop iteration, the
/// guest at `guest`. `tape` becomes a recording at the commit.
pub fn serve(
    serving: Option<Serving>,
    link: Option<&mut dyn RepairLink>,
    vmcs: &HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    tape: &mut Tape,
    guest: GuestAt,
) -> Served {
    let GuestAt { at, halted } = guest;
    let Some(link) = link else {
        // The node stopped serving alone (halted, or a pair formed).
        if serving.is_some() {
            stop_logging(m);
        }
        return Ok(None);
    };
    if let Some(why) = link.failed() {
        if serving.is_some() {
            stop_logging(m);
            println!("ft: repair: the transfer failed before its commit: {why}; still serving alone, a new attempt may start");
            link.abort(&why);
        }
        return Ok(None);
    }
    let mut s = match serving {
        Some(s) => s,
        None => match link.joiner() {
            Some(j) => match start(link, m, j) {
                Ok(s) => s,
                Err(why) => {
                    link.abort(&why);
                    return Ok(None);
                }
            },
            None => return Ok(None),
        },
    };
    let now = m.now();
    if s.stop.is_none() {
        // Pages as the link drains (their content now).
        while s.next < s.pages.len() && link.queued() < QUEUE_BOUND {
            let end = (s.next + PAGES_PER_CHUNK).min(s.pages.len());
            let mut out = Vec::new();
            s.zero += transfer::encode_pages(
                &mut s.sender,
                &mut out,
                m.ram(),
                s.round,
                &s.pages[s.next..end],
            )?;
            s.next = end;
            s.bytes += out.len() as u64;
            link.send(&out);
        }
        let percent = (s.next * 100).checked_div(s.pages.len()).unwrap_or(100) as u64;
        link.progress(percent, s.round, s.dirty_per_s);
        if s.next < s.pages.len() || link.queued() > 0 {
            return Ok(Some(s));
        }
        // The round is out and acknowledged: what the guest dirtied
        // meanwhile decides the next.
        let elapsed = now.saturating_sub(s.round_started).max(1);
        let mut dirty = m.dirty.as_mut().map(DirtyEpt::round).unwrap_or_default();
        dirty.extend(m.devices.io.dirty.take_round());
        s.dirty_per_s = (dirty.len() as u64).saturating_mul(1_000_000_000) / elapsed;
        s.per_round.push(s.pages.len());
        match s.precopy.round_done(elapsed, dirty) {
            None => return Err("repair: the pre-copy ended twice".into()),
            Some(Step::Send { round, pages }) => {
                s.round = round;
                s.pages = pages;
                s.next = 0;
                s.round_started = now;
                return Ok(Some(s));
            }
            Some(Step::StopAndCopy {
                round,
                pages,
                why,
                expected_pause_ns,
            }) => {
                s.round = round;
                s.stop = Some((pages, why, expected_pause_ns));
            }
        }
    }
    // Stop the guest only where its disk owes it nothing, and not in a
    // HLT (the run loop keeps that state, not the VMCS).
    if halted || !m.devices.io.quiescent() {
        return Ok(Some(s));
    }
    let t0 = super::machine::host_tsc();
    let (mut pages, why, expected_pause_ns) = s.stop.take().ok_or("no stop")?;
    pages.extend(stop_logging(m));
    pages.extend(m.devices.io.dirty.take_round());
    pages.sort_unstable();
    pages.dedup();
    let mut out = Vec::new();
    s.zero += transfer::encode_pages(&mut s.sender, &mut out, m.ram(), s.round, &pages)?;
    s.per_round.push(pages.len());
    let devices = transfer::encode_stopped(&mut s.sender, &mut out, vmcs, regs, m)?;
    let generation = match link.form_pair(s.joiner, &mut m.devices.io) {
        Ok(g) => g,
        Err(why) => {
            println!("ft: repair: the new pair cannot form: {why}; still serving alone");
            link.abort(&why);
            return Ok(None);
        }
    };
    s.sender
        .push(Chunk::commit(at, m.now(), 0), &mut out)
        .map_err(|e| alloc::format!("{e:?}"))?;
    s.bytes += out.len() as u64;
    link.send(&out);
    // The guest runs on as the new pair's primary from this very point,
    // once the new backup runs from it too: its outputs could not leave
    // before, and a guest that waits seconds for a device may time out.
    // Its clock stands still meanwhile (the new backup starts at the
    // commit's time).
    *tape = Tape::Record(Recorder::streaming());
    m.console_quiet = false;
    m.console_capture = Some(Vec::new());
    let copied_host_ticks = super::machine::host_tsc().wrapping_sub(t0);
    let stopped_at = m.now();
    let formed = link.await_pair(&mut m.devices.io, at, stopped_at);
    m.set_now(stopped_at);
    let pause_host_ticks = super::machine::host_tsc().wrapping_sub(t0);
    if let Err(why) = formed {
        println!("ft: repair: the new pair did not form: {why}; the guest goes on alone");
        return Ok(None);
    }
    println!(
        "ft: repair: committed: node {} is the backup under generation {generation}; {} bytes in pre-copy rounds of {:?} pages ({} zero), stopped for {why:?} (expected pause {} us), the vCPU and {devices} device models; guest paused {} host ticks ({} to copy the last state, the rest until the new backup acknowledged), its clock stopped; transfer took {} ms of guest time; the pair resumes at (counter {}, rip {:#x})",
        s.joiner,
        s.bytes,
        s.per_round,
        s.zero,
        expected_pause_ns / 1000,
        pause_host_ticks,
        copied_host_ticks,
        (stopped_at - s.started) / 1_000_000,
        at.counter,
        at.rip
    );
    Ok(None)
}

/// The joining node: applies a verified transfer (its pages are in RAM
/// already) and sets the counter and the guest's clock to its point.
pub fn apply_received(
    staged: &Staged,
    vmcs: &mut HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    counter: Option<&mut (dyn ExecCounter + 'static)>,
) -> Result<(), String> {
    transfer::apply(staged, vmcs, regs, m)?;
    if let Some(c) = counter {
        c.resume_at(staged.at.counter);
    }
    m.set_now(staged.guest_time_ns);
    Ok(())
}
