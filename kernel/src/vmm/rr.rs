//! Record/replay glue of the run loop (DESIGN.md §1.1-§1.2, §3, §6): the
//! execution-counter choice, and [`RrPlatform`], the [`Platform`] wrapper
//! that logs every non-deterministic input at its execution point when
//! recording and answers it from the log when replaying. The logic is in
//! `vmx::counter` and `ft::replay` (host-tested); this is the hardware half.
use super::machine::Machine;
use alloc::boxed::Box;
use ft::log::{DiskStatus, ExecPoint, LogEntry, NonDetSource};
use ft::replay::{Divergence, Tape};
use kernel::config::{Config, CounterChoice, FtMode};
use kernel::devices::virtio::{BlockStatus, GuestInput};
use kernel::guestio::Slot;
use vmx::caps::{PmuInfo, VmxCaps};
use vmx::counter::mtf::Mtf;
use vmx::counter::pmu::{Pmu, PmuHw};
use vmx::counter::preempt::Preempt;
use vmx::counter::{ExecCounter, Refusal};
use vmx::exit::{reason, MmioRequest, Platform};
use vmx::Error;

/// Guest instructions the `preempt` backend single-steps and cross-checks
/// before it trusts the timer (covers the guest's boot code, including a
/// `rep stos`).
pub const CALIBRATE: u64 = 20_000;

/// The PMU seen through fault-tolerant MSR accesses.
struct HwPmu;

impl PmuHw for HwPmu {
    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        crate::arch::msr::read_safe(msr)
    }
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        crate::arch::msr::write_safe(msr, value)
    }
    fn branches(&mut self, n: u64) {
        let mut x = 0u64;
        for i in 0..n {
            // black_box keeps one real conditional branch per iteration.
            if core::hint::black_box(i) & 1 == 0 {
                x = x.wrapping_add(1);
            }
        }
        core::hint::black_box(x);
    }
}

/// Whether the VMCS must save the preemption timer on exit (exit control
/// bit 22) for the counter this configuration will use.
pub fn wants_save_timer(config: &Config, caps: &VmxCaps) -> bool {
    counter_wanted(config) && caps.save_preemption_timer()
}

/// A counter runs when record/replay is on (also as one side of an FT
/// pair) or one was asked for.
pub fn counter_wanted(config: &Config) -> bool {
    config.ft != FtMode::Off || config.counter != CounterChoice::Auto || config.pair.role.is_some()
}

/// Builds the configured counter backend; refuses one that cannot be exact.
pub fn choose_counter(
    config: &Config,
    caps: &VmxCaps,
    pmu: PmuInfo,
) -> Result<Box<dyn ExecCounter>, Refusal> {
    let timer_ok = caps.preemption_timer() && caps.save_preemption_timer() && caps.mtf();
    let preempt = || -> Result<Box<dyn ExecCounter>, Refusal> {
        if !timer_ok {
            return Err(Refusal {
                backend: "preempt",
                reason:
                    "needs the VMX-preemption timer, \"save VMX-preemption timer value\" and MTF"
                        .into(),
            });
        }
        Ok(Box::new(Preempt::new(CALIBRATE)))
    };
    let mtf = || -> Result<Box<dyn ExecCounter>, Refusal> {
        if !caps.mtf() {
            return Err(Refusal {
                backend: "mtf",
                reason: "the CPU offers no monitor trap flag".into(),
            });
        }
        Ok(Box::new(Mtf::new(caps.save_preemption_timer())))
    };
    match config.counter {
        CounterChoice::Pmu => Ok(Box::new(Pmu::probe(pmu, Box::new(HwPmu))?)),
        CounterChoice::Preempt => preempt(),
        CounterChoice::Mtf => mtf(),
        CounterChoice::Auto => match Pmu::probe(pmu, Box::new(HwPmu)) {
            Ok(p) => Ok(Box::new(p)),
            Err(r) => {
                println!("counter: {r}; trying preempt");
                preempt().or_else(|r| {
                    println!("counter: {r}; using mtf");
                    mtf()
                })
            }
        },
    }
}

/// MSRs whose value depends on time (logged like RDTSC): IA32_TSC,
/// IA32_TSC_DEADLINE, the x2APIC IRR and current-count registers.
pub fn time_like_msr(msr: u32) -> bool {
    matches!(msr, 0x10 | 0x6E0 | 0x820..=0x827 | 0x839)
}

/// The machine as the exit handlers see it during record or replay.
pub struct RrPlatform<'a> {
    pub m: &'a mut Machine,
    pub tape: &'a mut Tape,
    /// The point of the exiting instruction.
    pub at: ExecPoint,
    pub reason: u16,
    pub divergence: Option<Divergence>,
}

impl RrPlatform<'_> {
    fn nondet(&mut self, source: NonDetSource, live: impl FnOnce(&mut Machine) -> u64) -> u64 {
        let m = &mut *self.m;
        let replaying = matches!(self.tape, Tape::Replay(_));
        match self.tape.nondet(self.at, source, || live(m)) {
            Ok(v) => {
                // A replayed TSC value is the recording's guest time: the
                // device models follow it.
                if replaying && source.is_guest_time() {
                    self.m.follow_log_time(v);
                }
                v
            }
            Err(d) => {
                self.divergence.get_or_insert(d);
                0
            }
        }
    }
}

