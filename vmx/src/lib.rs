//! Intel VT-x for ftvisor (Intel SDM Vol. 3C, chapters 24-28 and appendix A).
//!
//! Hardware access sits behind small traits ([`caps::MsrRead`], later the
//! VMCS accessor) so that the logic here is tested on the host with fakes.
#![cfg_attr(not(test), no_std)]

pub mod caps;
pub mod error;

pub use error::Error;
