//! `qemu-tests`: the host-side e2e runner (DESIGN.md §4).
//!
//! Builds the images (`make image`), boots each test in QEMU (TCG or KVM) or
//! Bochs 3.0 with a timeout, captures COM1, and judges the test by the exit
//! code the hypervisor reports (`FTVISOR-EXIT code=N` on serial; QEMU's
//! `isa-debug-exit` status must agree) and by required/forbidden serial
//! lines. A test whose emulator is missing is SKIPPED with the reason.
//!
//! ```text
//! qemu-tests list                 # every test and the emulator it needs
//! qemu-tests run [FILTER]         # run tests whose name contains FILTER
//!                                 # (no FILTER: all but the `long` ones)
//! qemu-tests boot <emu> [cmdline] [module[=args]]...
//!                                 # boot once, stream serial (make run-guest)
//! qemu-tests demo                 # the FT pair demo (make run, demo.rs)
//! qemu-tests bench [--quick] [--only NAME]
//!                                 # FT off vs on (make bench, bench.rs)
//! ```
mod bench;
mod demo;
mod echo_client;
mod emulator;
mod ftrig;
mod hostile_log;
mod istgt;
mod race_coordinator;
mod tests;
mod tests_ft;
mod tests_ftkv;
mod tests_guestio;
mod tests_join;
mod tests_kv;
mod tests_linux;
mod tests_linuxbigio;
mod tests_linuxft;
mod tests_net;
mod tests_repair;
mod tests_replay;

use emulator::{Emulator, Outcome};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests lives in the repository")
        .to_path_buf()
}

