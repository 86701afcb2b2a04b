//! The FT pair's command-line options (issue 9; DESIGN.md §1.1, §1.6):
//! which side this hypervisor is, where its peer is, and the session's
//! timers. Both sides boot the same guest image with the same guest
//! command line (checked in the session hello, `crate::ftnode`).
//!
//! The **backup listens** on the log port and the **primary connects** to
//! it: the primary starts its guest only once a backup has joined, so the
//! side that waits is the one that has nothing to run yet.
//!
//! | option | values | default |
//! |---|---|---|
//! | `role` | `primary` or `backup` (runs the guest in `mode=hypervisor` as one side of an FT pair; needs the NIC options `ip=`, `nic=`) | none (no pair) |
//! | `peer` | the other hypervisor: on the primary the backup's log listener `a.b.c.d[:port]`; on the backup the primary's address `a.b.c.d[:port]` (only it may connect; the backup listens on `port`) | none (required with `role`) |
//! | `cluster` | the pair's cluster id, the same on both sides (0..2^63) | `1` |
//! | `ft_timeout` | milliseconds of log-channel silence before the peer is presumed dead (DESIGN.md §1.6; 100..600000) | `2000` |
//! | `heartbeat` | milliseconds of idle log before the primary sends a heartbeat (1..60000, below `ft_timeout`) | `10` |
//! | `ft_status` | milliseconds between status lines on the console (100..600000) | `1000` |
//! | `ft_generation` | the flag generation the operator expects (0..2^63): with a shared LUN (`iscsi=`) the session's generation is read from the LUN's flag at join and a different configured one is refused; without a LUN it is the session's generation | the LUN's, or `0` without one |
//! | `ft_status_port` | TCP port on `ip=` that answers every connection with one JSON status line and closes (for host tools; `0`: none) | `7701` |
//! | `ft_probe` | backup only: `a.b.c.d`, a host that may open more connections to the log port while the session runs; each is validated like the primary's (framing, CRC, hello) and refused with its reason, never joins (for tests: `ft-hostile-log`) | none |
//! | `ft_test_reset` | backup only, fault injection for tests (`ft-log-reconnect`): reset the log connection after every N entries received, 3 times at most (1..2^32; the primary must reconnect and resend) | none |
//! | `ft_join` | backup only, `on`: this node joins a guest that already runs, as the new backup of the node serving it alone (repair, DESIGN.md §1.9, issue 16): it boots no guest image, connects to `peer`'s repair port (the log port + 2), receives the guest's state and follows from there; give it its own `iscsi_node=` (its FT node id and reservation key) | off |
//! | `ft_test_ack_delay` | backup only, fault injection for tests (`ft-console-failover`): hold everything the backup sends the primary (its acks) this many milliseconds, as a slow network would (1..1000) | none |
use super::iscsi::{parse_endpoint, Endpoint};
use super::parse_ipv4;
use crate::Error;

/// The log port when `peer=` names none.
pub const DEFAULT_LOG_PORT: u16 = 7700;

/// Which side of the pair this hypervisor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the guest for real, records and streams the log, holds outputs.
    Primary,
    /// Replays the primary's log live, acknowledges, discards outputs.
    Backup,
}

/// Settings of an FT pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FtPairConfig {
    pub role: Option<Role>,
    pub peer: Option<Endpoint>,
    pub cluster: u64,
    pub timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub status_ms: u64,
    /// The status port (0: none).
    pub status_port: u16,
    /// The flag generation the operator expects (`None`: the LUN's).
    pub generation: Option<u64>,
    /// Backup: the address allowed to open probe connections.
    pub probe: Option<[u8; 4]>,
    /// Backup, fault injection: reset the log connection after every this
    /// many entries received (3 times at most).
    pub test_reset: Option<u64>,
    /// Backup, fault injection: hold outgoing bytes (acks) this many ms.
    pub test_ack_delay_ms: Option<u64>,
    /// Backup: join a running guest by state transfer (`ft_join=on`).
    pub join: bool,
}

impl FtPairConfig {
    /// The port a serving node takes repair requests on: the log port + 2.
    pub fn repair_port(&self) -> u16 {
        self.peer
            .map_or(DEFAULT_LOG_PORT, |p| p.port)
            .wrapping_add(2)
    }
}

impl Default for FtPairConfig {
    fn default() -> Self {
        FtPairConfig {
            role: None,
            peer: None,
            cluster: 1,
            timeout_ms: 2000,
            heartbeat_ms: 10,
            status_ms: 1000,
            status_port: 7701,
            generation: None,
            probe: None,
            test_reset: None,
            test_ack_delay_ms: None,
            join: false,
        }
    }
}

