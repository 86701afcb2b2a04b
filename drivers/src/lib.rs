//! Device drivers of the hypervisor itself (DESIGN.md §2 `drivers/`).
#![cfg_attr(not(test), no_std)]

pub mod serial;
