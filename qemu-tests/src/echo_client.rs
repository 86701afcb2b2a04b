//! The host side of the `net-echo-*` tests: waits for the hypervisor's
//! echo service to announce itself on serial, then talks to it over TCP
//! from inside the test's network namespace (`qemu-tests echo-client`),
//! measuring round-trip time and the throughput of a 10 MiB byte-exact
//! echo, and finally sends `quit` (the hypervisor then exits with code 0).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of the bulk echo.
const BULK_BYTES: usize = 10 << 20;

/// Serial line the kernel prints once it serves (kernel/src/net/mod.rs).
pub const READY: &str = "net: echo listening";

/// Waits until `serial` holds [`READY`], or the emulator reported an exit.
pub fn wait_ready(serial: &Path, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains(READY) {
            return Ok(());
        }
        if text.contains("FTVISOR-EXIT") {
            return Err("the hypervisor exited before serving echo".into());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no `{READY}` on serial within {}s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_until(s: &mut TcpStream, want: &[u8], got: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 65536];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("reading echo: {e} (have {} bytes)", got.len()))?;
        if n == 0 {
            return Err(format!(
                "connection closed before `{}` (have {:?})",
                String::from_utf8_lossy(want).trim(),
                String::from_utf8_lossy(&got[got.len().saturating_sub(80)..])
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// The whole conversation; returns a note with the measured figures.
pub fn converse(addr: SocketAddr) -> Result<String, String> {
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > Duration::from_secs(20) => {
                return Err(format!("connect {addr}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let w = |s: &mut TcpStream, b: &[u8]| s.write_all(b).map_err(|e| format!("send: {e}"));

    // First line: proves the path (ARP, handshake, data both ways).
    let mut got = Vec::new();
    w(&mut s, b"hello ftvisor\n")?;
    read_until(&mut s, b"hello ftvisor\n", &mut got)?;
    if got != b"hello ftvisor\n" {
        return Err(format!(
            "echo mismatch: {:?}",
            String::from_utf8_lossy(&got)
        ));
    }

    // Round trips of one short line each.
    let mut rtts = Vec::new();
    for i in 0..50 {
        let line = format!("line {i:04} 0123456789abcdef\n");
        let t = Instant::now();
        w(&mut s, line.as_bytes())?;
        let mut got = Vec::new();
        read_until(&mut s, line.as_bytes(), &mut got)?;
        if got != line.as_bytes() {
            return Err(format!(
                "echo of line {i} mismatched: {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];

    // Bulk: 10 MiB written by a second thread while this one reads it back.
    let total = BULK_BYTES;
    // 64-byte lines, so the echo service's command watcher stays in step.
    let data: Vec<u8> = (0..total)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (i % 23) as u8
            }
        })
        .collect();
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let sent = data.clone();
    let t = Instant::now();
    let h = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; total];
    s.read_exact(&mut back)
        .map_err(|e| format!("bulk echo: {e}"))?;
    let bulk = t.elapsed();
    h.join()
        .map_err(|_| "writer thread panicked".to_string())?
        .map_err(|e| format!("bulk send: {e}"))?;
    if back != data {
        return Err("bulk echo differs from what was sent".into());
    }

    let mut got = Vec::new();
    w(&mut s, b"stats\n")?;
    read_until(&mut s, b"\nstats: ", &mut got)?;
    read_until(&mut s, b"hw_missed=", &mut got)?;
    let mut got = Vec::new();
    w(&mut s, b"quit\n")?;
    read_until(&mut s, b"bye\n", &mut got)?;
    Ok(format!(
        "(echo RTT median {:.2} ms, min {:.2} ms over 50 lines; {} MiB echoed byte-exact in {:.2}s = {:.2} MB/s each way)",
        median.as_secs_f64() * 1e3,
        rtts[0].as_secs_f64() * 1e3,
        BULK_BYTES >> 20,
        bulk.as_secs_f64(),
        BULK_BYTES as f64 / 1e6 / bulk.as_secs_f64()
    ))
}
