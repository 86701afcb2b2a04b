//! Running the guest under VMX: bring-up (VMXON, VMCS, EPT, guest RAM,
//! loader) and the run loop — interrupt injection, guest time, the
//! watchdog, and the reaction to each exit (Intel SDM Vol. 3C §24-28).
mod clone;
mod repair;
mod transfer;
pub use repair::RepairLink;
mod hw;
mod linux;
mod machine;
mod rr;
mod setup;
mod switch;

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::boxed::Box;
use ft::log::ExecPoint;
use ft::replay::{Divergence, Due, Recorder, Replayer, Tape};
use kernel::config::{Config, FtMode};
use kernel::exitcode;
use machine::Machine;
use vmx::caps::{PmuInfo, VmxCaps};
use vmx::counter::{ExecCounter, Plan, Refusal};
use vmx::exit::{self, intwin::INTERRUPT_WINDOW_EXITING, Action, GuestRegs, Stop};
use vmx::vmcs::{Field, VmcsAccess};

/// Upper bound on one stretch of guest execution between exits, in
/// preemption-timer units (guest instructions in Bochs).
const SLICE: u64 = 2_000_000;
/// Longest a spinning guest is parked at a PAUSE while its I/O is owed
/// (guest TSC ticks, 1 GHz: 20 ms).
const SPIN_PARK_MAX: u64 = 20_000_000;

/// Why the run loop ended.
struct Ended {
    end: End,
    exits: u64,
}

enum End {
    Stop(Stop),
    /// Replay met the log no more (DESIGN.md §6 divergence detector).
    Diverged(Divergence),
    /// The counter backend found it cannot be exact here.
    Refused(Refusal),
    /// The FT pair's session failed (issue 9, `crate::ftlive`).
    Live(alloc::string::String),
}

fn fail(what: &str, e: vmx::Error) -> ! {
    println!("hypervisor: {what}: {e}");
    crate::arch::exit::exit(exitcode::FAILURE)
}

