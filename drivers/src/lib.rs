//! Device drivers of the hypervisor itself (DESIGN.md §2 `drivers/`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arbitration;
#[cfg(feature = "e1000")]
pub mod e1000;
pub mod error;
pub mod iscsi;
pub mod nic;
pub mod pci;
pub mod scsi;
pub mod serial;
#[cfg(feature = "virtio-net")]
pub mod virtio_net;

/// Re-exported so the kernel builds its interface on the same version.
pub use smoltcp;

pub use error::{Error, Result};
