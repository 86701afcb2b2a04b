//! iSCSI initiator (RFC 7143), the subset the hypervisor needs to reach its
//! shared disk: one connection per session, no authentication,
//! `HeaderDigest=None`, `DataDigest=None`, `ErrorRecoveryLevel=0`.
//!
//! Layers, each pure and host-tested:
//! - [`bhs`]: the 48-byte Basic Header Segment and PDU framing (§11.2);
//! - [`pdu`]: typed PDUs, encode/decode (§11.3-11.19);
//! - [`stream`]: reassembly of PDUs from TCP byte chunks;
//! - [`text`]: `key=value` text (§6.1); [`params`]: negotiation (§13);
//! - [`session`]: the sans-IO session state machine (login, CmdSN/StatSN,
//!   tasks, R2T, NOP, logout, timeouts, reconnect with task retry);
//! - [`initiator`]: a blocking driver over a [`Transport`] byte stream and
//!   a [`Clock`]; `tcp` (feature `std`) implements both on `std`.

pub mod bhs;
pub mod initiator;
pub mod params;
pub mod pdu;
pub mod session;
pub mod stream;
#[cfg(feature = "std")]
pub mod tcp;
pub mod text;

pub use initiator::{Clock, Initiator, Transport};
pub use params::{Negotiated, Offer};
pub use pdu::Pdu;
pub use session::{Event, Session, SessionConfig, TaskId, TaskResult};
pub use stream::PduDecoder;
