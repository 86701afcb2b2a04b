//! The kernel command line, parsed into a typed [`Config`].
//!
//! Syntax: space-separated `key=value` options. The first token is skipped
//! when it holds no `=` (GRUB and QEMU put the image path there). An unknown
//! key, a malformed value or a repeated key is an [`Error`] naming the
//! option; nothing is silently ignored.
//!
//! | option | values | default |
//! |---|---|---|
//! | `mode` | `hypervisor` (run the guest; needs VMX), `report` (print the CPU report and exit 0), `net` (NIC + echo service), `iscsi` (NIC + iSCSI initiator check, see [`iscsi`]) | `hypervisor` |
//! | `selftest` | `none`, `panic` (deliberate panic), `fault` (deliberate page fault) | `none` |
//! | `guest` | what the first boot module is: `multiboot` (a Multiboot ELF test guest) or `linux` (a bzImage booted with the Linux boot protocol; the second module is its initrd, the first module's command line the kernel's) | `multiboot` |
//! | `guest_mem` | size with optional `K`/`M`/`G` suffix, 2 MiB multiple, 2 MiB..3 GiB | `64M` |
//! | `log` | `error`, `warn`, `info`, `debug` | `info` |
//! | `watchdog` | seconds of guest time with interrupts disabled before the guest is stopped (1..3600) | `30` |
//! | `guest_tsc` | the guest's TSC: `scaled` (the host TSC, its rate calibrated against the PIT at boot, scaled to the 1 GHz CPUID announces: `crate::tsc_scale`) or `host` (the raw host TSC, announced as 1 GHz whatever its rate: the Bochs test bed's choice, where the TSC runs at Bochs's `ips` and the tests are sized in instructions) | `scaled` |
//! | `ept_dirty_test` | `0`; `N`: log the guest's RAM writes through the EPT (a repair's pre-copy mechanism, `vmx::ept`) and take a round every `N` ms of guest time, reported at the end (1..60000; a test of the mechanism, issue 16) | `0` |
//! | `ft_test_clone` | `0`; `N`: after `N` ms of guest time, send the whole machine through a repair's state transfer (`ft::state`), wreck it, and restore it from the transfer (a test of capture and restore, issue 16; plain runs, 1..60000) | `0` |
//! | `ft_test_clone_link` | the link rate a `ft_test_clone` pre-copy round is timed at, MB/s (1..1000000) | `1000` |
//! | `counter` | execution-counter backend: `auto`, `preempt`, `mtf`, `pmu` (DESIGN.md §3) | `auto` |
//! | `ft` | `off`; `record` (log every non-deterministic input, print a summary); `export` (record, then write the log to COM1 as framed hex `FTLOG` lines); `replay` (with a second boot module: replay that log; without: record, then replay from the in-memory log in the same boot; both compare) | `off` |
//! | `replay_mutate` | `0`; `1`: move the interrupt entry nearest the middle of the log one instruction later; `2`: change the RDTSC value nearest the middle; `3`: flip the last byte of the received frame nearest the middle (proves the divergence check bites, memory included) | `0` |
//! | `ip` | the hypervisor's IPv4 address and prefix, `a.b.c.d/nn` (`mode=net`) | `10.0.2.15/24` |
//! | `gw` | default IPv4 gateway `a.b.c.d`, or `none` | `10.0.2.2` |
//! | `nic` | `e1000`, `virtio` or `auto` (first supported NIC found on PCI) | `auto` |
//! | `echo_port` | TCP/UDP port of the echo/diagnostic service (1..65535) | `7` |
//! | `net_timeout` | seconds `mode=net` serves (or `mode=iscsi` runs) before exiting with failure (1..86400) | `120` |
//! | `disk` | backend of the guest's virtio-blk (`crate::guestio`): `ram:<size>` (a disk in hypervisor RAM, 512-byte multiple, 4K..1G), `iscsi` (the shared LUN of `iscsi=`/`iscsi_target=`/`iscsi_lun=` from block 8 on, through the hypervisor's NIC and `ip=`) or `none` (capacity 0) | `ram:8M` |
//! | `guest_net` | what the guest's virtio-net is wired to: `none` (no wire: frames counted and dropped), `loopback` (each frame comes back to the guest) or `bridge` (the hypervisor's physical NIC, shared by destination MAC) | `none` |
//! | `iscsi`, `iscsi_*` | `mode=iscsi`'s portal, target, LUN and check: [`iscsi`] | |
//! | `role`, `peer`, `cluster`, `ft_timeout`, `heartbeat`, `ft_status` | one side of an FT pair: [`ftpair`] | |
use crate::Error;
use alloc::string::ToString;

