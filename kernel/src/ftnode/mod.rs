//! The FT pair's node, hardware-free half (issue 9; DESIGN.md §1.1-§1.6).
//! The hardware half (`ftnode/live.rs`, built into the binary only) drives
//! `ft::primary::Primary` / `ft::backup::Backup` over a smoltcp TCP socket
//! from the VMX run loop; this module holds what it needs that can be
//! tested on the host:
//!
//! * [`guest_identity`]: the 16-byte guest id of the session hello, a hash
//!   of the guest image and its command line (§1.1: both sides start the
//!   same guest from the same state; a mismatch is refused).
//! * [`OutputGate`]: the output rule (§1.4): a guest output (console
//!   line, transmitted frame, disk request) leaves only once the backup
//!   acknowledged the log record that marks it; it checks and counts that.
//! * [`LagMeter`]: wall-time backup lag, from an entry's send to the ack
//!   saying the backup applied it (§5 "backup lag").
//! * [`mbit_per_s`], [`StatusLine`]: the periodic status line (§6
//!   "Observable": role, generation, seq sent/acked, lag, log rate,
//!   heartbeat age).
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use core::fmt;

/// FNV-1a 64 over bytes, from `seed`.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01B3);
    }
    h
}

/// The guest's identity in the session hello: two FNV-1a hashes (different
/// seeds) over the image bytes, the initrd (a Linux guest's second module)
/// if any, and the guest command line. Any difference makes a different id.
pub fn guest_identity(image: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, seed) in [0xCBF2_9CE4_8422_2325u64, 0x6A09_E667_F3BC_C908]
        .into_iter()
        .enumerate()
    {
        let mut h = fnv(seed, &(image.len() as u64).to_le_bytes());
        h = fnv(h, image);
        if let Some(rd) = initrd {
            h = fnv(h, b"\0initrd\0");
            h = fnv(h, &(rd.len() as u64).to_le_bytes());
            h = fnv(h, rd);
        }
        h = fnv(h, b"\0cmdline\0");
        h = fnv(h, cmdline.as_bytes());
        id[i * 8..i * 8 + 8].copy_from_slice(&h.to_le_bytes());
    }
    id
}

/// CPUID leaves of the virtual CPU model whose answers make up its
/// identity (`vmx::exit::cpuid::model`; unknown leaves answer zeros).
const CPU_LEAVES: [u32; 14] = [
    0,
    1,
    6,
    0x15,
    0x16,
    0x4000_0000,
    0x4000_0001,
    0x4000_0010,
    0x8000_0000,
    0x8000_0001,
    0x8000_0002,
    0x8000_0003,
    0x8000_0004,
    0x8000_0008,
];

/// This node's machine for the session Hello (issue 14): guest RAM, the
/// disk's backend and capacity, the NIC's wiring (from `config`), and a
/// hash of the CPUID answers of the virtual CPU this build gives the guest.
pub fn machine_identity(
    config: &crate::config::Config,
    ram_bytes: u64,
    disk_sectors: u64,
) -> ft::log::MachineId {
    use crate::config::{DiskChoice, GuestNetChoice};
    let mut cpu = 0xCBF2_9CE4_8422_2325u64;
    for leaf in CPU_LEAVES {
        for r in vmx::exit::cpuid::model(leaf, 0) {
            cpu = fnv(cpu, &r.to_le_bytes());
        }
    }
    ft::log::MachineId {
        guest_mem: ram_bytes,
        disk: match config.disk {
            DiskChoice::None => 0,
            DiskChoice::Ram { .. } => 1,
            DiskChoice::Iscsi => 2,
        },
        disk_sectors,
        nic: match config.guest_net {
            GuestNetChoice::None => 0,
            GuestNetChoice::Loopback => 1,
            GuestNetChoice::Bridge => 2,
        },
        cpu,
    }
}

/// Since when the guest disk has made no progress while it owes requests
/// (what `ft::node::Node::on_disk` judges: a paired primary whose disk is
/// stuck for the failure timeout steps down, DESIGN.md §1.7).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStall {
    done: u64,
    progress_us: u64,
}

impl DiskStall {
    /// At `now_us` the backend holds `in_flight` requests and has
    /// completed `done` in all: `Some(t)` when requests are outstanding and
    /// nothing completed since `t` (the last completion, or the last
    /// observation with nothing outstanding); `None` otherwise.
    pub fn observe(&mut self, now_us: u64, in_flight: usize, done: u64) -> Option<u64> {
        if in_flight == 0 || done != self.done {
            self.done = done;
            self.progress_us = now_us;
            return None;
        }
        Some(self.progress_us)
    }
}

/// Hex of a guest id, for messages.
pub struct IdHex<'a>(pub &'a [u8; 16]);

