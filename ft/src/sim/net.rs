//! The simulated logging channel: one TCP connection between the two
//! nodes. In order per direction, arbitrary delay, chunking that splits
//! records, rare corruption (caught by the CRC), and drops that lose all
//! in-flight data (DESIGN.md §1.1, §1.6).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::rng::Rng;
use crate::io::Transport;
use crate::FtError;

/// The link between node 0 and node 1.
#[derive(Debug)]
pub struct Link {
    /// A connection is established.
    pub up: bool,
    /// Earliest time of the next connection attempt.
    pub next_connect_ns: u64,
    /// `queues[to]`: chunks in flight towards node `to`.
    queues: [VecDeque<(u64, Vec<u8>)>; 2],
    last_deliver: [u64; 2],
    /// Largest one-way delay.
    pub max_delay_ns: u64,
    /// Probability (per mille) that a sent chunk has a byte flipped.
    pub corrupt_per_mille: u64,
    /// Bytes accepted for sending, per direction (`[to]`).
    pub bytes_sent: [u64; 2],
    /// Time the link needs per KiB sent, each direction (0: unlimited).
    /// Chunks queue behind each other: a large record takes long to
    /// cross, and everything written after it waits for it.
    pub ns_per_kib: u64,
}

impl Link {
    /// A link that is down and will connect at once.
    pub fn new(max_delay_ns: u64, corrupt_per_mille: u64) -> Self {
        Self {
            up: false,
            next_connect_ns: 0,
            queues: [VecDeque::new(), VecDeque::new()],
            last_deliver: [0; 2],
            max_delay_ns,
            corrupt_per_mille,
            bytes_sent: [0; 2],
            ns_per_kib: 0,
        }
    }

    /// Drops the connection: everything in flight is lost.
    pub fn drop_connection(&mut self, now: u64, rng: &mut Rng) {
        self.up = false;
        self.queues = [VecDeque::new(), VecDeque::new()];
        // Nothing in flight any more: a new connection's bytes do not
        // queue behind the old one's.
        self.last_deliver = [now; 2];
        self.next_connect_ns = now + rng.range(2_000_000, 20_000_000);
    }

    /// Node `side`'s end of the connection at time `now`.
    pub fn end<'a>(&'a mut self, side: usize, now: u64, rng: &'a mut Rng) -> LinkEnd<'a> {
        LinkEnd {
            link: self,
            side,
            now,
            rng,
        }
    }
}

/// One end of the [`Link`], as a [`Transport`].
#[derive(Debug)]
pub struct LinkEnd<'a> {
    link: &'a mut Link,
    side: usize,
    now: u64,
    rng: &'a mut Rng,
}

impl Transport for LinkEnd<'_> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), FtError> {
        if !self.link.up {
            return Err(FtError::Disconnected);
        }
        let to = 1 - self.side;
        self.link.bytes_sent[to] += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (self.rng.range(1, 200) as usize).min(rest.len());
            let mut chunk = rest[..n].to_vec();
            rest = &rest[n..];
            if self.rng.chance(self.link.corrupt_per_mille) {
                let i = self.rng.range(0, n as u64) as usize;
                chunk[i] ^= 1 << self.rng.range(0, 8);
            }
            let wire = n as u64 * self.link.ns_per_kib / 1024;
            let at = (self.now + self.rng.range(0, self.link.max_delay_ns))
                .max(self.link.last_deliver[to] + wire);
            self.link.last_deliver[to] = at;
            self.link.queues[to].push_back((at, chunk));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, FtError> {
        if !self.link.up {
            return Err(FtError::Disconnected);
        }
        let q = &mut self.link.queues[self.side];
        let Some((at, chunk)) = q.front_mut() else {
            return Ok(0);
        };
        if *at > self.now {
            return Ok(0);
        }
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n == chunk.len() {
            q.pop_front();
        } else {
            chunk.drain(..n);
        }
        Ok(n)
    }

    fn is_connected(&self) -> bool {
        self.link.up
    }
}