fn build_images(root: &PathBuf) -> Result<(), String> {
    eprintln!("qemu-tests: building images (make image)");
    let status = Command::new("make")
        .args(["-s", "image"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("make image failed ({status})"))
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: qemu-tests list | run [--no-build] [FILTER] | boot <qemu-tcg|qemu-kvm|bochs> [cmdline] [module[=args]]... | demo [--no-build] | bench [--no-build] [--quick] [--only NAME]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in tests::all() {
                let avail = match t.emulator.available() {
                    Ok(()) => "available".to_string(),
                    Err(why) => format!("missing: {why}"),
                };
                let long = if t.long {
                    " [long: not in the default run]"
                } else {
                    ""
                };
                println!(
                    "{:<28} {:<9} {}  [{}]{long}",
                    t.name,
                    t.emulator.name(),
                    t.about,
                    avail
                );
            }
            ExitCode::SUCCESS
        }
        Some("run") => {
            let no_build = args.iter().any(|a| a == "--no-build");
            let filter = args
                .iter()
                .skip(1)
                .find(|a| !a.starts_with("--"))
                .cloned()
                .unwrap_or_default();
            // Without a filter (the default run), `long` tests are left out.
            let (selected, left_out): (Vec<_>, Vec<_>) = tests::all()
                .into_iter()
                .filter(|t| t.name.contains(filter.as_str()))
                .partition(|t| !filter.is_empty() || !t.long);
            for t in &left_out {
                println!(
                    "LEFT OUT {:<24} long; run it with `make e2e T={}`",
                    t.name, t.name
                );
            }
            if selected.is_empty() {
                eprintln!("qemu-tests: no test matches `{filter}` (see `make e2e-list`)");
                return ExitCode::from(2);
            }
            if !no_build {
                if let Err(e) = build_images(&root) {
                    eprintln!("qemu-tests: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let (mut passed, mut failed, mut skipped) = (0, 0, 0);
            for t in &selected {
                let start = Instant::now();
                let outcome = t.run(&root);
                let secs = start.elapsed().as_secs_f64();
                match outcome {
                    Outcome::Pass(note) => {
                        passed += 1;
                        println!("PASS {:<28} {:>6.1}s  {}", t.name, secs, note);
                    }
                    Outcome::Fail(why) => {
                        failed += 1;
                        println!("FAIL {:<28} {:>6.1}s  {}", t.name, secs, why);
                    }
                    Outcome::Skip(why) => {
                        skipped += 1;
                        println!("SKIP {:<28}          {}", t.name, why);
                    }
                }
            }
            println!("{passed} passed, {failed} failed, {skipped} skipped");
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("boot") => {
            let Some(emu) = args.get(1).and_then(|e| Emulator::parse(e)) else {
                return usage();
            };
            let cmdline = args.get(2).cloned().unwrap_or_default();
            // Further arguments: boot modules as `file` or `file=module args`.
            let modules = args[3.min(args.len())..]
                .iter()
                .map(|m| match m.split_once('=') {
                    Some((f, a)) => (root.join(f), a.to_string()),
                    None => (root.join(m), String::new()),
                })
                .collect();
            if let Err(e) = build_images(&root) {
                eprintln!("qemu-tests: {e}");
                return ExitCode::FAILURE;
            }
            if let Err(why) = emu.available() {
                eprintln!("qemu-tests: {} is not available: {why}", emu.name());
                return ExitCode::FAILURE;
            }
            let spec = emulator::BootSpec {
                name: "boot".into(),
                cmdline,
                modules,
                timeout: std::time::Duration::from_secs(600),
                stream: true,
                extra: vec![],
                kernel: None,
                interact: None,
                netns: None,
            };
            match emu.boot(&root, spec) {
                Ok(run) => match run.exit_code {
                    Some(c) => {
                        eprintln!("qemu-tests: hypervisor exited with code {c}");
                        ExitCode::from(c)
                    }
                    None => {
                        eprintln!("qemu-tests: no exit marker ({})", run.ended);
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("qemu-tests: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("demo") => {
            if !args.iter().any(|a| a == "--no-build") {
                if let Err(e) = build_images(&root) {
                    eprintln!("qemu-tests: {e}");
                    return ExitCode::FAILURE;
                }
            }
            match demo::main(&root) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("demo: FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench") => {
            if !args.iter().any(|a| a == "--no-build") {
                if let Err(e) = build_images(&root) {
                    eprintln!("qemu-tests: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let quick = args.iter().any(|a| a == "--quick");
            let only = args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .cloned();
            match bench::main(&root, quick, only.as_deref()) {
                Ok(note) => {
                    println!("bench: done in {note}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("bench: FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // Helpers of `bench` and `demo`, run inside their namespace.
        Some(h @ ("bench-client" | "kv-load" | "ft-watch")) => {
            let r = match h {
                "bench-client" => bench::client_main(&args),
                "kv-load" => bench::load_main(&args),
                _ => bench::watch_main(&args),
            };
            match r {
                Ok(line) => {
                    if !line.is_empty() {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{h}: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // Used by the net-echo-* tests from inside their network namespace.
        Some("echo-client") => {
            let Some(addr) = args.get(1).and_then(|a| a.parse().ok()) else {
                return usage();
            };
            match echo_client::converse(addr) {
                Ok(note) => {
                    println!("{note}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        // Used by linux-ft-http from inside the pair's namespace.
        Some("http-get") => match tests_linuxft::client_main(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("http-get: error: {e}");
                ExitCode::FAILURE
            }
        },
        // Used by guest-kv from inside its network namespace.
        Some("kv-client") => match tests_kv::client_main(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("kv-client: error: {e}");
                ExitCode::FAILURE
            }
        },
        // Used by the ft-* client tests from inside the pair's namespace.
        Some(c) if c.starts_with("ftkv-") => tests_ftkv::helper_main(&args),
        // Used by ft-hostile-log from inside the pair's namespace.
        Some("hostile-log") => match hostile_log::main(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("hostile-log: error: {e}");
                ExitCode::FAILURE
            }
        },
        // Used by iscsi-caw-race from inside its network namespace.
        Some("race-coordinator") => {
            let (Some(addr), Some(nodes), Some(rounds)) = (
                args.get(1).and_then(|a| a.parse().ok()),
                args.get(2).and_then(|a| a.parse().ok()),
                args.get(3).and_then(|a| a.parse().ok()),
            ) else {
                return usage();
            };
            match race_coordinator::run(addr, nodes, rounds) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("coordinator: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