/// Loads the guest and runs it until it stops; never returns. `extra`: the
/// boot modules after the guest image — a recorded log that `ft=replay`
/// replays; for `guest=linux` the initrd first, then the log. `live`:
/// one side of an FT pair (`role=`, issue 9): the primary records and
/// streams, the backup replays the stream (`crate::ftlive`). `io`: the
/// guest's devices when the caller already brought them up (the FT pair
/// shares the NIC with them); `None` builds them from `config`.
#[allow(clippy::too_many_arguments)] // `io` (issue 9) made it eight
pub fn run(
    config: &Config,
    caps: &VmxCaps,
    pmu: PmuInfo,
    image: &[u8],
    guest_cmdline: &str,
    extra: &[&[u8]],
    io: Option<kernel::guestio::GuestIo>,
    mut live: Option<&mut (dyn crate::ftlive::Live + 'static)>,
) -> ! {
    // FT pair: a guest spinning (PAUSE) while the output rule holds its
    // device request back is parked until the request completes.
    let pause_exiting = config.pair.role.is_some();
    let controls = setup::controls(caps, rr::wants_save_timer(config, caps), pause_exiting)
        .unwrap_or_else(|e| fail("VMX controls", e));
    hw::enable(caps).unwrap_or_else(|e| fail("VMXON", e));
    let mut vmcs = hw::HwVmcs::new(caps).unwrap_or_else(|e| fail("VMCS", e));

    let size = config.guest_mem as usize;
    let base = alloc_ram(size);
    // SAFETY: `base` points to `size` zeroed bytes owned by the guest only.
    let ram: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(base, size) };
    let linux_guest = config.guest == kernel::config::GuestKind::Linux;
    // Issue 10: `guest=linux` boots a bzImage; the second module is its initrd.
    let joining = config.pair.join && live.is_some();
    let (start, log) = if joining {
        // A repair's joining node: the guest comes from the transfer,
        // which replaces this placeholder state before anything runs.
        (
            kernel::loader::GuestStart::Protected32 {
                entry: 0,
                eax: 0,
                ebx: 0,
            },
            None,
        )
    } else if linux_guest {
        let initrd = extra.first().copied();
        (
            linux::load(image, initrd, guest_cmdline, ram),
            extra.get(1).copied(),
        )
    } else {
        match kernel::loader::multiboot::load(image, guest_cmdline, ram) {
            Ok(s) => (s, extra.first().copied()),
            Err(e) => {
                println!("hypervisor: {e}");
                crate::arch::exit::exit(exitcode::BAD_CONFIG);
            }
        }
    };
    // Leaked: the VMCS points at its tables for the rest of the boot.
    let ept: &'static mut vmx::ept::Ept = Box::leak(Box::new(
        vmx::ept::Ept::new(size as u64, base as u64).unwrap_or_else(|e| fail("EPT", e)),
    ));
    let eptp = ept.pointer();
    println!(
        "hypervisor: VMCS {:#x}, guest RAM {} MiB at host {:#x}, EPT {:#x}, entry {:?}, cmdline \"{}\"",
        vmcs.region,
        size >> 20,
        base as u64,
        eptp,
        start,
        guest_cmdline
    );
    let mut regs = GuestRegs::default();
    let setup = setup::write_controls(&mut vmcs, &controls, caps, eptp)
        .and_then(|_| setup::write_host_state(&mut vmcs, switch::exit_entry()))
        .and_then(|_| setup::write_guest_state(&mut vmcs, caps, start, &mut regs));
    if let Err(e) = setup {
        fail("VMCS setup", e);
    }
    let mut counter: Option<Box<dyn ExecCounter>> = None;
    if rr::counter_wanted(config) {
        match rr::choose_counter(config, caps, pmu) {
            Ok(c) => {
                println!("counter: {}", c.describe());
                counter = Some(c);
            }
            Err(r) => {
                println!("counter: {r}");
                crate::arch::exit::exit(exitcode::NO_VMX);
            }
        }
    }
    // Replay needs the initial state twice: keep a copy of guest RAM (the
    // VMCS guest state and the devices are rebuilt from `start`).
    let snapshot = (config.ft == FtMode::Replay && log.is_none()).then(|| {
        let copy = alloc_ram(size);
        // SAFETY: both blocks are `size` bytes, distinct, and owned here.
        unsafe { core::ptr::copy_nonoverlapping(base, copy, size) };
        copy
    });
    // The guest's syscall MSRs live in the CPU (RDMSR answers from it):
    // every guest starts with them zero, whatever firmware left there, so
    // two hosts (an FT pair) and a same-boot replay agree.
    machine::write_syscall_msrs(&[0; 5]);
    let syscall_msrs = machine::read_syscall_msrs();
    let role = config.pair.role.filter(|_| live.is_some());
    let mut tape = match (config.ft, log) {
        // The FT primary streams its log to the node and keeps none of it.
        _ if role == Some(kernel::config::Role::Primary) => Tape::Record(Recorder::streaming()),
        _ if role == Some(kernel::config::Role::Backup) => Tape::Replay(Replayer::streaming()),
        (FtMode::Off, _) => Tape::Off,
        (FtMode::Replay, Some(bytes)) => Tape::Replay(log_from_module(bytes, config, ram)),
        _ => Tape::Record(Recorder::new()),
    };
    // Guest I/O (issue 6): virtio devices and their backends (the NIC is
    // brought up here for `guest_net=bridge` / `disk=iscsi`).
    let io = io.unwrap_or_else(|| crate::net::guest::guest_io(size as u64, config));
    let mut machine = Machine::new(ram, io, guest_tsc_scale(config));
    machine.announce_io();
    if config.ft_test_clone_ms > 0 {
        machine.clone = Some(clone::LiveClone::new(
            machine::CloneContext {
                machine: kernel::ftnode::machine_identity(config, size as u64, 0),
                caps: *caps,
                start,
            },
            config.ft_test_clone_ms * 1_000_000,
            config.ft_test_clone_link_mbps * 1_000_000,
            ept,
        ));
    } else if config.ept_dirty_test_ms > 0 {
        machine.dirty = Some(machine::DirtyEpt::start(
            ept,
            config.ept_dirty_test_ms * 1_000_000,
        ));
        println!(
            "ept: dirty logging on: guest RAM in 4 KiB write-protected pages, a round every {} ms of guest time",
            config.ept_dirty_test_ms
        );
    } else {
        // Kept for a repair's dirty logging (`repair::serve`).
        machine.ept_spare = Some(ept);
    }
    if linux_guest {
        let tsc_hz = u64::from(exit::cpuid::GUEST_TSC_KHZ) * 1000;
        machine.linux = Some(linux::LinuxDevices::new(tsc_hz, machine.now()));
    }
    // FT pair: the primary's console lines wait for the backup's ack, the
    // backup's are discarded (DESIGN.md §1.4, §1.5).
    match role {
        Some(kernel::config::Role::Primary) => machine.console_capture = Some(Default::default()),
        Some(kernel::config::Role::Backup) => {
            // Discarded, but kept by the node: a backup that goes live
            // re-emits the lines the primary may not have released.
            machine.console_quiet = true;
            machine.console_capture = Some(Default::default());
        }
        None => {}
    }
    let watchdog_ticks = config.watchdog_secs * exit::cpuid::GUEST_TSC_KHZ as u64 * 1000;
    // FT pair: the guest is built; join the session only now, so that a
    // long setup never looks like a dead peer (DESIGN.md §1.6).
    if let Some(l) = live.as_deref_mut() {
        if joining {
            // Issue 16: the guest's state from the node serving it alone.
            let (ram_bytes, sectors) = (
                machine.devices.io.ram_bytes(),
                machine.devices.io.disk_sectors(),
            );
            let ram = machine.ram_mut();
            let got = l
                .receive_state(ram_bytes, sectors, &mut |p, data| {
                    transfer::write_page(ram, p, data)
                })
                .and_then(|staged| {
                    repair::apply_received(
                        &staged,
                        &mut vmcs,
                        &mut regs,
                        &mut machine,
                        counter.as_deref_mut(),
                    )
                    .map(|()| staged)
                });
            match got {
                Ok(staged) => println!(
                    "ft: join: applied the transfer: {} pages over {} rounds, the vCPU and {} device models; the guest resumes at (counter {}, rip {:#x}), guest time {} ns",
                    staged.pages,
                    staged.rounds,
                    staged.devices.len(),
                    staged.at.counter,
                    staged.at.rip,
                    staged.guest_time_ns
                ),
                Err(why) => {
                    println!("ft: join: FAILED: {why}; nothing was applied, no guest runs here");
                    crate::arch::exit::exit(exitcode::FAILURE);
                }
            }
        }
        l.join(&mut machine.devices.io);
    }
    let (t0, g0) = (machine::host_tsc(), machine.now());
    let mut ended = run_loop(
        &mut vmcs,
        &mut regs,
        &mut machine,
        watchdog_ticks,
        counter.as_deref_mut(),
        &mut tape,
        false,
        live.as_deref_mut(),
    );
    let (host_ticks, g1) = (machine::host_tsc().wrapping_sub(t0), machine.now());
    if let Some(d) = machine.dirty.as_mut() {
        let last = d.round().len();
        println!(
            "ept: dirty logging: rounds={} pages={} (last round {last})",
            d.rounds, d.pages
        );
    }
    machine.flush_console_partial();
    report(&ended, &machine, host_ticks);
    machine.report_io();
    if let Some(c) = counter.as_deref() {
        report_counter(c);
    }
    print_numbers(
        &ended,
        counter.as_deref(),
        host_ticks,
        (g0, g1),
        &machine,
        &tape,
    );
    if let Tape::Replay(mut replayer) = tape {
        // FT backup whose guest ended while the primary's log is still
        // open (the primary may still be hashing its RAM for the final
        // checkpoint): the end is judged against the whole log, so wait
        // for it (its Goodbye ends the stream; a failure ends the wait).
        if let (Some(l), End::Stop(Stop::GuestExit { .. })) = (live.as_deref_mut(), &ended.end) {
            // Heartbeats at the final point keep arriving while the primary
            // hashes; anything else (the final checkpoint, or a record past
            // the exit: a divergence the verdict names) or a failure ends
            // the wait.
            while replayer.stream_open() && replayer.only_soft_left() && l.following() {
                if let Err(why) = l.wait(&mut replayer, &mut machine.devices.io) {
                    println!("ft: backup: the log did not end after the guest's exit: {why}");
                    break;
                }
            }
        }
        // ---- replay of a log recorded by another boot ----
        // An FT backup keeps acknowledging while it hashes its RAM.
        let at_end = final_point(&ended, &vmcs, &regs, counter.as_deref()).unwrap_or_default();
        let verdict = replay_verdict(
            &ended,
            &vmcs,
            &regs,
            &machine,
            counter.as_deref(),
            &mut replayer,
            || {
                if let Some(l) = live.as_deref_mut() {
                    l.keepalive(at_end);
                }
            },
        );
        print_applied(&replayer, &machine, "");
        // An FT backup halted for good (lost the test-and-set, storage
        // unreachable, fenced): its replay was cut short, and every entry
        // up to there was met (a mismatch ends the run as a divergence).
        let halted = matches!(ended.end, End::Live(_)) && verdict.is_err();
        if let Some(l) = live.as_deref_mut() {
            let word = match (&verdict, halted) {
                (Ok(_), _) => "IDENTICAL",
                (Err(_), true) => "HALTED",
                (Err(_), false) => "DIVERGED",
            };
            l.end_backup(&replayer, machine.console_lines, word);
        }
        if halted {
            println!(
                "ft: replay: HALTED before the end of the log: {} entries applied, each met at its point",
                replayer.applied_seq()
            );
            finish(&ended, Some(false))
        }
        match verdict {
            Ok((at, hash)) => {
                println!(
                    "ft: replay: IDENTICAL: every entry met; final point (counter {}, rip {:#x}, rcx {:#x}), state hash {hash:#018x} (registers, {} MiB RAM, console) = recorded",
                    at.counter, at.rip, at.rcx, size >> 20
                );
                finish(&ended, Some(true))
            }
            Err(d) => {
                println!("ft: replay: DIVERGED at {d}");
                finish(&ended, Some(false))
            }
        }
    }
    let Tape::Record(mut recorder) = tape else {
        finish(&ended, None)
    };
    let Some(final_at) = final_point(&ended, &vmcs, &regs, counter.as_deref()) else {
        println!("ft: record: the run did not end with a guest exit; nothing to compare");
        finish(&ended, None)
    };
    let rec_hash = final_hash(&vmcs, &regs, &machine, || {
        if let Some(l) = live.as_deref_mut() {
            l.keepalive(final_at);
        }
    });
    recorder.push(&ft::log::LogEntry::Checkpoint {
        at: final_at,
        state_hash: rec_hash,
    });
    recorder.note_state(&state_now(&vmcs, &regs, &machine));
    let rec_lines = machine.console_lines;
    let rec_console = machine.console_hash;
    print_log_summary(
        "record",
        &recorder,
        final_at,
        rec_hash,
        rec_lines,
        rec_console,
    );
    if config.ft == FtMode::Export {
        rr::export_log(&recorder.bytes);
    }
    if let Some(l) = live {
        let guest_now = machine.now();
        let ok = l.end_primary(
            &mut recorder,
            &mut machine.console_capture,
            guest_now,
            &mut machine.devices.io,
        );
        finish(&ended, Some(ok))
    }
    let Some(copy) = snapshot else {
        finish(&ended, None)
    };

    // ---- replay from the in-memory log, same boot ----
    let mut replayer = match Replayer::decode(&recorder.bytes) {
        Ok(r) => r,
        Err(e) => {
            println!("ft: replay: the recorded log does not decode: {e}");
            crate::arch::exit::exit(exitcode::FAILURE);
        }
    };
    if config.replay_mutate != 0 {
        mutate(&mut replayer, config.replay_mutate, machine.ram());
    }
    let ram = machine.into_ram();
    // SAFETY: `copy` holds `size` bytes of the initial guest RAM; `ram` is
    // the guest's block of the same size, not in use while the guest is out.
    unsafe { core::ptr::copy_nonoverlapping(copy, ram.as_mut_ptr(), size) };
    machine::write_syscall_msrs(&syscall_msrs);
    let rewrite = setup::write_controls(&mut vmcs, &controls, caps, eptp)
        .and_then(|_| setup::write_guest_state(&mut vmcs, caps, start, &mut regs));
    if let Err(e) = rewrite {
        fail("VMCS reset for replay", e);
    }
    let mut counter = match rr::choose_counter(config, caps, pmu) {
        Ok(c) => c,
        Err(r) => {
            println!("counter: {r}");
            crate::arch::exit::exit(exitcode::NO_VMX);
        }
    };
    let mut machine = Machine::new(
        ram,
        kernel::guestio::GuestIo::from_config(size as u64, config),
        guest_tsc_scale(config),
    );
    machine.console_quiet = true;
    if linux_guest {
        let tsc_hz = u64::from(exit::cpuid::GUEST_TSC_KHZ) * 1000;
        machine.linux = Some(linux::LinuxDevices::new(tsc_hz, machine.now()));
    }
    let mut tape = Tape::Replay(replayer);
    println!(
        "ft: replay: restored the initial state; replaying {} entries (guest output discarded)",
        recorder.entries()
    );
    let (t0, g0) = (machine::host_tsc(), machine.now());
    ended = run_loop(
        &mut vmcs,
        &mut regs,
        &mut machine,
        watchdog_ticks,
        Some(&mut *counter),
        &mut tape,
        true,
        None,
    );
    let (host_ticks, g1) = (machine::host_tsc().wrapping_sub(t0), machine.now());
    machine.flush_console_partial();
    report(&ended, &machine, host_ticks);
    report_counter(&*counter);
    print_numbers(
        &ended,
        Some(&*counter),
        host_ticks,
        (g0, g1),
        &machine,
        &tape,
    );
    let Tape::Replay(mut replayer) = tape else {
        unreachable!("the replay tape stays a replay tape")
    };
    let verdict = replay_verdict(
        &ended,
        &vmcs,
        &regs,
        &machine,
        Some(&*counter),
        &mut replayer,
        || {},
    );
    print_applied(&replayer, &machine, " discarded");
    match verdict {
        Ok((at, hash)) => {
            let same_console =
                machine.console_lines == rec_lines && machine.console_hash == rec_console;
            if same_console {
                println!(
                    "ft: replay: IDENTICAL: final point (counter {}, rip {:#x}, rcx {:#x}), state hash {hash:#018x} (registers, {} MiB RAM, console) = recorded",
                    at.counter, at.rip, at.rcx, size >> 20
                );
                finish(&ended, Some(true))
            } else {
                println!("ft: replay: DIVERGED: console output differs ({} lines, hash {:#018x}; recorded {rec_lines}, {rec_console:#018x})", machine.console_lines, machine.console_hash);
                finish(&ended, Some(false))
            }
        }
        Err(d) => {
            println!("ft: replay: DIVERGED at {d}");
            explain(&d, &recorder, &vmcs, &regs, &machine);
            finish(&ended, Some(false))
        }
    }
}