impl Platform for RrPlatform<'_> {
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        // The device reads either way (its side effects, e.g. a latch,
        // happen in both runs); a replay then answers from the log.
        let v = self.m.port_in(port, size);
        let logged = self
            .m
            .linux
            .as_ref()
            .is_some_and(|l| l.claims_port(port, size));
        if !logged {
            return v;
        }
        let v = self.nondet(NonDetSource::Port { port }, |_| u64::from(v)) as u32;
        if matches!(self.tape, Tape::Replay(_)) {
            // The PM timer is a clock too: the replay's guest time (and a
            // backup's at go-live) never falls behind what it showed.
            let now = self.m.now();
            if let Some(t) = self
                .m
                .linux
                .as_ref()
                .and_then(|l| l.pm_timer_time(port, size, v, now))
            {
                self.m.follow_log_time(t);
            }
        }
        v
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.m.port_out(port, size, value)
    }
    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        if !time_like_msr(msr) {
            return self.m.rdmsr(msr);
        }
        // The log keeps faults as u64::MAX with CF-free semantics: a value
        // that faulted when recorded faults again.
        let v = self.nondet(NonDetSource::Msr { index: msr }, |m| {
            m.rdmsr(msr).unwrap_or(u64::MAX)
        });
        (v != u64::MAX).then_some(v)
    }
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        self.m.wrmsr(msr, value)
    }
    fn rdtsc(&mut self) -> u64 {
        let source = match self.reason {
            reason::RDTSCP => NonDetSource::Rdtscp {
                aux: self.m.tsc_aux(),
            },
            reason::RDMSR => NonDetSource::Msr { index: 0x10 },
            _ => NonDetSource::Rdtsc,
        };
        self.nondet(source, |m| m.rdtsc())
    }
    fn tsc_aux(&mut self) -> u32 {
        self.m.tsc_aux()
    }
    fn random(&mut self, seed: bool) -> u64 {
        let source = if seed {
            NonDetSource::Rdseed
        } else {
            NonDetSource::Rdrand
        };
        self.nondet(source, |m| m.random(seed))
    }
    fn mmio(&mut self, gpa: u64, access: &mut MmioRequest<'_>) -> Option<Result<(), &'static str>> {
        // `guest=linux`: loads from the LAPIC page and the I/O APIC (timer
        // count, IRR/ISR/TMR, remote IRR) are logged like RDTSC.
        let (tape, at, divergence) = (&mut *self.tape, self.at, &mut self.divergence);
        let source = NonDetSource::Mmio { gpa: gpa as u32 };
        self.m.mmio_with(gpa, access, &mut |v| {
            tape.nondet(at, source, || v).unwrap_or_else(|d| {
                divergence.get_or_insert(d);
                0
            })
        })
    }
    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.m.read_guest(gpa, buf)
    }
    fn console(&mut self, text: &str) {
        self.m.console(text)
    }
    fn dirty_write(&mut self, gpa: u64) -> bool {
        self.m.dirty_write(gpa)
    }
}

/// The log entry of a guest I/O input applied at `at` (record mode).
pub fn input_entry(at: ExecPoint, slot: Slot, input: &GuestInput) -> LogEntry {
    match input {
        GuestInput::Frame(frame) => LogEntry::NetFrame {
            at,
            vector: slot.vector(),
            frame: frame.clone(),
        },
        GuestInput::BlockDone { id, status, data } => LogEntry::DiskCompletion {
            at,
            vector: slot.vector(),
            request_id: *id,
            status: match status {
                BlockStatus::Ok => DiskStatus::Ok,
                BlockStatus::IoErr => DiskStatus::IoError,
                BlockStatus::Unsupported => DiskStatus::Unsupported,
            },
            data: data.clone(),
        },
    }
}

/// The input a `NetFrame` / `DiskCompletion` entry carries and the slot it
/// goes to (replay); `None` for another entry or a vector no slot has.
pub fn entry_input(entry: LogEntry) -> Option<(Slot, GuestInput)> {
    let slot = |v: u8| Slot::ALL.into_iter().find(|s| s.vector() == v);
    match entry {
        LogEntry::NetFrame { vector, frame, .. } => Some((slot(vector)?, GuestInput::Frame(frame))),
        LogEntry::DiskCompletion {
            vector,
            request_id,
            status,
            data,
            ..
        } => Some((
            slot(vector)?,
            GuestInput::BlockDone {
                id: request_id,
                status: match status {
                    DiskStatus::Ok => BlockStatus::Ok,
                    DiskStatus::IoError => BlockStatus::IoErr,
                    DiskStatus::Unsupported => BlockStatus::Unsupported,
                },
                data,
            },
        )),
        _ => None,
    }
}

/// Bytes of log per `FTLOG` line.
const EXPORT_CHUNK: usize = 64;

/// Writes the log to COM1 for the host (issue 8: a second boot replays
/// it): `FTLOG <hex>` lines of up to 64 bytes, then
/// `FTLOG-END bytes=<n> fnv=<hash of the bytes>`.
pub fn export_log(bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = alloc::string::String::with_capacity(6 + 2 * EXPORT_CHUNK);
    for chunk in bytes.chunks(EXPORT_CHUNK) {
        line.clear();
        line.push_str(ft::log::export::LINE_PREFIX);
        for b in chunk {
            line.push(HEX[usize::from(b >> 4)] as char);
            line.push(HEX[usize::from(b & 15)] as char);
        }
        println!("{line}");
    }
    println!(
        "{}bytes={} fnv={:#018x}",
        ft::log::export::END_PREFIX,
        bytes.len(),
        ft::log::export::checksum(bytes)
    );
}
