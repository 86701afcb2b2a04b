//! Hardware access of the kernel: console, descriptor tables, exceptions,
//! heap, CPU identification, entropy, machine exit.
#[macro_use]
pub mod console;
pub mod cpu;
pub mod entropy;
pub mod exit;
pub mod fpu;
pub mod gdt;
pub mod guestregs;
pub mod heap;
pub mod idt;
pub mod msr;
pub mod multiboot;
pub mod port;