impl fmt::Display for IdHex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An output the gate let out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released<T> {
    pub id: u64,
    pub item: T,
    /// The log record that marks the line.
    pub marker_seq: u64,
    /// The backup's acknowledged position when it was let out.
    pub acked: u64,
    /// Microseconds the line was held.
    pub held_us: u64,
}

/// Guest outputs held until the backup acknowledges their marker
/// (DESIGN.md §1.4).
#[derive(Debug)]
pub struct OutputGate<T> {
    held: BTreeMap<u64, (T, u64, u64)>,
    /// Outputs let out so far.
    pub released: u64,
    /// Outputs held so far (every output is held first while paired).
    pub held_total: u64,
    /// Outputs let out before their marker was acknowledged (must stay 0).
    pub violations: u64,
    /// Longest hold, microseconds.
    pub max_hold_us: u64,
    /// Sum of holds, microseconds.
    pub sum_hold_us: u64,
}

impl<T> Default for OutputGate<T> {
    fn default() -> Self {
        OutputGate {
            held: BTreeMap::new(),
            released: 0,
            held_total: 0,
            violations: 0,
            max_hold_us: 0,
            sum_hold_us: 0,
        }
    }
}

impl<T> OutputGate<T> {
    /// Holds output `id` (marked by record `marker_seq`) from `now_us`.
    pub fn hold(&mut self, id: u64, item: T, marker_seq: u64, now_us: u64) {
        self.held_total += 1;
        self.held.insert(id, (item, marker_seq, now_us));
    }

    /// Outputs waiting.
    pub fn waiting(&self) -> usize {
        self.held.len()
    }

    /// The state machine released output `id` with the backup's ack at
    /// `acked`: the line, checked against its marker.
    pub fn release(&mut self, id: u64, acked: u64, now_us: u64) -> Option<Released<T>> {
        let (item, marker_seq, since) = self.held.remove(&id)?;
        let held_us = now_us.saturating_sub(since);
        self.released += 1;
        if acked < marker_seq {
            self.violations += 1;
        }
        self.max_hold_us = self.max_hold_us.max(held_us);
        self.sum_hold_us += held_us;
        Some(Released {
            id,
            item,
            marker_seq,
            acked,
            held_us,
        })
    }
}

/// Wall-time lag of the backup: for every entry, the time from sending it
/// to the ack that says the backup applied it.
#[derive(Debug, Default)]
pub struct LagMeter {
    sent: VecDeque<(u64, u64)>,
    pub samples: u64,
    pub sum_us: u64,
    pub max_us: u64,
    /// Lag of the latest sample.
    pub last_us: u64,
}

impl LagMeter {
    /// Entry `seq` went out at `now_us`.
    pub fn sent(&mut self, seq: u64, now_us: u64) {
        self.sent.push_back((seq, now_us));
    }

    /// The backup applied everything up to `seq` (seen at `now_us`).
    pub fn applied(&mut self, seq: u64, now_us: u64) {
        while let Some(&(s, t)) = self.sent.front() {
            if s > seq {
                break;
            }
            self.sent.pop_front();
            let lag = now_us.saturating_sub(t);
            self.samples += 1;
            self.sum_us += lag;
            self.max_us = self.max_us.max(lag);
            self.last_us = lag;
        }
    }

    /// Mean lag in microseconds (0 without samples).
    pub fn mean_us(&self) -> u64 {
        self.sum_us.checked_div(self.samples).unwrap_or(0)
    }

    /// Age of the oldest entry the backup has not applied yet.
    pub fn pending_age_us(&self, now_us: u64) -> u64 {
        self.sent
            .front()
            .map_or(0, |&(_, t)| now_us.saturating_sub(t))
    }
}

/// `bytes` over `us` microseconds in Mbit/s, with two decimals
/// (hundredths), integer arithmetic.
pub fn mbit_per_s(bytes: u64, us: u64) -> Centi {
    // bits / us = Mbit/s; times 100 for the two decimals.
    Centi((u128::from(bytes) * 800 / u128::from(us.max(1))) as u64)
}

/// A number in hundredths, printed as `12.34`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Centi(pub u64);

impl fmt::Display for Centi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// One status line (DESIGN.md §6 "Observable").
#[derive(Debug, Clone, Default)]
pub struct StatusLine {
    pub role: &'static str,
    pub state: &'static str,
    pub generation: u64,
    /// Primary: last appended; backup: last received.
    pub seq: u64,
    /// Primary: acknowledged received; backup: applied.
    pub acked: u64,
    pub applied: u64,
    /// Entries sent (primary) or received (backup) but not applied.
    pub lag_entries: u64,
    /// Wall-time lag (primary: last ack sample; backup: 0).
    pub lag_us: u64,
    /// Guest-time lag (primary's view).
    pub lag_guest_us: u64,
    /// Log rate over the last interval.
    pub rate: Centi,
    /// Time since the peer was last heard from.
    pub heard_ms: u64,
    /// Outputs held / released / discarded.
    pub held: u64,
    pub released: u64,
    pub discarded: u64,
    /// Hypervisor heap in use and its high-water mark, KiB (issue 15).
    pub heap_kib: u64,
    pub heap_peak_kib: u64,
    /// A repair this node serves (issue 16): percent of the current
    /// pre-copy round sent, the round, pages the guest dirtied per second
    /// in the last round.
    pub repair: Option<(u64, u32, u64)>,
    /// The guest's pause at the last repair this node served, ms.
    pub repair_pause_ms: Option<u64>,
}

