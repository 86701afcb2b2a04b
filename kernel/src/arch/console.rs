//! COM1 console shared by the whole kernel (`println!`).
use super::port::Ports;
use drivers::serial::Uart16550;
use spin::Mutex;

pub static CONSOLE: Mutex<Option<Uart16550<Ports>>> = Mutex::new(None);

pub fn init() {
    let mut uart = Uart16550::new(Ports, 0x3F8);
    uart.init();
    *CONSOLE.lock() = Some(uart);
}

pub fn write_fmt(args: core::fmt::Arguments<'_>) {
    use core::fmt::Write;
    let mut guard = CONSOLE.lock();
    if let Some(uart) = guard.as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Used on the panic and exception paths: takes the console even if the
/// lock is held by the code that failed (we never return from there).
pub fn force_write_fmt(args: core::fmt::Arguments<'_>) {
    use core::fmt::Write;
    // SAFETY: called only on the way to exiting the machine; single CPU, and
    // the interrupted holder of the lock never runs again.
    unsafe { CONSOLE.force_unlock() };
    let mut uart = Uart16550::new(Ports, 0x3F8);
    let _ = uart.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::arch::console::write_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::arch::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
