//! `guest-kv` (issue 6): the test guest's key-value service (`test=kv`,
//! smoltcp on its virtio-net, table on its virtio-blk) under ftvisor in
//! Bochs, with `guest_net=bridge` (the guest's frames on the hypervisor's
//! e1000) and `disk=iscsi` (the guest's disk on the shared LUN from block
//! 8 on, through the hypervisor's own smoltcp on the same NIC).
//!
//! Rig: a private netns with the Bochs e1000 tap holding 10.0.2.2/24,
//! istgt on 10.0.2.2:3260 (file-backed LUN); the hypervisor is 10.0.2.15,
//! the guest 10.0.2.20. Boot 1: the client (`kv-client`, run inside the
//! netns) sends 1,000 SETs then 1,000 GETs, every reply checked, then
//! `SHUTDOWN`. Boot 2 (a fresh Bochs, same LUN): 1,000 GETs must return
//! the values of boot 1 (reloaded from the LUN), plus a key never set ->
//! `NOTFOUND`.
use crate::emulator::{Emulator, Interaction, Outcome};
use crate::istgt::{self, Istgt};
use crate::tests::E2eTest;
use crate::tests_net::{nic_args, target_dir, Netns};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const TAP: &str = "tapftv0";
const MAC: &str = "52:54:00:12:34:56";
const GUEST_ADDR: &str = "10.0.2.20:7000";
/// Keys per boot.
pub const KEYS: usize = 1000;

pub fn tests() -> Vec<E2eTest> {
    vec![E2eTest {
        cmdline: "mode=hypervisor guest_net=bridge disk=iscsi nic=e1000 ip=10.0.2.15/24 gw=none \
                  iscsi=10.0.2.2:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
        modules: vec![("build/testguest.elf64", "test=kv ip=10.0.2.20/24")],
        expect: vec![
            "guestio: hypervisor NIC e1000 shared",
            "guestio: virtio-blk at 0xfeb00000 vector 0x50: iSCSI",
            "guestio: virtio-net at 0xfeb01000 vector 0x51: bridge",
            "guest: kv: reloading",
            "guest: kv: reloaded ",
            "guest: kv: listening on 10.0.2.20:7000",
            "guest: kv: served",
            "guest: kv: ok",
            "hypervisor: guest exited with code 0",
        ],
        forbid: vec!["PANIC", "EXCEPTION", "guest stopped", "FAILED"],
        timeout: Duration::from_secs(600),
        custom: Some(run_kv),
        ..E2eTest::new(
            "guest-kv",
            Emulator::Bochs,
            "guest KV service (smoltcp on virtio-net bridged to the hypervisor's e1000, table on virtio-blk over the shared iSCSI LUN): 1,000 SETs + GETs from a netns, all correct; after a reboot (fresh Bochs, same LUN) all 1,000 keys read back; req/s and disk MB/s",
        )
    }]
}

