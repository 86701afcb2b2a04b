//! Device drivers of the hypervisor itself (DESIGN.md §2 `drivers/`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arbitration;
pub mod error;
pub mod iscsi;
pub mod scsi;
pub mod serial;

pub use error::{Error, Result};
