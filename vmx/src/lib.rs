//! Intel VT-x for ftvisor (Intel SDM Vol. 3C, chapters 24-28 and appendix A).
//!
//! Hardware access sits behind small traits ([`caps::MsrRead`],
//! [`vmcs::VmcsAccess`], [`exit::Platform`]) so that the logic here is
//! tested on the host with fakes; the kernel provides the real ones.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod caps;
pub mod counter;
pub mod ept;
pub mod error;
pub mod exit;
pub mod guest_walk;
pub mod state;
pub mod vmcs;

pub use error::Error;
