//! Guest I/O e2e tests (issue 6): the test guest's virtio drivers against
//! ftvisor's virtio-mmio devices in Bochs (`kernel/src/guestio`).
//!
//! - `guest-blk`: virtio-blk writes, flushes and reads back 2 MiB through
//!   the hypervisor's RAM disk (`disk=ram:8M`), verified byte for byte by
//!   the guest; the hypervisor's own counters must agree; MB/s in the note.
//! - `guest-net-loop`: virtio-net frames come back through the loopback
//!   backend (`guest_net=loopback`), verified by the guest.
//! - `guest-net-bad-descriptors`: a hostile guest posts malformed
//!   virtqueues on both devices; each device enters `DEVICE_NEEDS_RESET`
//!   with the hypervisor naming the error, the hypervisor survives, and the
//!   devices work again after the guest resets them.
use crate::emulator::{Emulator, Run};
use crate::tests::E2eTest;
use std::time::Duration;

const GUEST: &str = "build/testguest.elf64";

fn bochs(
    name: &'static str,
    about: &'static str,
    cmdline: &'static str,
    guest: &'static str,
) -> E2eTest {
    E2eTest {
        cmdline,
        modules: vec![(GUEST, guest)],
        timeout: Duration::from_secs(240),
        forbid: vec!["PANIC", "EXCEPTION", "guest stopped", "FAILED"],
        ..E2eTest::new(name, Emulator::Bochs, about)
    }
}

pub fn tests() -> Vec<E2eTest> {
    vec![
        E2eTest {
            expect: vec![
                "clone: the machine went through a state transfer",
                "guest: blk: wrote 2048 KiB",
                "4096 sectors verified",
                "guest: blk: ok",
                "hypervisor: guest exited with code 0",
            ],
            check: Some(check_clone_mid_io),
            ..bochs(
                "state-transfer-clone-io",
                "a repair's state transfer in one boot in the middle of guest disk I/O (issue 16): the virtio-blk transport, queues and requests in flight go through ft::state with RAM, vCPU, LAPIC and UART; the guest's 2 MiB write-flush-read-verify completes",
                "mode=hypervisor disk=ram:8M ft_test_clone=17 ft_test_clone_link=1000000",
                "test=blk mb=2",
            )
        },
        E2eTest {
            expect: vec![
                "guestio: virtio-blk at 0xfeb00000 vector 0x50: RAM disk, 8192 KiB",
                "guestio: virtio-net at 0xfeb01000 vector 0x51: no wire",
                "guest: blk: virtio-mmio layout: base 0xfeb00000, 2 slots, stride 0x1000, vector 0x50",
                "guest: blk: virtio-blk at 0xfeb00000 vector 0x50: capacity 16384 sectors (8192 KiB), id \"ftvisor-disk0\"",
                "guest: blk: wrote 2048 KiB",
                "4096 sectors verified",
                "guest: blk: read past the end (sector 16384) -> IOERR",
                "guest: blk: ok",
                "hypervisor: guest exited with code 0",
                "guestio: blk requests=",
            ],
            check: Some(check_blk),
            ..bochs(
                "guest-blk",
                "guest virtio-blk: 2 MiB written, flushed, read back and verified through the hypervisor's RAM disk (async completions, LAPIC interrupts)",
                "mode=hypervisor disk=ram:8M",
                "test=blk mb=2",
            )
        },
        E2eTest {
            expect: vec![
                "guestio: virtio-net at 0xfeb01000 vector 0x51: loopback",
                "guest: net-loop: virtio-net at 0xfeb01000 vector 0x51: mac [52, 54, 00, f7, 00, 01]",
                "guest: net-loop: 64 frames (",
                "guest: net-loop: ok",
                "hypervisor: guest exited with code 0",
                "wire sent=64 delivered=64 dropped=0",
            ],
            check: Some(check_net_loop),
            ..bochs(
                "guest-net-loop",
                "guest virtio-net: 64 frames (60..1514 bytes) sent and received back through the loopback backend, verified",
                "mode=hypervisor guest_net=loopback",
                "test=net-loop",
            )
        },
        E2eTest {
            expect: vec![
                "guestio: virtio-blk at 0xfeb00000: DEVICE_NEEDS_RESET (driver error #1: Some(ChainTooLong))",
                "guest: bad-descriptors: virtio-blk: descriptor loop (0 -> 1 -> 0) -> DEVICE_NEEDS_RESET",
                "guestio: virtio-blk at 0xfeb00000: DEVICE_NEEDS_RESET (driver error #7: Some(BadLayout))",
                "guestio: virtio-net at 0xfeb01000: DEVICE_NEEDS_RESET (driver error #1: Some(ChainTooLong))",
                "guest: bad-descriptors: virtio-net: descriptor table outside RAM -> DEVICE_NEEDS_RESET",
                "guest: bad-descriptors: virtio-blk works after reset",
                "guest: bad-descriptors: virtio-net works after reset (frame sent and looped back)",
                "guest: bad-descriptors: ok",
                "hypervisor: guest exited with code 0",
            ],
            check: Some(check_bad_descriptors),
            ..bochs(
                "guest-net-bad-descriptors",
                "hostile guest posts malformed virtqueues (loop, address outside RAM, huge length, bad avail/head index, misaligned/outside ring) on virtio-blk and virtio-net: each gets DEVICE_NEEDS_RESET, the hypervisor reports and survives, reset devices work again",
                "mode=hypervisor guest_net=loopback",
                "test=bad-descriptors",
            )
        },
    ]
}