pub(crate) fn value(i: usize, salt: u64) -> String {
    format!(
        "v{i}-{:016x}",
        (i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

/// Waits for `needle` on serial; returns when it appeared.
fn wait_line(serial: &Path, needle: &str, timeout: Duration) -> Result<Instant, String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains(needle) {
            return Ok(Instant::now());
        }
        if text.contains("FTVISOR-EXIT") {
            return Err(format!("the hypervisor exited before `{needle}`"));
        }
        if start.elapsed() > timeout {
            return Err(format!("no `{needle}` within {}s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kv-client <addr> fill|check <salt>`: the client, run inside the netns.
/// Prints one summary line; exit status 1 on the first wrong reply.
pub fn client_main(args: &[String]) -> Result<String, String> {
    let (Some(addr), Some(phase), Some(salt)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return Err("usage: kv-client <ip:port> fill|check <salt>".into());
    };
    let stream = {
        let t0 = Instant::now();
        loop {
            match TcpStream::connect_timeout(
                &addr.parse().map_err(|e| format!("{e}"))?,
                Duration::from_secs(5),
            ) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(120) => {
                    return Err(format!("connect {addr}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    };
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let mut ask = |line: &str| -> Result<String, String> {
        w.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("send `{line}`: {e}"))?;
        let mut got = String::new();
        r.read_line(&mut got)
            .map_err(|e| format!("reply to `{line}`: {e}"))?;
        Ok(got.trim_end().to_string())
    };
    let mut out = String::new();
    if phase == "fill" {
        let t = Instant::now();
        for i in 0..KEYS {
            let got = ask(&format!("SET k{i:04} {}", value(i, salt)))?;
            if got != "OK" {
                return Err(format!("SET k{i:04}: `{got}`"));
            }
        }
        let s = t.elapsed().as_secs_f64();
        out += &format!(
            "sets={KEYS} in {s:.1}s ({:.1} req/s, {:.3} MB/s of 512-byte slots written+flushed); ",
            KEYS as f64 / s,
            (KEYS * 512) as f64 / s / 1e6
        );
    }
    let t = Instant::now();
    for i in 0..KEYS {
        let got = ask(&format!("GET k{i:04}"))?;
        if got != value(i, salt) {
            return Err(format!(
                "GET k{i:04}: `{got}`, expected `{}`",
                value(i, salt)
            ));
        }
    }
    let s = t.elapsed().as_secs_f64();
    out += &format!("gets={KEYS} in {s:.1}s ({:.1} req/s)", KEYS as f64 / s);
    let got = ask("GET never-set")?;
    if got != "NOTFOUND" {
        return Err(format!("GET never-set: `{got}`"));
    }
    let got = ask("SHUTDOWN")?;
    if got != "BYE" {
        return Err(format!("SHUTDOWN: `{got}`"));
    }
    Ok(out)
}

fn run_kv(t: &E2eTest, root: &Path) -> Outcome {
    if let Err(why) = istgt::available() {
        return Outcome::Skip(why);
    }
    let mut ns = match Netns::new("kv") {
        Ok(ns) => ns,
        Err(why) => return Outcome::Skip(why),
    };
    if let Err(e) = ns.tap(TAP, Some("10.0.2.2/24"), None) {
        return Outcome::Skip(e);
    }
    let mut target = match Istgt::configure(
        &target_dir(root, t.name),
        "10.0.2.2",
        3260,
        "10.0.2.0/24",
        16 << 20,
    ) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    if let Err(e) = target.start(&mut ns) {
        return Outcome::Fail(e);
    }
    let salt = std::process::id() as u64;
    let mut notes = Vec::new();
    for (boot, phase) in [(1, "fill"), (2, "check")] {
        let mut spec = t.boot_spec(root);
        spec.name = format!("{}-boot{boot}", t.name);
        spec.extra = nic_args(t.emulator, "e1000", TAP, MAC);
        spec.netns = Some(ns.name.clone());
        let name = ns.name.clone();
        let timeout = t.timeout;
        let interact: Interaction = Box::new(move |serial: &Path| {
            let r0 = wait_line(serial, "kv: reloading", timeout)?;
            let r1 = wait_line(serial, "kv: listening", timeout)?;
            let reload = (r1 - r0).as_secs_f64();
            let res = Netns::helper(&name, &["kv-client", GUEST_ADDR, phase, &salt.to_string()])?;
            Ok(format!(
                "{res}; startup reload of 2 MiB from the LUN {reload:.1}s wall ({:.3} MB/s)",
                2.097152 / reload
            ))
        });
        spec.interact = Some(interact);
        let run = match t.emulator.boot(root, spec) {
            Ok(run) => run,
            Err(e) => return Outcome::Fail(e),
        };
        match t.verdict(&run) {
            Outcome::Pass(note) => notes.push(format!("boot {boot} ({phase}): {note}")),
            Outcome::Fail(why) => return Outcome::Fail(format!("boot {boot}: {why}")),
            Outcome::Skip(why) => return Outcome::Skip(why),
        }
    }
    target.kill(&mut ns);
    Outcome::Pass(notes.join("; "))
}
