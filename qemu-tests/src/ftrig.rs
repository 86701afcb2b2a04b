//! The FT pair's test rig, shared by the FT e2e tests (`tests_ft.rs`,
//! `tests_ftkv.rs`, `tests_linuxft.rs`; DESIGN.md §4 "two machines"): one
//! network namespace with a bridge (10.0.4.1/24) and one tap per Bochs;
//! the primary is 10.0.4.11, the backup 10.0.4.12 (log port 7700); with
//! [`with_storage`], istgt in the namespace serves the shared LUN whose
//! flag block (LBA 0) starts at generation 0, owner 0.
use crate::emulator::{BootSpec, Outcome, Run};
use crate::istgt::{self, Istgt};
use crate::tests::E2eTest;
use crate::tests_net::{target_dir, Netns};
use ft::arbitration::{FlagRecord, NodeId};
use std::path::Path;

/// The two sides, in node order (0 = primary).
pub const ROLES: [&str; 2] = ["primary", "backup"];

/// How a test wires its pair: bridge and tap names (distinct per test
/// file, so tests never share an interface name) and the e1000 MACs
/// `52:54:00:12:34:<mac_tag><node+1>`.
pub struct Wiring {
    pub bridge: &'static str,
    pub taps: [&'static str; 2],
    pub mac_tag: u8,
}

/// A namespace with the bridge (10.0.4.1/24) and the two taps on it.
pub fn netns(tag: &str, w: &Wiring) -> Result<Netns, Outcome> {
    let ns = Netns::new(tag).map_err(Outcome::Skip)?;
    ns.bridge(w.bridge, "10.0.4.1/24")
        .and_then(|_| ns.tap(w.taps[0], None, Some(w.bridge)))
        .and_then(|_| ns.tap(w.taps[1], None, Some(w.bridge)))
        .map_err(Outcome::Skip)?;
    Ok(ns)
}

/// istgt at 10.0.4.1:3260 in `ns` serving a `lun_bytes` LUN (files under
/// `build/e2e/<test>.istgt`) with the flag at generation 0, owner 0.
pub fn with_storage(
    root: &Path,
    test: &str,
    ns: &mut Netns,
    lun_bytes: u64,
) -> Result<Istgt, Outcome> {
    with_storage_flag(root, test, ns, lun_bytes, FlagRecord::new(0, NodeId(0)))
}

/// [`with_storage`] with the flag block starting as `flag`.
pub fn with_storage_flag(
    root: &Path,
    test: &str,
    ns: &mut Netns,
    lun_bytes: u64,
    flag: FlagRecord,
) -> Result<Istgt, Outcome> {
    istgt::available().map_err(Outcome::Skip)?;
    let mut target = Istgt::configure(
        &target_dir(root, test),
        "10.0.4.1",
        3260,
        "10.0.4.0/24",
        lun_bytes,
    )
    .map_err(Outcome::Fail)?;
    target
        .write_block(0, &flag.to_block())
        .and_then(|_| target.start(ns))
        .map_err(Outcome::Fail)?;
    Ok(target)
}

/// Boot spec of `node` (0 = primary, 1 = backup) named `name`: the test's
/// command line plus `role=`, `peer=`, `ip=` and `extra_cmdline`; its
/// e1000 on its tap of `w`.
pub fn node_spec(
    t: &E2eTest,
    root: &Path,
    ns: &Netns,
    node: usize,
    name: &str,
    w: &Wiring,
    extra_cmdline: &str,
) -> BootSpec {
    let mut spec = t.boot_spec(root);
    let n = node + 1;
    let peer = if node == 0 {
        "10.0.4.12:7700"
    } else {
        "10.0.4.11:7700"
    };
    spec.name = name.to_string();
    spec.cmdline = format!(
        "{} role={} peer={peer} ip=10.0.4.1{n}/24 {extra_cmdline}",
        t.cmdline, ROLES[node]
    )
    .trim_end()
    .to_string();
    spec.extra = vec![
        "pci: enabled=1, chipset=i440fx, slot1=e1000".to_string(),
        format!(
            "e1000: enabled=1, mac=52:54:00:12:34:{}{n}, ethmod=tuntap, ethdev=/dev/net/tun:{}",
            w.mac_tag, w.taps[node]
        ),
    ];
    spec.netns = Some(ns.name.clone());
    spec
}

/// The primary's and the backup's runs out of `emulator::boot_all`'s
/// results (the first failed boot is the error).
pub fn pair_runs(results: Vec<Result<Run, String>>) -> Result<(Run, Run), String> {
    let mut it = results.into_iter();
    match (it.next(), it.next()) {
        (Some(p), Some(b)) => Ok((p?, b?)),
        _ => Err("two nodes expected".into()),
    }
}

/// `why`, then how each side's run ended and its last serial lines
/// (`names`: the boots' names, their directories under `build/e2e`).
pub fn with_tails(why: String, runs: [&Run; 2], names: [&str; 2]) -> String {
    let mut s = why;
    for (node, run) in runs.into_iter().enumerate() {
        s.push_str(&format!(
            "\n---- {}: {}; last serial lines (build/e2e/{}/serial.txt) ----\n{}",
            ROLES[node],
            run.ended,
            names[node],
            crate::tests::tail(&run.serial, 20)
        ));
    }
    s
}
