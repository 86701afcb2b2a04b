//! Injected time and network (STYLE.md, TigerBeetle/FoundationDB row;
//! DESIGN.md §2 "hardware access sits behind small traits"). The state
//! machines take `now` as an argument; these traits are what a driver loop
//! (kernel main loop or simulator) reads it from and writes effects to.
//! Storage is [`crate::arbitration::SharedStorage`].

use crate::FtError;

/// Monotonic time in nanoseconds.
pub trait Clock {
    /// Now, in nanoseconds since an arbitrary epoch.
    fn now_ns(&self) -> u64;
}

/// One end of the logging channel: a reliable, in-order byte stream
/// (TCP). A dropped connection loses whatever was in flight.
pub trait Transport {
    /// Queues bytes for sending. [`FtError::Disconnected`] if down.
    fn send(&mut self, bytes: &[u8]) -> Result<(), FtError>;
    /// Copies received bytes into `buf`; `Ok(0)` if none are ready.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, FtError>;
    /// Whether a connection is currently established.
    fn is_connected(&self) -> bool;
}