impl FtPairConfig {
    /// Whether the options form a usable pair configuration: a role needs a
    /// peer; the heartbeat must be shorter than the failure timeout.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.role.is_none() {
            return Ok(());
        }
        if self.peer.is_none() {
            return Err("`role=` needs `peer=a.b.c.d[:port]` (the other hypervisor)");
        }
        if self.heartbeat_ms >= self.timeout_ms {
            return Err("`heartbeat=` must be shorter than `ft_timeout=`");
        }
        if self.peer.is_some_and(|p| p.port == self.status_port) {
            return Err("`ft_status_port=` must differ from the log port");
        }
        if self.probe.is_some() && self.role != Some(Role::Backup) {
            return Err("`ft_probe=` is a backup option");
        }
        if self.test_reset.is_some() && self.role != Some(Role::Backup) {
            return Err("`ft_test_reset=` is a backup option");
        }
        if self.test_ack_delay_ms.is_some() && self.role != Some(Role::Backup) {
            return Err("`ft_test_ack_delay=` is a backup option");
        }
        if self.join && self.role != Some(Role::Backup) {
            return Err("`ft_join=on` is a backup option (the joining node becomes the backup)");
        }
        if self.join && self.generation.is_some() {
            return Err("`ft_join=on` takes the generation the serving node's repair sets on the LUN: drop `ft_generation=`");
        }
        if self
            .peer
            .is_some_and(|p| p.port.wrapping_add(2) == self.status_port)
        {
            return Err("`ft_status_port=` must differ from the repair port (the log port + 2)");
        }
        Ok(())
    }
}