/// Decodes the log of the second boot module (and perturbs it when asked).
fn log_from_module(bytes: &[u8], config: &Config, code: &[u8]) -> Replayer {
    let mut r = match Replayer::decode(bytes) {
        Ok(r) => r,
        Err(e) => {
            println!("ft: replay: the log module does not decode: {e}");
            crate::arch::exit::exit(exitcode::BAD_CONFIG);
        }
    };
    println!(
        "ft: replay: log module of {} bytes, {} entries; replaying from the initial state",
        bytes.len(),
        r.len()
    );
    if config.replay_mutate != 0 {
        mutate(&mut r, config.replay_mutate, code);
    }
    r
}

/// The replay's outcome: every entry met and the final state equal.
fn replay_verdict(
    ended: &Ended,
    vmcs: &hw::HwVmcs,
    regs: &GuestRegs,
    machine: &Machine,
    counter: Option<&dyn ExecCounter>,
    replayer: &mut Replayer,
    keepalive: impl FnMut(),
) -> Result<(ExecPoint, u64), Divergence> {
    match (&ended.end, final_point(ended, vmcs, regs, counter)) {
        (End::Diverged(d), _) => Err(d.clone()),
        (_, Some(at)) => {
            let hash = final_hash(vmcs, regs, machine, keepalive);
            replayer.finish(at, hash).map(|_| (at, hash))
        }
        (_, None) => Err(Divergence {
            seq: replayer.head().map_or(0, |r| r.seq),
            expected: replayer.head().and_then(|r| r.entry.exec_point()),
            found: ExecPoint::default(),
            what: "the replay did not end with a guest exit".into(),
        }),
    }
}

