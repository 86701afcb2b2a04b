//! The FT pair as a client sees it (issue 9, "Done when"; DESIGN.md §1.4
//! output rule, §1.5 only the primary talks to the world, §1.7 go live
//! without split brain, §1.8 duplicates allowed and pending disk I/O
//! re-issued). Names are contracts (`make e2e T=<name>`).
//!
//! Rig (one per run, removed afterwards): a network namespace with a
//! bridge `brfk` holding 10.0.4.1/24 and two taps, `tapfk1` (the primary's
//! Bochs e1000, hypervisor 10.0.4.11) and `tapfk2` (the backup's, 10.0.4.12).
//! istgt listens on 10.0.4.1:3260 in the namespace and serves a 16 MiB
//! file-backed LUN whose flag block (LBA 0) starts at generation 0 owner 0;
//! the guest's disk is that LUN from block 8 on (`disk=iscsi`), its NIC is
//! bridged to the hypervisor's e1000 (`guest_net=bridge`). Both nodes boot
//! the test guest's KV service (`test=kv ip=10.0.4.20/24`, TCP port 7000,
//! MAC 52:54:00:f7:00:01 on both sides) with the same command line; the
//! primary's log goes to the backup's port 7700; the default failure
//! timeout (`ft_timeout` 2000 ms).
//!
//! The client is `qemu-tests ftkv-client`, run inside the namespace (so
//! from 10.0.4.1): `n` SETs `k0000..` with values from
//! [`crate::tests_kv::value`], then a GET of each (the value must match),
//! then `SHUTDOWN`. Through an outage it keeps its TCP connection (the
//! guest's TCP state survives a failover: that is the point of FT), and
//! after 30 s without a reply it reconnects and re-sends the unanswered
//! request; a SET counts as acknowledged only once its `OK` arrived. It
//! prints `ack <n>` per reply, which the runner timestamps and uses to
//! place faults and to measure failover: kill -> the first reply after a
//! gap of at least 500 ms (replies the old primary released just before
//! it died arrive within milliseconds of the kill and are counted as "in
//! flight"). Afterwards the runner also reads the KV table straight from
//! the LUN file: every acknowledged SET must be there, and the flag must
//! hold the expected generation.
//!
//! * `ft-pair-steady`: 500 SETs + 500 GETs + SHUTDOWN with both sides up;
//!   every reply correct, no retry; the bridge's forwarding database,
//!   sampled every second during and after the load, learns the guest MAC
//!   only on the primary's tap (the backup's frames never reach the wire)
//!   and the backup counts `outputs discarded` > 0; both status ports
//!   (TCP 7701) answer one JSON line with the right role, `paired`,
//!   generation 0; the backup ends `verdict=IDENTICAL` (every checkpoint
//!   matched); the flag is unchanged.
//! * `ft-kill-primary`: 5 runs with seeds 1..5 (`FTKV_SEEDS=a,b,..`
//!   overrides): 80 SETs each; the primary's Bochs is SIGKILLed a seeded 0-49
//!   ms after a seeded reply (10%..90% of the SETs); the backup must win
//!   (generation 0 -> 1 owner 2, exactly one step), go LIVE, announce the
//!   guest MAC (RARP; the bridge then learns it on `tapfk2`), re-issue
//!   pending disk requests; the client completes and every acknowledged
//!   SET reads back, through the service and on the LUN.
//! * `ft-kill-backup`: the backup's Bochs is SIGKILLed during 200 SETs:
//!   the primary wins (0 -> 1 owner 1), goes ALONE and keeps serving;
//!   nothing acknowledged is lost.
//! * `ft-partition`: during 200 SETs both taps are isolated on the bridge
//!   (`bridge link set dev tapfkN isolated on`: no frame between the two
//!   nodes, both still reach istgt and the client): exactly one side wins
//!   and serves (ALONE or LIVE), the other prints `LOST the test-and-set`
//!   and serves nothing afterwards; the flag went up by exactly one.
//!   tcpdump on both taps (frames with the guest MAC as source): none
//!   left the loser's tap later than 0.1 s after the runner saw the
//!   winner's ALONE/LIVE line, some left the winner's.
//! * `ft-storage-down`: 100 SETs, then GETs; istgt is killed (the primary
//!   keeps answering GETs from memory), 2 s later the primary's Bochs is
//!   SIGKILLed. istgt stays down. The backup finds the storage unreachable
//!   and retries the arbitration for as long as it stays so (it does not
//!   halt): the runner watches it until the client gave up (45 s without
//!   a reply), the backup printed at least two `shared storage
//!   unreachable: ... retrying` lines (attempt 1 and 10) and at least 3x
//!   the failure timeout of wall time passed since the kill (bounded by
//!   180 s), then SIGKILLs the backup's Bochs itself. Judged: the backup
//!   was still running (it neither halted nor exited by itself), printed
//!   no LIVE, WON, RARP and no guest output; no reply reached the client
//!   more than 1 s after the kill; the guest MAC was never learned on
//!   `tapfk2`; the flag on the LUN file is unchanged.
//! * `ft-storage-blip-failover`: 100 SETs, then GETs of them round and
//!   round for at least 8 s, then 100 more SETs, then GETs of all 200 and
//!   SHUTDOWN (client mode `blip`). 30 replies into the first GETs istgt
//!   is killed, 2 s later the primary's Bochs is SIGKILLed; istgt stays
//!   down until the backup printed a `shared storage unreachable` retry
//!   line and one failure timeout (2 s) more passed, then it is restarted
//!   on the same configuration and LUN file. Judged: before the restart
//!   the backup had failed at least two arbitration logins (it retried)
//!   and printed no LIVE/WON/RARP/guest output, and no reply reached the
//!   client (after 1 s of replies in flight); then the backup wins
//!   (generation 0 -> 1 owner 2, read from the LUN file), goes LIVE,
//!   announces the MAC (learned on `tapfk2`), writes the second batch of
//!   SETs through its own iSCSI session to the restarted istgt (its disk
//!   counts at least 100 writes) and runs the guest to its exit 0; the
//!   client completes and every acknowledged SET reads back from the LUN.
//!   The failover time is istgt's return (its portal listening) -> the
//!   first reply after it, and must be under 60 s of wall time.
//! * `ft-zombie-primary` (issue 14): three runs on fresh rigs and LUNs,
//!   (a), (b), (c) (`FTKV_ZOMBIE=a|b|c` runs one). The client (mode
//!   `overwrite`) overwrites 4 keys round robin, SET `n` writing key `n %
//!   4` with `value(n)` (`v<n>-...`: `n` is the version), and records per
//!   key the last version answered `OK`. After 40 replies (every key
//!   overwritten 10 times) the runner pauses the client between two SETs
//!   (`pause` on its stdin, its `paused` line), cuts only the primary's
//!   iSCSI path (policy-routing blackhole rules for TCP 10.0.4.11 <->
//!   10.0.4.1:3260 in the namespace: `local` rule moved to preference
//!   100, early demux off; `../shared/notes/machine.md`) and lets the
//!   client send the next SET (`resume`): that SET's write is in flight
//!   and has not reached istgt. The guest disk is asynchronous: the
//!   primary keeps its log alive, and steps down once its disk made no
//!   progress for the failure timeout (its Goodbye sends the backup to
//!   take over at once). (a) stays so; in (c) 0.2 s later the primary's
//!   Bochs is frozen (SIGSTOP; its instruction-driven clock stands still,
//!   so it cannot step down: a stalled host whose write waits) and
//!   resumed (SIGCONT) when the paths come back; in (b) 0.2 s later all
//!   the primary's links go too: its bridge port `tapfk1` is
//!   disabled (`bridge link set ... state 0`; port isolation would still
//!   let it reach the bridge's own address, and a tap set down makes
//!   Bochs's writes to it fail). The cut holds until the backup printed
//!   LIVE, the new primary answered 8 more SETs (every key overwritten
//!   twice more) and 3 s passed (`FTKV_ZOMBIE_HOLD=<s>`); then the
//!   client stops writing (`stop`,
//!   its `stopped` line) and the paths come back (rules deleted, sysctls
//!   restored, port forwarding again): the old primary's pending write,
//!   if it went through now, would be the last one on its sector. The
//!   runner watches the old primary for up to 60 s (2 s more once it
//!   halted), then the client GETs each key (its last acknowledged
//!   version) and sends SHUTDOWN. A tcpdump on `tapfk1` records every
//!   frame of the guest MAC leaving the old primary. Judged: each key on
//!   the LUN file holds a value the client sent for it whose version is
//!   at least the key's last acknowledged one (the client answers every
//!   SET before the next, so in practice exactly that one); both nodes
//!   registered their reservation keys (`0x4654000000000001`/`...02`);
//!   the backup WON (generation 0 -> 1 owner 2, also on the LUN file),
//!   fenced node 1 (PREEMPT AND ABORT), went LIVE (RARP, re-issue) and
//!   ran the guest to its exit 0; the old primary printed, only after
//!   its paths came back, `the shared disk refused a write: RESERVATION
//!   CONFLICT` or `LOST the test-and-set` (or, at any time, that it
//!   stepped down for its stalled disk), then `hypervisor: guest
//!   stopped` (or its Bochs exited), and never WON, ALONE or LIVE; no
//!   frame of the guest left `tapfk1` after the backup's LIVE line was
//!   seen and the bridge never learned the guest MAC there again.
//!   Reported: versions, cut lengths, failover time (iSCSI cut -> first
//!   reply after a >= 500 ms gap), the old primary's reaction time and
//!   disk counters.
//! * `ft-long-run` (issue 15, `long`): ten minutes (`FTKV_LONG_SECS=`) of
//!   client SETs, each overwriting one of 64 keys, then a GET of each and
//!   SHUTDOWN: every reply correct, every key's last version on the LUN,
//!   the backup IDENTICAL, and the primary's heap high-water mark (its
//!   status lines' `peak=`) grows by less than 1% over the second half.
use crate::emulator::{BootSpec, Outcome, Run};
use crate::ftrig::ROLES;
use crate::istgt::Istgt;
use crate::tests::E2eTest;
use crate::tests_kv::value;
use crate::tests_net::Netns;
use ft::arbitration::{FlagRecord as Flag, NodeId};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const GUEST: &str = "build/testguest.elf64";
pub(crate) const GUEST_CMDLINE: &str = "test=kv ip=10.0.4.20/24";
pub(crate) const GUEST_ADDR: &str = "10.0.4.20:7000";
const GUEST_MAC: &str = "52:54:00:f7:00:01";
const BRIDGE: &str = "brfk";
/// The nodes' taps: primary, backup.
const TAPS: [&str; 2] = ["tapfk1", "tapfk2"];
const WIRING: crate::ftrig::Wiring = crate::ftrig::Wiring {
    bridge: BRIDGE,
    taps: TAPS,
    mac_tag: 2,
};
const STATUS_PORT: u16 = 7701;
pub(crate) const LUN_BYTES: u64 = 16 << 20;
/// The guest's disk starts at this LUN block (0..8: arbitration).
const DISK_LBA: u64 = 8;
/// The KV guest's table: slots of one sector each from guest sector 0.
const SLOTS: usize = 4096;
const DEFAULT_SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
/// A reply gap at least this long after a fault is the outage.
const OUTAGE_GAP: Duration = Duration::from_millis(500);
/// Serial lines after which a node serves no more (it may stay up). A
/// node that finds the shared storage unreachable does not halt: it
/// retries the arbitration until storage is back ([`RETRYING`]).
const HALTED: [&str; 3] = [
    "LOST the test-and-set",
    "fenced off the shared disk",
    "FTVISOR-EXIT",
];
/// The backup's line at its first failed arbitration of an outage and at
/// every tenth (`ft: backup: shared storage unreachable: no one may go
/// live; retrying every 100 ms (attempt N)`).
const RETRYING: &str = "ft: backup: shared storage unreachable: no one may go live; retrying";
/// The pair's failure timeout: the default `ft_timeout` (ms of each
/// node's own clock).
const FT_TIMEOUT: Duration = Duration::from_millis(2000);
/// Kill, backup kill and partition: the longest failover accepted (fault
/// -> first reply from the survivor): the failure timeout plus 5 s for
/// arbitration, fencing, the drain and Bochs being slow on a busy host
/// (measured 0.5-0.7 s).
pub(crate) const FAILOVER_BOUND: Duration = Duration::from_millis(2000 + 5000);
/// `ft-storage-down`: the longest the runner watches the backup retry
/// after the primary's kill.
const OBSERVE_MAX: Duration = Duration::from_secs(180);
/// `ft-storage-blip-failover`: the longest the runner waits for the
/// backup's first retry line after the primary's kill, and the bound on
/// the failover time (istgt back -> first reply).
const RETRY_LINE_MAX: Duration = Duration::from_secs(120);
const BLIP_FAILOVER_MAX: Duration = Duration::from_secs(60);
/// `blip` client: how long it reads the first batch back before writing
/// the second (the faults land in there: while istgt is down the guest
/// must not write, a failed write ends the KV service).
const BLIP_READS: Duration = Duration::from_secs(8);
/// `ft-zombie-primary` (`overwrite` client): the keys overwritten round
/// robin (`k0000..k0003`; SET number `n` writes key `n % 4` with
/// [`value`]`(n)`, so `n` is that key's version), the most SETs the
/// client sends before the runner stops it, and the reply after which
/// the primary is cut off.
pub(crate) const ZOMBIE_KEYS: usize = 4;
const ZOMBIE_MAX_SETS: usize = 100_000;
const ZOMBIE_CUT_AFTER: usize = 40;
/// After the backup's LIVE line: at least this many more replies (every
/// key overwritten twice by the new primary) and this much time
/// (`FTKV_ZOMBIE_HOLD=<s>` overrides) before the client is told to stop
/// writing and the paths come back.
const ZOMBIE_SETS_AFTER_LIVE: usize = 2 * ZOMBIE_KEYS;
const ZOMBIE_AFTER_LIVE: Duration = Duration::from_secs(3);

fn zombie_hold() -> Duration {
    std::env::var("FTKV_ZOMBIE_HOLD")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| (0.0..=600.0).contains(s))
        .map_or(ZOMBIE_AFTER_LIVE, Duration::from_secs_f64)
}
/// Bounds: the cut -> the backup's LIVE line; the LIVE line -> the
/// replies above; `stop` -> the client's `stopped`; the paths back ->
/// the old primary halted (then the runner goes on and judges).
const ZOMBIE_LIVE_MAX: Duration = Duration::from_secs(120);
const ZOMBIE_SERVE_MAX: Duration = Duration::from_secs(120);
const ZOMBIE_STOP_MAX: Duration = Duration::from_secs(60);
const ZOMBIE_HALT_MAX: Duration = Duration::from_secs(60);
/// How long the runner still watches after the old primary halted
/// (a late write of a zombie would land in there).
const ZOMBIE_GRACE: Duration = Duration::from_secs(2);
/// Run (b): the primary's links are cut this long after its iSCSI path
/// (time for the client's next SET to reach it and pin its write; the
/// backup's failure timeout is 2 s of its own clock, about 0.4 s of wall
/// time here).
const ZOMBIE_PIN: Duration = Duration::from_millis(200);
/// The winner's line when it starts serving alone, by node: the
/// primary's, the backup's.
const GO_LIVE: [&str; 2] = [
    "ft: primary: ALONE under generation",
    "ft: backup: LIVE under generation",
];
/// `ft-partition`: a guest frame of the loser counts as sent after the
/// winner's go-live when its capture timestamp is at least this much
/// after the runner saw the winner's [`GO_LIVE`] line. Both clocks are
/// the host's `CLOCK_REALTIME` (tcpdump's `-tt` stamps, [`wall_secs`]),
/// and the sighting trails the real go-live (serial file, the runner's
/// loop of at most 100 ms), which only moves the window later; the slack
/// covers the other way round: the kernel stamps a frame when it takes
/// it off the tap (its receive backlog), which on this busy 2-core host
/// can trail Bochs's write by some milliseconds, so a frame written just
/// before the go-live must not count as after it.
const PARTITION_SLACK: Duration = Duration::from_millis(100);
/// The primary's hypervisor and the iSCSI portal (istgt) in the rig.
const PRIMARY_IP: &str = "10.0.4.11";
const PORTAL_IP: &str = "10.0.4.1";
const PORTAL_PORT: &str = "3260";
/// The old primary's lines after the paths came back: fenced (its write
/// refused) or beaten at the flag.
const FENCED: &str = "ft: primary: the shared disk refused a write: RESERVATION CONFLICT";
const ZOMBIE_REACTIONS: [&str; 2] = [FENCED, "ft: primary: LOST the test-and-set"];
/// The old primary's line when its disk stalled for the failure timeout
/// while paired: it steps down for the backup (issue 14, one-sided
/// storage loss), possibly before its paths come back.
const STEPPED_DOWN: &str = "ft: primary: the shared disk made no progress for";

