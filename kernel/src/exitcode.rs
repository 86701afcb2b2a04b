//! Exit codes of the hypervisor when it finishes the machine (emulator tests
//! read them: QEMU `isa-debug-exit` returns `code * 2 + 1`, Bochs via the
//! `FTVISOR-EXIT code=N` line on serial).

/// Normal end (report mode, test passed).
pub const SUCCESS: u8 = 0;
/// A test inside the hypervisor failed.
pub const FAILURE: u8 = 1;
/// The command line was rejected.
pub const BAD_CONFIG: u8 = 2;
/// The CPU offers no usable VMX.
pub const NO_VMX: u8 = 3;
/// The hypervisor panicked.
pub const PANIC: u8 = 4;
/// The hypervisor took an unexpected CPU exception.
pub const EXCEPTION: u8 = 5;
/// The guest was stopped for good (fault, triple fault, hostile behaviour).
pub const GUEST_STOPPED: u8 = 6;

/// The serial marker that carries the exit code (the runner parses it).
pub const MARKER: &str = "FTVISOR-EXIT code=";
