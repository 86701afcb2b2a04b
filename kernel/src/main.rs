//! ftvisor: the bare-metal hypervisor binary (DESIGN.md §2 `kernel/`).
//!
//! Boot flow: `boot` enters `kmain` in long mode with the identity map; we
//! bring up the console, GDT/TSS, IDT, heap (from the multiboot memory map),
//! parse the command line, print the CPU report, then run the selected mode.
//! Built only for `x86_64-unknown-none`; on the host it is an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
#[macro_use]
mod arch;

#[cfg(target_os = "none")]
#[path = "ftnode/live.rs"]
mod ftlive;

#[cfg(target_os = "none")]
mod hv;

#[cfg(target_os = "none")]
mod net;

#[cfg(target_os = "none")]
mod vmm;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ftvisor is a bare-metal image: build it with `make image`");
}