/// The old primary's serial from its reaction on: from its step-down
/// line if it stepped down, else what it printed after the paths came
/// back (`at_restore`: its serial then).
fn zombie_tail<'a>(serial: &'a str, at_restore: &str) -> &'a str {
    match serial.find(STEPPED_DOWN) {
        Some(i) => &serial[i..],
        None => serial.get(at_restore.len()..).unwrap_or(""),
    }
}

fn zombie_reaction(line: &str) -> bool {
    line.contains(STEPPED_DOWN) || ZOMBIE_REACTIONS.iter().any(|m| line.contains(m))
}

/// The pair's hypervisor command line (`role=`, `peer=`, `ip=`,
/// `iscsi_node=` are added per node).
macro_rules! pair {
    ($cluster:literal) => {
        concat!(
            "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=",
            $cluster,
            " guest_net=bridge disk=iscsi iscsi=10.0.4.1:3260 \
             iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0 \
             heartbeat=10 ft_status=1000"
        )
    };
}

pub fn tests() -> Vec<E2eTest> {
    let t = |name, cmdline, secs, custom, about| E2eTest {
        cmdline,
        modules: vec![(GUEST, GUEST_CMDLINE)],
        timeout: Duration::from_secs(secs),
        custom: Some(custom),
        ..E2eTest::new(name, crate::emulator::Emulator::Bochs, about)
    };
    vec![
        t(
            "ft-pair-steady",
            pair!("31"),
            900,
            run_steady,
            "FT pair serving the guest KV service over the bridge: 1,000 client requests with both sides up, every reply correct; the guest MAC learned only on the primary's tap (the backup's outputs discarded); status ports answer JSON; the backup ends IDENTICAL",
        ),
        t(
            "ft-kill-primary",
            pair!("32"),
            300,
            run_kill_primary,
            "FT pair under client load; the primary's Bochs SIGKILLed at a seeded random point (5 seeds): the backup wins the test-and-set (generation +1), goes live, announces the MAC, re-issues pending disk I/O; the client completes and every acknowledged SET reads back; failover time",
        ),
        t(
            "ft-kill-backup",
            pair!("33"),
            300,
            run_kill_backup,
            "FT pair under client load; the backup's Bochs SIGKILLed: the primary wins the test-and-set (generation +1) and continues alone; nothing acknowledged is lost",
        ),
        t(
            "ft-partition",
            pair!("34"),
            300,
            run_partition,
            "FT pair under client load; the link between the two nodes cut on the bridge while both reach storage and the client: exactly one side wins and serves, the other loses and halts; generation +1",
        ),
        t(
            "ft-storage-down",
            pair!("35"),
            420,
            run_storage_down,
            "FT pair under client load; istgt stopped for good, then the primary's Bochs SIGKILLed: the backup finds the storage unreachable and keeps retrying without going live (watched for >= 2 retry lines, then stopped by the runner); no reply after the kill; the flag is unchanged",
        ),
        t(
            "ft-storage-blip-failover",
            pair!("36"),
            420,
            run_storage_blip,
            "FT pair under client load; istgt stopped, then the primary's Bochs SIGKILLed; istgt restarted on the same LUN once the backup was seen retrying: the backup then wins (generation +1), goes live, announces the MAC; the client completes and every acknowledged SET reads back; failover time from istgt's return (< 60 s)",
        ),
        t(
            "ft-zombie-primary",
            pair!("37"),
            420,
            run_zombie,
            "FT pair; the client overwrites 4 keys with increasing versions; with a write in flight the primary's iSCSI path only (run a), all its links (run b), or its iSCSI path and then its whole Bochs (SIGSTOP, run c) are cut past the failure timeout: the backup wins (generation +1, preempting the primary's reservation key) and goes live; the old primary steps down when its disk stalls while paired, or once the paths come back its write is refused (RESERVATION CONFLICT) or it loses; it halts; no frame from it after the go-live; the LUN holds every key's last acknowledged version",
        ),
        E2eTest {
            long: true,
            ..t(
                "ft-long-run",
                pair!("38"),
                LONG_SECS + 900,
                run_long,
                "FT pair under a steady mixed load for 10 minutes of wall time (guest timer, client requests over the bridge, a SET overwriting one of 64 keys on the shared LUN each time): every reply correct, every key's last version read back; the primary's heap high-water mark (status line) grows by < 1% over the second half; the backup ends IDENTICAL",
            )
        },
    ]
}

/// `ft-long-run`: seconds of client load (`FTKV_LONG_SECS` overrides).
const LONG_SECS: u64 = 600;
/// `ft-long-run`: the keys the client overwrites round-robin.
const LONG_KEYS: usize = 64;

fn long_secs() -> u64 {
    std::env::var("FTKV_LONG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(LONG_SECS)
}

// ---------------------------------------------------------------- plans

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    KillPrimary,
    KillBackup,
    Partition,
    /// Kill istgt, then (2 s later) the primary; istgt stays down.
    StorageDown,
    /// Kill istgt, then (2 s later) the primary; restart istgt once the
    /// backup is seen retrying the arbitration.
    StorageBlip,
    /// Cut only the primary's iSCSI traffic (policy routing), restore it
    /// once the backup is live and the client stopped writing.
    ZombieIscsi,
    /// Cut all the primary's links (its bridge port disabled), restore
    /// them likewise.
    ZombieLinks,
    /// Freeze the primary's Bochs (SIGSTOP) with its write pinned behind
    /// the iSCSI cut, resume it (SIGCONT) with the paths: a stalled host.
    /// Its clock (Bochs's, instruction-driven) stands still meanwhile, so
    /// it cannot step down: only the fence stops its write.
    ZombieFreeze,
}

impl Fault {
    /// istgt goes first, the primary 2 s later.
    fn storage(self) -> bool {
        matches!(self, Fault::StorageDown | Fault::StorageBlip)
    }

    /// `ft-zombie-primary`: the primary is cut off, not killed.
    fn zombie(self) -> bool {
        matches!(
            self,
            Fault::ZombieIscsi | Fault::ZombieLinks | Fault::ZombieFreeze
        )
    }
}

/// What one run does.
#[derive(Debug, Clone)]
struct Plan {
    fault: Fault,
    /// `ftkv-client` mode: `steady`, `failover`, `outage`, `blip` or
    /// `overwrite`.
    mode: &'static str,
    sets: usize,
    /// The fault fires `delay` after the `at_ack`-th reply.
    at_ack: usize,
    delay: Duration,
    salt: u64,
    /// Appended to the test's name for this run's boots (`-s3`).
    tag: String,
}

impl Plan {
    fn new(fault: Fault, mode: &'static str, sets: usize, seed: u64) -> Plan {
        let (at_ack, delay) = fault_point(seed, sets);
        Plan {
            fault,
            mode,
            sets,
            at_ack,
            delay,
            salt: u64::from(std::process::id()) << 8 ^ seed,
            tag: String::new(),
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seeded point in the SET phase: after reply `10%..90%` of `sets`,
/// plus 0..49 ms (so that the fault usually lands inside a request).
fn fault_point(seed: u64, sets: usize) -> (usize, Duration) {
    let a = splitmix(seed);
    let (lo, hi) = (sets / 10, sets * 9 / 10);
    let at = lo + (a % (hi - lo + 1) as u64) as usize;
    (at.max(1), Duration::from_millis(splitmix(a) % 50))
}

/// `FTKV_SEEDS=1,7,9` or the default five.
fn seeds() -> Vec<u64> {
    std::env::var("FTKV_SEEDS")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_SEEDS.to_vec())
}

fn run_steady(t: &E2eTest, root: &Path) -> Outcome {
    let plan = Plan::new(Fault::None, "steady", 500, 0);
    scenario(t, root, &plan)
}

fn run_long(t: &E2eTest, root: &Path) -> Outcome {
    // `sets` carries the seconds of load for the `long` client.
    let plan = Plan::new(Fault::None, "long", long_secs() as usize, 0);
    scenario(t, root, &plan)
}

fn run_kill_primary(t: &E2eTest, root: &Path) -> Outcome {
    let mut notes = Vec::new();
    let seeds = seeds();
    for (k, seed) in seeds.iter().enumerate() {
        let mut plan = Plan::new(Fault::KillPrimary, "failover", 80, *seed);
        plan.tag = format!("-s{seed}");
        let t0 = Instant::now();
        match scenario(t, root, &plan) {
            Outcome::Pass(note) => notes.push(format!(
                "seed {seed} ({:.0} s): {note}",
                t0.elapsed().as_secs_f64()
            )),
            Outcome::Fail(why) => {
                return Outcome::Fail(format!(
                    "seed {seed} (run {} of {}; rerun alone with FTKV_SEEDS={seed}): {why}{}",
                    k + 1,
                    seeds.len(),
                    if notes.is_empty() {
                        String::new()
                    } else {
                        format!("\n(passed before it: {})", notes.join("; "))
                    }
                ))
            }
            Outcome::Skip(why) => return Outcome::Skip(why),
        }
    }
    Outcome::Pass(format!("{} seeds: {}", seeds.len(), notes.join("; ")))
}

fn run_kill_backup(t: &E2eTest, root: &Path) -> Outcome {
    scenario(t, root, &Plan::new(Fault::KillBackup, "failover", 200, 11))
}

fn run_partition(t: &E2eTest, root: &Path) -> Outcome {
    scenario(t, root, &Plan::new(Fault::Partition, "failover", 200, 12))
}

fn run_storage_down(t: &E2eTest, root: &Path) -> Outcome {
    let mut plan = Plan::new(Fault::StorageDown, "outage", 100, 13);
    // In the GET phase: the primary has nothing to write while istgt is
    // down (a failed write would end the guest with `kv: FAILED`).
    plan.at_ack = plan.sets + 30;
    plan.delay = Duration::ZERO;
    scenario(t, root, &plan)
}

fn run_storage_blip(t: &E2eTest, root: &Path) -> Outcome {
    let mut plan = Plan::new(Fault::StorageBlip, "blip", 200, 14);
    // Early in the first GET phase (the `blip` client reads the first 100
    // keys back for at least 8 s), for the reason above, so the primary
    // dies there too; the second batch of SETs then goes to the new
    // primary's disk on the restarted istgt.
    plan.at_ack = plan.sets / 2 + 30;
    plan.delay = Duration::ZERO;
    scenario(t, root, &plan)
}

/// `ft-zombie-primary`: run (a), the primary's iSCSI path cut, then run
/// (b), all its links cut, each on a fresh rig and LUN
/// (`FTKV_ZOMBIE=a` or `b` runs one).
fn run_zombie(t: &E2eTest, root: &Path) -> Outcome {
    let only = std::env::var("FTKV_ZOMBIE").unwrap_or_default();
    let phases = [
        ("a", Fault::ZombieIscsi, "its iSCSI path cut", 15),
        ("b", Fault::ZombieLinks, "all its links cut", 16),
        ("c", Fault::ZombieFreeze, "its Bochs frozen", 17),
    ];
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for (tag, fault, what, seed) in phases {
        if !only.is_empty() && only != tag {
            continue;
        }
        let mut plan = Plan::new(fault, "overwrite", ZOMBIE_MAX_SETS, seed);
        // Every key has been overwritten ten times before the cut.
        plan.at_ack = ZOMBIE_CUT_AFTER;
        plan.tag = format!("-{tag}");
        let t0 = Instant::now();
        let took = |t0: Instant| format!("{:.0} s", t0.elapsed().as_secs_f64());
        match scenario(t, root, &plan) {
            Outcome::Pass(note) => passed.push(format!("run {tag} ({what}; {}): {note}", took(t0))),
            Outcome::Fail(why) => failed.push(format!(
                "run {tag} ({what}; {}; rerun alone with FTKV_ZOMBIE={tag}): {why}",
                took(t0)
            )),
            Outcome::Skip(why) => return Outcome::Skip(why),
        }
    }
    if failed.is_empty() {
        Outcome::Pass(passed.join("\n"))
    } else {
        let mut s = failed.join("\n\n");
        if !passed.is_empty() {
            s.push_str(&format!("\n\n(passed: {})", passed.join("\n")));
        }
        Outcome::Fail(s)
    }
}

// ------------------------------------------------------------ the run

/// What happened on the host side while the pair ran.
#[derive(Default)]
struct Story {
    ready: Option<Instant>,
    /// Arrival of each client reply.
    acks: Vec<Instant>,
    retries: Vec<String>,
    client: Option<Result<String, String>>,
    client_end: Option<Instant>,
    fault_at: Option<Instant>,
    /// `ft-storage-*`: when the primary was killed (after istgt).
    second_at: Option<Instant>,
    /// `ft-storage-blip-failover`: when the backup's first retry line
    /// was seen, when the restarted istgt listened again, and the
    /// backup's serial just before the restart.
    retry_seen: Option<Instant>,
    istgt_back: Option<Instant>,
    backup_before_restart: String,
    /// `ft-storage-down`: when the runner stopped the still retrying
    /// backup after watching it.
    backup_stopped: Option<Instant>,
    notes: Vec<String>,
    fdb: Vec<FdbSample>,
    /// Status port answers: node index, reply line or error.
    status: Vec<(usize, Result<String, String>)>,
    /// Nodes the runner had to stop at the end (and why).
    stopped: Vec<String>,
    /// `ft-zombie-primary`.
    zombie: Zombie,
    /// tcpdump of the guest MAC's frames coming out of each node's tap
    /// (its text output), or why there is none; `None`: not captured
    /// (`ft-zombie-primary` captures the primary's, `ft-partition`
    /// both).
    captures: [Option<Result<PathBuf, String>>; 2],
    /// `ft-partition`: the first [`GO_LIVE`] line the runner saw after
    /// the fault: the node, when, and the same as seconds since the Unix
    /// epoch (for the captures' timestamps).
    went_live: Option<(usize, Instant, f64)>,
}

/// `ft-zombie-primary`: the steps of the cut and what was seen.
#[derive(Default)]
struct Zombie {
    /// `pause` sent to the client, its `paused` line seen (it sends no
    /// SET until `resume`).
    pause_sent: Option<Instant>,
    client_paused: Option<Instant>,
    /// The early-demux sysctls' values before the iSCSI cut (while it is
    /// in place).
    early_demux: Option<[String; 2]>,
    /// Run (b): when the primary's bridge port was disabled.
    links_cut: Option<Instant>,
    /// Replies the client had when the primary was cut off (the SET with
    /// that number was the one in flight).
    acks_at_cut: usize,
    /// The backup's LIVE line seen: when, the same as seconds since the
    /// Unix epoch (for the capture's timestamps), and the client's
    /// replies by then.
    live: Option<(Instant, f64)>,
    acks_at_live: usize,
    /// `stop` sent to the client, its `stopped` line seen.
    stop_sent: Option<Instant>,
    client_stopped: Option<Instant>,
    /// The paths back; the old primary's serial at that moment.
    restored: Option<Instant>,
    primary_at_restore: String,
    /// The old primary's first line of [`ZOMBIE_REACTIONS`] after the
    /// restore, and its halt (line or its Bochs gone), when seen.
    reaction: Option<(Instant, String)>,
    halt: Option<(Instant, String)>,
    /// `finish` sent to the client (GETs and SHUTDOWN follow).
    finish_sent: Option<Instant>,
}

struct FdbSample {
    at: Instant,
    /// The bridge ports the guest MAC was learned on.
    ports: Vec<String>,
}

/// The runner's handle on the rig while the emulators run.
struct Ctx<'a> {
    ns: &'a mut Netns,
    target: &'a mut Istgt,
    serials: &'a [PathBuf; 2],
    bochsrc: [String; 2],
}

impl Ctx<'_> {
    fn serial(&self, node: usize) -> String {
        std::fs::read(&self.serials[node])
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    fn fdb(&self) -> FdbSample {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "bridge",
                "fdb",
                "show",
                "br",
                BRIDGE,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        FdbSample {
            at: Instant::now(),
            ports: fdb_ports(&out, GUEST_MAC),
        }
    }

    fn kill_node(&self, node: usize) -> Result<u32, String> {
        signal_bochs(&self.bochsrc[node], "KILL")
            .map_err(|e| format!("the {}'s Bochs: {e}", ROLES[node]))
    }
}

/// The client's stdout lines, each with when it arrived, and the threads
/// that read its stdout and (to the end) its stderr.
pub(crate) type ClientLines = (
    mpsc::Receiver<(Instant, String)>,
    std::thread::JoinHandle<()>,
    std::thread::JoinHandle<String>,
);

/// Reads a started `ftkv-client`'s output: [`ClientLines`].
pub(crate) fn client_lines(child: &mut std::process::Child) -> Result<ClientLines, String> {
    let out = child.stdout.take().ok_or("no client stdout")?;
    let mut err = child.stderr.take().ok_or("no client stderr")?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Ok((rx, reader, err_reader))
}

/// Sends `SIG<sig>` to the Bochs started with `bochsrc`; its pid.
pub(crate) fn signal_bochs(bochsrc: &str, sig: &str) -> Result<u32, String> {
    let pid = bochs_pid(bochsrc).ok_or("not running")?;
    crate::bench::signal(pid, sig).map(|()| pid)
}

/// The pid of the Bochs started with `bochsrc` (its absolute path).
fn bochs_pid(bochsrc: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_bochs = args
            .first()
            .is_some_and(|a| a.ends_with(b"/bochs") || *a == b"bochs");
        (is_bochs && args.contains(&bochsrc.as_bytes())).then_some(pid)
    })
}

