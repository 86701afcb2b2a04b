//! `qemu-tests hostile-log <addr:port> <cluster> <guest-id-hex> <generation> <machine-hex>`:
//! the attacker of `ft-hostile-log`, run inside the pair's namespace from
//! the backup's `ft_probe=` address. One TCP connection per case to the
//! backup's log port; each sends one kind of bad input and must be reset
//! by the backup (which logs the reason). Prints one `case NAME: ...`
//! line per case; fails if a connection was not reset in time.
use ft::log::{encode_record, ExecPoint, LogEntry, MachineId, PROTOCOL_VERSION};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The cases in the order they are sent: name and bytes; `true` if the
/// sender half-closes after the bytes (the record stays incomplete).
pub fn cases(
    cluster: u64,
    guest_id: [u8; 16],
    generation: u64,
    machine: MachineId,
) -> Vec<(&'static str, Vec<u8>, bool)> {
    let hello_on = |generation, machine| {
        let mut b = Vec::new();
        encode_record(
            0,
            &LogEntry::Hello {
                cluster_id: cluster,
                generation,
                guest_id,
                protocol_version: PROTOCOL_VERSION,
                machine,
            },
            &mut b,
        )
        .expect("a hello encodes");
        b
    };
    let hello = |generation| hello_on(generation, machine);
    // The same guest on a machine with twice the memory.
    let bigger = MachineId {
        guest_mem: machine.guest_mem * 2,
        ..machine
    };
    let mut bad_crc = hello(generation);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x5A;
    let mut heartbeat = Vec::new();
    encode_record(
        1,
        &LogEntry::Heartbeat {
            at: ExecPoint {
                counter: 1,
                rip: 0x1000,
                rcx: 0,
            },
            guest_time_ns: 1,
            acked: 0,
        },
        &mut heartbeat,
    )
    .expect("a heartbeat encodes");
    let truncated = hello(generation)[..20].to_vec();
    vec![
        ("garbage", b"GET / HTTP/1.0\r\n\r\n".to_vec(), false),
        ("truncated", truncated, true),
        ("bad-crc", bad_crc, false),
        ("old-generation", hello(generation.wrapping_sub(1)), false),
        ("other-machine", hello_on(generation, bigger), false),
        ("entry-before-hello", heartbeat, false),
        ("second-primary", hello(generation), false),
    ]
}

fn one(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Result<String, String> {
    let start = Instant::now();
    // The backup reopens its probe listener at its next poll after a
    // reset: a connection refused just before that is retried.
    let mut tries = 0;
    let mut s = loop {
        tries += 1;
        match TcpStream::connect_timeout(&addr, Duration::from_secs(30)) {
            Ok(s) => break s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && tries < 50 => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(format!("connect (try {tries}): {e}")),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(bytes).map_err(|e| format!("send: {e}"))?;
    if half_close {
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
    }
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(format!("closed after {} ms", start.elapsed().as_millis())),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return Ok(format!("reset after {} ms", start.elapsed().as_millis()))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err("not reset within 60 s".into())
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// The subcommand: every case in turn.
pub fn main(args: &[String]) -> Result<String, String> {
    let usage =
        "usage: hostile-log <addr:port> <cluster> <guest-id-hex> <generation> <machine-hex>";
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).ok_or(usage)?;
    let cluster: u64 = args.get(2).and_then(|a| a.parse().ok()).ok_or(usage)?;
    let hex = args.get(3).ok_or(usage)?;
    let generation: u64 = args.get(4).and_then(|a| a.parse().ok()).ok_or(usage)?;
    let mut guest_id = [0u8; 16];
    if hex.len() != 32 {
        return Err(usage.into());
    }
    for (i, b) in guest_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| usage)?;
    }
    let mhex = args.get(5).ok_or(usage)?;
    if mhex.len() != 2 * MachineId::LEN {
        return Err(usage.into());
    }
    let mut m = [0u8; MachineId::LEN];
    for (i, b) in m.iter_mut().enumerate() {
        *b = u8::from_str_radix(&mhex[2 * i..2 * i + 2], 16).map_err(|_| usage)?;
    }
    let machine = MachineId::from_bytes(&m);
    let mut out = Vec::new();
    for (name, bytes, half_close) in cases(cluster, guest_id, generation, machine) {
        match one(addr, &bytes, half_close) {
            Ok(how) => out.push(format!("case {name}: {} bytes sent, {how}", bytes.len())),
            Err(e) => return Err(format!("{}; case {name}: {e}", out.join("; "))),
        }
    }
    Ok(out.join("; "))
}
