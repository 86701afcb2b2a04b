//! [`Transport`] and [`Clock`] over `std` (feature `std`): a blocking
//! `TcpStream` with a short read timeout, and a monotonic clock.

extern crate std;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::initiator::{Clock, Transport};
use crate::error::{Error, Result};

/// TCP to one portal; `reconnect` opens a fresh connection.
pub struct TcpTransport {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    poll: Duration,
}

impl TcpTransport {
    /// Not connected yet; the session's first `reconnect` connects.
    pub fn new(addr: SocketAddr) -> Self {
        TcpTransport {
            addr,
            stream: None,
            poll: Duration::from_millis(20),
        }
    }
}

fn io(e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Error::Timeout,
        _ => Error::ConnectionClosed,
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, bytes: &[u8]) -> Result<usize> {
        let s = self.stream.as_mut().ok_or(Error::ConnectionClosed)?;
        match s.write(bytes) {
            Ok(0) => Err(Error::ConnectionClosed),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(io(e)),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        let s = self.stream.as_mut().ok_or(Error::ConnectionClosed)?;
        match s.read(buf) {
            Ok(0) => Err(Error::ConnectionClosed),
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn recv_now(&mut self, buf: &mut [u8]) -> Result<usize> {
        let s = self.stream.as_mut().ok_or(Error::ConnectionClosed)?;
        s.set_nonblocking(true).map_err(io)?;
        let r = s.read(buf);
        s.set_nonblocking(false).map_err(io)?;
        match r {
            Ok(0) => Err(Error::ConnectionClosed),
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(e) => Err(io(e)),
        }
    }

    fn reconnect(&mut self) -> Result<()> {
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3)).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        s.set_read_timeout(Some(self.poll)).map_err(io)?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        self.stream = Some(s);
        Ok(())
    }
}

/// Milliseconds since creation.
pub struct StdClock(Instant);

impl StdClock {
    pub fn new() -> Self {
        StdClock(Instant::now())
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for StdClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
    fn sleep_until(&self, t: u64) {
        let now = self.now_ms();
        if t > now {
            std::thread::sleep(Duration::from_millis((t - now).min(1000)));
        }
    }
}