/// Handles one `key=value` if `key` is an FT-pair option: `None` for any
/// other key. `seen` tracks repeats of these keys.
pub fn parse_option(
    cfg: &mut FtPairConfig,
    seen: &mut u32,
    key: &str,
    value: &str,
) -> Option<Result<(), Error>> {
    const KEYS: [&str; 12] = [
        "ft_join",
        "ft_status_port",
        "role",
        "peer",
        "cluster",
        "ft_timeout",
        "heartbeat",
        "ft_status",
        "ft_generation",
        "ft_probe",
        "ft_test_reset",
        "ft_test_ack_delay",
    ];
    let opt = match super::claim(&KEYS, seen, key, value)? {
        Ok(opt) => opt,
        Err(e) => return Some(Err(e)),
    };
    let name = opt.name;
    let bad = |expected: &'static str| opt.bad(expected);
    let number = |lo: u64, hi: u64, expected: &'static str| opt.number(lo, hi, expected);
    let r = (|| {
        match name {
            "role" => {
                cfg.role = Some(match value {
                    "primary" => Role::Primary,
                    "backup" => Role::Backup,
                    _ => return Err(bad("`primary` or `backup`")),
                })
            }
            "peer" => {
                cfg.peer = Some(
                    parse_endpoint(value, Some(DEFAULT_LOG_PORT))
                        .ok_or_else(|| bad("the peer's `a.b.c.d` or `a.b.c.d:port`"))?,
                )
            }
            "cluster" => cfg.cluster = number(0, i64::MAX as u64, "a cluster id 0..2^63")?,
            "ft_timeout" => {
                cfg.timeout_ms = number(100, 600_000, "milliseconds between 100 and 600000")?
            }
            "heartbeat" => {
                cfg.heartbeat_ms = number(1, 60_000, "milliseconds between 1 and 60000")?
            }
            "ft_status" => {
                cfg.status_ms = number(100, 600_000, "milliseconds between 100 and 600000")?
            }
            "ft_status_port" => {
                cfg.status_port = number(0, 65535, "a TCP port 0..65535 (0: none)")? as u16
            }
            "ft_generation" => {
                cfg.generation = Some(number(0, i64::MAX as u64, "a generation 0..2^63")?)
            }
            "ft_probe" => {
                cfg.probe =
                    Some(parse_ipv4(value).ok_or_else(|| bad("the probing host's `a.b.c.d`"))?)
            }
            "ft_test_reset" => {
                cfg.test_reset = Some(number(1, u64::from(u32::MAX), "entries 1..2^32")?)
            }
            "ft_test_ack_delay" => {
                cfg.test_ack_delay_ms = Some(number(1, 1000, "milliseconds 1..1000")?)
            }
            "ft_join" => {
                cfg.join = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("`on` or `off`")),
                }
            }
            _ => unreachable!("every key in KEYS is handled"),
        }
        Ok(())
    })();
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn pair_options() {
        let c = Config::parse(
            "mode=hypervisor role=backup peer=10.0.4.11:7702 cluster=42 ft_timeout=3000 heartbeat=20 ft_status=500",
        )
        .unwrap();
        assert_eq!(
            c.pair,
            FtPairConfig {
                role: Some(Role::Backup),
                peer: Some(Endpoint {
                    addr: [10, 0, 4, 11],
                    port: 7702
                }),
                cluster: 42,
                timeout_ms: 3000,
                heartbeat_ms: 20,
                status_ms: 500,
                status_port: 7701,
                generation: None,
                probe: None,
                test_reset: None,
                test_ack_delay_ms: None,
                join: false,
            }
        );
        assert_eq!(c.pair.validate(), Ok(()));
        let c =
            Config::parse("role=backup peer=10.0.4.11 ft_generation=3 ft_probe=10.0.4.1").unwrap();
        assert_eq!(
            (c.pair.generation, c.pair.probe),
            (Some(3), Some([10, 0, 4, 1]))
        );
        assert_eq!(c.pair.validate(), Ok(()));
        let c = Config::parse("role=primary peer=10.0.4.12 ft_probe=10.0.4.1").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("ft_probe"));
        let c = Config::parse("role=backup peer=10.0.4.11 ft_test_reset=300").unwrap();
        assert_eq!((c.pair.test_reset, c.pair.validate()), (Some(300), Ok(())));
        let c = Config::parse("role=backup peer=10.0.4.11 ft_test_ack_delay=300").unwrap();
        assert_eq!(
            (c.pair.test_ack_delay_ms, c.pair.validate()),
            (Some(300), Ok(()))
        );
        let c = Config::parse("role=primary peer=10.0.4.12 ft_test_ack_delay=300").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("ft_test_ack_delay"));
        assert!(Config::parse("role=backup peer=10.0.4.11 ft_test_ack_delay=0").is_err());
        let c = Config::parse("role=primary peer=10.0.4.12 ft_test_reset=300").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("ft_test_reset"));
        let c = Config::parse("role=primary peer=10.0.4.12").unwrap();
        assert_eq!(c.pair.role, Some(Role::Primary));
        assert_eq!(c.pair.peer.unwrap().port, DEFAULT_LOG_PORT);
        let c = Config::parse("role=backup peer=10.0.4.11:7702 ft_join=on iscsi_node=3").unwrap();
        assert_eq!((c.pair.join, c.pair.validate()), (true, Ok(())));
        assert_eq!((c.pair.repair_port(), c.iscsi.node), (7704, 3));
        let c = Config::parse("role=primary peer=10.0.4.12 ft_join=on").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("ft_join"));
        let c = Config::parse("role=backup peer=10.0.4.11 ft_join=on ft_generation=2").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("ft_generation"));
        let c = Config::parse("role=backup peer=10.0.4.11:7699").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("repair port"));
        assert!(Config::parse("role=backup peer=10.0.4.11 ft_join=yes").is_err());
        assert_eq!(Config::parse("").unwrap().pair, FtPairConfig::default());
        assert_eq!(FtPairConfig::default().validate(), Ok(()));
    }

    /// Issue 15: the two nodes of a pair get two iSCSI node ids (two
    /// initiator names and ISIDs) unless told otherwise.
    #[test]
    fn the_pair_gets_two_iscsi_nodes_by_default() {
        let node = |line: &str| Config::parse(line).unwrap().iscsi.node;
        assert_eq!(node("role=primary peer=10.0.4.12"), 1);
        assert_eq!(node("role=backup peer=10.0.4.11"), 2);
        assert_eq!(node("role=backup peer=10.0.4.11 iscsi_node=7"), 7);
        assert_eq!(node("iscsi_node=3 role=primary peer=10.0.4.12"), 3);
        assert_eq!(node(""), 1, "no pair: node 1");
    }

    #[test]
    fn bad_pair_values_are_named() {
        for (line, option) in [
            ("role=leader", "role"),
            ("peer=10.0.4", "peer"),
            ("peer=10.0.4.1:0", "peer"),
            ("cluster=-1", "cluster"),
            ("cluster=9223372036854775808", "cluster"),
            ("ft_timeout=99", "ft_timeout"),
            ("ft_timeout=600001", "ft_timeout"),
            ("heartbeat=0", "heartbeat"),
            ("ft_status=50", "ft_status"),
            ("ft_generation=-1", "ft_generation"),
            ("ft_probe=10.0.4.1:7700", "ft_probe"),
        ] {
            let text = Config::parse(line).unwrap_err().to_string();
            assert!(
                text.contains(&alloc::format!("`{option}`")),
                "{line}: {text}"
            );
        }
        assert_eq!(
            Config::parse("role=primary role=backup").unwrap_err(),
            Error::DuplicateOption { option: "role" }
        );
    }

    #[test]
    fn pair_needs_a_peer_and_a_short_heartbeat() {
        let c = Config::parse("role=primary").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("peer"));
        let c = Config::parse("role=backup peer=1.2.3.4 heartbeat=2000 ft_timeout=2000").unwrap();
        assert!(c.pair.validate().unwrap_err().contains("heartbeat"));
    }
}
