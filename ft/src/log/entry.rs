//! Log entry kinds (DESIGN.md §1.1 "everything that is not a deterministic
//! consequence of executing instructions", §1.2 execution points).

use alloc::vec::Vec;

/// An exact point in the guest's instruction stream (DESIGN.md §1.2):
/// `counter` is retired conditional branches (PMU backend) or retired
/// instructions (emulator/MTF backends); `rcx` disambiguates `rep` string
/// instructions that retire no branch per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ExecPoint {
    /// Guest execution counter.
    pub counter: u64,
    /// Guest RIP at the point.
    pub rip: u64,
    /// Guest RCX at the point.
    pub rcx: u64,
}

impl ExecPoint {
    /// A point from its three coordinates.
    pub const fn new(counter: u64, rip: u64, rcx: u64) -> Self {
        Self { counter, rip, rcx }
    }
}

/// Which non-deterministic instruction or register read produced a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NonDetSource {
    /// `RDTSC`.
    Rdtsc,
    /// `RDTSCP`, with the IA32_TSC_AUX value the guest saw in ECX.
    Rdtscp { aux: u32 },
    /// `RDRAND`.
    Rdrand,
    /// `RDSEED`.
    Rdseed,
    /// `RDMSR` of a time-like or otherwise non-deterministic MSR.
    Msr { index: u32 },
    /// `IN` from a port of a device whose answer depends on time or on
    /// asynchronous events (PIT, CMOS RTC, ACPI PM block).
    Port { port: u16 },
    /// An MMIO load from such a device's register (LAPIC, I/O APIC),
    /// by guest-physical address (these devices live below 4 GiB).
    Mmio { gpa: u32 },
}

impl NonDetSource {
    /// Whether its value is the guest's time (the TSC: RDTSC, RDTSCP, a
    /// read of IA32_TIME_STAMP_COUNTER); a replay and a backup going live
    /// follow those values.
    pub const fn is_guest_time(&self) -> bool {
        matches!(
            self,
            Self::Rdtsc | Self::Rdtscp { .. } | Self::Msr { index: 0x10 }
        )
    }
}

/// Completion status of a disk request, as the guest's device model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskStatus {
    /// The request completed.
    Ok,
    /// The request failed with an I/O error.
    IoError,
    /// The backend does not support the request.
    Unsupported,
}

/// The machine a node runs its guest on, as far as a pair must agree
/// (issue 14; DESIGN.md §1.1 "both sides start the same guest from the
/// same state"): sent in the Hello, and a backup refuses a primary whose
/// machine differs, naming the field. Two nodes with different memory
/// would diverge; with a different disk or NIC wiring the backup would go
/// live on another disk or network than the guest had; with another
/// virtual CPU the guest would see other CPUID answers. The counter
/// backend is not part of it: every backend counts the same unit (guest
/// instructions, `vmx::counter`), so a pair may mix them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MachineId {
    /// Guest RAM in bytes.
    pub guest_mem: u64,
    /// The guest disk's backend: 0 none, 1 RAM, 2 the shared iSCSI LUN.
    pub disk: u8,
    /// The guest disk's capacity in 512-byte sectors.
    pub disk_sectors: u64,
    /// The guest NIC's wiring: 0 none, 1 loopback, 2 bridged to the
    /// hypervisor's NIC.
    pub nic: u8,
    /// The virtual CPU: a hash of the CPUID answers the guest gets.
    pub cpu: u64,
}

impl MachineId {
    /// Encoded length in the Hello.
    pub const LEN: usize = 26;

    /// The fields with their names, in wire order.
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("guest memory bytes", self.guest_mem),
            ("disk backend", u64::from(self.disk)),
            ("disk sectors", self.disk_sectors),
            ("NIC wiring", u64::from(self.nic)),
            ("virtual CPU", self.cpu),
        ]
    }

    /// Little-endian wire form.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.guest_mem.to_le_bytes());
        b[8] = self.disk;
        b[9..17].copy_from_slice(&self.disk_sectors.to_le_bytes());
        b[17] = self.nic;
        b[18..26].copy_from_slice(&self.cpu.to_le_bytes());
        b
    }

    /// From the wire form.
    pub fn from_bytes(b: &[u8; Self::LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Self {
            guest_mem: u64_at(0),
            disk: b[8],
            disk_sectors: u64_at(9),
            nic: b[17],
            cpu: u64_at(18),
        }
    }

    /// The first field in which `theirs` differs from `self`: its name,
    /// their value, ours.
    pub fn first_difference(&self, theirs: &MachineId) -> Option<(&'static str, u64, u64)> {
        self.fields()
            .into_iter()
            .zip(theirs.fields())
            .find(|(a, b)| a.1 != b.1)
            .map(|(ours, th)| (ours.0, th.1, ours.1))
    }
}

