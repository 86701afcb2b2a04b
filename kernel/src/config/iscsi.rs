//! The `iscsi*` command-line options of `mode=iscsi` (the hypervisor's
//! iSCSI initiator, RFC 7143, checked against a real target).
//!
//! | option | values | default |
//! |---|---|---|
//! | `iscsi` | the target portal `a.b.c.d[:port]` | none (required by `mode=iscsi`) |
//! | `iscsi_target` | the target's iSCSI name (`iqn.`/`eui.`/`naa.`, RFC 7143 §4.2.7) | none (required) |
//! | `iscsi_lun` | logical unit number 0..16383 | `0` |
//! | `iscsi_op` | `rw` (write, read back, verify, MB/s), `caw` (test-and-set on one node: win, then a stale attempt miscompares), `caw-race` (`iscsi_rounds` synchronised test-and-set rounds against other nodes), `loss` (write through a target outage; verify nothing acknowledged was lost) | `rw` |
//! | `iscsi_mib` | MiB written by `rw`/`loss` (1..4096) | `64` |
//! | `iscsi_node` | this node's id: initiator name suffix, ISID, flag owner (1..65535) | `1`; in an FT pair (`role=`) `1` for the primary, `2` for the backup |
//! | `iscsi_rounds` | rounds of `caw-race` (1..100000) | `100` |
//! | `iscsi_sync` | `caw-race`'s round coordinator `a.b.c.d:port` | none |
use super::{parse_decimal, parse_ipv4};
use crate::Error;
use alloc::string::{String, ToString};

/// The well-known iSCSI port (RFC 7143 §13.13 lists 3260 for TCP).
pub const DEFAULT_PORT: u16 = 3260;

/// What `mode=iscsi` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IscsiOp {
    ReadWrite,
    CompareAndWrite,
    CawRace,
    TargetLoss,
}

/// An IPv4 endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u8; 4],
    pub port: u16,
}

/// Settings of `mode=iscsi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiConfig {
    pub portal: Option<Endpoint>,
    pub target: String,
    pub lun: u64,
    pub op: IscsiOp,
    pub mib: u32,
    pub node: u16,
    pub rounds: u32,
    pub sync: Option<Endpoint>,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        IscsiConfig {
            portal: None,
            target: String::new(),
            lun: 0,
            op: IscsiOp::ReadWrite,
            mib: 64,
            node: 1,
            rounds: 100,
            sync: None,
        }
    }
}

/// `a.b.c.d` or `a.b.c.d:port` (port 1..65535).
pub fn parse_endpoint(s: &str, default_port: Option<u16>) -> Option<Endpoint> {
    let (a, port) = match s.split_once(':') {
        Some((a, p)) => {
            let port = u16::try_from(parse_decimal(p)?).ok()?;
            (a, port)
        }
        None => (s, default_port?),
    };
    if port == 0 {
        return None;
    }
    Some(Endpoint {
        addr: parse_ipv4(a)?,
        port,
    })
}

/// An iSCSI name as RFC 7143 §4.2.7 / RFC 3722 allow it after
/// normalisation: `iqn.`, `eui.` or `naa.` followed by lowercase letters,
/// digits, `.`, `-`, `:`; at most 223 bytes.
pub fn valid_iscsi_name(s: &str) -> bool {
    let prefixed = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| s.len() > p.len() && s.starts_with(p));
    prefixed
        && s.len() <= 223
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b))
}

/// The options of this module, in the order of the `seen` bits.
const KEYS: [&str; 8] = [
    "iscsi",
    "iscsi_target",
    "iscsi_lun",
    "iscsi_op",
    "iscsi_mib",
    "iscsi_node",
    "iscsi_rounds",
    "iscsi_sync",
];

/// Whether `iscsi_node=` was given (`seen`: the bits [`parse_option`] set).
pub fn node_given(seen: u32) -> bool {
    seen & (1 << 5) != 0
}

