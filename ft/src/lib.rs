//! The FT protocol, hardware-free (DESIGN.md §1).
//!
//! * [`log`]: the versioned, CRC32C-protected record format of the logging
//!   channel and a streaming decoder (§1.1–§1.3, §1.6).
//! * [`primary`]: the primary's sans-IO state machine: append, stream,
//!   track acks, the [`output_rule::OutputRule`] (§1.4), heartbeats, lag
//!   and throttle, failure detection, arbitration (§1.6, §1.7).
//! * [`backup`]: the backup's sans-IO state machine: verify, ack, gate the
//!   replay engine one entry behind (§1.3), discard outputs (§1.5),
//!   arbitrate and [`GoLive`] (§1.7, §1.8).
//! * [`node`]: the FT node: the one place of every failure-time decision
//!   (join, reconnect, arbitration with retry, fencing, go-live, repair),
//!   run as it is by the kernel and by the simulator (§1.11).
//! * [`arbitration`]: the test-and-set flag on shared storage (§1.7).
//! * [`replay`]: the record/replay engine: a [`replay::Recorder`] appends
//!   entries, a [`replay::Replayer`] (a whole log or the backup's live
//!   stream) names the next landing target and the entries due there,
//!   passes soft entries and reports a [`replay::Divergence`] (§1.1–§1.3,
//!   §6).
//! * [`seam`]: which outputs a backup going live emits itself because the
//!   primary may not have released them (§1.4, §1.8).
//! * [`io`]: the injected [`io::Clock`] and [`io::Transport`] traits.
//! * `sim` (feature `sim`, and in tests): the deterministic simulator that
//!   checks these rules under crashes, partitions and storage loss (§4, §6).
//!
//! The state machines never read a clock, a socket or a disk: methods take
//! `now` and input bytes and return [`Effect`]s for the caller to carry
//! out, so the kernel and the simulator drive the same code.
#![cfg_attr(not(any(test, feature = "sim")), no_std)]

extern crate alloc;

pub mod arbitration;
pub mod backup;
mod config;
mod effect;
mod error;
pub mod io;
pub mod log;
pub mod node;
pub mod output_rule;
pub mod primary;
#[cfg(test)]
mod protocol_tests;
pub mod repair;
pub mod replay;
pub mod seam;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod state;

pub use config::{Mutation, SessionConfig};
pub use effect::{Effect, Effects, GoLive};
pub use error::FtError;