impl core::fmt::Display for MachineId {
    /// Hex of the wire form (what `qemu-tests hostile-log` takes back).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.to_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a peer ended the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoodbyeReason {
    /// Orderly shutdown by the operator.
    Shutdown,
    /// The sender lost arbitration and halted its guest.
    Halted,
    /// The sender was superseded by a newer generation.
    Superseded,
    /// The primary lost its path to the shared disk and stepped down
    /// (DESIGN.md §1.7): the backup, which may still reach it, takes over
    /// at once, as after the primary's failure.
    StorageLost,
}

/// One entry in the log. Kinds with an [`ExecPoint`] are replayed by the
/// backup at exactly that point; the rest steer the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// Opens a connection: who is talking, about which guest, under which
    /// flag generation (DESIGN.md §1.7).
    Hello {
        cluster_id: u64,
        generation: u64,
        guest_id: [u8; 16],
        protocol_version: u16,
        /// The machine the guest runs on ([`MachineId`]).
        machine: MachineId,
    },
    /// An interrupt with no data (timer, device status). `guest_time_ns`:
    /// the recording's guest time when it was delivered, so that a replay
    /// runs its device timers on the recording's clock (issue 15).
    Interrupt {
        at: ExecPoint,
        vector: u8,
        guest_time_ns: u64,
    },
    /// An incoming network frame: the DMA'd bytes plus its interrupt.
    NetFrame {
        at: ExecPoint,
        vector: u8,
        frame: Vec<u8>,
    },
    /// A disk request completed: read data (empty for writes) plus its
    /// completion interrupt.
    DiskCompletion {
        at: ExecPoint,
        vector: u8,
        request_id: u64,
        status: DiskStatus,
        data: Vec<u8>,
    },
    /// The result of a non-deterministic instruction at a point.
    NonDet {
        at: ExecPoint,
        source: NonDetSource,
        value: u64,
    },
    /// The log was idle; the primary's guest has reached `at`
    /// (DESIGN.md §1.6). Lets the backup keep executing. `acked`: as in
    /// `OutputMarker`.
    Heartbeat {
        at: ExecPoint,
        guest_time_ns: u64,
        acked: u64,
    },
    /// The guest produced output `output_id` at `at` (DESIGN.md §1.4).
    /// `acked`: the backup's acknowledged position the primary had seen
    /// when it wrote this record, so every output marked at or before it
    /// had already been released (`crate::seam`).
    OutputMarker {
        at: ExecPoint,
        output_id: u64,
        acked: u64,
        /// A digest of the output's content (0: not checked), which the
        /// backup compares with its own guest's output of the same id
        /// (`crate::seam::OutputCheck`).
        digest: u64,
    },
    /// Backup → primary: highest sequence received and highest applied.
    Ack { received: u64, applied: u64 },
    /// The sender won the flag at `generation` and acts alone.
    GoLive { generation: u64, owner: u64 },
    /// The sender ends the session.
    Goodbye { reason: GoodbyeReason },
    /// Hash of guest state at a point, for the divergence detector
    /// (DESIGN.md §6).
    Checkpoint { at: ExecPoint, state_hash: u64 },
}

impl LogEntry {
    /// The kind byte written in the record header.
    pub const fn kind(&self) -> u8 {
        match self {
            Self::Hello { .. } => 0x01,
            Self::Interrupt { .. } => 0x02,
            Self::NetFrame { .. } => 0x03,
            Self::DiskCompletion { .. } => 0x04,
            Self::NonDet { .. } => 0x05,
            Self::Heartbeat { .. } => 0x06,
            Self::OutputMarker { .. } => 0x07,
            Self::Ack { .. } => 0x08,
            Self::GoLive { .. } => 0x09,
            Self::Goodbye { .. } => 0x0A,
            Self::Checkpoint { .. } => 0x0B,
        }
    }

    /// The execution point this entry is replayed at, if it is replayed.
    pub const fn exec_point(&self) -> Option<ExecPoint> {
        match self {
            Self::Interrupt { at, .. }
            | Self::NetFrame { at, .. }
            | Self::DiskCompletion { at, .. }
            | Self::NonDet { at, .. }
            | Self::Heartbeat { at, .. }
            | Self::OutputMarker { at, .. }
            | Self::Checkpoint { at, .. } => Some(*at),
            Self::Hello { .. } | Self::Ack { .. } | Self::GoLive { .. } | Self::Goodbye { .. } => {
                None
            }
        }
    }
}

/// A log record: a sequence number and one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Monotonically increasing per stream; 0 only for [`LogEntry::Hello`].
    pub seq: u64,
    /// The entry.
    pub entry: LogEntry,
}