pub mod ftpair;
pub mod iscsi;
pub use ftpair::{FtPairConfig, Role};
pub use iscsi::{Endpoint, IscsiConfig, IscsiOp};

/// What the hypervisor does after booting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run the guest under VMX (refuses to start without VMX).
    Hypervisor,
    /// Print the boot and CPU report and exit with success.
    Report,
    /// Bring up the NIC and serve the TCP/UDP echo service (no guest).
    Net,
    /// Bring up the NIC, log in to an iSCSI target and run one check.
    Iscsi,
}

/// Which NIC driver `mode=net` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicChoice {
    Auto,
    E1000,
    Virtio,
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: [u8; 4],
    pub prefix: u8,
}

/// Network settings of `mode=net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub ip: Ipv4Cidr,
    pub gateway: Option<[u8; 4]>,
    pub nic: NicChoice,
    pub echo_port: u16,
    pub timeout_secs: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        // QEMU user networking's defaults (guest 10.0.2.15, host 10.0.2.2).
        NetConfig {
            ip: Ipv4Cidr {
                addr: [10, 0, 2, 15],
                prefix: 24,
            },
            gateway: Some([10, 0, 2, 2]),
            nic: NicChoice::Auto,
            echo_port: 7,
            timeout_secs: 120,
        }
    }
}

/// Deliberate failures for the exit-path tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    None,
    Panic,
    Fault,
}

/// Console verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Execution-counter backend (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterChoice {
    /// `pmu` if it proves itself, else `preempt` if it does, else `mtf`.
    Auto,
    Preempt,
    Mtf,
    Pmu,
}

/// Record/replay mode of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtMode {
    Off,
    /// Log every non-deterministic input at its execution point.
    Record,
    /// Record, then write the log to COM1 (framed hex lines).
    Export,
    /// Replay the log of the second boot module, or record and replay from
    /// the in-memory log (same boot); compare.
    Replay,
}

/// Backend of the guest's virtio-blk disk (`disk=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChoice {
    /// No backing store: capacity 0, every request fails.
    None,
    /// A disk of `bytes` bytes in hypervisor RAM, zeroed at boot.
    Ram { bytes: u64 },
    /// A region of the shared iSCSI LUN (`iscsi=` etc.).
    Iscsi,
}

/// What the guest's virtio-net is connected to (`guest_net=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestNetChoice {
    /// No wire: transmitted frames are counted and dropped, nothing arrives.
    None,
    /// Every transmitted frame is delivered back to the guest (tests).
    Loopback,
    /// Bridged to the hypervisor's physical NIC.
    Bridge,
}

/// What kind of guest the first boot module is (`guest=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A Multiboot ELF (the test guests).
    Multiboot,
    /// A Linux bzImage (issue 10).
    Linux,
}

/// `value` as a whole number within `range`.
fn ranged(value: &str, range: core::ops::RangeInclusive<u64>) -> Option<u64> {
    value.parse().ok().filter(|v| range.contains(v))
}

/// What the guest's TSC is (`guest_tsc=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestTsc {
    /// The host TSC scaled to the rate CPUID announces.
    Scaled,
    /// The raw host TSC.
    Host,
}