fn print_applied(replayer: &Replayer, machine: &Machine, discarded: &str) {
    let mut applied = alloc::string::String::new();
    for (k, n) in replayer
        .applied_by_kind
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
    {
        applied.push_str(&alloc::format!(" {}={n}", ft::replay::kind_name(k)));
    }
    println!(
        "ft: replay: applied{applied}; guest console lines{discarded}={} hash={:#018x}",
        machine.console_lines, machine.console_hash
    );
}

/// The closing numbers of a run (issue 8), raw: the e2e runner turns them
/// into rates against wall-clock and guest time. `host_ticks` are Bochs
/// instructions (its TSC); guest time is the virtual TSC, announced at
/// 1 GHz (`vmx::exit::cpuid::GUEST_TSC_KHZ`); `(g0, g1)`: guest time
/// when the run loop started and ended (the span `host_ticks` counts).
fn print_numbers(
    ended: &Ended,
    c: Option<&dyn ExecCounter>,
    host_ticks: u64,
    (g0, g1): (u64, u64),
    m: &Machine,
    tape: &Tape,
) {
    let (mode, log_bytes, entries) = match tape {
        Tape::Off => ("off", 0, 0),
        Tape::Record(r) => ("record", r.total_bytes(), r.entries()),
        Tape::Replay(r) => ("replay", 0, r.len() as u64),
    };
    println!(
        "ft: numbers: mode={mode} counter={} guest_instructions={} exits={} host_ticks={host_ticks} guest_tsc={} guest_tsc_start={g0} guest_tsc_skipped={} log_bytes={log_bytes} log_entries={entries}",
        c.map_or("none", |c| c.name()),
        c.map_or(0, |c| c.count()),
        ended.exits,
        g1,
        m.skipped,
    );
}

fn alloc_ram(size: usize) -> *mut u8 {
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
    base
}

/// The point where the guest exited (the exit hypercall), if it did.
fn final_point(
    ended: &Ended,
    vmcs: &hw::HwVmcs,
    regs: &GuestRegs,
    counter: Option<&dyn ExecCounter>,
) -> Option<ft::log::ExecPoint> {
    matches!(ended.end, End::Stop(Stop::GuestExit { .. })).then(|| ft::log::ExecPoint {
        counter: counter.map_or(0, |c| c.count()),
        rip: vmcs.get(Field::GuestRip),
        rcx: regs.gpr[exit::RCX],
    })
}

/// Guest RAM is hashed this much at a time (a multiple of 8 bytes: the
/// hash is the same as in one piece).
const HASH_CHUNK: usize = 4 << 20;

/// Registers, all of guest RAM and the console output, in one hash.
/// `keepalive` runs between pieces of RAM: an FT primary keeps its log
/// channel alive while it hashes hundreds of MiB (DESIGN.md §1.6).
fn final_hash(
    vmcs: &hw::HwVmcs,
    regs: &GuestRegs,
    m: &Machine,
    mut keepalive: impl FnMut(),
) -> u64 {
    let state = state_now(vmcs, regs, m);
    let mut h = ft::replay::hash_words(ft::replay::HASH_SEED, state.iter().copied());
    for piece in m.ram().chunks(HASH_CHUNK) {
        h = ft::replay::hash_bytes(h, piece);
        keepalive();
    }
    ft::replay::hash_words(h, [m.console_lines, m.console_hash])
}

