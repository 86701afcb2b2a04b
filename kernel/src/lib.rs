//! The hypervisor's hardware-free logic: the typed configuration parsed from
//! the kernel command line, the boot memory map, and exit codes. The
//! hardware half lives in `main.rs` and is built only for
//! `x86_64-unknown-none`; everything here is tested on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod bootinfo;
pub mod config;
pub mod devices;
pub mod echo;
pub mod error;
pub mod exitcode;
pub mod ftnode;
pub mod guestio;
pub mod iscsi_checks;
pub mod loader;
pub mod mmio;
pub mod mmio_decode;
pub mod tsc_scale;

pub use error::Error;