/// The typed kernel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub guest: GuestKind,
    pub mode: Mode,
    pub selftest: SelfTest,
    pub guest_mem: u64,
    pub log: LogLevel,
    pub watchdog_secs: u64,
    pub guest_tsc: GuestTsc,
    pub ept_dirty_test_ms: u64,
    pub ft_test_clone_ms: u64,
    pub ft_test_clone_link_mbps: u64,
    pub net: NetConfig,
    pub counter: CounterChoice,
    pub ft: FtMode,
    pub replay_mutate: u8,
    pub disk: DiskChoice,
    pub guest_net: GuestNetChoice,
    pub iscsi: IscsiConfig,
    pub pair: FtPairConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            guest: GuestKind::Multiboot,
            mode: Mode::Hypervisor,
            selftest: SelfTest::None,
            guest_mem: 64 << 20,
            log: LogLevel::Info,
            watchdog_secs: 30,
            guest_tsc: GuestTsc::Scaled,
            ept_dirty_test_ms: 0,
            ft_test_clone_ms: 0,
            ft_test_clone_link_mbps: 1000,
            net: NetConfig::default(),
            counter: CounterChoice::Auto,
            ft: FtMode::Off,
            replay_mutate: 0,
            disk: DiskChoice::Ram { bytes: 8 << 20 },
            guest_net: GuestNetChoice::None,
            iscsi: IscsiConfig::default(),
            pair: FtPairConfig::default(),
        }
    }
}

const MIB2: u64 = 2 << 20;