fn print_log_summary(
    what: &str,
    r: &Recorder,
    at: ft::log::ExecPoint,
    hash: u64,
    lines: u64,
    console: u64,
) {
    let mut kinds = alloc::string::String::new();
    for (k, n) in r.by_kind.iter().enumerate().filter(|(_, n)| **n > 0) {
        kinds.push_str(&alloc::format!(" {}={n}", ft::replay::kind_name(k)));
    }
    println!(
        "ft: {what}: log entries={} bytes={} hash={:#018x};{kinds}",
        r.entries(),
        r.total_bytes(),
        r.hash()
    );
    println!(
        "ft: {what}: final point (counter {}, rip {:#x}, rcx {:#x}) state hash {hash:#018x}; console lines={lines} hash={console:#018x}",
        at.counter, at.rip, at.rcx
    );
}

/// `replay_mutate=`: perturbs the log so a correct detector must report a
/// divergence: `1` moves the interrupt entry nearest the middle of the log
/// one instruction later (preferably one the guest could also take one
/// instruction later: not after HLT, not before CLI, judged from `code`,
/// guest-physical = linear); `2` changes the RDTSC value nearest the
/// middle; `3` flips the last byte of the received frame nearest the
/// middle (only guest memory differs at first: the checkpoint's
/// device-write digest must see it).
fn mutate(r: &mut Replayer, mode: u8, code: &[u8]) {
    use ft::log::{LogEntry, NonDetSource};
    let records = r.records_mut();
    let mid = records.len() / 2;
    let byte = |a: u64| code.get(a as usize).copied();
    let ok = |e: &LogEntry| match (mode, e) {
        (1, LogEntry::Interrupt { at, .. }) => {
            byte(at.rip.wrapping_sub(1)) != Some(0xF4) && byte(at.rip) != Some(0xFA)
        }
        (
            2,
            LogEntry::NonDet {
                source: NonDetSource::Rdtsc,
                ..
            },
        ) => true,
        (3, LogEntry::NetFrame { frame, .. }) => !frame.is_empty(),
        _ => false,
    };
    let nearest = |want: &dyn Fn(&LogEntry) -> bool| {
        (0..records.len())
            .filter(|&i| want(&records[i].entry))
            .min_by_key(|&i| i.abs_diff(mid))
    };
    // Prefer a busy point; a guest that only ever halts gets its HLT point
    // moved (the replay then finds it halted with no interrupt due).
    let pick =
        nearest(&ok).or_else(|| nearest(&|e| mode == 1 && matches!(e, LogEntry::Interrupt { .. })));
    let Some(i) = pick else {
        println!("ft: replay_mutate: no entry to perturb");
        return;
    };
    let rec = &mut records[i];
    match &mut rec.entry {
        LogEntry::Interrupt { at, .. } => {
            println!(
                "ft: replay_mutate: entry #{} (interrupt) moved from counter {} to {}",
                rec.seq,
                at.counter,
                at.counter + 1
            );
            at.counter += 1;
        }
        LogEntry::NonDet { value, at, .. } => {
            println!(
                "ft: replay_mutate: entry #{} (rdtsc at counter {}) value {:#x} changed to {:#x}",
                rec.seq,
                at.counter,
                *value,
                *value + 1
            );
            *value += 1;
        }
        LogEntry::NetFrame { frame, at, .. } => {
            // Only the bytes the device writes into guest memory change:
            // the checkpoint's device-write digest must catch it.
            let last = frame.len() - 1;
            println!(
                "ft: replay_mutate: entry #{} (frame at counter {}) byte {last} of {} changed from {:#04x} to {:#04x}",
                rec.seq,
                at.counter,
                frame.len(),
                frame[last],
                frame[last] ^ 0x5A
            );
            frame[last] ^= 0x5A;
        }
        _ => unreachable!("picked an interrupt, a nondet or a frame entry"),
    }
}

/// A checkpoint's state now: the guest's registers and the digest of the
/// devices' writes to its memory (`ft::replay::STATE_NAMES`).
/// Host TSC ticks to guest TSC ticks (`guest_tsc=`, issue 15): scaled to
/// the announced rate from the host rate measured against the PIT, or the
/// raw host TSC when asked (or when the PIT never signals: said).
fn guest_tsc_scale(config: &Config) -> kernel::tsc_scale::TscScale {
    use kernel::tsc_scale::TscScale;
    let guest_hz = u64::from(exit::cpuid::GUEST_TSC_KHZ) * 1000;
    match (config.guest_tsc, crate::net::clock::tsc_hz()) {
        (kernel::config::GuestTsc::Host, _) => {
            println!(
                "vmm: guest TSC: the raw host TSC (guest_tsc=host), announced as {} MHz",
                guest_hz / 1_000_000
            );
            TscScale::identity()
        }
        (kernel::config::GuestTsc::Scaled, Some(hz)) => {
            println!(
                "vmm: guest TSC: {} MHz, scaled from the host TSC at {}.{:03} MHz (calibrated against PIT channel 2)",
                guest_hz / 1_000_000,
                hz / 1_000_000,
                hz % 1_000_000 / 1000
            );
            TscScale::new(hz, guest_hz)
        }
        (kernel::config::GuestTsc::Scaled, None) => {
            println!("vmm: warning: the PIT never signalled, the host TSC rate is unknown: the guest's TSC is the raw host TSC, announced as {} MHz (its clock runs at the host's rate)", guest_hz / 1_000_000);
            TscScale::identity()
        }
    }
}

fn state_now(vmcs: &hw::HwVmcs, regs: &GuestRegs, m: &Machine) -> ft::replay::StateVector {
    let mut s = vmx::state::state_vector(vmcs, regs);
    s[ft::replay::STATE_WORDS - 2] = crate::arch::fpu::digest();
    s[ft::replay::STATE_WORDS - 1] = m.devices.io.dirty.digest();
    s
}