impl fmt::Display for StatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ft: status: role={} state={} generation={} seq={} acked={} applied={} lag={} entries/{} us (guest {} us) log={} Mbit/s heartbeat_age={} ms outputs held={} released={} discarded={} heap={} KiB peak={} KiB",
            self.role,
            self.state,
            self.generation,
            self.seq,
            self.acked,
            self.applied,
            self.lag_entries,
            self.lag_us,
            self.lag_guest_us,
            self.rate,
            self.heard_ms,
            self.held,
            self.released,
            self.discarded,
            self.heap_kib,
            self.heap_peak_kib
        )?;
        if let Some((percent, round, dirty)) = self.repair {
            write!(
                f,
                " repair: {percent}% of round {round} sent, dirtied {dirty} pages/s"
            )?;
        }
        if let Some(ms) = self.repair_pause_ms {
            write!(f, " last_repair_pause={ms} ms")?;
        }
        Ok(())
    }
}

impl StatusLine {
    /// The same numbers as one JSON object (the status port, DESIGN.md §6).
    pub fn json(&self) -> String {
        let mut j = alloc::format!(
            "{{\"role\":\"{}\",\"state\":\"{}\",\"generation\":{},\"seq\":{},\"acked\":{},\"applied\":{},\"lag_entries\":{},\"lag_us\":{},\"lag_guest_us\":{},\"log_mbit_s\":\"{}\",\"heartbeat_age_ms\":{},\"outputs_held\":{},\"outputs_released\":{},\"outputs_discarded\":{},\"heap_kib\":{},\"heap_peak_kib\":{}}}",
            self.role,
            self.state,
            self.generation,
            self.seq,
            self.acked,
            self.applied,
            self.lag_entries,
            self.lag_us,
            self.lag_guest_us,
            self.rate,
            self.heard_ms,
            self.held,
            self.released,
            self.discarded,
            self.heap_kib,
            self.heap_peak_kib
        );
        if let Some((percent, round, dirty)) = self.repair {
            j.pop();
            j.push_str(&alloc::format!(
                ",\"repair_percent\":{percent},\"repair_round\":{round},\"repair_dirty_pages_s\":{dirty}}}"
            ));
        }
        if let Some(ms) = self.repair_pause_ms {
            j.pop();
            j.push_str(&alloc::format!(",\"repair_pause_ms\":{ms}}}"));
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn machine_identity_tells_configurations_apart() {
        use crate::config::Config;
        let c = Config::parse("disk=ram:1M guest_net=loopback").unwrap();
        let a = machine_identity(&c, 64 << 20, 2048);
        assert_eq!(a, machine_identity(&c, 64 << 20, 2048), "deterministic");
        assert_eq!((a.disk, a.nic, a.guest_mem), (1, 1, 64 << 20));
        assert_ne!(a.cpu, 0);
        let field = |b: ft::log::MachineId| a.first_difference(&b).map(|d| d.0);
        assert_eq!(
            field(machine_identity(&c, 128 << 20, 2048)),
            Some("guest memory bytes")
        );
        assert_eq!(
            field(machine_identity(&c, 64 << 20, 4096)),
            Some("disk sectors")
        );
        let iscsi = Config::parse("disk=iscsi guest_net=bridge").unwrap();
        assert_eq!(
            field(machine_identity(&iscsi, 64 << 20, 2048)),
            Some("disk backend")
        );
        let none = Config::parse("disk=ram:1M").unwrap();
        assert_eq!(
            field(machine_identity(&none, 64 << 20, 2048)),
            Some("NIC wiring")
        );
    }

    #[test]
    fn disk_stall_counts_from_the_last_progress() {
        let mut s = DiskStall::default();
        assert_eq!(s.observe(100, 0, 0), None, "idle");
        assert_eq!(
            s.observe(200, 2, 0),
            Some(100),
            "owed since it was last idle"
        );
        assert_eq!(s.observe(900, 2, 0), Some(100));
        assert_eq!(s.observe(1000, 1, 1), None, "a completion is progress");
        assert_eq!(s.observe(5000, 1, 1), Some(1000));
        assert_eq!(s.observe(6000, 0, 1), None);
        assert_eq!(s.observe(7000, 3, 1), Some(6000));
    }

    #[test]
    fn identity_covers_image_and_cmdline() {
        let a = guest_identity(b"image", None, "test=replay");
        assert_eq!(a, guest_identity(b"image", None, "test=replay"));
        assert_ne!(a, guest_identity(b"imagf", None, "test=replay"));
        assert_ne!(a, guest_identity(b"image", None, "test=timer"));
        assert_ne!(a, guest_identity(b"image\0", None, "test=replay"));
        let rd = guest_identity(b"image", Some(b"rd"), "test=replay");
        assert_ne!(a, rd, "an initrd is part of the guest");
        assert_ne!(rd, guest_identity(b"image", Some(b"re"), "test=replay"));
        assert_ne!(a[..8], a[8..], "two independent halves");
        assert_eq!(IdHex(&[0xab; 16]).to_string(), "ab".repeat(16));
    }

    #[test]
    fn gate_releases_and_checks_against_the_marker() {
        let mut g = OutputGate::<String>::default();
        g.hold(1, "one".into(), 5, 100);
        g.hold(2, "two".into(), 9, 150);
        assert_eq!(g.waiting(), 2);
        let r = g.release(1, 7, 400).unwrap();
        assert_eq!((r.item.as_str(), r.held_us, r.acked), ("one", 300, 7));
        assert_eq!(g.violations, 0);
        assert!(g.release(1, 7, 400).is_none(), "released once");
        let r = g.release(2, 8, 1150).unwrap();
        assert_eq!(r.marker_seq, 9);
        assert_eq!(g.violations, 1, "an early release is counted");
        assert_eq!(
            (g.held_total, g.released, g.max_hold_us, g.sum_hold_us),
            (2, 2, 1000, 1300)
        );
    }

    #[test]
    fn lag_is_send_to_applied() {
        let mut m = LagMeter::default();
        m.sent(1, 100);
        m.sent(2, 200);
        m.sent(3, 300);
        assert_eq!(m.pending_age_us(1000), 900);
        m.applied(2, 1200);
        assert_eq!((m.samples, m.max_us, m.last_us), (2, 1100, 1000));
        assert_eq!(m.mean_us(), 1050);
        m.applied(2, 5000);
        assert_eq!(m.samples, 2, "stale ack");
        m.applied(9, 1300);
        assert_eq!((m.samples, m.last_us, m.pending_age_us(2000)), (3, 1000, 0));
        assert_eq!(LagMeter::default().mean_us(), 0);
    }

    #[test]
    fn rates_and_status() {
        assert_eq!(mbit_per_s(1_000_000, 1_000_000).to_string(), "8.00");
        assert_eq!(mbit_per_s(78_554, 48_068).to_string(), "13.07");
        assert_eq!(mbit_per_s(5, 0).to_string(), "40.00", "0 us counts as 1");
        let s = StatusLine {
            role: "primary",
            state: "paired",
            seq: 10,
            rate: Centi(1234),
            ..StatusLine::default()
        }
        .to_string();
        assert!(
            s.starts_with("ft: status: role=primary state=paired generation=0 seq=10"),
            "{s}"
        );
        assert!(s.contains("log=12.34 Mbit/s"), "{s}");
        let h = StatusLine {
            heap_kib: 300,
            heap_peak_kib: 512,
            ..StatusLine::default()
        };
        assert!(h.to_string().ends_with(" heap=300 KiB peak=512 KiB"), "{h}");
        assert!(
            h.json()
                .ends_with(",\"heap_kib\":300,\"heap_peak_kib\":512}"),
            "{}",
            h.json()
        );
        let j = StatusLine {
            role: "backup",
            state: "live",
            generation: 1,
            rate: Centi(5),
            ..StatusLine::default()
        }
        .json();
        assert!(
            j.starts_with("{\"role\":\"backup\",\"state\":\"live\",\"generation\":1,"),
            "{j}"
        );
        assert!(j.contains("\"log_mbit_s\":\"0.05\""), "{j}");
        let p = StatusLine {
            repair_pause_ms: Some(420),
            ..StatusLine::default()
        };
        assert!(p.to_string().ends_with(" last_repair_pause=420 ms"), "{p}");
        assert!(
            p.json().ends_with(",\"repair_pause_ms\":420}"),
            "{}",
            p.json()
        );
        let r = StatusLine {
            state: "repairing",
            repair: Some((40, 2, 1500)),
            ..StatusLine::default()
        };
        assert!(
            r.to_string()
                .ends_with(" repair: 40% of round 2 sent, dirtied 1500 pages/s"),
            "{r}"
        );
        assert!(
            r.json().ends_with(
                ",\"repair_percent\":40,\"repair_round\":2,\"repair_dirty_pages_s\":1500}"
            ),
            "{}",
            r.json()
        );
        assert!(j.ends_with('}') && !j.contains('\n'), "{j}");
    }
}