impl Config {
    /// Parses a whole command line.
    pub fn parse(cmdline: &str) -> Result<Config, Error> {
        let mut cfg = Config::default();
        let mut seen: u32 = 0;
        let mut iscsi_seen: u32 = 0;
        let mut pair_seen: u32 = 0;
        let mut tokens = cmdline.split_ascii_whitespace().peekable();
        if tokens.peek().is_some_and(|t| !t.contains('=')) {
            tokens.next();
        }
        for token in tokens {
            let (key, value) = token.split_once('=').ok_or_else(|| Error::UnknownOption {
                option: token.to_string(),
            })?;
            if let Some(r) = iscsi::parse_option(&mut cfg.iscsi, &mut iscsi_seen, key, value) {
                r?;
                continue;
            }
            if let Some(r) = ftpair::parse_option(&mut cfg.pair, &mut pair_seen, key, value) {
                r?;
                continue;
            }
            const KEYS: [&str; 20] = [
                "mode",
                "guest",
                "selftest",
                "guest_mem",
                "log",
                "watchdog",
                "guest_tsc",
                "ept_dirty_test",
                "ft_test_clone",
                "ft_test_clone_link",
                "counter",
                "ft",
                "replay_mutate",
                "ip",
                "gw",
                "nic",
                "echo_port",
                "net_timeout",
                "disk",
                "guest_net",
            ];
            let opt = match claim(&KEYS, &mut seen, key, value) {
                Some(r) => r?,
                None => {
                    return Err(Error::UnknownOption {
                        option: key.to_string(),
                    })
                }
            };
            let name = opt.name;
            let bad = |expected: &'static str| opt.bad(expected);
            match name {
                "mode" => {
                    cfg.mode = match value {
                        "hypervisor" => Mode::Hypervisor,
                        "report" => Mode::Report,
                        "net" => Mode::Net,
                        "iscsi" => Mode::Iscsi,
                        _ => return Err(bad("`hypervisor`, `report`, `net` or `iscsi`")),
                    }
                }
                "selftest" => {
                    cfg.selftest = match value {
                        "none" => SelfTest::None,
                        "panic" => SelfTest::Panic,
                        "fault" => SelfTest::Fault,
                        _ => return Err(bad("`none`, `panic` or `fault`")),
                    }
                }
                "guest_mem" => {
                    const EXPECTED: &str = "a multiple of 2M between 2M and 3G, e.g. `64M`";
                    let bytes = parse_size(value).ok_or_else(|| bad(EXPECTED))?;
                    if !(MIB2..=(3 << 30)).contains(&bytes) || bytes % MIB2 != 0 {
                        return Err(bad(EXPECTED));
                    }
                    cfg.guest_mem = bytes;
                }
                "log" => {
                    cfg.log = match value {
                        "error" => LogLevel::Error,
                        "warn" => LogLevel::Warn,
                        "info" => LogLevel::Info,
                        "debug" => LogLevel::Debug,
                        _ => return Err(bad("`error`, `warn`, `info` or `debug`")),
                    }
                }
                "watchdog" => {
                    cfg.watchdog_secs = ranged(value, 1..=3600)
                        .ok_or_else(|| bad("whole seconds between 1 and 3600"))?;
                }
                "ft_test_clone_link" => {
                    cfg.ft_test_clone_link_mbps =
                        ranged(value, 1..=1_000_000).ok_or_else(|| bad("MB/s, 1..1000000"))?;
                }
                "ft_test_clone" => {
                    cfg.ft_test_clone_ms = ranged(value, 0..=60_000)
                        .ok_or_else(|| bad("0 (off) or milliseconds of guest time, 1..60000"))?;
                }
                "ept_dirty_test" => {
                    cfg.ept_dirty_test_ms = ranged(value, 0..=60_000)
                        .ok_or_else(|| bad("0 (off) or milliseconds between rounds, 1..60000"))?;
                }
                "guest_tsc" => {
                    cfg.guest_tsc = match value {
                        "scaled" => GuestTsc::Scaled,
                        "host" => GuestTsc::Host,
                        _ => return Err(bad("`scaled` or `host`")),
                    };
                }
                "ip" => {
                    cfg.net.ip = parse_cidr(value)
                        .ok_or_else(|| bad("an IPv4 address with prefix, e.g. `10.0.2.15/24`"))?;
                }
                "gw" => {
                    cfg.net.gateway =
                        if value == "none" {
                            None
                        } else {
                            Some(parse_ipv4(value).ok_or_else(|| {
                                bad("an IPv4 address, e.g. `10.0.2.2`, or `none`")
                            })?)
                        };
                }
                "nic" => {
                    cfg.net.nic = match value {
                        "auto" => NicChoice::Auto,
                        "e1000" => NicChoice::E1000,
                        "virtio" => NicChoice::Virtio,
                        _ => return Err(bad("`e1000`, `virtio` or `auto`")),
                    }
                }
                "echo_port" => {
                    const EXPECTED: &str = "a port number between 1 and 65535";
                    let port: u16 = parse_decimal(value)
                        .and_then(|v| u16::try_from(v).ok())
                        .ok_or_else(|| bad(EXPECTED))?;
                    if port == 0 {
                        return Err(bad(EXPECTED));
                    }
                    cfg.net.echo_port = port;
                }
                "net_timeout" => {
                    const EXPECTED: &str = "whole seconds between 1 and 86400";
                    let secs = parse_decimal(value).ok_or_else(|| bad(EXPECTED))?;
                    if !(1..=86400).contains(&secs) {
                        return Err(bad(EXPECTED));
                    }
                    cfg.net.timeout_secs = secs;
                }
                "counter" => {
                    cfg.counter = match value {
                        "auto" => CounterChoice::Auto,
                        "preempt" => CounterChoice::Preempt,
                        "mtf" => CounterChoice::Mtf,
                        "pmu" => CounterChoice::Pmu,
                        _ => return Err(bad("`auto`, `preempt`, `mtf` or `pmu`")),
                    }
                }
                "ft" => {
                    cfg.ft = match value {
                        "off" => FtMode::Off,
                        "record" => FtMode::Record,
                        "export" => FtMode::Export,
                        "replay" => FtMode::Replay,
                        _ => return Err(bad("`off`, `record`, `export` or `replay`")),
                    }
                }
                "replay_mutate" => {
                    cfg.replay_mutate = match value {
                        "0" => 0,
                        "1" => 1,
                        "2" => 2,
                        "3" => 3,
                        _ => return Err(bad("`0`, `1`, `2` or `3`")),
                    }
                }
                "disk" => {
                    const EXPECTED: &str =
                        "`none`, `iscsi` or `ram:<size>` (a multiple of 512 between 4K and 1G, e.g. `ram:8M`)";
                    cfg.disk = match value.split_once(':') {
                        None if value == "none" => DiskChoice::None,
                        None if value == "iscsi" => DiskChoice::Iscsi,
                        Some(("ram", size)) => {
                            let bytes = parse_size(size).ok_or_else(|| bad(EXPECTED))?;
                            if !(4096..=(1 << 30)).contains(&bytes) || bytes % 512 != 0 {
                                return Err(bad(EXPECTED));
                            }
                            DiskChoice::Ram { bytes }
                        }
                        _ => return Err(bad(EXPECTED)),
                    }
                }
                "guest_net" => {
                    cfg.guest_net = match value {
                        "none" => GuestNetChoice::None,
                        "loopback" => GuestNetChoice::Loopback,
                        "bridge" => GuestNetChoice::Bridge,
                        _ => return Err(bad("`none`, `loopback` or `bridge`")),
                    }
                }
                "guest" => {
                    cfg.guest = match value {
                        "multiboot" => GuestKind::Multiboot,
                        "linux" => GuestKind::Linux,
                        _ => return Err(bad("`multiboot` or `linux`")),
                    }
                }
                _ => unreachable!("every key above is handled"),
            }
        }
        // An FT pair's two nodes need two I_T nexuses (two initiator names
        // and ISIDs): by default the primary is node 1, the backup node 2
        // (the same id on both made each login reinstate the other's
        // session).
        if !iscsi::node_given(iscsi_seen) {
            if let Some(role) = cfg.pair.role {
                cfg.iscsi.node = match role {
                    Role::Primary => 1,
                    Role::Backup => 2,
                };
            }
        }
        Ok(cfg)
    }
}