/// Ports of the bridge's forwarding database that learned `mac`
/// (`bridge fdb show` lines `<mac> dev <port> master <br>`).
fn fdb_ports(fdb: &str, mac: &str) -> Vec<String> {
    let mut ports: Vec<String> = fdb
        .lines()
        .filter(|l| !l.contains("permanent"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if !w.next()?.eq_ignore_ascii_case(mac) {
                return None;
            }
            w.next().filter(|d| *d == "dev")?;
            w.next().map(str::to_string)
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

fn scenario(t: &E2eTest, root: &Path, plan: &Plan) -> Outcome {
    let name = format!("{}{}", t.name, plan.tag);
    let mut ns = match crate::ftrig::netns("ftkv", &WIRING) {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let mut target = match crate::ftrig::with_storage(root, &name, &mut ns, LUN_BYTES) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let names = [format!("{name}-primary"), format!("{name}-backup")];
    let dirs = names.clone().map(|n| root.join("build/e2e").join(n));
    let serials = dirs.clone().map(|d| d.join("serial.txt"));
    for d in &dirs {
        // A serial file of an earlier run must not look like this one's.
        let _ = std::fs::remove_dir_all(d);
    }
    let specs = (0..2)
        .map(|node| (t.emulator, node_spec(t, root, &ns, node, &names[node])))
        .collect();
    let done = AtomicBool::new(false);
    let mut story = Story::default();
    let bochsrc = dirs
        .clone()
        .map(|d| d.join("bochsrc").display().to_string());
    let (runs, conducted) = std::thread::scope(|s| {
        let boots = s.spawn(|| {
            let r = crate::emulator::boot_all(root, specs);
            done.store(true, Ordering::SeqCst);
            r
        });
        let mut ctx = Ctx {
            ns: &mut ns,
            target: &mut target,
            serials: &serials,
            bochsrc,
        };
        let deadline = Instant::now() + t.timeout;
        let conducted = conduct(&mut ctx, plan, &mut story, &done, deadline);
        wind_down(&ctx, &mut story, &done, conducted.is_err());
        let runs = boots
            .join()
            .unwrap_or_else(|_| (0..2).map(|_| Err("boot thread panicked".into())).collect());
        (runs, conducted)
    });
    let flag = target
        .read_block(0)
        .and_then(|b| Flag::from_block(&b).map_err(|e| format!("flag block: {e:?}")));
    let table = lun_table(&target.lun_file());
    drop(target);
    drop(ns);
    let (p, b) = match crate::ftrig::pair_runs(runs) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let judged = conducted.and_then(|_| judge(plan, &story, &p, &b, flag, table));
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => {
            let mut s = why;
            if !story.notes.is_empty() {
                s.push_str(&format!("\nhost side: {}", story.notes.join("; ")));
            }
            if let Some(Err(e)) = &story.client {
                s.push_str(&format!("\nclient: {e}"));
            }
            Outcome::Fail(crate::ftrig::with_tails(
                s,
                [&p, &b],
                [&names[0], &names[1]],
            ))
        }
    }
}

/// Boot spec of `node` (0 = primary, 1 = backup).
fn node_spec(t: &E2eTest, root: &Path, ns: &Netns, node: usize, name: &str) -> BootSpec {
    let extra = format!("iscsi_node={}", node + 1);
    crate::ftrig::node_spec(t, root, ns, node, name, &WIRING, &extra)
}

/// Waits for the guest service, runs the client and the fault.
fn conduct(
    ctx: &mut Ctx,
    plan: &Plan,
    st: &mut Story,
    done: &AtomicBool,
    deadline: Instant,
) -> Result<(), String> {
    // The primary prints the guest's console lines once the backup
    // acknowledged them: its `kv: listening` means the pair is up.
    loop {
        if ctx.serial(0).contains("guest: kv: listening") {
            break;
        }
        for (node, role) in ROLES.iter().enumerate() {
            if ctx.serial(node).contains("FTVISOR-EXIT") {
                return Err(format!(
                    "the {role} exited before the guest's KV service listened"
                ));
            }
        }
        if done.load(Ordering::SeqCst) {
            return Err("the emulators ended before the guest's KV service listened".into());
        }
        if Instant::now() > deadline {
            return Err("no `guest: kv: listening` on the primary in time".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    st.ready = Some(Instant::now());
    if plan.fault.zombie() {
        st.captures[0] = Some(start_capture(ctx, 0));
    }
    if plan.fault == Fault::Partition {
        // Which side loses is known only afterwards: both taps.
        for node in 0..2 {
            st.captures[node] = Some(start_capture(ctx, node));
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ctx.ns.name])
        .arg(exe)
        .args([
            "ftkv-client",
            GUEST_ADDR,
            plan.mode,
            &plan.sets.to_string(),
            &plan.salt.to_string(),
        ])
        .stdin(if plan.fault.zombie() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the client: {e}"))?;
    // `overwrite`: the runner tells the client when to stop writing and
    // when to finish.
    let mut client_in = child.stdin.take();
    let (rx, reader, err_reader) = client_lines(&mut child)?;
    let mut trigger: Option<Instant> = None;
    let mut next_fdb = Instant::now();
    let mut next_status = Instant::now() + Duration::from_secs(1);
    let mut last = String::new();
    let result = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((at, l)) => {
                if l.starts_with("ack ") {
                    st.acks.push(at);
                } else if l.starts_with("retry ") {
                    st.retries.push(l);
                } else if l.starts_with("paused ") {
                    st.zombie.client_paused = Some(at);
                } else if l.starts_with("stopped ") {
                    st.zombie.client_stopped = Some(at);
                    st.notes.push(format!("client: {l}"));
                } else {
                    last = l;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
        }
        let now = Instant::now();
        if plan.fault != Fault::None
            && !plan.fault.zombie()
            && trigger.is_none()
            && st.acks.len() >= plan.at_ack
        {
            trigger = Some(now + plan.delay);
        }
        if st.fault_at.is_none() && trigger.is_some_and(|at| now >= at) {
            if let Err(e) = fault(ctx, plan, st) {
                break Err(e);
            }
        }
        if plan.fault == Fault::Partition && st.fault_at.is_some() && st.went_live.is_none() {
            st.went_live = going_live(ctx);
        }
        if plan.fault.storage() && st.second_at.is_none() {
            if let Some(f) = st.fault_at.filter(|f| now >= *f + Duration::from_secs(2)) {
                match ctx.kill_node(0) {
                    Ok(pid) => {
                        st.second_at = Some(Instant::now());
                        st.notes.push(format!(
                            "SIGKILLed the primary's Bochs (pid {pid}) {:.1} s after istgt, after reply #{}",
                            f.elapsed().as_secs_f64(),
                            st.acks.len()
                        ));
                    }
                    Err(e) => break Err(format!("killing the primary: {e}")),
                }
            }
        }
        if plan.fault == Fault::StorageBlip && st.istgt_back.is_none() {
            if let Err(e) = blip_restart(ctx, st, now) {
                break Err(e);
            }
        }
        if plan.fault.zombie() {
            if let Err(e) = zombie_step(ctx, plan, st, now, &mut client_in) {
                break Err(e);
            }
        }
        if now >= next_fdb {
            st.fdb.push(ctx.fdb());
            next_fdb = now + Duration::from_secs(1);
        }
        if plan.fault == Fault::None && now >= next_status {
            for node in 0..2 {
                let ep = format!("10.0.4.1{}:{STATUS_PORT}", node + 1);
                let r = Netns::helper(&ctx.ns.name, &["ftkv-status", &ep]);
                st.status.push((node, r));
            }
            next_status = Instant::now() + Duration::from_secs(3);
        }
        if now > deadline {
            break Err(format!(
                "the client did not finish within the test's {} s ({} replies)",
                deadline.duration_since(st.ready.unwrap_or(now)).as_secs(),
                st.acks.len()
            ));
        }
    };
    if result.is_err() {
        let _ = child.kill();
    }
    drop(client_in);
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    st.client_end = Some(Instant::now());
    st.client = Some(if status.success() {
        Ok(last)
    } else {
        Err(format!("{last} {}", stderr.trim()))
    });
    st.fdb.push(ctx.fdb());
    result?;
    if plan.fault == Fault::StorageDown {
        observe_outage(ctx, st, deadline)?;
    }
    Ok(())
}

/// `ft-storage-blip-failover`, once the primary is dead: restarts istgt
/// (same configuration and LUN file) one failure timeout after the
/// backup's first retry line.
fn blip_restart(ctx: &mut Ctx, st: &mut Story, now: Instant) -> Result<(), String> {
    let Some(second) = st.second_at else {
        return Ok(());
    };
    match st.retry_seen {
        None => {
            if ctx.serial(1).contains(RETRYING) {
                st.retry_seen = Some(now);
                st.notes.push(format!(
                    "the backup's first `shared storage unreachable` retry line seen {:.1} s after the primary's kill",
                    (now - second).as_secs_f64()
                ));
            } else if now > second + RETRY_LINE_MAX {
                return Err(format!(
                    "no `{RETRYING}` line on the backup within {} s of the primary's kill",
                    RETRY_LINE_MAX.as_secs()
                ));
            }
        }
        Some(seen) if now >= seen + FT_TIMEOUT => {
            st.backup_before_restart = ctx.serial(1);
            let asked = Instant::now();
            ctx.target
                .start(ctx.ns)
                .map_err(|e| format!("restarting istgt: {e}"))?;
            let back = Instant::now();
            st.istgt_back = Some(back);
            let down = st.fault_at.map_or(Duration::ZERO, |f| back - f);
            st.notes.push(format!(
                "restarted istgt on the same LUN file {:.1} s after the primary's kill (listening after {:.1} s; istgt down {:.1} s in all; {} retry line(s) on the backup by then)",
                (asked - second).as_secs_f64(),
                (back - asked).as_secs_f64(),
                down.as_secs_f64(),
                st.backup_before_restart.matches(RETRYING).count()
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// `ft-storage-down`, after the client gave up: watches the backup retry
/// with istgt still down until it printed at least two retry lines and
/// at least 3x the failure timeout passed since the primary's kill (at
/// most [`OBSERVE_MAX`] after it), sampling the bridge every second; then
/// stops the backup's Bochs (it would retry for ever).
fn observe_outage(ctx: &Ctx, st: &mut Story, deadline: Instant) -> Result<(), String> {
    let second = st.second_at.ok_or("the primary was never killed")?;
    let mut next_fdb = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_fdb {
            st.fdb.push(ctx.fdb());
            next_fdb = now + Duration::from_secs(1);
        }
        if bochs_pid(&ctx.bochsrc[1]).is_none() {
            // Ended by itself: judged as such.
            return Ok(());
        }
        let lines = ctx.serial(1).matches(RETRYING).count();
        let enough = lines >= 2 && now >= second + 3 * FT_TIMEOUT;
        if enough || now >= second + OBSERVE_MAX || now >= deadline {
            st.fdb.push(ctx.fdb());
            let pid = ctx
                .kill_node(1)
                .map_err(|e| format!("stopping the backup: {e}"))?;
            st.backup_stopped = Some(Instant::now());
            st.stopped.push(format!(
                "backup (still arbitrating {:.1} s after the primary's kill, {lines} retry line(s)): SIGKILLed by the runner (pid {pid})",
                (now - second).as_secs_f64()
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Fires the plan's fault.
fn fault(ctx: &mut Ctx, plan: &Plan, st: &mut Story) -> Result<(), String> {
    let n = st.acks.len();
    let note = match plan.fault {
        Fault::None => return Ok(()),
        Fault::KillPrimary | Fault::KillBackup => {
            let node = usize::from(plan.fault == Fault::KillBackup);
            let pid = ctx
                .kill_node(node)
                .map_err(|e| format!("killing the {}: {e}", ROLES[node]))?;
            format!(
                "SIGKILLed the {}'s Bochs (pid {pid}) {} ms after reply #{n}",
                ROLES[node],
                plan.delay.as_millis()
            )
        }
        Fault::Partition => {
            for tap in TAPS {
                isolate(&ctx.ns.name, tap).map_err(|e| format!("cutting the link: {e}"))?;
            }
            format!(
                "isolated {} and {} on the bridge after reply #{n}",
                TAPS[0], TAPS[1]
            )
        }
        Fault::StorageDown | Fault::StorageBlip => {
            ctx.target.kill(ctx.ns);
            format!("SIGKILLed istgt after reply #{n}")
        }
        // Cut by zombie_step, at a SET boundary.
        Fault::ZombieIscsi | Fault::ZombieLinks | Fault::ZombieFreeze => return Ok(()),
    };
    st.fault_at = Some(Instant::now());
    st.notes.push(note);
    Ok(())
}

/// `ft-partition`: the node whose [`GO_LIVE`] line is on its serial now,
/// when, and the time since the Unix epoch.
fn going_live(ctx: &Ctx) -> Option<(usize, Instant, f64)> {
    (0..2)
        .find(|&node| ctx.serial(node).contains(GO_LIVE[node]))
        .map(|node| (node, Instant::now(), wall_secs()))
}

/// `bridge link set dev <port> isolated on`: an isolated port forwards
/// only to non-isolated ones (here: the bridge itself, where istgt and the
/// client live), never to another isolated port.
fn isolate(ns: &str, port: &str) -> Result<(), String> {
    bridge_link_set(ns, port, &["isolated", "on"])
}

/// `bridge link set dev <port> <what...>` in namespace `ns`.
fn bridge_link_set(ns: &str, port: &str, what: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "bridge", "link", "set", "dev", port])
        .args(what)
        .output()
        .map_err(|e| format!("bridge: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`bridge link set dev {port} {}`: {}",
            what.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// After the client: lets both emulators end by themselves (the serving
/// side ends with the guest's SHUTDOWN, a backup once it replayed to the
/// end); a node that halted for good (LOST) but stays up is stopped after
/// 5 s, anything left after 150 s too.
fn wind_down(ctx: &Ctx, st: &mut Story, done: &AtomicBool, failed: bool) {
    let until = Instant::now()
        + if failed {
            Duration::ZERO
        } else {
            Duration::from_secs(150)
        };
    let mut halted: [Option<Instant>; 2] = [None, None];
    while !done.load(Ordering::SeqCst) {
        let now = Instant::now();
        for node in 0..2 {
            if bochs_pid(&ctx.bochsrc[node]).is_none() {
                continue;
            }
            let text = ctx.serial(node);
            let why = if now >= until {
                Some(if failed {
                    "the run failed".to_string()
                } else {
                    "still running 150 s after the client ended".to_string()
                })
            } else if let Some(m) = HALTED.iter().find(|m| text.contains(**m)) {
                let seen = *halted[node].get_or_insert(now);
                (now >= seen + Duration::from_secs(5))
                    .then(|| format!("halted (`{m}`) but still running"))
            } else {
                None
            };
            if let Some(why) = why {
                if ctx.kill_node(node).is_ok() {
                    st.stopped
                        .push(format!("{} ({why}): stopped by the runner", ROLES[node]));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ------------------------------------------------------------ ft-zombie-primary

/// Starts tcpdump on `node`'s tap for frames from the guest MAC going
/// into the bridge (what that node's guest sends; the hypervisor's own
/// frames, log channel and iSCSI, carry its e1000 MAC and are left out);
/// the capture's text file, or why it could not start.
fn start_capture(ctx: &mut Ctx, node: usize) -> Result<PathBuf, String> {
    let serial = &ctx.serials[node];
    let dir = serial
        .parent()
        .and_then(Path::parent)
        .ok_or("no build directory")?;
    let name = serial
        .parent()
        .and_then(Path::file_name)
        .map_or(ROLES[node].into(), |n| n.to_string_lossy().to_string());
    let file = dir.join(format!("{name}.{}.tcpdump.txt", TAPS[node]));
    let args = [
        "-i", TAPS[node], "-nn", "-e", "-tt", "-l", "-Q", "in", "ether", "src", GUEST_MAC,
    ];
    ctx.ns
        .spawn(Path::new("tcpdump"), &args, &file)
        .map_err(|e| format!("tcpdump: {e}"))?;
    // Listening before the load starts (it says so on stderr).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("listening on") {
            return Ok(file);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "tcpdump did not say `listening on` within 5 s ({})",
        file.display()
    ))
}

/// `sysctl` inside the namespace; its stdout.
fn ns_sysctl(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl"])
        .args(args)
        .output()
        .map_err(|e| format!("sysctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`sysctl {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const EARLY_DEMUX: [&str; 2] = ["net.ipv4.tcp_early_demux", "net.ipv4.ip_early_demux"];

/// Run (a): cuts only the primary's TCP traffic to and from istgt with
/// policy routing inside the namespace (`../shared/notes/machine.md`: no
/// iptables here): the `local` rule moves from preference 0 to 100, early
/// demux is turned off (an established socket would otherwise skip the
/// input route lookup), and two blackhole rules at preference 10 and 11
/// drop `PRIMARY_IP -> PORTAL:3260` and `PORTAL:3260 -> PRIMARY_IP`.
/// Returns the early-demux values to restore.
fn cut_iscsi(ns: &Netns) -> Result<[String; 2], String> {
    let before = [
        ns_sysctl(ns, &["-n", EARLY_DEMUX[0]])?,
        ns_sysctl(ns, &["-n", EARLY_DEMUX[1]])?,
    ];
    ip_rules(
        ns,
        &["add pref 100 lookup local", "del pref 0 lookup local"],
    )?;
    for key in EARLY_DEMUX {
        ns_sysctl(ns, &["-qw", &format!("{key}=0")])?;
    }
    ip_rules(
        ns,
        &[
            &format!(
                "add pref 10 from {PRIMARY_IP} to {PORTAL_IP} ipproto tcp dport {PORTAL_PORT} blackhole"
            ),
            &format!(
                "add pref 11 from {PORTAL_IP} to {PRIMARY_IP} ipproto tcp sport {PORTAL_PORT} blackhole"
            ),
        ],
    )?;
    Ok(before)
}

/// Undoes [`cut_iscsi`]: the blackhole rules go, `local` is back at
/// preference 0, early demux as it was.
fn restore_iscsi(ns: &Netns, early_demux: &[String; 2]) -> Result<(), String> {
    ip_rules(
        ns,
        &[
            "del pref 10",
            "del pref 11",
            "add pref 0 lookup local",
            "del pref 100 lookup local",
        ],
    )?;
    for (key, v) in EARLY_DEMUX.iter().zip(early_demux) {
        ns_sysctl(ns, &["-qw", &format!("{key}={v}")])?;
    }
    Ok(())
}

/// `ip rule <each>` in the namespace, in order.
fn ip_rules(ns: &Netns, rules: &[&str]) -> Result<(), String> {
    for r in rules {
        let mut args = vec!["rule"];
        args.extend(r.split_whitespace());
        ns.ip(&args).map_err(|e| format!("`ip rule {r}`: {e}"))?;
    }
    Ok(())
}

/// `bridge link set dev <port> state <state>` (0 disabled: no frame in or
/// out of the port; 3 forwarding).
fn bridge_port_state(ns: &str, port: &str, state: &str) -> Result<(), String> {
    bridge_link_set(ns, port, &["state", state])
}

fn tell_client(client: &mut Option<std::process::ChildStdin>, word: &str) -> Result<(), String> {
    let w = client.as_mut().ok_or("the client has no stdin")?;
    w.write_all(format!("{word}\n").as_bytes())
        .and_then(|_| w.flush())
        .map_err(|e| format!("telling the client `{word}`: {e}"))
}

fn wall_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `ft-zombie-primary`, once the primary is cut off: waits for the
/// backup's LIVE line and for the new primary to overwrite every key
/// twice, tells the client to stop writing, restores the paths once it
/// stopped (so that a late write of the old primary would be the last
/// one on its sector), watches the old primary react and halt, then
/// lets the client read the keys back and shut down.
fn zombie_step(
    ctx: &mut Ctx,
    plan: &Plan,
    st: &mut Story,
    now: Instant,
    client: &mut Option<std::process::ChildStdin>,
) -> Result<(), String> {
    let acks = st.acks.len();
    let z = &mut st.zombie;
    let Some(pause_sent) = z.pause_sent else {
        if acks >= plan.at_ack {
            tell_client(client, "pause")?;
            z.pause_sent = Some(now);
        }
        return Ok(());
    };
    let Some(cut_at) = st.fault_at else {
        if z.client_paused.is_some() {
            // Between two SETs: the next one's write is pinned in flight.
            z.early_demux = Some(cut_iscsi(ctx.ns)?);
            tell_client(client, "resume")?;
            let at = Instant::now();
            st.fault_at = Some(at);
            z.acks_at_cut = acks;
            st.notes.push(format!(
                "cut the primary's iSCSI path ({PRIMARY_IP} <-> {PORTAL_IP}:{PORTAL_PORT}, policy-routing blackhole rules) after reply #{acks} with the client paused, then let it send SET #{acks} (k{:04} v{acks}): its write is in flight",
                acks % ZOMBIE_KEYS
            ));
        } else if now > pause_sent + ZOMBIE_STOP_MAX {
            return Err(format!(
                "the client did not pause within {} of `pause`",
                secs(ZOMBIE_STOP_MAX)
            ));
        }
        return Ok(());
    };
    if plan.fault == Fault::ZombieFreeze && z.links_cut.is_none() && now >= cut_at + ZOMBIE_PIN {
        signal_bochs(&ctx.bochsrc[0], "STOP")
            .map_err(|e| format!("freezing the primary's Bochs: {e}"))?;
        z.links_cut = Some(now);
        st.notes.push(format!(
            "froze the primary's Bochs (SIGSTOP) {} later",
            secs(now - cut_at)
        ));
    }
    if plan.fault == Fault::ZombieLinks && z.links_cut.is_none() && now >= cut_at + ZOMBIE_PIN {
        bridge_port_state(&ctx.ns.name, TAPS[0], "0")
            .map_err(|e| format!("cutting the primary's links: {e}"))?;
        z.links_cut = Some(now);
        st.notes.push(format!(
            "cut all the primary's links ({} disabled on the bridge) {} later",
            TAPS[0],
            secs(now - cut_at)
        ));
    }
    let Some((live, _)) = z.live else {
        let b = ctx.serial(1);
        if b.contains("ft: backup: LIVE under generation") {
            z.live = Some((now, wall_secs()));
            z.acks_at_live = acks;
            st.notes.push(format!(
                "the backup's LIVE line seen {} after the cut (reply #{acks})",
                secs(now - cut_at)
            ));
        } else if let Some(l) = b.lines().find(|l| l.contains("LOST the test-and-set")) {
            return Err(format!("the backup lost the flag: `{l}`"));
        } else if bochs_pid(&ctx.bochsrc[1]).is_none() {
            return Err("the backup's Bochs ended before it went live".into());
        } else if now > cut_at + ZOMBIE_LIVE_MAX {
            return Err(format!(
                "no `ft: backup: LIVE under generation` line within {} of the cut",
                secs(ZOMBIE_LIVE_MAX)
            ));
        }
        return Ok(());
    };
    let Some(stop_sent) = z.stop_sent else {
        if acks >= z.acks_at_live + ZOMBIE_SETS_AFTER_LIVE && now >= live + zombie_hold() {
            tell_client(client, "stop")?;
            z.stop_sent = Some(now);
        } else if now > live + zombie_hold() + ZOMBIE_SERVE_MAX {
            return Err(format!(
                "the new primary answered {} SET(s) within {} of going live, want {ZOMBIE_SETS_AFTER_LIVE}",
                acks - z.acks_at_live,
                secs(ZOMBIE_SERVE_MAX)
            ));
        }
        return Ok(());
    };
    let Some(restored) = z.restored else {
        if z.client_stopped.is_some() {
            z.primary_at_restore = ctx.serial(0);
            let early_demux = z.early_demux.take().ok_or("no cut to restore")?;
            restore_iscsi(ctx.ns, &early_demux)?;
            match (plan.fault, z.links_cut) {
                (Fault::ZombieLinks, Some(_)) => bridge_port_state(&ctx.ns.name, TAPS[0], "3")
                    .map_err(|e| format!("restoring the primary's links: {e}"))?,
                (Fault::ZombieFreeze, Some(_)) => {
                    signal_bochs(&ctx.bochsrc[0], "CONT")
                        .map_err(|e| format!("resuming the primary's Bochs: {e}"))?;
                }
                _ => {}
            }
            let back = Instant::now();
            z.restored = Some(back);
            st.notes.push(format!(
                "paths restored {} after the cut ({} after the LIVE line; the client had stopped writing after reply #{acks})",
                secs(back - cut_at),
                secs(back - live)
            ));
        } else if now > stop_sent + ZOMBIE_STOP_MAX {
            return Err(format!(
                "the client did not stop writing within {} of `stop`",
                secs(ZOMBIE_STOP_MAX)
            ));
        }
        return Ok(());
    };
    if z.finish_sent.is_some() {
        return Ok(());
    }
    let p = ctx.serial(0);
    let new = zombie_tail(&p, &z.primary_at_restore);
    if z.reaction.is_none() {
        if let Some(l) = new.lines().find(|l| zombie_reaction(l)) {
            z.reaction = Some((now, l.trim().to_string()));
        }
    }
    if z.halt.is_none() {
        if let Some(l) = new
            .lines()
            .find(|l| l.contains("hypervisor: guest stopped") || l.contains("FTVISOR-EXIT"))
        {
            z.halt = Some((now, l.trim().to_string()));
        } else if bochs_pid(&ctx.bochsrc[0]).is_none() {
            z.halt = Some((now, "its Bochs exited".into()));
        }
    }
    let settled = z
        .halt
        .as_ref()
        .is_some_and(|(t, _)| now >= *t + ZOMBIE_GRACE);
    if settled || now >= restored + ZOMBIE_HALT_MAX {
        tell_client(client, "finish")?;
        z.finish_sent = Some(now);
    }
    Ok(())
}

/// Frames of the capture (`tcpdump -tt` lines: seconds since the epoch
/// first) at or after `from` (seconds since the epoch), and the number
/// before it.
fn capture_split(text: &str, from: f64) -> (usize, Vec<String>) {
    let mut before = 0;
    let mut after = Vec::new();
    for l in text.lines() {
        let Some(ts) = l
            .split_whitespace()
            .next()
            .and_then(|w| w.parse::<f64>().ok())
        else {
            continue;
        };
        if ts < from {
            before += 1;
        } else {
            after.push(l.to_string());
        }
    }
    (before, after)
}

/// `ft-partition`: no frame of the guest left the loser's tap after the
/// winner went live (plus [`PARTITION_SLACK`]), and some left the
/// winner's (the capture works).
fn partition_capture(st: &Story, winner: usize) -> Result<String, String> {
    let loser = 1 - winner;
    let (node, _, live_wall) = st.went_live.ok_or(format!(
        "the runner never saw the winner's `{}` line while the client ran",
        GO_LIVE[winner]
    ))?;
    if node != winner {
        return Err(format!(
            "the runner saw `{}` on the {}, but the {} won",
            GO_LIVE[node], ROLES[node], ROLES[winner]
        ));
    }
    let text = |node: usize| match &st.captures[node] {
        Some(Ok(f)) => std::fs::read_to_string(f)
            .map(|t| (t, f.display().to_string()))
            .map_err(|e| format!("{}: {e}", f.display())),
        Some(Err(e)) => Err(format!("no capture on {}: {e}", TAPS[node])),
        None => Err(format!("no capture on {}", TAPS[node])),
    };
    let from = live_wall + PARTITION_SLACK.as_secs_f64();
    let (l_text, l_file) = text(loser)?;
    let (l_before, l_late) = capture_split(&l_text, from);
    if !l_late.is_empty() {
        return Err(format!(
            "{} guest frame(s) left the loser's ({}) tap {} more than {} after the winner's `{}` line was seen, first: `{}` ({l_file})",
            l_late.len(),
            ROLES[loser],
            TAPS[loser],
            secs(PARTITION_SLACK),
            GO_LIVE[winner],
            l_late[0],
        ));
    }
    let (w_text, w_file) = text(winner)?;
    let (w_before, w_after) = capture_split(&w_text, from);
    if w_after.is_empty() {
        return Err(format!(
            "the capture on the winner's ({}) tap {} saw no guest frame after its go-live ({w_file}): it did not work",
            ROLES[winner], TAPS[winner]
        ));
    }
    Ok(format!(
        "guest frames after the winner's go-live (+{}): 0 from the loser's tap {} ({l_before} before), {} from the winner's tap {} ({w_before} before)",
        secs(PARTITION_SLACK),
        TAPS[loser],
        w_after.len(),
        TAPS[winner],
    ))
}

/// The `overwrite` client's per-key record: `last=k0000:v12,k0001:-,...`
/// (the last acknowledged version of each key, `-` for none).
pub(crate) fn parse_last(summary: &str) -> Result<Vec<Option<u64>>, String> {
    let list = word(summary, "last=").ok_or("no `last=` in the client's summary")?;
    let v: Vec<Option<u64>> = list
        .split(',')
        .enumerate()
        .map(|(k, item)| {
            let (key, ver) = item.split_once(':').ok_or(())?;
            if key != format!("k{k:04}") {
                return Err(());
            }
            match ver {
                "-" => Ok(None),
                v => v
                    .strip_prefix('v')
                    .and_then(|n| n.parse().ok())
                    .map(Some)
                    .ok_or(()),
            }
        })
        .collect::<Result<_, ()>>()
        .map_err(|()| format!("bad `last={list}`"))?;
    if v.len() == ZOMBIE_KEYS {
        Ok(v)
    } else {
        Err(format!("`last={list}`: want {ZOMBIE_KEYS} keys"))
    }
}

/// The rule for an overwritten key on the LUN: its value is one the
/// client sent for it (`value(n)` with `n % keys` its index and `n <
/// sent`) and its version `n` is at least the last one acknowledged.
/// Returns each key's version on the LUN.
pub(crate) fn check_versions(
    table: &BTreeMap<String, String>,
    last: &[Option<u64>],
    sent: u64,
    salt: u64,
) -> Result<Vec<Option<u64>>, String> {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for (k, acked) in last.iter().enumerate() {
        let key = format!("k{k:04}");
        let Some(v) = table.get(&key) else {
            if let Some(a) = acked {
                bad.push(format!("{key}: not on the LUN (v{a} was acknowledged)"));
            }
            found.push(None);
            continue;
        };
        let n = v
            .strip_prefix('v')
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| {
                *n < sent && *n as usize % last.len() == k && *v == value(*n as usize, salt)
            });
        match (n, acked) {
            (None, _) => bad.push(format!(
                "{key}: `{v}` on the LUN is no value the client sent for it"
            )),
            (Some(n), Some(a)) if n < *a => bad.push(format!(
                "{key}: v{n} on the LUN, older than v{a}, its last acknowledged version (a stale write landed)"
            )),
            (Some(_), _) => {}
        }
        found.push(n);
    }
    if bad.is_empty() {
        Ok(found)
    } else {
        Err(bad.join("; "))
    }
}

/// `ft-zombie-primary`'s verdict.
fn judge_zombie(
    plan: &Plan,
    st: &Story,
    p: &Run,
    b: &Run,
    client: &str,
    flag: Flag,
    table: &BTreeMap<String, String>,
) -> Result<String, String> {
    let z = &st.zombie;
    let cut_at = st.fault_at.ok_or("the primary was never cut off")?;
    let (live_at, live_wall) = z.live.ok_or("the backup's LIVE line was never seen")?;
    let restored = z.restored.ok_or("the paths were never restored")?;
    if !client.starts_with("done ") {
        return Err(format!("client: `{client}` (want `done ...`)"));
    }
    let sent = num(client, "sent=").ok_or(format!("no `sent=` in `{client}`"))?;
    let last = parse_last(client)?;
    // First the LUN (a stale write of the old primary shows here): every
    // key at (at least) its last acknowledged version.
    let on_lun = check_versions(table, &last, sent, plan.salt)?;
    // The backup won, went live and ran the guest to its end.
    let won_line = line_with(&b.serial, "ft: backup: WON the test-and-set")?;
    let want_won = "flag generation 0 -> 1 owner 2";
    if !won_line.contains(want_won) {
        return Err(format!("backup: `{won_line}`, want `{want_won}`"));
    }
    let live = backup_live(&b.serial)?;
    // Both registered their reservation keys; the backup fenced the
    // primary's before going live.
    for (run, role, key) in [(p, "primary", 1), (b, "backup", 2)] {
        line_with(
            &run.serial,
            &format!(
                "ft: {role}: registered reservation key {:#018x}",
                0x4654_0000_0000_0000u64 | key
            ),
        )?;
    }
    let fence_line = line_with(&b.serial, "ft: backup: fenced node 1 off the shared disk")?;
    backup_ran_on_under_one_step(b, flag)?;
    // The old primary: never won, never alone; refused or beaten after
    // the paths came back, then halted.
    for bad in ["WON the test-and-set", "ALONE under", "LIVE under"] {
        if let Some(l) = p.serial.lines().find(|l| l.contains(bad)) {
            return Err(format!("the old primary printed `{}`", l.trim()));
        }
    }
    // Refused or beaten only once its paths came back; a step-down (its
    // disk stalled while paired) comes whenever the timeout runs out.
    if let Some(l) = z
        .primary_at_restore
        .lines()
        .find(|l| ZOMBIE_REACTIONS.iter().any(|m| l.contains(m)))
    {
        return Err(format!(
            "the old primary reacted before its paths came back: `{}`",
            l.trim()
        ));
    }
    let after = zombie_tail(&p.serial, &z.primary_at_restore);
    let reaction = after.lines().find(|l| zombie_reaction(l)).ok_or_else(|| {
        format!(
            "the old primary printed neither `{STEPPED_DOWN}` nor, after its paths came back, `{FENCED}` or `LOST the test-and-set`"
        )
    })?;
    let halted = after
        .lines()
        .find(|l| l.contains("hypervisor: guest stopped"))
        .map(str::trim)
        .or(p.exit_code.map(|_| "its Bochs exited"))
        .ok_or("the old primary did not halt (no `hypervisor: guest stopped` line, its Bochs did not exit)")?;
    let how = if reaction.contains(FENCED) {
        "fenced (RESERVATION CONFLICT)"
    } else if reaction.contains(STEPPED_DOWN) {
        "stepped down for its backup (its disk stalled)"
    } else {
        "LOST the test-and-set"
    };
    let reacted_in = if reaction.contains(STEPPED_DOWN) {
        "while cut off, before the paths came back".to_string()
    } else {
        z.reaction.as_ref().map_or("?".into(), |(t, _)| {
            format!(
                "{} after the paths came back",
                secs(t.saturating_duration_since(restored))
            )
        })
    };
    // No frame of the guest from the old primary's tap after the go-live.
    let capture = match &st.captures[0] {
        Some(Ok(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let (before, late) = capture_split(&text, live_wall);
            if before == 0 {
                return Err(format!(
                    "the capture on {} saw no guest frame before the go-live ({}): it did not work",
                    TAPS[0],
                    f.display()
                ));
            }
            if !late.is_empty() {
                return Err(format!(
                    "{} guest frame(s) left the old primary's tap {} after the backup's go-live, first: `{}` ({})",
                    late.len(),
                    TAPS[0],
                    late[0],
                    f.display()
                ));
            }
            format!(
                "capture on {}: {before} guest frames before the go-live, none after",
                TAPS[0]
            )
        }
        Some(Err(e)) => format!("no capture ({e}): judged by the bridge alone"),
        None => "no capture (not started): judged by the bridge alone".into(),
    };
    let fdb_from = |tap: &str, from: Instant| {
        st.fdb
            .iter()
            .filter(|s| s.at >= from && s.ports.iter().any(|p| p == tap))
            .count()
    };
    let on_old = fdb_from(TAPS[0], live_at + Duration::from_secs(1));
    if on_old > 0 {
        return Err(format!(
            "the bridge learned the guest MAC on {} (the old primary's tap) in {on_old} sample(s) after the go-live",
            TAPS[0]
        ));
    }
    if fdb_from(TAPS[1], live_at) == 0 {
        return Err(format!(
            "after the go-live the bridge never learned the guest MAC on {} (the backup's tap)",
            TAPS[1]
        ));
    }
    let versions = last
        .iter()
        .zip(&on_lun)
        .enumerate()
        .map(|(k, (a, l))| {
            let v = |x: &Option<u64>| x.map_or("-".into(), |n| format!("v{n}"));
            format!("k{k:04} acked {} LUN {}", v(a), v(l))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let in_flight = z.acks_at_cut;
    let links = match (plan.fault, z.links_cut) {
        (Fault::ZombieLinks, Some(l)) => format!(
            ", all its links {} (from {} before the backup's LIVE line was seen)",
            secs(restored - l),
            secs(live_at.saturating_duration_since(l))
        ),
        (Fault::ZombieLinks, None) => return Err("the primary's links were never cut".into()),
        (Fault::ZombieFreeze, Some(l)) => format!(
            ", its Bochs frozen {} (from {} before the backup's LIVE line was seen)",
            secs(restored - l),
            secs(live_at.saturating_duration_since(l))
        ),
        (Fault::ZombieFreeze, None) => return Err("the primary was never frozen".into()),
        _ => String::new(),
    };
    // The old primary's disk: the write it had in flight was refused.
    let disk = after
        .lines()
        .find(|l| l.starts_with("guestio: blk "))
        .map_or("no `guestio: blk` line".into(), |l| {
            format!(
                "its disk: writes={} errors={}",
                num(l, " writes=").unwrap_or(0),
                num(l, " errors=").unwrap_or(0)
            )
        });
    let (fo, _) = failover(&st.acks, cut_at).ok_or("no reply after the cut")?;
    let ready = st.ready.ok_or("never ready")?;
    let end = st.client_end.ok_or("the client never ended")?;
    let stopped = if st.stopped.is_empty() {
        String::new()
    } else {
        format!("; {}", st.stopped.join("; "))
    };
    Ok(format!(
        "({}; backup `{}`, `{}`; {live}; old primary {how} {reacted_in}: `{}`, halted: `{halted}`, {disk}; {capture}; guest MAC never on {} after the go-live; failover {} (cut -> first reply from the new primary), iSCSI path cut {}{links}; SET #{in_flight} (k{:04} v{in_flight}) was in flight at the cut; {sent} SETs sent and acknowledged in {}, {} retries, {} reconnects; LUN: {versions}; flag {}{stopped})",
        st.notes.join("; "),
        won_line.trim(),
        fence_line.trim(),
        reaction.trim(),
        TAPS[0],
        secs(fo),
        secs(restored - cut_at),
        in_flight % ZOMBIE_KEYS,
        secs(end - ready),
        num(client, "retries=").unwrap_or(0),
        num(client, "reconnects=").unwrap_or(0),
        format_args!("generation 0 -> {} (owner {})", flag.generation, flag.owner.0),
    ))
}

// ------------------------------------------------------------ judging

fn line_with<'a>(serial: &'a str, key: &str) -> Result<&'a str, String> {
    serial
        .lines()
        .find(|l| l.contains(key))
        .ok_or_else(|| format!("no `{key}` line"))
}

/// `key<number>` in a text (`key` ends with `=` or a space).
fn num(text: &str, key: &str) -> Option<u64> {
    let i = text.find(key)?;
    let digits: String = text[i + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `key=<word>` in a text.
pub(crate) fn word<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// Kill -> the first reply after a gap of at least [`OUTAGE_GAP`] (the
/// new server's first), and how many replies arrived before it (released
/// by the old primary just before it died). Without such a gap, the
/// first reply after the fault.
fn failover(acks: &[Instant], fault: Instant) -> Option<(Duration, usize)> {
    let after: Vec<Instant> = acks.iter().copied().filter(|t| *t >= fault).collect();
    let mut prev = fault;
    for (k, t) in after.iter().enumerate() {
        if *t - prev >= OUTAGE_GAP {
            return Some((*t - fault, k));
        }
        prev = *t;
    }
    after.first().map(|t| (*t - fault, 0))
}

/// The KV table as the guest left it on the LUN: key -> value.
pub(crate) fn lun_table(lun: &Path) -> Result<BTreeMap<String, String>, String> {
    let bytes = std::fs::read(lun).map_err(|e| format!("{}: {e}", lun.display()))?;
    let start = (DISK_LBA * 512) as usize;
    let end = start + SLOTS * 512;
    let table = bytes
        .get(start..end)
        .ok_or_else(|| format!("the LUN file is shorter than {end} bytes"))?;
    Ok(parse_table(table))
}

/// Slots `KV01`, key length (u8), value length (u16 LE at byte 5), the
/// key at byte 8, the value at byte 72 (`guests/hello/src/kv.rs`).
fn parse_table(table: &[u8]) -> BTreeMap<String, String> {
    table
        .chunks(512)
        .filter(|s| s.len() == 512 && &s[..4] == b"KV01")
        .map(|s| {
            let kl = usize::from(s[4]).min(64);
            let vl = usize::from(u16::from_le_bytes([s[5], s[6]])).min(512 - 72);
            (
                String::from_utf8_lossy(&s[8..8 + kl]).to_string(),
                String::from_utf8_lossy(&s[72..72 + vl]).to_string(),
            )
        })
        .collect()
}

/// Every SET the client saw acknowledged (`k0000..k<acked>`) is on the LUN
/// with its value.
fn check_lun(table: &BTreeMap<String, String>, acked: usize, salt: u64) -> Result<(), String> {
    let missing: Vec<String> = (0..acked)
        .filter(|i| table.get(&format!("k{i:04}")) != Some(&value(*i, salt)))
        .map(|i| format!("k{i:04}"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} acknowledged SET(s) not on the LUN with their value: {:?}{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            if missing.len() > 10 { " ..." } else { "" }
        ))
    }
}

/// SET `n` (of `acked`) overwrote key `n % keys`: each key holds the value
/// of its last one.
fn check_lun_overwritten(
    table: &BTreeMap<String, String>,
    acked: usize,
    keys: usize,
    salt: u64,
) -> Result<(), String> {
    let wrong: Vec<String> = (0..keys.min(acked))
        .filter_map(|k| {
            let last = k + (acked - 1 - k) / keys * keys;
            let got = table.get(&format!("k{k:04}"));
            (got != Some(&value(last, salt)))
                .then(|| format!("k{k:04} (want v{last}, got {got:?})"))
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} key(s) without their last acknowledged version on the LUN: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        ))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn judge(
    plan: &Plan,
    st: &Story,
    p: &Run,
    b: &Run,
    flag: Result<Flag, String>,
    table: Result<BTreeMap<String, String>, String>,
) -> Result<String, String> {
    let runs = [p, b];
    for (node, run) in runs.iter().enumerate() {
        let cut_short = replay_cut_short(&run.serial);
        for bad in ["PANIC", "EXCEPTION", "DIVERGED"] {
            if let Some(l) = run
                .serial
                .lines()
                .find(|l| l.contains(bad) && !(bad == "DIVERGED" && cut_short))
            {
                return Err(format!("{}: `{l}`", ROLES[node]));
            }
        }
        if run.ended.contains("stalled") {
            return Err(format!("{}: {}", ROLES[node], run.ended));
        }
    }
    let client = match &st.client {
        Some(Ok(s)) => s.as_str(),
        Some(Err(e)) => return Err(format!("the client failed: {e}")),
        None => return Err("the client did not run".into()),
    };
    let flag = flag?;
    let table = table?;
    if plan.fault.zombie() {
        return judge_zombie(plan, st, p, b, client, flag, &table);
    }
    let acked = num(client, "acked_sets=").ok_or(format!("client summary: `{client}`"))? as usize;
    let on_lun = if plan.mode == "long" {
        check_lun_overwritten(&table, acked, LONG_KEYS, plan.salt)?;
        format!("{LONG_KEYS} keys overwritten {acked} times, each key's last acknowledged version on the LUN")
    } else {
        check_lun(&table, acked, plan.salt)?;
        format!("{acked} acknowledged SETs all on the LUN")
    };
    let ready = st.ready.ok_or("never ready")?;
    let end = st.client_end.ok_or("the client never ended")?;
    let load = format!(
        "{} requests in {} ({} SET/s, {} GET/s), {} retries, {} reconnects",
        num(client, "requests=").unwrap_or(0),
        secs(end - ready),
        word(client, "set_rate=").unwrap_or("?"),
        word(client, "get_rate=").unwrap_or("?"),
        num(client, "retries=").unwrap_or(0),
        num(client, "reconnects=").unwrap_or(0),
    );
    let gen = |f: &Flag| format!("generation 0 -> {} (owner {})", f.generation, f.owner.0);
    let stopped = if st.stopped.is_empty() {
        String::new()
    } else {
        format!("; {}", st.stopped.join("; "))
    };
    let fdb_on = |tap: &str, from: Instant| {
        st.fdb
            .iter()
            .any(|s| s.at >= from && s.ports.iter().any(|p| p == tap))
    };
    match plan.fault {
        Fault::None if plan.mode == "long" => {
            judge_long(client, &runs, &p.serial, &b.serial).map(|s| format!("{s}; {on_lun}"))
        }
        Fault::None => {
            if !client.starts_with("done ")
                || num(client, "requests=") != Some(2 * plan.sets as u64 + 1)
                || num(client, "retries=") != Some(0)
            {
                return Err(format!(
                    "client: `{client}` (want {} requests, no retry)",
                    2 * plan.sets + 1
                ));
            }
            for (node, run) in runs.iter().enumerate() {
                if run.exit_code != Some(0) {
                    return Err(format!(
                        "{}: exit code {:?} ({}), want 0",
                        ROLES[node], run.exit_code, run.ended
                    ));
                }
            }
            let pd = line_with(&p.serial, "ft: pair: primary done:")?;
            let bd = line_with(&b.serial, "ft: pair: backup done:")?;
            if !bd.contains("verdict=IDENTICAL") {
                return Err(format!("the backup did not end IDENTICAL: {bd}"));
            }
            let discarded = b
                .serial
                .lines()
                .filter_map(|l| num(l, "outputs discarded="))
                .max()
                .unwrap_or(0);
            if discarded == 0 {
                return Err("the backup discarded no outputs (`outputs discarded=`)".into());
            }
            if let Some(l) = b.serial.lines().find(|l| l.starts_with("guest: ")) {
                return Err(format!("the backup printed guest output: `{l}`"));
            }
            let (during, after) = fdb_phases(st, ready, end)?;
            let status = judge_status(st)?;
            if flag != Flag::new(0, NodeId(0)) {
                return Err(format!("the flag changed without a failure: {flag:?}"));
            }
            Ok(format!(
                "({load}, every reply correct; bridge: guest MAC {GUEST_MAC} learned only on {} (primary) in {during} samples during and {after} after the load; backup: {discarded} outputs discarded, {}, applied={} of entries={}; {status}; {on_lun}; flag {})",
                TAPS[0],
                word(bd, "verdict=").map_or("?".into(), |v| format!("verdict={v}")),
                num(bd, "applied=").unwrap_or(0),
                num(pd, "entries=").unwrap_or(0),
                gen(&flag),
            ))
        }
        Fault::KillPrimary | Fault::KillBackup | Fault::Partition => {
            if !client.starts_with("done ") || acked != plan.sets {
                return Err(format!(
                    "client: `{client}` (want all {} SETs acknowledged)",
                    plan.sets
                ));
            }
            let fault_at = st.fault_at.ok_or("the fault never fired")?;
            // The winner: who went live or alone.
            let won = |node: usize| runs[node].serial.contains("WON the test-and-set");
            let winner = match (plan.fault, won(0), won(1)) {
                (Fault::KillPrimary, _, true) => 1,
                (Fault::KillBackup, true, _) => 0,
                (Fault::Partition, true, false) => 0,
                (Fault::Partition, false, true) => 1,
                (_, w0, w1) => {
                    return Err(format!(
                        "winners of the test-and-set: primary {w0}, backup {w1}"
                    ))
                }
            };
            let loser = 1 - winner;
            let w = runs[winner];
            let won_line = line_with(&w.serial, "WON the test-and-set")?;
            let want_won = format!("flag generation 0 -> 1 owner {}", winner + 1);
            if !won_line.contains(&want_won) {
                return Err(format!(
                    "{}: `{won_line}`, want `{want_won}`",
                    ROLES[winner]
                ));
            }
            let live = if winner == 1 {
                backup_live(&w.serial)?
            } else {
                line_with(&w.serial, "ft: primary: ALONE under generation 1")?;
                "primary ALONE under generation 1".to_string()
            };
            if w.exit_code != Some(0) {
                return Err(format!(
                    "the winner ({}): exit code {:?} ({}), want 0",
                    ROLES[winner], w.exit_code, w.ended
                ));
            }
            if flag != Flag::new(1, NodeId(winner as u64 + 1)) {
                return Err(format!(
                    "flag on the LUN {flag:?}, want generation 1 (exactly one step) owner {}",
                    winner + 1
                ));
            }
            let l = runs[loser];
            let loser_note = match plan.fault {
                Fault::Partition => {
                    let lost = l.serial.find("LOST the test-and-set").ok_or(format!(
                        "the {} did not print `LOST the test-and-set`",
                        ROLES[loser]
                    ))?;
                    let after = &l.serial[lost..];
                    if let Some(x) = after.lines().find(|x| {
                        x.starts_with("guest: ")
                            || x.contains("LIVE under")
                            || x.contains("ALONE under")
                    }) {
                        return Err(format!(
                            "the loser ({}) served after losing: `{x}`",
                            ROLES[loser]
                        ));
                    }
                    if l.exit_code == Some(0) {
                        return Err(format!(
                            "the loser ({}) ran its guest to the end",
                            ROLES[loser]
                        ));
                    }
                    let capture = partition_capture(st, winner)?;
                    format!(
                        "the {} LOST and halted (`{}`); {capture}",
                        ROLES[loser],
                        line_with(&l.serial, "LOST the test-and-set")?.trim()
                    )
                }
                _ => {
                    if l.exit_code.is_some() || l.serial.contains("ft: pair: ") {
                        return Err(format!("the {} ended before it was killed", ROLES[loser]));
                    }
                    String::new()
                }
            };
            if winner == 1 && !fdb_on(TAPS[1], fault_at) {
                return Err(format!(
                    "after the failover the bridge never learned the guest MAC on {} (the backup's tap): RARP / frames from the new primary missing",
                    TAPS[1]
                ));
            }
            let (fo, in_flight) = failover(&st.acks, fault_at).ok_or("no reply after the fault")?;
            if fo > FAILOVER_BOUND {
                return Err(format!(
                    "failover took {} (fault -> first reply from the survivor), above the bound {}",
                    secs(fo),
                    secs(FAILOVER_BOUND)
                ));
            }
            // The guest's TCP connection survives a failover (README, "The
            // FT pair"): the client never had to open a new one.
            let reconnects = num(client, "reconnects=").unwrap_or(u64::MAX);
            if reconnects != 0 {
                return Err(format!(
                    "the client reconnected {reconnects} time(s): the guest's TCP connection did not survive the failover (`{client}`)"
                ));
            }
            Ok(format!(
                "({}; {live}; failover {} (fault -> first reply from the survivor; bound {}; {in_flight} replies in flight), {load}; every acknowledged SET read back; {on_lun}; flag {}{stopped})",
                st.notes
                    .iter()
                    .chain(Some(&loser_note).filter(|n| !n.is_empty()))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
                secs(fo),
                secs(FAILOVER_BOUND),
                gen(&flag),
            ))
        }
        Fault::StorageDown => {
            let second = st.second_at.ok_or("the primary was never killed")?;
            if !client.starts_with("gave-up ") {
                return Err(format!(
                    "the client completed (`{client}`): someone served after the primary died"
                ));
            }
            if acked != plan.sets {
                return Err(format!(
                    "client: `{client}` (want all {} SETs acknowledged before the fault)",
                    plan.sets
                ));
            }
            no_late_replies(st, second, None)?;
            let retries: Vec<&str> = b.serial.lines().filter(|l| l.contains(RETRYING)).collect();
            if retries.len() < 2 {
                return Err(format!(
                    "the backup printed {} `shared storage unreachable ... retrying` line(s), want at least 2 (attempt 1 and 10) while istgt was down",
                    retries.len()
                ));
            }
            // It kept retrying: still up when the runner stopped it, no
            // halt, no end of its own.
            let stopped_at = st.backup_stopped.ok_or(
                "the backup's Bochs ended by itself while storage was down (it should keep retrying until stopped)",
            )?;
            for bad in [
                "hypervisor: guest stopped",
                "ft: pair: backup done",
                "FTVISOR-EXIT",
            ] {
                if let Some(l) = b.serial.lines().find(|l| l.contains(bad)) {
                    return Err(format!(
                        "the backup halted or ended while storage was down (it should keep retrying): `{l}`"
                    ));
                }
            }
            if b.exit_code.is_some() {
                return Err(format!(
                    "the backup exited by itself (code {:?}, {})",
                    b.exit_code, b.ended
                ));
            }
            if let Some(l) = not_live(&b.serial) {
                return Err(format!("the backup went live without storage: `{l}`"));
            }
            if fdb_on(TAPS[1], ready) {
                return Err(format!(
                    "the guest MAC was learned on {} (the backup's tap)",
                    TAPS[1]
                ));
            }
            if flag != Flag::new(0, NodeId(0)) {
                return Err(format!("the flag changed with storage down: {flag:?}"));
            }
            let fault_at = st.fault_at.ok_or("istgt was never killed")?;
            let served = st
                .acks
                .iter()
                .filter(|t| **t >= fault_at && **t <= second)
                .count();
            Ok(format!(
                "({}; the primary answered {served} GETs with istgt down before it was killed; backup watched for {} after the kill: {} retry lines, first `{}`, last `{}`; no LIVE, no WON, no RARP, no guest output, no reply after the kill, guest MAC never on {}; client gave up: {}; {on_lun}; flag {}{stopped})",
                st.notes.join("; "),
                secs(stopped_at - second),
                retries.len(),
                retries[0].trim(),
                retries[retries.len() - 1].trim(),
                TAPS[1],
                client.trim_start_matches("gave-up "),
                gen(&flag),
            ))
        }
        Fault::StorageBlip => {
            if !client.starts_with("done ") || acked != plan.sets {
                return Err(format!(
                    "client: `{client}` (want all {} SETs acknowledged)",
                    plan.sets
                ));
            }
            let second = st.second_at.ok_or("the primary was never killed")?;
            let back = st.istgt_back.ok_or("istgt was never restarted")?;
            // While istgt was down: retrying, not live, nothing served.
            let before = &st.backup_before_restart;
            let retries = before.matches(RETRYING).count();
            if retries == 0 {
                return Err(format!(
                    "no `{RETRYING}` line on the backup before istgt's restart"
                ));
            }
            // It retried: the retry lines count its attempts ("attempt N").
            let attempts = before
                .lines()
                .filter(|l| l.contains(RETRYING))
                .filter_map(|l| {
                    l.split("(attempt ")
                        .nth(1)?
                        .split(')')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            if attempts < 2 {
                return Err(format!(
                    "the backup's arbitration reached attempt {attempts} before istgt's restart, want at least 2 (a retry)"
                ));
            }
            if let Some(l) = not_live(before) {
                return Err(format!("the backup went live before istgt was back: `{l}`"));
            }
            no_late_replies(st, second, Some(back))?;
            // After: the backup won, went live, served to the end.
            if let Some(l) = p
                .serial
                .lines()
                .find(|l| l.contains("WON the test-and-set"))
            {
                return Err(format!("the killed primary won: `{l}`"));
            }
            if p.exit_code.is_some() || p.serial.contains("ft: pair: ") {
                return Err("the primary ended before it was killed".into());
            }
            let won_line = line_with(&b.serial, "ft: backup: WON the test-and-set")?;
            let want_won = "flag generation 0 -> 1 owner 2";
            if !won_line.contains(want_won) {
                return Err(format!("backup: `{won_line}`, want `{want_won}`"));
            }
            let live = backup_live(&b.serial)?;
            // The second batch went to the restarted istgt through the
            // new primary's own disk session.
            let writes = b
                .serial
                .lines()
                .filter(|l| l.starts_with("guestio: blk "))
                .find_map(|l| num(l, " writes="))
                .unwrap_or(0);
            if writes < (plan.sets / 2) as u64 {
                return Err(format!(
                    "the live backup's disk counts {writes} writes, want at least {} (the second batch of SETs)",
                    plan.sets / 2
                ));
            }
            backup_ran_on_under_one_step(b, flag)?;
            if !fdb_on(TAPS[1], back) {
                return Err(format!(
                    "after the failover the bridge never learned the guest MAC on {} (the backup's tap): RARP / frames from the new primary missing",
                    TAPS[1]
                ));
            }
            let first = st
                .acks
                .iter()
                .find(|t| **t >= back)
                .ok_or("no reply after istgt's restart")?;
            let fo = *first - back;
            if fo >= BLIP_FAILOVER_MAX {
                return Err(format!(
                    "failover took {} from istgt's return to the first reply, want < {}",
                    secs(fo),
                    secs(BLIP_FAILOVER_MAX)
                ));
            }
            let attempts = b
                .serial
                .lines()
                .filter(|l| l.contains(RETRYING))
                .filter_map(|l| num(l, "(attempt "))
                .max()
                .unwrap_or(0);
            Ok(format!(
                "({}; {retries} retry line(s) before the restart, last line at attempt {attempts}; backup `{}`; {live}; {writes} disk writes by the new primary; failover {} (istgt listening -> first reply from the new primary; primary's kill -> that reply {}), {load}; every acknowledged SET read back; {on_lun}; flag {}{stopped})",
                st.notes.join("; "),
                won_line.trim(),
                secs(fo),
                secs(*first - second),
                gen(&flag),
            ))
        }
        Fault::ZombieIscsi | Fault::ZombieLinks | Fault::ZombieFreeze => {
            unreachable!("judged by judge_zombie")
        }
    }
}

/// The first line of `serial` showing a live backup or its guest's output
/// (a backup without storage must show none).
fn not_live(serial: &str) -> Option<&str> {
    serial.lines().find(|l| {
        l.starts_with("guest: ")
            || [
                "LIVE under",
                "WON the test-and-set",
                "announced the guest MAC",
            ]
            .iter()
            .any(|m| l.contains(m))
    })
}

/// No reply reached the client more than 1 s (replies in flight) after
/// the primary's kill at `second` (and before `until`, if given).
fn no_late_replies(st: &Story, second: Instant, until: Option<Instant>) -> Result<(), String> {
    let late = st
        .acks
        .iter()
        .filter(|t| **t > second + Duration::from_secs(1) && until.is_none_or(|u| **t < u))
        .count();
    if late == 0 {
        Ok(())
    } else {
        Err(format!(
            "{late} replies reached the client more than 1 s after the primary was killed{}",
            if until.is_some() {
                " and before istgt was back"
            } else {
                ""
            }
        ))
    }
}

/// A backup that went live: its LIVE line, the RARP and the re-issued
/// disk requests; a summary.
fn backup_live(serial: &str) -> Result<String, String> {
    let live = line_with(serial, "ft: backup: LIVE under generation 1")?;
    line_with(
        serial,
        &format!("ft: backup: announced the guest MAC {GUEST_MAC} (RARP)"),
    )?;
    let re = line_with(serial, "ft: backup: re-issued ")?;
    Ok(format!(
        "backup LIVE under generation 1, RARP sent, re-issued {} pending disk request(s), dropped {} stale frame(s); {}",
        num(re, "re-issued ").unwrap_or(0),
        num(re, "dropped ").unwrap_or(0),
        live.split_once("generation 1: ")
            .map_or("", |x| x.1)
            .split(" (")
            .next()
            .unwrap_or("")
    ))
}

/// The backup that won ran the guest to its end (exit 0), and the flag on
/// the LUN moved exactly one step, to generation 1 owned by node 2.
fn backup_ran_on_under_one_step(b: &Run, flag: Flag) -> Result<(), String> {
    if b.exit_code != Some(0) {
        return Err(format!(
            "the backup: exit code {:?} ({}), want 0",
            b.exit_code, b.ended
        ));
    }
    if flag != Flag::new(1, NodeId(2)) {
        return Err(format!(
            "flag on the LUN {flag:?}, want generation 1 (exactly one step) owner 2"
        ));
    }
    Ok(())
}

/// A backup that halted for good (LOST the test-and-set) before its
/// replay reached the guest's end closes with `verdict=HALTED` and `ft:
/// replay: HALTED before the end of the log`: its replay was cut short,
/// every entry up to there met. Only that case, after the halt line and
/// with no divergence anywhere, is accepted. Unreachable storage is no
/// halt (the node retries until storage is back, or until the runner
/// stops it: then there is no closing line at all).
fn replay_cut_short(serial: &str) -> bool {
    let halt = serial.find("LOST the test-and-set");
    match (
        halt,
        serial.find("ft: replay: HALTED before the end of the log"),
    ) {
        (Some(h), Some(r)) if h < r => {
            !serial.contains("DIVERGED") && serial[h..].contains("verdict=HALTED")
        }
        _ => false,
    }
}

/// `ft-pair-steady`: the guest MAC only on the primary's tap; returns
/// the number of samples showing it during and after the load.
fn fdb_phases(st: &Story, ready: Instant, end: Instant) -> Result<(usize, usize), String> {
    for s in &st.fdb {
        if s.ports.iter().any(|p| p != TAPS[0]) {
            return Err(format!(
                "bridge forwarding database at +{:.1} s: guest MAC {GUEST_MAC} on {:?}, want only {} (the primary's tap)",
                s.at.saturating_duration_since(ready).as_secs_f64(),
                s.ports,
                TAPS[0]
            ));
        }
    }
    let seen = |f: &dyn Fn(Instant) -> bool| {
        st.fdb
            .iter()
            .filter(|s| f(s.at) && !s.ports.is_empty())
            .count()
    };
    let during = seen(&|t| t >= ready && t < end);
    let after = seen(&|t| t >= end);
    if during == 0 || after == 0 {
        return Err(format!(
            "the guest MAC was not in the bridge's forwarding database ({during} samples during the load, {after} after)"
        ));
    }
    Ok((during, after))
}

/// Both status ports answered at least once with valid JSON of the
/// right role and state (the primary `paired`, the backup `following`),
/// generation 0.
fn judge_status(st: &Story) -> Result<String, String> {
    let mut notes = Vec::new();
    for (node, role) in ROLES.iter().enumerate() {
        let mut good = None;
        let mut errors = Vec::new();
        for (_, r) in st.status.iter().filter(|(n, _)| *n == node) {
            let state = if node == 0 { "paired" } else { "following" };
            match r
                .as_ref()
                .map_err(|e| e.clone())
                .and_then(|l| check_status(l, role, state))
            {
                Ok(s) => good = Some(s),
                Err(e) => errors.push(e),
            }
        }
        let polls = st.status.iter().filter(|(n, _)| *n == node).count();
        match good {
            Some(s) => notes.push(format!(
                "{role} status port: {} of {polls} answers valid, last {s}",
                polls - errors.len()
            )),
            None => {
                return Err(format!(
                    "no valid answer from the {role}'s status port 10.0.4.1{}:{STATUS_PORT} in {polls} polls: {:?}",
                    node + 1,
                    errors.first()
                ))
            }
        }
    }
    Ok(notes.join("; "))
}

/// One status line: JSON object with the fields of the contract.
fn check_status(line: &str, role: &str, state: &str) -> Result<String, String> {
    let j = parse_json(line.trim()).map_err(|e| format!("`{line}`: {e}"))?;
    let Json::Obj(fields) = &j else {
        return Err(format!("`{line}`: not a JSON object"));
    };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    for k in [
        "role",
        "state",
        "generation",
        "seq",
        "acked",
        "applied",
        "lag_entries",
        "lag_us",
        "log_mbit_s",
        "heartbeat_age_ms",
    ] {
        if get(k).is_none() {
            return Err(format!("`{line}`: no `{k}`"));
        }
    }
    if get("role") != Some(&Json::Str(role.into())) {
        return Err(format!("`{line}`: role is not {role}"));
    }
    if get("state") != Some(&Json::Str(state.into())) {
        return Err(format!("`{line}`: state is not {state}"));
    }
    if get("generation") != Some(&Json::Num(0.0)) {
        return Err(format!("`{line}`: generation is not 0"));
    }
    let show = |k: &str| match get(k) {
        Some(Json::Num(n)) => format!("{k}={n}"),
        Some(Json::Str(s)) => format!("{k}={s}"),
        _ => String::new(),
    };
    Ok([
        "seq",
        "acked",
        "applied",
        "lag_entries",
        "lag_us",
        "log_mbit_s",
        "heartbeat_age_ms",
    ]
    .iter()
    .map(|k| show(k))
    .collect::<Vec<_>>()
    .join(" "))
}

// ------------------------------------------------------------ JSON

/// A JSON value (RFC 8259), enough to check the status port's line.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

fn parse_json(s: &str) -> Result<Json, String> {
    let mut p = JsonParser { s, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != s.len() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(v)
}

struct JsonParser<'a> {
    s: &'a str,
    i: usize,
}

impl JsonParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 32 {
            return self.err("nested too deep");
        }
        self.ws();
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return self.err("expected `:`");
                    }
                    self.i += 1;
                    fields.push((k, self.value(depth + 1)?));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return self.err("expected `,` or `}`"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return self.err("expected `,` or `]`"),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number(),
            _ => self.err("expected a value"),
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        let b = self.s.as_bytes();
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > s
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if b.get(i) == Some(&b'0') {
            i += 1;
        } else if !digits(&mut i) {
            return self.err("bad number");
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return self.err("bad fraction");
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return self.err("bad exponent");
            }
        }
        self.i = i;
        self.s[start..i]
            .parse()
            .map(Json::Num)
            .map_err(|e| format!("number at byte {start}: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.s[self.i..].chars().next() else {
                return self.err("unterminated string");
            };
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let Some(e) = self.peek() else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).unwrap_or("");
                            let code = u32::from_str_radix(hex, 16)
                                .map_err(|_| format!("bad \\u escape at byte {}", self.i))?;
                            self.i += 4;
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    });
                }
                c if (c as u32) < 0x20 => return self.err("control character in a string"),
                c => out.push(c),
            }
        }
    }
}

// ------------------------------------------------------------ helpers run in the namespace

/// `qemu-tests ftkv-client ...` and `qemu-tests ftkv-status <ip:port>`.
pub fn helper_main(args: &[String]) -> ExitCode {
    let cmd = args.first().map(String::as_str).unwrap_or("");
    let r = match cmd {
        "ftkv-client" => client_main(args),
        "ftkv-status" => status_main(args),
        _ => Err(format!("unknown helper `{cmd}`")),
    };
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{cmd}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One line from a status port.
fn status_main(args: &[String]) -> Result<String, String> {
    let addr: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .ok_or("usage: ftkv-status <ip:port>")?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("read {addr}: {e}"))?;
    if line.trim().is_empty() {
        return Err(format!("{addr} closed without a line"));
    }
    Ok(line.trim_end().to_string())
}

enum AskError {
    /// No reply for the client's give-up time.
    GaveUp(String),
    Failed(String),
}

impl AskError {
    fn text(self) -> String {
        match self {
            AskError::GaveUp(s) => format!("gave up: {s}"),
            AskError::Failed(s) => s,
        }
    }
}

/// A KV client that rides out failovers: it keeps its connection while
/// replies are merely late (TCP retransmits; the new primary has the same
/// connection), and after `read_timeout` without a reply reconnects and
/// re-sends the request (SET and GET are idempotent).
struct Client {
    addr: SocketAddr,
    /// Whether a failed request may be retried (else: an error).
    retry: bool,
    read_timeout: Duration,
    give_up: Duration,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
    last_reply: Instant,
    last_error: String,
    replies: u64,
    retries: u64,
    connects: u64,
    max_gap: Duration,
}

impl Client {
    fn ask(&mut self, line: &str) -> Result<String, AskError> {
        loop {
            let silent = self.last_reply.elapsed();
            if silent > self.give_up {
                return Err(AskError::GaveUp(format!(
                    "no reply for {} s; last error: {}",
                    silent.as_secs(),
                    self.last_error
                )));
            }
            if self.conn.is_none() {
                match TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) {
                    Ok(s) => {
                        s.set_nodelay(true).ok();
                        s.set_read_timeout(Some(self.read_timeout)).ok();
                        s.set_write_timeout(Some(self.read_timeout)).ok();
                        let r = s.try_clone().map_err(|e| AskError::Failed(e.to_string()))?;
                        self.conn = Some((s, BufReader::new(r)));
                        self.connects += 1;
                    }
                    Err(e) => {
                        // Before the first reply the service may still be
                        // starting; afterwards only a retrying client waits.
                        if !self.retry && self.replies > 0 {
                            return Err(AskError::Failed(format!("connect: {e}")));
                        }
                        self.last_error = format!("connect: {e}");
                        std::thread::sleep(Duration::from_millis(300));
                        continue;
                    }
                }
            }
            let Some((w, r)) = self.conn.as_mut() else {
                continue;
            };
            let res = w.write_all(format!("{line}\n").as_bytes()).and_then(|_| {
                let mut got = String::new();
                r.read_line(&mut got)?;
                if got.ends_with('\n') {
                    Ok(got)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ))
                }
            });
            match res {
                Ok(got) => {
                    let now = Instant::now();
                    self.max_gap = self.max_gap.max(now - self.last_reply);
                    self.last_reply = now;
                    self.replies += 1;
                    println!("ack {}", self.replies);
                    return Ok(got.trim_end().to_string());
                }
                Err(e) => {
                    self.conn = None;
                    self.last_error = format!("`{line}`: {e}");
                    if !self.retry {
                        return Err(AskError::Failed(self.last_error.clone()));
                    }
                    self.retries += 1;
                    println!("retry {} {}", self.retries, self.last_error);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

/// `ft-long-run`'s verdict: the client's requests all answered and its
/// last versions read back, both nodes exit 0, the backup IDENTICAL, and
/// the primary's heap high-water mark (its status lines' `peak=`) grew by
/// less than 1% between the middle of the run and its end.
fn judge_long(client: &str, runs: &[&Run], p: &str, b: &str) -> Result<String, String> {
    let sets = num(client, "sets=").unwrap_or(0);
    if !client.starts_with("done ")
        || num(client, "requests=") != Some(sets + LONG_KEYS as u64 + 1)
        || num(client, "retries=") != Some(0)
        || sets == 0
    {
        return Err(format!(
            "client: `{client}` (want sets + {} GETs + SHUTDOWN, no retry)",
            LONG_KEYS
        ));
    }
    for (node, run) in runs.iter().enumerate() {
        if run.exit_code != Some(0) {
            return Err(format!(
                "{}: exit code {:?} ({}), want 0",
                ROLES[node], run.exit_code, run.ended
            ));
        }
    }
    let bd = line_with(b, "ft: pair: backup done:")?;
    if !bd.contains("verdict=IDENTICAL") {
        return Err(format!("the backup did not end IDENTICAL: {bd}"));
    }
    let pd = line_with(p, "ft: pair: primary done:")?;
    let heap: Vec<(u64, u64)> = p
        .lines()
        .filter(|l| l.starts_with("ft: status: role=primary state=paired"))
        .filter_map(|l| Some((num(l, "heap=")?, num(l, "peak=")?)))
        .collect();
    if heap.len() < 20 {
        return Err(format!(
            "only {} primary status lines with heap numbers (want >= 20)",
            heap.len()
        ));
    }
    let mid = heap[heap.len() / 2].1;
    let end = heap[heap.len() - 1].1;
    let growth = (end as f64 - mid as f64) / (mid.max(1) as f64);
    if growth >= 0.01 {
        return Err(format!(
            "the primary's heap high-water mark grew by {:.2}% over the second half ({mid} KiB at status line {} of {}, {end} KiB at the end): memory is not bounded",
            growth * 100.0,
            heap.len() / 2 + 1,
            heap.len()
        ));
    }
    let first = heap[0];
    Ok(format!(
        "({client}; primary heap in use {} KiB at the first status line, {} KiB at the last; high-water {} KiB at the middle, {end} KiB at the end: {:+.2}% over the second half ({} status lines); backup {}; primary entries={} log_bytes={})",
        first.0,
        heap[heap.len() - 1].0,
        mid,
        growth * 100.0,
        heap.len(),
        word(bd, "verdict=").map_or("?".into(), |v| format!("verdict={v}")),
        num(pd, "entries=").unwrap_or(0),
        num(pd, "log_bytes=").unwrap_or(0),
    ))
}

/// `ftkv-client <ip:port> steady|failover|outage|blip|overwrite <sets>
/// <salt>`: `sets` SETs, then (steady, failover) a GET of each and
/// SHUTDOWN, or (outage) GETs round and round until no reply came for 45
/// s. `blip` (retrying like failover) splits the SETs in two batches: the
/// first half, GETs of it round and round for at least [`BLIP_READS`]
/// (whole rounds), the second half, then a GET of all and SHUTDOWN.
/// `overwrite` (retrying like failover): see [`overwrite`].
/// Prints `ack <n>` per reply, `retry ...` per re-sent request, then a
/// summary.
fn client_main(args: &[String]) -> Result<String, String> {
    let usage = "usage: ftkv-client <ip:port> steady|failover|outage|blip|overwrite <sets> <salt>";
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).ok_or(usage)?;
    let mode = args.get(2).map(String::as_str).ok_or(usage)?;
    let sets: usize = args.get(3).and_then(|a| a.parse().ok()).ok_or(usage)?;
    let salt: u64 = args.get(4).and_then(|a| a.parse().ok()).ok_or(usage)?;
    let (retry, read_timeout, give_up) = match mode {
        "steady" | "long" => (false, 60, 120),
        "failover" | "blip" | "overwrite" => (true, 30, 150),
        "outage" => (true, 10, 45),
        _ => return Err(usage.into()),
    };
    let mut c = Client {
        addr,
        retry,
        read_timeout: Duration::from_secs(read_timeout),
        give_up: Duration::from_secs(give_up),
        conn: None,
        last_reply: Instant::now(),
        last_error: String::new(),
        replies: 0,
        retries: 0,
        connects: 0,
        max_gap: Duration::ZERO,
    };
    if mode == "overwrite" {
        return overwrite(&mut c, sets, salt);
    }
    if mode == "long" {
        return long(&mut c, Duration::from_secs(sets as u64), salt);
    }
    let set = |c: &mut Client, i: usize| -> Result<(), String> {
        let got = c
            .ask(&format!("SET k{i:04} {}", value(i, salt)))
            .map_err(|e| format!("SET k{i:04} ({i} acknowledged): {}", e.text()))?;
        if got != "OK" {
            return Err(format!("SET k{i:04}: `{got}`"));
        }
        Ok(())
    };
    let get = |c: &mut Client, i: usize| -> Result<(), String> {
        let got = c
            .ask(&format!("GET k{i:04}"))
            .map_err(|e| format!("GET k{i:04}: {}", e.text()))?;
        if got != value(i, salt) {
            return Err(format!(
                "GET k{i:04}: `{got}`, want `{}` (its SET was acknowledged)",
                value(i, salt)
            ));
        }
        Ok(())
    };
    // `blip`: the first batch of SETs and its GETs come first.
    let first = if mode == "blip" { sets / 2 } else { 0 };
    let mut set_s = 0.0;
    let mut get_s = 0.0;
    let mut gets = 0usize;
    if first > 0 {
        let t = Instant::now();
        for i in 0..first {
            set(&mut c, i)?;
        }
        set_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        loop {
            for i in 0..first {
                get(&mut c, i)?;
                gets += 1;
            }
            if t.elapsed() >= BLIP_READS {
                break;
            }
        }
        get_s += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    for i in first..sets {
        set(&mut c, i)?;
    }
    set_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let summary = |c: &Client, gets: usize, get_s: f64| {
        format!(
            "requests={} sets={sets} acked_sets={sets} gets={gets} retries={} reconnects={} set_rate={:.1} get_rate={:.1} max_gap_ms={}",
            c.replies,
            c.retries,
            c.connects.saturating_sub(1),
            sets as f64 / set_s.max(1e-9),
            gets as f64 / get_s.max(1e-9),
            c.max_gap.as_millis()
        )
    };
    if mode == "outage" {
        let limit = Duration::from_secs(300);
        while t.elapsed() < limit {
            let i = gets % sets.max(1);
            match c.ask(&format!("GET k{i:04}")) {
                Ok(got) if got == value(i, salt) => gets += 1,
                Ok(got) => return Err(format!("GET k{i:04}: `{got}`, want `{}`", value(i, salt))),
                Err(AskError::GaveUp(why)) => {
                    let s = summary(&c, gets, t.elapsed().as_secs_f64());
                    return Ok(format!("gave-up {s} ({why})"));
                }
                Err(e) => return Err(e.text()),
            }
        }
        return Ok(format!(
            "done {} (still served after {} s)",
            summary(&c, gets, t.elapsed().as_secs_f64()),
            limit.as_secs()
        ));
    }
    for i in 0..sets {
        get(&mut c, i)?;
        gets += 1;
    }
    let get_s = get_s + t.elapsed().as_secs_f64();
    let got = c
        .ask("SHUTDOWN")
        .map_err(|e| format!("SHUTDOWN: {}", e.text()))?;
    if got != "BYE" {
        return Err(format!("SHUTDOWN: `{got}`"));
    }
    Ok(format!("done {}", summary(&c, gets, get_s)))
}

/// GETs every key `k` (it must hold `last[k]`, its last acknowledged
/// version, or nothing) and sends SHUTDOWN; the seconds the GETs took.
fn read_back_and_shut_down(
    c: &mut Client,
    last: &[Option<usize>],
    salt: u64,
) -> Result<f64, String> {
    let t = Instant::now();
    for (k, v) in last.iter().enumerate() {
        let got = c
            .ask(&format!("GET k{k:04}"))
            .map_err(|e| format!("GET k{k:04}: {}", e.text()))?;
        let want = v.map_or("NOTFOUND".into(), |n| value(n, salt));
        if got != want {
            return Err(format!(
                "GET k{k:04}: `{got}`, want `{want}` (its last acknowledged version)"
            ));
        }
    }
    let get_s = t.elapsed().as_secs_f64();
    let got = c
        .ask("SHUTDOWN")
        .map_err(|e| format!("SHUTDOWN: {}", e.text()))?;
    if got != "BYE" {
        return Err(format!("SHUTDOWN: `{got}`"));
    }
    Ok(get_s)
}

/// The `long` client (`ft-long-run`): for `secs` of wall time, SET number
/// `n` writes key `k%04d` of `n % LONG_KEYS` with [`value`]`(n)`; then a
/// GET of every key (its last version) and SHUTDOWN.
fn long(c: &mut Client, secs: Duration, salt: u64) -> Result<String, String> {
    let mut last: [Option<usize>; LONG_KEYS] = [None; LONG_KEYS];
    let t = Instant::now();
    let mut n = 0usize;
    let mut next_note = Duration::from_secs(60);
    while t.elapsed() < secs {
        let k = n % LONG_KEYS;
        let got = c
            .ask(&format!("SET k{k:04} {}", value(n, salt)))
            .map_err(|e| format!("SET k{k:04} v{n} ({n} acknowledged): {}", e.text()))?;
        if got != "OK" {
            return Err(format!("SET k{k:04} v{n}: `{got}`"));
        }
        last[k] = Some(n);
        n += 1;
        if t.elapsed() >= next_note {
            // Progress for a long run (stderr: the runner shows it).
            eprintln!("ftkv-client: long: {n} SETs in {} s", next_note.as_secs());
            next_note += Duration::from_secs(60);
        }
    }
    let set_s = t.elapsed().as_secs_f64();
    let get_s = read_back_and_shut_down(c, &last, salt)?;
    Ok(format!(
        "done requests={} sets={n} acked_sets={n} gets={LONG_KEYS} retries={} reconnects={} set_rate={:.1} get_rate={:.1} max_gap_ms={} load_s={set_s:.0}",
        c.replies,
        c.retries,
        c.connects.saturating_sub(1),
        n as f64 / set_s.max(1e-9),
        LONG_KEYS as f64 / get_s.max(1e-9),
        c.max_gap.as_millis()
    ))
}

/// The `overwrite` client (`ft-zombie-primary`): SET number `n` (from 0)
/// writes key `k%04d` of `n % ZOMBIE_KEYS` with [`value`]`(n)` (so `n` is
/// that key's version), one request at a time, re-sent through an outage
/// like `failover`; before each SET it looks at stdin: `pause` (it prints
/// `paused sent=<n>` and sends nothing until `resume`) or `stop` (stdin
/// closed counts as `stop`; at most `sets` are sent). Then it prints
/// `stopped sent=<n> last=k0000:v<n>,...` (per key the last version whose
/// SET got `OK`, `-` for none: every SET sent was answered), waits for
/// `finish` on stdin, GETs every key (it must hold that version) and
/// sends SHUTDOWN. The summary ends with the same `sent=` and `last=`.
fn overwrite(c: &mut Client, sets: usize, salt: u64) -> Result<String, String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(l.trim().to_string()).is_err() {
                break;
            }
        }
    });
    let mut last: [Option<usize>; ZOMBIE_KEYS] = [None; ZOMBIE_KEYS];
    let mut sent = 0usize;
    let t = Instant::now();
    'sets: while sent < sets {
        match rx.try_recv() {
            Ok(l) if l == "stop" => break,
            Ok(l) if l == "pause" => {
                println!("paused sent={sent}");
                loop {
                    match rx.recv_timeout(Duration::from_secs(120)) {
                        Ok(l) if l == "resume" => break,
                        Ok(l) if l == "stop" => break 'sets,
                        Ok(_) => {}
                        Err(_) => break 'sets,
                    }
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
            Ok(_) | Err(mpsc::TryRecvError::Empty) => {}
        }
        let k = sent % ZOMBIE_KEYS;
        let got = c
            .ask(&format!("SET k{k:04} {}", value(sent, salt)))
            .map_err(|e| format!("SET k{k:04} v{sent}: {}", e.text()))?;
        if got != "OK" {
            return Err(format!("SET k{k:04} v{sent}: `{got}`"));
        }
        last[k] = Some(sent);
        sent += 1;
    }
    let set_s = t.elapsed().as_secs_f64();
    let last_s = last
        .iter()
        .enumerate()
        .map(|(k, v)| format!("k{k:04}:{}", v.map_or("-".into(), |n| format!("v{n}"))))
        .collect::<Vec<_>>()
        .join(",");
    println!("stopped sent={sent} last={last_s}");
    loop {
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(l) if l == "finish" => break,
            Ok(_) => {}
            // Closed or silent: go on.
            Err(_) => break,
        }
    }
    // The wait is no silence of the server's.
    c.last_reply = Instant::now();
    let get_s = read_back_and_shut_down(c, &last, salt)?;
    Ok(format!(
        "done requests={} sets={sent} acked_sets={sent} gets={ZOMBIE_KEYS} retries={} reconnects={} set_rate={:.1} get_rate={:.1} max_gap_ms={} sent={sent} last={last_s}",
        c.replies,
        c.retries,
        c.connects.saturating_sub(1),
        sent as f64 / set_s.max(1e-9),
        ZOMBIE_KEYS as f64 / get_s.max(1e-9),
        c.max_gap.as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_of_the_contract_parses() {
        let l = r#"{"role":"primary","state":"paired","generation":0,"seq":1234,"acked":1230,"applied":1229,"lag_entries":5,"lag_us":812,"log_mbit_s":"1.23","heartbeat_age_ms":3}"#;
        let s = check_status(l, "primary", "paired").unwrap();
        assert!(
            s.contains("seq=1234") && s.contains("log_mbit_s=1.23"),
            "{s}"
        );
        assert!(check_status(l, "backup", "paired")
            .unwrap_err()
            .contains("role"));
        let alone = l.replace("paired", "alone");
        assert!(check_status(&alone, "primary", "paired").is_err());
        let gen1 = l.replace("\"generation\":0", "\"generation\":1");
        assert!(check_status(&gen1, "primary", "paired").is_err());
        let short = r#"{"role":"primary","state":"paired","generation":0}"#;
        assert!(check_status(short, "primary", "paired")
            .unwrap_err()
            .contains("seq"));
    }

    #[test]
    fn json_values_and_errors() {
        assert_eq!(
            parse_json(r#" {"a":[1,-2.5e3,true,null],"b":{"c":"x\"\u0041é"}} "#),
            Ok(Json::Obj(vec![
                (
                    "a".into(),
                    Json::Arr(vec![
                        Json::Num(1.0),
                        Json::Num(-2500.0),
                        Json::Bool(true),
                        Json::Null
                    ])
                ),
                (
                    "b".into(),
                    Json::Obj(vec![("c".into(), Json::Str("x\"Aé".into()))])
                ),
            ]))
        );
        for bad in [
            "",
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "[1 2]",
            "01",
            "1.",
            "\"abc",
            "{\"a\":1} x",
            "tru",
            "\"\u{1}\"",
        ] {
            assert!(parse_json(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "[".repeat(40) + &"]".repeat(40);
        assert!(parse_json(&deep).is_err());
    }

    #[test]
    fn fdb_lines() {
        let fdb = "33:33:00:00:00:01 dev brfk self permanent\n\
                   52:54:00:f7:00:01 dev tapfk1 master brfk\n\
                   52:54:00:12:34:21 dev tapfk1 master brfk\n\
                   52:54:00:12:34:22 dev tapfk2 master brfk\n\
                   52:54:00:F7:00:01 dev tapfk2 vlan 1 master brfk\n\
                   52:54:00:f7:00:01 dev tapfk2 master brfk permanent\n";
        assert_eq!(fdb_ports(fdb, GUEST_MAC), vec!["tapfk1", "tapfk2"]);
        assert!(fdb_ports("", GUEST_MAC).is_empty());
    }

    #[test]
    fn failover_skips_replies_in_flight() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let acks = [ms(0), ms(40), ms(80), ms(103), ms(6000), ms(6040)];
        // Killed at 100 ms: the reply at 103 ms was on its way.
        assert_eq!(
            failover(&acks, ms(100)),
            Some((Duration::from_millis(5900), 1))
        );
        assert_eq!(
            failover(&acks, ms(5000)),
            Some((Duration::from_millis(1000), 0))
        );
        // No gap at all: the first reply after the fault.
        assert_eq!(
            failover(&acks[..4], ms(50)),
            Some((Duration::from_millis(30), 0))
        );
        assert_eq!(failover(&acks, ms(7000)), None);
    }

    #[test]
    fn fault_points_are_seeded_and_in_the_set_phase() {
        let pts: Vec<_> = (1..=5).map(|s| fault_point(s, 150)).collect();
        assert_eq!(
            pts,
            (1..=5).map(|s| fault_point(s, 150)).collect::<Vec<_>>()
        );
        for (at, d) in &pts {
            assert!((15..=135).contains(at), "{at}");
            assert!(*d < Duration::from_millis(50));
        }
        let distinct: std::collections::BTreeSet<_> = pts.iter().map(|p| p.0).collect();
        assert!(distinct.len() >= 4, "{pts:?}");
    }

    #[test]
    fn lun_table_round_trip() {
        let salt = 77;
        let mut table = vec![0u8; SLOTS * 512];
        for i in [0usize, 1, 5] {
            let (k, v) = (format!("k{i:04}"), value(i, salt));
            let s = &mut table[(i * 7 % SLOTS) * 512..][..512];
            s[..4].copy_from_slice(b"KV01");
            s[4] = k.len() as u8;
            s[5..7].copy_from_slice(&(v.len() as u16).to_le_bytes());
            s[8..8 + k.len()].copy_from_slice(k.as_bytes());
            s[72..72 + v.len()].copy_from_slice(v.as_bytes());
        }
        let m = parse_table(&table);
        assert_eq!(m.len(), 3);
        assert!(check_lun(&m, 2, salt).is_ok());
        // Overwritten keys: SETs 0..5 on 2 keys leave v4 on k0000, v3 on k0001.
        let mut o = BTreeMap::new();
        o.insert("k0000".to_string(), value(4, salt));
        o.insert("k0001".to_string(), value(3, salt));
        assert!(check_lun_overwritten(&o, 5, 2, salt).is_ok());
        assert!(
            check_lun_overwritten(&o, 6, 2, salt).is_err(),
            "k0001 lacks v5"
        );
        assert!(
            check_lun_overwritten(&o, 4, 2, salt).is_err(),
            "k0000 holds v4, not v2"
        );
        let e = check_lun(&m, 3, salt).unwrap_err();
        assert!(e.contains("k0002"), "{e}");
        assert!(check_lun(&m, 1, salt + 1).is_err());
    }

    #[test]
    fn a_halted_replay_is_not_a_divergence() {
        let halted = "ft: backup: arbitrating\n\
            hypervisor: guest stopped: ft: backup: LOST the test-and-set (flag generation 1 owner 1): halting the guest for good\n\
            ft: pair: backup done: received=4075 applied=3224 pending=851 verdict=HALTED\n\
            ft: replay: HALTED before the end of the log: 3224 entries applied, each met at its point\n";
        assert!(replay_cut_short(halted));
        // A real divergence before the halt stays one.
        let real = format!("ft: replay: DIVERGED at entry #7: checkpoint mismatch\n{halted}");
        assert!(!replay_cut_short(&real));
        // No halt line: not accepted.
        let no_halt = "ft: replay: HALTED before the end of the log: 3 entries applied\n";
        assert!(!replay_cut_short(no_halt));
        // Unreachable storage is retried, not a halt: not accepted.
        let retrying = format!(
            "ft: backup: shared storage unreachable: no one may go live; retrying every 100 ms (attempt 1)\n{}",
            halted.lines().skip(2).collect::<Vec<_>>().join("\n")
        );
        assert!(retrying.contains(RETRYING));
        assert!(!replay_cut_short(&retrying));
    }

    #[test]
    fn overwritten_keys_on_the_lun() {
        let salt = 9;
        let mut t: BTreeMap<String, String> = (8..12)
            .map(|n: usize| (format!("k{:04}", n % 4), value(n, salt)))
            .collect();
        // k0001: v9 was sent after the last acknowledged v5 (allowed).
        let last = [Some(8), Some(5), Some(10), Some(11)];
        assert_eq!(
            check_versions(&t, &last, 12, salt),
            Ok(vec![Some(8), Some(9), Some(10), Some(11)])
        );
        let bad = |t: &BTreeMap<String, String>| check_versions(t, &last, 12, salt).unwrap_err();
        t.insert("k0002".into(), value(6, salt));
        let e = bad(&t);
        assert!(e.contains("k0002: v6") && e.contains("stale"), "{e}");
        // Never sent, another key's version, another run's value.
        for v in [
            value(14, salt),
            value(9, salt),
            value(10, salt + 1),
            "x".into(),
        ] {
            t.insert("k0002".into(), v);
            assert!(bad(&t).contains("no value the client sent"));
        }
        t.remove("k0002");
        assert!(bad(&t).contains("k0002: not on the LUN"));
        // A key never acknowledged may be absent.
        let none = [Some(8), Some(5), None, Some(11)];
        assert_eq!(
            check_versions(&t, &none, 12, salt),
            Ok(vec![Some(8), Some(9), None, Some(11)])
        );
    }

    #[test]
    fn overwrite_summary_and_capture() {
        let s = "done requests=90 sets=86 acked_sets=86 sent=86 last=k0000:v84,k0001:v85,k0002:-,k0003:v83";
        assert_eq!(num(s, "sent="), Some(86));
        assert_eq!(parse_last(s), Ok(vec![Some(84), Some(85), None, Some(83)]));
        for bad in [
            "last=k0001:v1,k0000:v0,k0002:v2,k0003:v3",
            "last=k0000:v0,k0001:v1,k0002:v2",
            "last=k0000:x0,k0001:v1,k0002:v2,k0003:v3",
            "sent=3",
        ] {
            assert!(parse_last(bad).is_err(), "{bad}");
        }
        let cap = "tcpdump: listening on tapfk1, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
            1700000000.100000 52:54:00:f7:00:01 > 52:54:00:aa:bb:cc, ethertype IPv4 (0x0800), length 56: 10.0.4.20.7000 > 10.0.4.1.40000: Flags [P.], length 2\n\
            1700000005.500000 52:54:00:f7:00:01 > 52:54:00:aa:bb:cc, ethertype IPv4 (0x0800), length 56: 10.0.4.20.7000 > 10.0.4.1.40000: Flags [P.], length 2\n";
        let (before, after) = capture_split(cap, 1_700_000_003.0);
        assert_eq!(before, 1);
        assert_eq!(after.len(), 1);
        assert!(after[0].starts_with("1700000005.5"));
        assert_eq!(capture_split(cap, 1_800_000_000.0).1.len(), 0);
    }

    #[test]
    fn numbers_and_words_in_lines() {
        let l =
            "ft: pair: backup done: received=10 applied=9 outputs discarded=1234 verdict=IDENTICAL";
        assert_eq!(num(l, "applied="), Some(9));
        assert_eq!(num(l, "outputs discarded="), Some(1234));
        assert_eq!(num("re-issued 3 pending", "re-issued "), Some(3));
        assert_eq!(word(l, "verdict="), Some("IDENTICAL"));
        assert_eq!(num(l, "nothing="), None);
        let blk = "guestio: blk requests=432 ok=432 errors=0 needs_reset=0 bad_accesses=0 | disk reads=0 writes=100 flushes=100 read=0KiB written=50KiB";
        assert_eq!(num(blk, " writes="), Some(100));
    }
}
