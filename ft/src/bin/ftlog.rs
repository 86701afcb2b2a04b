//! `ftlog`: reads an FT log and summarises or dumps it (DESIGN.md §6
//! "`ftlog`: a host tool that stores, serves, dumps and summarises logs";
//! this one dumps and summarises).
//!
//! ```text
//! ftlog summary FILE     entries by kind, bytes, sequence and execution-point range
//! ftlog dump FILE [--from SEQ] [--count N]
//!                        one line per record
//! ftlog extract FILE OUT writes the raw log bytes (e.g. out of a serial capture)
//! ftlog state FILE       summarises a repair's state transfer (`ft::state`)
//! ```
//! FILE is a raw log (records as the log channel carries them) or any text
//! holding an exported log (`ft=export`'s `FTLOG` lines, e.g. a Bochs serial
//! capture); `-` reads standard input. A damaged log is reported with the
//! offset of the first bad record and what is wrong with it (exit status 1).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use ft::log::export::{decode_all, parse_export, LINE_PREFIX};
use ft::log::{LogEntry, Record};

fn usage() -> ExitCode {
    eprintln!("usage: ftlog summary FILE | ftlog dump FILE [--from SEQ] [--count N] | ftlog extract FILE OUT | ftlog state FILE   (FILE: raw log or text with FTLOG lines; - = stdin)");
    ExitCode::from(2)
}

fn read_input(path: &str) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    if path == "-" {
        std::io::stdin()
            .read_to_end(&mut raw)
            .map_err(|e| format!("stdin: {e}"))?;
    } else {
        raw = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    }
    // An exported log is text with `FTLOG ` lines; anything else is raw.
    let text = String::from_utf8_lossy(&raw);
    if text.lines().any(|l| l.starts_with(LINE_PREFIX)) {
        return parse_export(&text).map_err(|e| format!("{path}: {e}"));
    }
    Ok(raw)
}

fn name(e: &LogEntry) -> &'static str {
    match e {
        LogEntry::Hello { .. } => "hello",
        LogEntry::Interrupt { .. } => "interrupt",
        LogEntry::NetFrame { .. } => "netframe",
        LogEntry::DiskCompletion { .. } => "disk",
        LogEntry::NonDet { .. } => "nondet",
        LogEntry::Heartbeat { .. } => "heartbeat",
        LogEntry::OutputMarker { .. } => "output",
        LogEntry::Ack { .. } => "ack",
        LogEntry::GoLive { .. } => "golive",
        LogEntry::Goodbye { .. } => "goodbye",
        LogEntry::Checkpoint { .. } => "checkpoint",
    }
}

fn describe(r: &Record) -> String {
    let at = r
        .entry
        .exec_point()
        .map(|p| format!(" @ counter {} rip {:#x} rcx {:#x}", p.counter, p.rip, p.rcx))
        .unwrap_or_default();
    let what = match &r.entry {
        LogEntry::Hello {
            cluster_id,
            generation,
            guest_id,
            protocol_version,
            machine,
        } => format!(
            "cluster {cluster_id} generation {generation} protocol {protocol_version} guest {} machine: {}",
            guest_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            machine
                .fields()
                .iter()
                .map(|(k, v)| format!("{k} {v:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        LogEntry::Interrupt { vector, .. } => format!("vector {vector:#x}"),
        LogEntry::NetFrame { vector, frame, .. } => {
            format!("vector {vector:#x}, {} byte frame", frame.len())
        }
        LogEntry::DiskCompletion {
            vector,
            request_id,
            status,
            data,
            ..
        } => format!(
            "vector {vector:#x}, request {request_id} {status:?}, {} bytes read",
            data.len()
        ),
        LogEntry::NonDet { source, value, .. } => format!("{source:?} = {value:#x}"),
        LogEntry::Heartbeat { guest_time_ns, .. } => format!("guest time {guest_time_ns} ns"),
        LogEntry::OutputMarker { output_id, .. } => format!("output {output_id}"),
        LogEntry::Ack { received, applied } => {
            format!("received {received} applied {applied}")
        }
        LogEntry::GoLive { generation, owner } => {
            format!("generation {generation} owner {owner}")
        }
        LogEntry::Goodbye { reason } => format!("{reason:?}"),
        LogEntry::Checkpoint { state_hash, .. } => format!("state hash {state_hash:#018x}"),
    };
    format!("#{} {}{at}: {what}", r.seq, name(&r.entry))
}

fn summary(bytes: &[u8], records: &[Record]) {
    let mut kinds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records {
        let mut one = Vec::new();
        let len = ft::log::encode_record(r.seq, &r.entry, &mut one).map_or(0, |_| one.len());
        let k = kinds.entry(name(&r.entry)).or_default();
        k.0 += 1;
        k.1 += len as u64;
    }
    let points: Vec<_> = records
        .iter()
        .filter_map(|r| r.entry.exec_point())
        .collect();
    println!("{} bytes, {} records", bytes.len(), records.len());
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        println!("sequence {} .. {}", first.seq, last.seq);
    }
    if let (Some(a), Some(b)) = (points.first(), points.last()) {
        println!(
            "guest instructions {} .. {} ({} executed between the first and the last entry)",
            a.counter,
            b.counter,
            b.counter.saturating_sub(a.counter)
        );
    }
    println!("{:<12} {:>10} {:>12}", "kind", "entries", "bytes");
    for (k, (n, b)) in kinds {
        println!("{k:<12} {n:>10} {b:>12}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(path)) = (args.first(), args.get(1)) else {
        return usage();
    };
    if cmd == "state" {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("ftlog: {path}: {e}");
                return ExitCode::from(1);
            }
        };
        let lines = ft::state::summarise(&bytes);
        for l in &lines {
            println!("{l}");
        }
        let accepted = lines.last().is_some_and(|l| l.starts_with("accepted"));
        return if accepted {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let bytes = match read_input(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ftlog: {e}");
            return ExitCode::from(1);
        }
    };
    if cmd == "extract" {
        let Some(out) = args.get(2) else {
            return usage();
        };
        return match std::fs::write(out, &bytes) {
            Ok(()) => {
                println!("ftlog: {} bytes written to {out}", bytes.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ftlog: {out}: {e}");
                ExitCode::from(1)
            }
        };
    }
    let records = match decode_all(&bytes) {
        Ok(r) => r,
        Err((off, e)) => {
            eprintln!("ftlog: {path}: bad record at byte {off}: {e}");
            return ExitCode::from(1);
        }
    };
    match cmd.as_str() {
        "summary" => summary(&bytes, &records),
        "dump" => {
            let mut from = 0u64;
            let mut count = u64::MAX;
            let mut it = args[2..].iter();
            while let Some(a) = it.next() {
                let v = it.next().and_then(|v| v.parse::<u64>().ok());
                match (a.as_str(), v) {
                    ("--from", Some(v)) => from = v,
                    ("--count", Some(v)) => count = v,
                    _ => return usage(),
                }
            }
            for r in records
                .iter()
                .filter(|r| r.seq >= from)
                .take(usize::try_from(count).unwrap_or(usize::MAX))
            {
                println!("{}", describe(r));
            }
        }
        _ => return usage(),
    }
    ExitCode::SUCCESS
}
