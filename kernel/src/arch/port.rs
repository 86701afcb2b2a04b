//! x86 port I/O (`in`/`out`), the [`drivers::serial::PortIo`] of the kernel.
use drivers::serial::PortIo;

/// Direct port I/O on the running CPU (ring 0).
#[derive(Clone, Copy, Default)]
pub struct Ports;

impl PortIo for Ports {
    fn inb(&mut self, port: u16) -> u8 {
        // SAFETY: ring 0; reading an I/O port has no memory-safety effect.
        unsafe { x86::io::inb(port) }
    }
    fn outb(&mut self, port: u16, value: u8) {
        // SAFETY: ring 0; the ports written are the console, the debug-exit
        // and the Bochs shutdown ports, none of which map memory.
        unsafe { x86::io::outb(port, value) }
    }
}