/// Names the registers that differ from the nearest recorded checkpoint
/// at or after the divergent entry (same-boot side table).
fn explain(d: &Divergence, r: &Recorder, vmcs: &hw::HwVmcs, regs: &GuestRegs, m: &Machine) {
    let Some((seq, rec)) = r.checkpoints.iter().find(|(s, _)| *s >= d.seq) else {
        return;
    };
    if *seq != d.seq {
        return;
    }
    let now = state_now(vmcs, regs, m);
    for (i, name) in ft::replay::STATE_NAMES.iter().enumerate() {
        if rec[i] != now[i] {
            println!(
                "ft: replay: register {name}: recorded {:#018x}, replay {:#018x}",
                rec[i], now[i]
            );
        }
    }
}

fn report_counter(c: &dyn ExecCounter) {
    println!(
        "counter: {} counted {} guest instructions",
        c.name(),
        c.count()
    );
    if let Some(s) = c.stats() {
        println!("counter: {s}");
    }
    if let Some(m) = c.measure() {
        println!(
            "counter: cross-check (timer delta vs MTF count): {} samples, {} mismatches",
            m.samples, m.mismatches
        );
        for ((reason, injected, timer, mtf), n) in &m.table {
            println!(
                "counter:   exit {reason:2} injected={} timer_delta={timer} mtf_delta={mtf} x{n}",
                u8::from(*injected)
            );
        }
    }
}

/// Exit code of the run: the guest's, or failure when replay diverged.
fn finish(ended: &Ended, replay_ok: Option<bool>) -> ! {
    let code = match (&ended.end, replay_ok) {
        (_, Some(false)) => exitcode::FAILURE,
        (End::Refused(_), _) => exitcode::NO_VMX,
        (End::Stop(Stop::GuestExit { code }), _) => *code,
        _ => exitcode::GUEST_STOPPED,
    };
    crate::arch::exit::exit(code)
}