/// A boot module's command line without the leading image path that some
/// loaders put first (a first token starting with `/` and holding no `=`).
pub fn strip_image_path(cmdline: &str) -> &str {
    let trimmed = cmdline.trim_start();
    match trimmed.split_once(' ') {
        Some((first, rest)) if first.starts_with('/') && !first.contains('=') => rest.trim_start(),
        None if trimmed.starts_with('/') && !trimmed.contains('=') => "",
        _ => trimmed,
    }
}

/// An option a parser group has claimed: its canonical name and its value.
pub(crate) struct Claimed<'a> {
    pub name: &'static str,
    pub value: &'a str,
}

impl Claimed<'_> {
    /// The error for a value that does not parse, naming the option.
    pub(crate) fn bad(&self, expected: &'static str) -> Error {
        Error::BadValue {
            option: self.name,
            value: self.value.to_string(),
            expected,
        }
    }

    /// A decimal value in `lo..=hi`, else [`Claimed::bad`].
    pub(crate) fn number(&self, lo: u64, hi: u64, expected: &'static str) -> Result<u64, Error> {
        parse_decimal(self.value)
            .filter(|v| (lo..=hi).contains(v))
            .ok_or_else(|| self.bad(expected))
    }
}

/// Claims `key` for a group of options (`keys`, at most 32, one bit of
/// `seen` each): `None` when the key is not in the group, an error when it
/// was given before. Every option parser goes through here, so repeats are
/// detected the same way everywhere.
pub(crate) fn claim<'a>(
    keys: &[&'static str],
    seen: &mut u32,
    key: &str,
    value: &'a str,
) -> Option<Result<Claimed<'a>, Error>> {
    debug_assert!(keys.len() <= 32);
    let bit = keys.iter().position(|k| *k == key)?;
    let name = keys[bit];
    if *seen & (1 << bit) != 0 {
        return Some(Err(Error::DuplicateOption { option: name }));
    }
    *seen |= 1 << bit;
    Some(Ok(Claimed { name, value }))
}

