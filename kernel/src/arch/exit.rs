//! Finishing the machine with an exit code: QEMU `isa-debug-exit` at port
//! 0xF4 (QEMU exits with `code * 2 + 1`), Bochs's shutdown port 0x8900
//! (exit status always 1, so the code travels in the serial marker first).
use super::port::Ports;
use drivers::serial::PortIo;
use kernel::exitcode;

pub fn exit(code: u8) -> ! {
    super::console::force_write_fmt(format_args!("{}{}\n", exitcode::MARKER, code));
    let mut io = Ports;
    io.outb(0xF4, code);
    for b in b"Shutdown" {
        io.outb(0x8900, *b);
    }
    halt_forever()
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stopping the CPU; nothing runs after this.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => super::console::force_write_fmt(format_args!(
            "PANIC at {}:{}:{}: {}\n",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        )),
        None => super::console::force_write_fmt(format_args!("PANIC: {}\n", info.message())),
    }
    exit(exitcode::PANIC)
}