/// Handles one `key=value` if `key` is an `iscsi*` option: `None` for any
/// other key. `seen` tracks repeats of these keys.
pub fn parse_option(
    cfg: &mut IscsiConfig,
    seen: &mut u32,
    key: &str,
    value: &str,
) -> Option<Result<(), Error>> {
    let opt = match super::claim(&KEYS, seen, key, value)? {
        Ok(opt) => opt,
        Err(e) => return Some(Err(e)),
    };
    let name = opt.name;
    let bad = |expected: &'static str| opt.bad(expected);
    let number = |lo: u64, hi: u64, expected: &'static str| opt.number(lo, hi, expected);
    let r = (|| {
        match name {
            "iscsi" => {
                cfg.portal = Some(
                    parse_endpoint(value, Some(DEFAULT_PORT))
                        .ok_or_else(|| bad("a portal `a.b.c.d` or `a.b.c.d:port`"))?,
                )
            }
            "iscsi_target" => {
                if !valid_iscsi_name(value) {
                    return Err(bad(
                        "an iSCSI name, e.g. `iqn.2024-01.org.example:disk1` (lowercase, at most 223 bytes)",
                    ));
                }
                cfg.target = value.to_string();
            }
            "iscsi_lun" => cfg.lun = number(0, 16383, "a LUN between 0 and 16383")?,
            "iscsi_op" => {
                cfg.op = match value {
                    "rw" => IscsiOp::ReadWrite,
                    "caw" => IscsiOp::CompareAndWrite,
                    "caw-race" => IscsiOp::CawRace,
                    "loss" => IscsiOp::TargetLoss,
                    _ => return Err(bad("`rw`, `caw`, `caw-race` or `loss`")),
                }
            }
            "iscsi_mib" => cfg.mib = number(1, 4096, "MiB between 1 and 4096")? as u32,
            "iscsi_node" => cfg.node = number(1, 65535, "a node id between 1 and 65535")? as u16,
            "iscsi_rounds" => {
                cfg.rounds = number(1, 100_000, "rounds between 1 and 100000")? as u32
            }
            "iscsi_sync" => {
                cfg.sync = Some(
                    parse_endpoint(value, None)
                        .ok_or_else(|| bad("a coordinator `a.b.c.d:port`"))?,
                )
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
    use crate::config::{Config, Mode};

    #[test]
    fn iscsi_options() {
        let c = Config::parse(
            "mode=iscsi ip=10.0.3.11/24 iscsi=10.0.3.1:3261 iscsi_target=iqn.2024-01.test.ftvisor:disk1 \
             iscsi_lun=1 iscsi_op=caw-race iscsi_mib=8 iscsi_node=2 iscsi_rounds=100 iscsi_sync=10.0.3.1:7000",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Iscsi);
        assert_eq!(
            c.iscsi,
            IscsiConfig {
                portal: Some(Endpoint {
                    addr: [10, 0, 3, 1],
                    port: 3261
                }),
                target: "iqn.2024-01.test.ftvisor:disk1".into(),
                lun: 1,
                op: IscsiOp::CawRace,
                mib: 8,
                node: 2,
                rounds: 100,
                sync: Some(Endpoint {
                    addr: [10, 0, 3, 1],
                    port: 7000
                }),
            }
        );
        let c = Config::parse("iscsi=10.0.2.2 iscsi_op=loss").unwrap();
        assert_eq!(c.iscsi.portal.unwrap().port, DEFAULT_PORT);
        assert_eq!(c.iscsi.op, IscsiOp::TargetLoss);
        assert_eq!(
            Config::parse("iscsi_op=rw").unwrap().iscsi.op,
            IscsiOp::ReadWrite
        );
        assert_eq!(
            Config::parse("iscsi_op=caw").unwrap().iscsi.op,
            IscsiOp::CompareAndWrite
        );
        assert_eq!(Config::parse("").unwrap().iscsi, IscsiConfig::default());
    }

    #[test]
    fn bad_iscsi_values_are_named() {
        for (line, option) in [
            ("iscsi=10.0.2", "iscsi"),
            ("iscsi=10.0.2.2:0", "iscsi"),
            ("iscsi=10.0.2.2:65536", "iscsi"),
            ("iscsi=10.0.2.2:", "iscsi"),
            ("iscsi_target=disk1", "iscsi_target"),
            ("iscsi_target=iqn.", "iscsi_target"),
            ("iscsi_target=iqn.2024-01.Test:disk", "iscsi_target"),
            ("iscsi_target=iqn.a_b", "iscsi_target"),
            ("iscsi_lun=16384", "iscsi_lun"),
            ("iscsi_lun=-1", "iscsi_lun"),
            ("iscsi_op=read", "iscsi_op"),
            ("iscsi_mib=0", "iscsi_mib"),
            ("iscsi_mib=4097", "iscsi_mib"),
            ("iscsi_node=0", "iscsi_node"),
            ("iscsi_node=65536", "iscsi_node"),
            ("iscsi_rounds=0", "iscsi_rounds"),
            ("iscsi_sync=10.0.3.1", "iscsi_sync"),
        ] {
            let e = Config::parse(line).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&alloc::format!("`{option}`")),
                "{line}: {text}"
            );
            let value = line.split_once('=').unwrap().1;
            assert!(
                text.contains(&alloc::format!("`{value}`")),
                "{line}: {text}"
            );
        }
        assert_eq!(
            Config::parse("iscsi_op=rw iscsi_op=caw").unwrap_err(),
            Error::DuplicateOption { option: "iscsi_op" }
        );
        let long = alloc::format!("iscsi_target=iqn.{}", "a".repeat(220));
        assert!(Config::parse(&long).is_err());
        let ok = alloc::format!("iscsi_target=iqn.{}", "a".repeat(219));
        assert!(Config::parse(&ok).is_ok());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("1.2.3.4:5", None),
            Some(Endpoint {
                addr: [1, 2, 3, 4],
                port: 5
            })
        );
        assert_eq!(parse_endpoint("1.2.3.4", None), None);
        assert_eq!(parse_endpoint("1.2.3.4:+5", None), None);
        assert_eq!(parse_endpoint("1.2.3.4:5:6", None), None);
    }
}