fn report(ended: &Ended, m: &Machine, host_ticks: u64) {
    match &ended.end {
        End::Stop(stop) => {
            report_stop(stop);
            if matches!(stop, Stop::DeadHalt { .. }) {
                println!(
                    "hypervisor: at the dead halt: {}; LAPIC {:?}",
                    m.devices.io.busy_detail(),
                    m.lapic.pending_vector()
                );
                // The rings as the guest left them in RAM.
                let u16_at = |gpa: u64| {
                    let a = gpa as usize;
                    m.ram()
                        .get(a..a + 2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                };
                for (name, t) in [
                    ("blk", m.devices.io.blk.transport()),
                    ("net", m.devices.io.net.transport()),
                ] {
                    for q in &t.queues {
                        println!(
                            "hypervisor: {name} ring in RAM: avail flags {:?} idx {:?}, used flags {:?} idx {:?} (device: next_avail {} next_used {})",
                            u16_at(q.driver),
                            u16_at(q.driver + 2),
                            u16_at(q.device),
                            u16_at(q.device + 2),
                            q.next_avail,
                            q.next_used
                        );
                    }
                }
            }
        }
        End::Diverged(d) => println!("hypervisor: replay stopped: diverged at {d}"),
        End::Refused(r) => println!("hypervisor: guest stopped: {r}"),
        End::Live(why) => println!("hypervisor: guest stopped: ft: {why}"),
    }
    let mut line = alloc::string::String::new();
    for (reason, n) in m.exits.iter().enumerate().filter(|(_, n)| **n > 0) {
        line.push_str(&alloc::format!(" {reason}:{n}"));
    }
    println!(
        "hypervisor: {} exits in {} host TSC ticks; by reason:{}",
        ended.exits, host_ticks, line
    );
    let samples: u64 = m.hot.values().map(|n| u64::from(*n)).sum();
    if samples > 0 {
        let mut top: alloc::vec::Vec<(u64, u32)> = m.hot.iter().map(|(r, n)| (*r, *n)).collect();
        top.sort_by_key(|t| core::cmp::Reverse(t.1));
        let mut line = alloc::string::String::new();
        for (rip, n) in top.iter().take(8) {
            line.push_str(&alloc::format!(" {rip:#x}:{n}"));
        }
        println!(
            "hypervisor: guest hot spots ({samples} preemption-timer samples, rip:count):{line}"
        );
    }
}

fn report_stop(stop: &Stop) {
    match stop {
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
}

/// Guest-visible point now: counter, RIP, RCX.
fn point_now(vmcs: &hw::HwVmcs, regs: &GuestRegs, counter: Option<&dyn ExecCounter>) -> ExecPoint {
    ExecPoint {
        counter: counter.map_or(0, |c| c.count()),
        rip: vmcs.get(Field::GuestRip),
        rcx: regs.gpr[exit::RCX],
    }
}

#[allow(clippy::too_many_arguments)] // `live` (issue 9) made it eight
fn run_loop(
    vmcs: &mut hw::HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    watchdog_ticks: u64,
    mut counter: Option<&mut (dyn ExecCounter + 'static)>,
    tape: &mut Tape,
    launched: bool,
    mut live: Option<&mut (dyn crate::ftlive::Live + 'static)>,
) -> Ended {
    let mut halted = false;
    if matches!(tape, Tape::Replay(_)) {
        // Guest time follows the log while replaying.
        m.start_log_time();
    }
    // A PAUSE exit while guest I/O is owed: the guest spins on a device
    // (e.g. a synchronous virtio request); park it, up to this guest time,
    // until the I/O completes instead of replaying millions of spins.
    let mut spin_until: Option<u64> = None;
    let mut exits = 0u64;
    let mut irq_off_since: Option<u64> = None;
    let stop = |stop: Stop, exits: u64| Ended {
        end: End::Stop(stop),
        exits,
    };
    // `launched`: an earlier run (record before replay) launched the VMCS.
    let mut launched = launched;
    // A repair's transfer this node serves (`repair::serve`), and the
    // counter's refusals excused during its pre-copy.
    let mut serving: Option<repair::Serving> = None;
    let mut inexact = 0u64;
    loop {
        // A backup that went live stops replaying; a repair makes a node
        // record again.
        let replaying = tape.is_replay();
        // Replay and FT backup: the device backends are not used (outputs
        // discarded and counted, inputs only from the log); an FT backup
        // that goes live (tape off) gets them back.
        m.devices.io.set_detached(tape.is_replay());
        let now = m.now();
        // `ft_test_clone=`: the machine through a state transfer.
        if let Some(c) = m.clone.take() {
            if matches!(tape, Tape::Off) {
                match clone::step(c, vmcs, regs, m, now) {
                    Ok(next) => m.clone = next,
                    Err(why) => {
                        return Ended {
                            end: End::Live(alloc::format!("clone: {why}")),
                            exits,
                        }
                    }
                }
            }
        }
        // Repair (issue 16): a node serving alone sends its machine to a
        // joining node beside the running guest.
        if let Some(l) = live.as_deref_mut() {
            let at = point_now(vmcs, regs, counter.as_deref());
            let was = serving.is_some();
            let guest = repair::GuestAt { at, halted };
            match repair::serve(serving.take(), l.repair(), vmcs, regs, m, tape, guest) {
                Ok(s) => {
                    if was && s.is_none() && inexact > 0 {
                        println!("counter: {inexact} exit(s) during the pre-copy counted inexactly (write faults on write-protected pages); the pair's counts agree from the commit on");
                        inexact = 0;
                    }
                    serving = s
                }
                Err(why) => {
                    return Ended {
                        end: End::Live(alloc::format!("repair: {why}")),
                        exits,
                    }
                }
            }
        }
        // `ept_dirty_test=`: a dirty-logging round every so often.
        if let Some(d) = m.dirty.as_mut() {
            if now >= d.next_round {
                d.round();
                d.next_round = now + d.every;
            }
        }
        // FT pair (issue 9): ship/receive the log, output rule, heartbeats.
        if let Some(l) = live.as_deref_mut() {
            let at = point_now(vmcs, regs, counter.as_deref());
            if let Err(why) = l.poll(tape, at, now, &mut m.console_capture, &mut m.devices.io) {
                return Ended {
                    end: End::Live(why),
                    exits,
                };
            }
        }
        let rflags = vmcs.get(Field::GuestRflags);
        let interruptible =
            rflags & (1 << 9) != 0 && vmcs.get(Field::GuestInterruptibility) & 0b11 == 0;
        let event_pending = vmcs.get(Field::EntryInterruptionInfo) & (1 << 31) != 0;
        let mut proc = vmcs.get(Field::ProcBasedControls) & !INTERRUPT_WINDOW_EXITING;
        let mut plan = None;
        let mut injecting = event_pending;
        if let Tape::Replay(replayer) = tape {
            // Replay: interrupts come from the log only, at their points.
            let at = point_now(vmcs, regs, counter.as_deref());
            let exact = counter.as_deref().is_none_or(|c| c.exact());
            // Guest I/O inputs due here are applied first, through the
            // single input point, in log order (their interrupts follow as
            // their own entries); a checkpoint among them sees the state
            // (and the device-write digest) as it is at its place.
            let mut due = replayer.due(at, &state_now(vmcs, regs, m), exact);
            while let Ok(Due::Input(entry)) = due {
                let Some((slot, input)) = rr::entry_input(entry) else {
                    let d = Divergence {
                        seq: replayer.applied_seq(),
                        expected: Some(at),
                        found: at,
                        what: "an input entry for no device slot".into(),
                    };
                    return Ended {
                        end: End::Diverged(d),
                        exits,
                    };
                };
                m.apply_input(slot, input);
                due = replayer.due(at, &state_now(vmcs, regs, m), exact);
            }
            match due {
                Err(d) => {
                    return Ended {
                        end: End::Diverged(d),
                        exits,
                    }
                }
                Ok(Due::Inject(vector)) => {
                    if !interruptible || event_pending {
                        // `due` has moved past the interrupt's entry.
                        let seq = replayer.head().map_or(replayer.len() as u64, |r| r.seq - 1);
                        let d = Divergence {
                            seq,
                            expected: Some(at),
                            found: at,
                            what: alloc::format!(
                                "interrupt {vector:#x} due but the guest cannot take it here"
                            ),
                        };
                        return Ended {
                            end: End::Diverged(d),
                            exits,
                        };
                    }
                    if let Err(e) = exit::inject_interrupt(vmcs, vector) {
                        return stop(Stop::Vmx(e), exits);
                    }
                    // The recording delivered it at this guest time, after
                    // its LAPIC model ticked there: so does this one (a
                    // timer that fired there is not armed here any more).
                    if let Some(ft::log::LogEntry::Interrupt { guest_time_ns, .. }) =
                        replayer.last_met().map(|r| &r.entry)
                    {
                        m.follow_log_time(*guest_time_ns);
                    }
                    m.lapic.tick(m.now());
                    m.lapic.ack(vector);
                    halted = false;
                    injecting = true;
                }
                Ok(Due::Nothing) => {}
                Ok(Due::Input(_)) => unreachable!("applied above"),
            }
            // A live stream (FT backup): run only up to the last entry
            // received (DESIGN.md §1.3); wait for more first.
            if replayer.must_wait() {
                if let Some(l) = live.as_deref_mut() {
                    // FT backup that won the test-and-set (DESIGN.md §1.7):
                    // everything received is replayed; the guest runs on
                    // alone from here, its outputs real.
                    if let Some(not_before) =
                        l.go_live(replayer, &mut m.console_capture, &mut m.devices.io)
                    {
                        *tape = Tape::Off;
                        m.console_quiet = false;
                        m.console_capture = None;
                        m.end_log_time();
                        m.skip_to(not_before);
                        continue;
                    }
                    if let Err(why) = l.wait(replayer, &mut m.devices.io) {
                        return Ended {
                            end: End::Live(why),
                            exits,
                        };
                    }
                    continue;
                }
            }
            let target = replayer.target();
            if halted {
                let d = Divergence {
                    seq: replayer.head().map_or(0, |r| r.seq),
                    expected: target.map(|t| t.0),
                    found: at,
                    what: "the guest halted, but no interrupt is logged here".into(),
                };
                return Ended {
                    end: End::Diverged(d),
                    exits,
                };
            }
            // Land only on asynchronous entries: the synchronous ones on
            // the way (RDTSC, device reads) exit by themselves.
            plan = Some(match replayer.landing_target() {
                Some(p) if p.counter > at.counter => Plan::Land {
                    remaining: p.counter - at.counter,
                },
                // A synchronous entry here: step once; its instruction exits.
                Some(_) => Plan::Land { remaining: 1 },
                None => Plan::Run { slice: SLICE },
            });
        } else {
            // Guest I/O (issue 6): backend completions and frames enter
            // here, after an exit (or a halted wait): a recorded input is
            // logged at this point, before it is applied, like an interrupt.
            if let Tape::Record(r) = tape {
                let at = point_now(vmcs, regs, counter.as_deref());
                m.poll_io_with(|slot, input| r.push(&rr::input_entry(at, slot, input)));
            } else {
                m.poll_io();
            }
            m.lapic.tick(now);
            let pending = m.lapic.pending_vector();
            if let Some(vector) = pending {
                if interruptible && !event_pending {
                    if let Tape::Record(r) = tape {
                        let at = point_now(vmcs, regs, counter.as_deref());
                        r.checkpoint(at, &state_now(vmcs, regs, m));
                        r.push(&ft::log::LogEntry::Interrupt {
                            at,
                            vector,
                            guest_time_ns: now,
                        });
                    }
                    if let Err(e) = exit::inject_interrupt(vmcs, vector) {
                        return stop(Stop::Vmx(e), exits);
                    }
                    m.lapic.ack(vector);
                    halted = false;
                    injecting = true;
                } else {
                    proc |= INTERRUPT_WINDOW_EXITING;
                }
            }
            if let Some(until) = spin_until {
                if !injecting && m.io_busy() && now < until {
                    continue;
                }
                spin_until = None;
            }
            if halted {
                match m.lapic.next_deadline() {
                    // Guest I/O: a backend (or the output rule) still owes
                    // the guest an input: wait for it in real time rather
                    // than skip the guest's clock past its own timeouts.
                    _ if rflags & (1 << 9) != 0 && m.io_busy() => continue,
                    Some(deadline) if rflags & (1 << 9) != 0 => {
                        m.skip_to(deadline);
                        continue;
                    }
                    _ => {
                        println!(
                            "hypervisor: dead halt: rflags {rflags:#x} rsi {:#x} r8 {:#x} guest time {now} LAPIC deadline {:?} {:?}",
                            regs.gpr[6],
                            regs.gpr[8],
                            m.lapic.next_deadline(),
                            m.lapic
                        );
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
            if pending.is_none() {
                let mut slice = SLICE;
                if let Some(deadline) = m.lapic.next_deadline() {
                    slice = slice.min(m.host_ticks(deadline.saturating_sub(now)).max(1));
                }
                plan = Some(Plan::Run { slice });
            }
        }
        let plan = plan.unwrap_or(Plan::Run { slice: SLICE });
        let mut armed = vmcs.write(Field::ProcBasedControls, proc);
        if armed.is_ok() {
            armed = match counter.as_deref_mut() {
                Some(c) => c.arm(vmcs, plan, injecting),
                None => {
                    let Plan::Run { slice } = plan else {
                        unreachable!("landing needs a counter")
                    };
                    vmcs.write(Field::PreemptionTimerValue, slice)
                }
            };
        }
        if let Err(e) = armed {
            return stop(Stop::Vmx(e), exits);
        }
        if let Some(l) = live.as_deref_mut() {
            l.before_entry(tape, now);
        }
        let mut stamps = [0u64; 2];
        // SAFETY: the VMCS is current and complete (host state written in
        // setup, HOST_RIP = vmx_exit) and EPT confines the guest to its RAM.
        let entry = unsafe { switch::enter(regs, launched, &mut stamps) };
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
        let reason = vmcs.get(Field::ExitReason) as u16;
        if let Some(n) = m.exits.get_mut(reason as usize) {
            *n += 1;
        }
        if let Some(c) = counter.as_deref_mut() {
            c.stamps(stamps[1].wrapping_sub(stamps[0]));
            if let Err(r) = c.exited(vmcs, reason) {
                // A repair's pre-copy (dirty logging, the node alone: no
                // log needs exact counts, only the two nodes' agreement
                // from the commit on, which the transfer carries): Bochs
                // counts a write fault on a write-protected guest page
                // table one unit short. Nothing else is excused.
                if serving.is_none() || m.dirty.is_none() || tape.is_replay() {
                    return Ended {
                        end: End::Refused(r),
                        exits,
                    };
                }
                inexact += 1;
            }
        }
        let at = point_now(vmcs, regs, counter.as_deref());
        let mut platform = rr::RrPlatform {
            m,
            tape,
            at,
            reason,
            divergence: None,
        };
        let action = exit::handle(vmcs, regs, &mut platform);
        let divergence = platform.divergence.take();
        let (m, tape) = (platform.m, platform.tape);
        if vmcs.get(Field::GuestRip) != at.rip {
            // The handler completed the instruction (RIP advanced).
            if let Some(c) = counter.as_deref_mut() {
                c.emulated();
            }
        }
        m.flush_console();
        if let Some(d) = divergence {
            return Ended {
                end: End::Diverged(d),
                exits,
            };
        }
        if reason == exit::reason::PREEMPTION_TIMER
            && (m.hot.len() < 4096 || m.hot.contains_key(&at.rip))
        {
            *m.hot.entry(at.rip).or_insert(0) += 1;
        }
        if reason == exit::reason::PREEMPTION_TIMER && !replaying {
            if let Tape::Record(r) = tape {
                let at = point_now(vmcs, regs, counter.as_deref());
                r.checkpoint(at, &state_now(vmcs, regs, m));
            }
        }
        if m.linux.as_ref().is_some_and(|l| l.powered_off) {
            println!("hypervisor: guest powered off (ACPI S5 through PM1a_CNT)");
            return stop(Stop::GuestExit { code: 0 }, exits);
        }
        if reason == exit::reason::PAUSE && !replaying && m.io_busy() {
            spin_until = Some(m.now() + SPIN_PARK_MAX);
        }
        match action {
            Ok(Action::Resume) => {}
            Ok(Action::Halt) => halted = true,
            Ok(Action::Stop(s)) => return stop(s, exits),
            Err(e) => return stop(Stop::Vmx(e), exits),
        }
    }
}