/// The text after `key` up to the next space or `|`.
fn field<'a>(line: &'a str, key: &str) -> Result<&'a str, String> {
    let at = line
        .find(key)
        .ok_or_else(|| format!("`{key}` missing in `{line}`"))?;
    let rest = &line[at + key.len()..];
    Ok(rest.split([' ', '|', ';', ',']).next().unwrap_or(""))
}

/// The number right after `key` (trailing units such as `KiB` ignored).
fn num(line: &str, key: &str) -> Result<u64, String> {
    let v = field(line, key)?;
    let digits = v.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
    digits
        .parse()
        .map_err(|_| format!("`{key}{v}` is not a number in `{line}`"))
}

fn line<'a>(serial: &'a str, key: &str) -> Result<&'a str, String> {
    serial
        .lines()
        .find(|l| l.contains(key))
        .ok_or_else(|| format!("no `{key}` line on serial"))
}

/// The hypervisor's counters agree with what the guest did: 32 writes and
/// 32 reads of 64 KiB, one flush, plus GET_ID and the rejected read past
/// the end (the device refuses that one itself).
/// `state-transfer-clone-io`: the clone happened before the guest's
/// verification finished (so the restored virtio state carried it), and
/// the hypervisor's counters are those of an undisturbed run.
fn check_clone_mid_io(run: &Run) -> Result<String, String> {
    let clone = run
        .serial
        .find("clone: the machine went through")
        .ok_or("no clone")?;
    let ok = run.serial.find("guest: blk: ok").ok_or("no `blk: ok`")?;
    if clone > ok {
        return Err("the clone came after the guest's I/O: it proves nothing about virtio".into());
    }
    let started = run
        .serial
        .find("guest: blk: virtio-blk at")
        .ok_or("no blk start")?;
    if clone < started {
        return Err("the clone came before the guest touched its disk".into());
    }
    let note = check_blk(run)?;
    Ok(format!(
        "clone between the disk's setup and `blk: ok`; {note}"
    ))
}

fn check_blk(run: &Run) -> Result<String, String> {
    let s = line(&run.serial, "guestio: blk requests=")?;
    let got = (
        num(s, "disk reads=")?,
        num(s, "writes=")?,
        num(s, "flushes=")?,
        num(s, "written=")?,
        num(s, "needs_reset=")?,
    );
    if got != (32, 32, 1, 2048, 0) {
        return Err(format!(
            "hypervisor counters (reads, writes, flushes, KiB written, needs_reset) = {got:?}, want (32, 32, 1, 2048, 0): {s}"
        ));
    }
    if num(s, "device-dirtied pages=")? == 0 {
        return Err("the device wrote guest RAM but no page is marked dirty".into());
    }
    let g = line(&run.serial, "guest: blk: wrote ")?;
    let rate = |after: &str| -> Result<String, String> {
        let i = g
            .find(after)
            .ok_or_else(|| format!("no `{after}` in `{g}`"))?;
        let tail = &g[i + after.len()..];
        let open = tail.find('(').ok_or("no rate")?;
        let close = tail.find(')').ok_or("no rate")?;
        Ok(tail[open + 1..close].to_string())
    };
    let interrupts = field(g, "verified; ")?;
    Ok(format!(
        "(guest time: write {}, read {}; {interrupts} completion interrupts)",
        rate("in ")?,
        rate("read back ")?
    ))
}

fn check_net_loop(run: &Run) -> Result<String, String> {
    let s = line(&run.serial, "guestio: blk requests=")?;
    let (tx, rx, drop) = (num(s, "net tx=")?, num(s, "rx=")?, num(s, "rx_no_buffer=")?);
    if (tx, rx, drop) != (64, 64, 0) {
        return Err(format!(
            "virtio-net counters tx={tx} rx={rx} rx_no_buffer={drop}, want 64/64/0"
        ));
    }
    let g = line(&run.serial, "guest: net-loop: 64 frames")?;
    let rate = g
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map_or("?", |(r, _)| r);
    Ok(format!("(64 frames looped back, {rate} guest time)"))
}

/// Every malformed queue produced exactly one `DEVICE_NEEDS_RESET` report
/// naming the right error, in order, on each device.
fn check_bad_descriptors(run: &Run) -> Result<String, String> {
    let want = [
        "ChainTooLong",
        "OutOfRange(0)",
        "OutOfRange(0)",
        "BadAvailIndex { avail: 200, next: 0 }",
        "BadDescIndex(77)",
        "BadLayout",
        "BadLayout",
    ];
    let mut n = 0;
    for dev in ["virtio-blk at 0xfeb00000", "virtio-net at 0xfeb01000"] {
        let reports: Vec<&str> = run
            .serial
            .lines()
            .filter(|l| l.starts_with(&format!("guestio: {dev}: DEVICE_NEEDS_RESET")))
            .collect();
        if reports.len() != want.len() {
            return Err(format!(
                "{dev}: {} DEVICE_NEEDS_RESET reports, want {}",
                reports.len(),
                want.len()
            ));
        }
        for (i, (r, w)) in reports.iter().zip(want).enumerate() {
            let expect = format!("driver error #{}: Some({w}))", i + 1);
            if !r.contains(&expect) {
                return Err(format!("{dev}: report {} is `{r}`, want `{expect}`", i + 1));
            }
        }
        n += reports.len();
    }
    let s = line(&run.serial, "guestio: blk requests=")?;
    if !s.contains("needs_reset=7") {
        return Err(format!("summary does not count 7 resets per device: {s}"));
    }
    Ok(format!(
        "({n} malformed queues reported, devices recovered)"
    ))
}