/// Parses plain decimal digits (no sign, no spaces) into a `u64`.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a dotted-quad IPv4 address: four decimal octets 0..=255, no
/// leading `+`, no empty parts, at most three digits each.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.len() > 3 {
            return None;
        }
        *o = u8::try_from(parse_decimal(p)?).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses `a.b.c.d/nn` with a prefix length of 1..=32. The address must be
/// a unicast host address of that network (not the network or broadcast
/// address of prefixes shorter than 31).
pub fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (a, p) = s.split_once('/')?;
    let addr = parse_ipv4(a)?;
    if p.len() > 2 {
        return None;
    }
    let prefix = u8::try_from(parse_decimal(p)?).ok()?;
    if !(1..=32).contains(&prefix) || addr[0] == 0 || addr[0] >= 224 || addr[0] == 127 {
        return None;
    }
    if prefix < 31 {
        let host_mask = u32::MAX >> prefix;
        let host = u32::from_be_bytes(addr) & host_mask;
        if host == 0 || host == host_mask {
            return None;
        }
    }
    Some(Ipv4Cidr { addr, prefix })
}

/// Parses `123`, `4K`, `64M`, `1G` (binary units) without overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_image_path_skipped() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(
            Config::parse("/boot/ftvisor.elf").unwrap(),
            Config::default()
        );
        let c = Config::parse("/boot/ftvisor.elf mode=report log=debug").unwrap();
        assert_eq!(c.mode, Mode::Report);
        assert_eq!(c.log, LogLevel::Debug);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1M"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
        assert_eq!(parse_size("18446744073709551615G"), None);
        let c = Config::parse("guest_mem=128M").unwrap();
        assert_eq!(c.guest_mem, 128 << 20);
    }

    #[test]
    fn errors_name_the_option() {
        let e = Config::parse("mode=report frobnicate=1").unwrap_err();
        assert_eq!(e.to_string(), "unknown command-line option `frobnicate`");
        let e = Config::parse("mode=fast").unwrap_err();
        assert!(e.to_string().contains("`mode`"), "{e}");
        assert!(e.to_string().contains("`fast`"), "{e}");
        let e = Config::parse("guest_mem=3M").unwrap_err();
        assert!(e.to_string().contains("guest_mem"), "{e}");
        let e = Config::parse("log=info log=debug").unwrap_err();
        assert_eq!(e, Error::DuplicateOption { option: "log" });
        let e = Config::parse("mode=report bare").unwrap_err();
        assert_eq!(e.to_string(), "unknown command-line option `bare`");
    }

    #[test]
    fn ept_dirty_test_takes_milliseconds() {
        assert_eq!(Config::default().ept_dirty_test_ms, 0);
        assert_eq!(
            Config::parse("ept_dirty_test=5").unwrap().ept_dirty_test_ms,
            5
        );
        for bad in [
            "ept_dirty_test=x",
            "ept_dirty_test=60001",
            "ept_dirty_test=-1",
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.to_string().contains("`ept_dirty_test`"), "{bad}: {e}");
        }
    }

    #[test]
    fn guest_tsc_is_scaled_unless_asked() {
        assert_eq!(Config::default().guest_tsc, GuestTsc::Scaled);
        assert_eq!(
            Config::parse("guest_tsc=host").unwrap().guest_tsc,
            GuestTsc::Host
        );
        assert_eq!(
            Config::parse("guest_tsc=scaled").unwrap().guest_tsc,
            GuestTsc::Scaled
        );
        let e = Config::parse("guest_tsc=fast").unwrap_err();
        assert!(e.to_string().contains("`guest_tsc`"), "{e}");
    }

    #[test]
    fn guest_disk_and_net() {
        let c = Config::default();
        assert_eq!(c.disk, DiskChoice::Ram { bytes: 8 << 20 });
        assert_eq!(c.guest_net, GuestNetChoice::None);
        let c = Config::parse("disk=ram:16M guest_net=loopback").unwrap();
        assert_eq!(c.disk, DiskChoice::Ram { bytes: 16 << 20 });
        assert_eq!(c.guest_net, GuestNetChoice::Loopback);
        assert_eq!(Config::parse("disk=none").unwrap().disk, DiskChoice::None);
        let c = Config::parse("disk=iscsi guest_net=bridge").unwrap();
        assert_eq!(c.disk, DiskChoice::Iscsi);
        assert_eq!(c.guest_net, GuestNetChoice::Bridge);
        for bad in [
            "disk=ram",
            "disk=ram:",
            "disk=ram:1000",
            "disk=ram:2G",
            "disk=iscsi:x",
            "disk=ram:2K",
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.to_string().contains("`disk`"), "{bad}: {e}");
        }
        let e = Config::parse("guest_net=tap").unwrap_err();
        assert!(e.to_string().contains("`guest_net`"), "{e}");
        let e = Config::parse("disk=none disk=ram:8M").unwrap_err();
        assert_eq!(e, Error::DuplicateOption { option: "disk" });
    }

    #[test]
    fn module_cmdline() {
        assert_eq!(strip_image_path("/boot/module0 test=hello"), "test=hello");
        assert_eq!(strip_image_path("/boot/module0"), "");
        assert_eq!(strip_image_path("test=hello x=1"), "test=hello x=1");
        assert_eq!(strip_image_path(""), "");
    }

    #[test]
    fn guest_kind() {
        assert_eq!(Config::default().guest, GuestKind::Multiboot);
        assert_eq!(
            Config::parse("guest=linux").unwrap().guest,
            GuestKind::Linux
        );
        assert_eq!(
            Config::parse("guest=multiboot").unwrap().guest,
            GuestKind::Multiboot
        );
        let e = Config::parse("guest=windows").unwrap_err();
        assert!(e.to_string().contains("`guest`"), "{e}");
        let e = Config::parse("guest=linux guest=linux").unwrap_err();
        assert_eq!(e, Error::DuplicateOption { option: "guest" });
    }

    #[test]
    fn watchdog() {
        assert_eq!(Config::parse("watchdog=2").unwrap().watchdog_secs, 2);
        assert!(Config::parse("watchdog=0").is_err());
        assert!(Config::parse("watchdog=1s").is_err());
    }

    #[test]
    fn net_options() {
        let c = Config::parse(
            "mode=net ip=192.168.7.2/16 gw=192.168.0.1 nic=e1000 echo_port=4000 net_timeout=30",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Net);
        assert_eq!(
            c.net,
            NetConfig {
                ip: Ipv4Cidr {
                    addr: [192, 168, 7, 2],
                    prefix: 16
                },
                gateway: Some([192, 168, 0, 1]),
                nic: NicChoice::E1000,
                echo_port: 4000,
                timeout_secs: 30,
            }
        );
        assert_eq!(
            Config::parse("nic=virtio").unwrap().net.nic,
            NicChoice::Virtio
        );
        assert_eq!(Config::parse("gw=none").unwrap().net.gateway, None);
        assert_eq!(Config::parse("").unwrap().net, NetConfig::default());
        assert_eq!(Config::parse("ip=10.0.0.1/32").unwrap().net.ip.prefix, 32);
    }

    #[test]
    fn bad_net_values_are_named() {
        for (line, option) in [
            ("ip=10.0.2.15", "ip"),
            ("ip=10.0.2.15/33", "ip"),
            ("ip=10.0.2.15/0", "ip"),
            ("ip=10.0.2.256/24", "ip"),
            ("ip=10.0.2/24", "ip"),
            ("ip=10.0.2.15.1/24", "ip"),
            ("ip=10..2.15/24", "ip"),
            ("ip=+10.0.2.15/24", "ip"),
            ("ip=10.0.2.0/24", "ip"),
            ("ip=10.0.2.255/24", "ip"),
            ("ip=0.0.0.1/8", "ip"),
            ("ip=127.0.0.1/8", "ip"),
            ("ip=224.0.0.1/4", "ip"),
            ("ip=0010.0.2.15/24", "ip"),
            ("gw=10.0.2", "gw"),
            ("gw=300.1.1.1", "gw"),
            ("nic=rtl8139", "nic"),
            ("echo_port=0", "echo_port"),
            ("echo_port=65536", "echo_port"),
            ("echo_port=-1", "echo_port"),
            ("echo_port=7x", "echo_port"),
            ("net_timeout=0", "net_timeout"),
            ("net_timeout=86401", "net_timeout"),
            ("net_timeout=", "net_timeout"),
        ] {
            let e = Config::parse(line).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&format!("`{option}`")), "{line}: {text}");
            let value = line.split_once('=').unwrap().1;
            assert!(text.contains(&format!("`{value}`")), "{line}: {text}");
        }
        assert_eq!(
            Config::parse("nic=auto nic=e1000").unwrap_err(),
            Error::DuplicateOption { option: "nic" }
        );
    }

    #[test]
    fn ipv4_parsing() {
        assert_eq!(parse_ipv4("0.0.0.0"), Some([0; 4]));
        assert_eq!(parse_ipv4("255.255.255.255"), Some([255; 4]));
        assert_eq!(parse_ipv4("1.2.3"), None);
        assert_eq!(parse_ipv4("1.2.3.4."), None);
        assert_eq!(parse_ipv4(""), None);
        assert_eq!(
            parse_cidr("10.0.2.15/31"),
            Some(Ipv4Cidr {
                addr: [10, 0, 2, 15],
                prefix: 31
            })
        );
    }

    #[test]
    fn counter_and_ft() {
        let c = Config::parse("counter=preempt ft=replay replay_mutate=1").unwrap();
        assert_eq!(
            (c.counter, c.ft, c.replay_mutate),
            (CounterChoice::Preempt, FtMode::Replay, 1)
        );
        let d = Config::default();
        assert_eq!(
            (d.counter, d.ft, d.replay_mutate),
            (CounterChoice::Auto, FtMode::Off, 0)
        );
        assert_eq!(
            Config::parse("counter=mtf").unwrap().counter,
            CounterChoice::Mtf
        );
        assert_eq!(
            Config::parse("counter=pmu").unwrap().counter,
            CounterChoice::Pmu
        );
        assert_eq!(Config::parse("ft=record").unwrap().ft, FtMode::Record);
        let e = Config::parse("counter=tsc").unwrap_err();
        assert!(e.to_string().contains("`counter`"), "{e}");
        assert!(Config::parse("ft=on").is_err());
        assert_eq!(Config::parse("replay_mutate=2").unwrap().replay_mutate, 2);
        assert_eq!(Config::parse("replay_mutate=3").unwrap().replay_mutate, 3);
        assert!(Config::parse("replay_mutate=4").is_err());
        assert_eq!(Config::parse("ft=export").unwrap().ft, FtMode::Export);
        assert_eq!(
            Config::parse("ft=off ft=record").unwrap_err(),
            Error::DuplicateOption { option: "ft" }
        );
    }

    #[test]
    fn options_do_not_share_duplicate_bits() {
        let c = Config::parse(
            "mode=net counter=mtf ip=10.0.0.2/24 ft=record gw=none replay_mutate=1 nic=e1000 \
             echo_port=9 net_timeout=5 watchdog=3 log=warn guest_mem=4M selftest=none",
        )
        .unwrap();
        assert_eq!(
            (c.counter, c.net.nic),
            (CounterChoice::Mtf, NicChoice::E1000)
        );
    }

    #[test]
    fn selftests() {
        assert_eq!(
            Config::parse("selftest=panic").unwrap().selftest,
            SelfTest::Panic
        );
        assert_eq!(
            Config::parse("selftest=fault").unwrap().selftest,
            SelfTest::Fault
        );
    }
}
