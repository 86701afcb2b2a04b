//! The kernel command line, parsed into a typed [`Config`].
//!
//! Syntax: space-separated `key=value` options. The first token is skipped
//! when it holds no `=` (GRUB and QEMU put the image path there). An unknown
//! key, a malformed value or a repeated key is an [`Error`] naming the
//! option; nothing is silently ignored.
//!
//! | option | values | default |
//! |---|---|---|
//! | `mode` | `hypervisor` (run the guest; needs VMX) or `report` (print the CPU report and exit 0) | `hypervisor` |
//! | `selftest` | `none`, `panic` (deliberate panic), `fault` (deliberate page fault) | `none` |
//! | `guest_mem` | size with optional `K`/`M`/`G` suffix, 2 MiB multiple, 2 MiB..3 GiB | `64M` |
//! | `log` | `error`, `warn`, `info`, `debug` | `info` |
//! | `watchdog` | seconds of guest time with interrupts disabled before the guest is stopped (1..3600) | `30` |
use crate::Error;
use alloc::string::ToString;

/// What the hypervisor does after booting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run the guest under VMX (refuses to start without VMX).
    Hypervisor,
    /// Print the boot and CPU report and exit with success.
    Report,
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

/// The typed kernel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub selftest: SelfTest,
    pub guest_mem: u64,
    pub log: LogLevel,
    pub watchdog_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Hypervisor,
            selftest: SelfTest::None,
            guest_mem: 64 << 20,
            log: LogLevel::Info,
            watchdog_secs: 30,
        }
    }
}

const MIB2: u64 = 2 << 20;

impl Config {
    /// Parses a whole command line.
    pub fn parse(cmdline: &str) -> Result<Config, Error> {
        let mut cfg = Config::default();
        let mut seen: u32 = 0;
        let mut tokens = cmdline.split_ascii_whitespace().peekable();
        if tokens.peek().is_some_and(|t| !t.contains('=')) {
            tokens.next();
        }
        for token in tokens {
            let (key, value) = token.split_once('=').ok_or_else(|| Error::UnknownOption {
                option: token.to_string(),
            })?;
            let (bit, name): (u32, &'static str) = match key {
                "mode" => (0, "mode"),
                "selftest" => (1, "selftest"),
                "guest_mem" => (2, "guest_mem"),
                "log" => (3, "log"),
                "watchdog" => (4, "watchdog"),
                _ => {
                    return Err(Error::UnknownOption {
                        option: key.to_string(),
                    })
                }
            };
            if seen & (1 << bit) != 0 {
                return Err(Error::DuplicateOption { option: name });
            }
            seen |= 1 << bit;
            let bad = |expected: &'static str| Error::BadValue {
                option: name,
                value: value.to_string(),
                expected,
            };
            match name {
                "mode" => {
                    cfg.mode = match value {
                        "hypervisor" => Mode::Hypervisor,
                        "report" => Mode::Report,
                        _ => return Err(bad("`hypervisor` or `report`")),
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
                    const EXPECTED: &str = "whole seconds between 1 and 3600";
                    let secs: u64 = value.parse().map_err(|_| bad(EXPECTED))?;
                    if !(1..=3600).contains(&secs) {
                        return Err(bad(EXPECTED));
                    }
                    cfg.watchdog_secs = secs;
                }
                _ => unreachable!("every key above is handled"),
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
    fn module_cmdline() {
        assert_eq!(strip_image_path("/boot/module0 test=hello"), "test=hello");
        assert_eq!(strip_image_path("/boot/module0"), "");
        assert_eq!(strip_image_path("test=hello x=1"), "test=hello x=1");
        assert_eq!(strip_image_path(""), "");
    }

    #[test]
    fn watchdog() {
        assert_eq!(Config::parse("watchdog=2").unwrap().watchdog_secs, 2);
        assert!(Config::parse("watchdog=0").is_err());
        assert!(Config::parse("watchdog=1s").is_err());
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
