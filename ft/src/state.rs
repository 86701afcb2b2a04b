//! The state transfer of a repair (issue 16; DESIGN.md §1.9 "a new backup
//! is cloned from the running primary", seeds/004 FT VMotion): the one
//! definition of the format the serving node sends, the joining node
//! receives, and `ftlog state` summarises.
//!
//! A transfer is a stream of chunks, each versioned, length-prefixed,
//! numbered and ended by a CRC32C, like the log's records:
//!
//! ```text
//! offset size field
//!      0    1 magic            0xF8 (a log record's is 0xF7)
//!      1    1 format version   STATE_FORMAT_VERSION
//!      2    1 kind             Chunk kind byte
//!      3    1 reserved         must be 0
//!      4    4 payload length   u32 LE, <= MAX_CHUNK_PAYLOAD
//!      8    4 chunk number     u32 LE, 0, 1, 2, ... in order
//!     12    n payload          kind-specific, little-endian, exact length
//!   12+n    4 crc32c           over bytes [0, 12+n)
//! ```
//!
//! The chunks, in order: one [`Chunk::Begin`] (what is being sent: the
//! guest, the machine, the flag generation, the RAM size); [`Chunk::Pages`]
//! of the pre-copy rounds (round 0: every page; later rounds: the pages
//! dirtied meanwhile; the last round is sent with the guest stopped); the
//! stopped vCPU ([`Chunk::Vcpu`]: general registers, VMCS guest fields by
//! encoding, MSRs, the FXSAVE image) and each device model
//! ([`Chunk::Device`], an opaque blob the model defines and versions); then
//! [`Chunk::Commit`], which carries the execution point the new pair starts
//! from, the counts and a digest of every payload before it.
//!
//! [`Receiver`] refuses, with a message, a stream of another format
//! version, another guest or machine, a damaged or out-of-order chunk, a
//! page outside RAM, anything after the commit, and a commit whose counts
//! or digest do not match what arrived. It hands pages to the caller as
//! they arrive (into the joining node's guest RAM, which does not run yet)
//! and keeps the vCPU and devices staged until the commit verifies: a
//! transfer that fails is never applied, and the guest never starts from
//! part of one.

use alloc::vec::Vec;

use crate::log::codec::{Reader, CRC32C};
use crate::log::{ExecPoint, MachineId};
use crate::replay::{hash_bytes, HASH_SEED};
use crate::FtError;

/// First byte of every chunk.
pub const STATE_MAGIC: u8 = 0xF8;
/// The chunk format version this build writes and accepts.
pub const STATE_FORMAT_VERSION: u8 = 2;
/// Fixed header bytes before the payload.
pub const CHUNK_HEADER_LEN: usize = 12;
/// CRC trailer bytes after the payload.
pub const CHUNK_TRAILER_LEN: usize = 4;
/// The largest payload a chunk may declare.
pub const MAX_CHUNK_PAYLOAD: usize = 1 << 20;
/// Guest page size.
pub const PAGE: usize = 4096;
/// Pages one [`Chunk::Pages`] carries at most (256 KiB of data).
pub const PAGES_PER_CHUNK: usize = 64;
/// The FXSAVE image's size.
pub const FXSAVE_LEN: usize = 512;

/// One guest page's content in a [`Chunk::Pages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageData {
    /// All zero (sent as a flag: most of a fresh guest's RAM).
    Zero,
    /// [`PAGE`] bytes.
    Bytes(Vec<u8>),
}

/// One chunk of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// What is sent.
    Begin {
        /// The cluster the serving node belongs to.
        cluster: u64,
        /// The serving node (the new pair's primary).
        sender: u64,
        guest_id: [u8; 16],
        machine: MachineId,
        /// The flag generation the serving node holds now (the new pair
        /// takes the next one at the commit: the joiner reads it from the
        /// shared LUN).
        generation: u64,
        ram_bytes: u64,
    },
    /// Pages of pre-copy round `round` (page number, content).
    Pages {
        round: u32,
        pages: Vec<(u64, PageData)>,
    },
    /// The stopped vCPU.
    Vcpu {
        /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15.
        gprs: [u64; 16],
        /// VMCS guest-state fields (encoding, value): RIP, RFLAGS, control
        /// registers, segments, descriptor tables, interruptibility,
        /// activity state, pending debug exceptions, event injection.
        fields: Vec<(u32, u64)>,
        /// MSRs outside the VMCS (index, value).
        msrs: Vec<(u32, u64)>,
        /// The x87/SSE state.
        fxsave: Vec<u8>,
        /// CR2 (the last page-fault address: a guest stopped between a
        /// #PF and its handler's read of CR2 needs it) and DR0-DR3, DR6,
        /// which live in the CPU, not in the VMCS.
        cr2: u64,
        debug: [u64; 5],
    },
    /// A device model's state: `id` names the model, `version` its blob's
    /// layout (the model refuses one it does not know).
    Device {
        id: u16,
        version: u16,
        blob: Vec<u8>,
    },
    /// The end: the new pair starts at `at` with guest time
    /// `guest_time_ns`; the log of the new session starts after record
    /// `resume_seq`. `chunks` and `pages` count what came before; `digest`
    /// hashes every payload before this one, in order.
    Commit {
        at: ExecPoint,
        guest_time_ns: u64,
        resume_seq: u64,
        chunks: u32,
        pages: u64,
        digest: u64,
    },
    /// The joining node's request, the one chunk it sends (its own chunk
    /// 0): its cluster, node id and machine. Never part of a transfer.
    Join {
        cluster: u64,
        node: u64,
        machine: MachineId,
    },
}

impl Chunk {
    /// The commit of a pair starting at `at` with guest time
    /// `guest_time_ns`, the new log after `resume_seq`; its counts and
    /// digest are filled in by [`Sender::push`].
    pub fn commit(at: ExecPoint, guest_time_ns: u64, resume_seq: u64) -> Self {
        Self::Commit {
            at,
            guest_time_ns,
            resume_seq,
            chunks: 0,
            pages: 0,
            digest: 0,
        }
    }

    /// The kind byte on the wire.
    pub const fn kind(&self) -> u8 {
        match self {
            Self::Begin { .. } => 1,
            Self::Pages { .. } => 2,
            Self::Vcpu { .. } => 3,
            Self::Device { .. } => 4,
            Self::Commit { .. } => 5,
            Self::Join { .. } => 6,
        }
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn encode_payload(chunk: &Chunk, out: &mut Vec<u8>) {
    match chunk {
        Chunk::Begin {
            cluster,
            sender,
            guest_id,
            machine,
            generation,
            ram_bytes,
        } => {
            put_u64(out, *cluster);
            put_u64(out, *sender);
            out.extend_from_slice(guest_id);
            out.extend_from_slice(&machine.to_bytes());
            put_u64(out, *generation);
            put_u64(out, *ram_bytes);
        }
        Chunk::Pages { round, pages } => {
            put_u32(out, *round);
            put_u32(out, len32(pages.len()));
            for (n, data) in pages {
                put_u64(out, *n);
                match data {
                    PageData::Zero => out.push(0),
                    PageData::Bytes(b) => {
                        out.push(1);
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        Chunk::Vcpu {
            gprs,
            fields,
            msrs,
            fxsave,
            cr2,
            debug,
        } => {
            for g in gprs {
                put_u64(out, *g);
            }
            for list in [fields, msrs] {
                put_u32(out, len32(list.len()));
                for (k, v) in list {
                    put_u32(out, *k);
                    put_u64(out, *v);
                }
            }
            out.extend_from_slice(fxsave);
            put_u64(out, *cr2);
            for d in debug {
                put_u64(out, *d);
            }
        }
        Chunk::Device { id, version, blob } => {
            put_u16(out, *id);
            put_u16(out, *version);
            out.extend_from_slice(blob);
        }
        Chunk::Commit {
            at,
            guest_time_ns,
            resume_seq,
            chunks,
            pages,
            digest,
        } => {
            for w in [at.counter, at.rip, at.rcx, *guest_time_ns, *resume_seq] {
                put_u64(out, w);
            }
            put_u32(out, *chunks);
            put_u64(out, *pages);
            put_u64(out, *digest);
        }
        Chunk::Join {
            cluster,
            node,
            machine,
        } => {
            put_u64(out, *cluster);
            put_u64(out, *node);
            out.extend_from_slice(&machine.to_bytes());
        }
    }
}

/// Appends chunk number `n` to `out`. Fails (leaving `out` as it was) if
/// the payload would exceed [`MAX_CHUNK_PAYLOAD`] or the chunk is malformed
/// (a page of the wrong size, an FXSAVE image of the wrong size).
pub fn encode_chunk(n: u32, chunk: &Chunk, out: &mut Vec<u8>) -> Result<(), FtError> {
    let bad = |reason| FtError::BadPayload {
        kind: chunk.kind(),
        reason,
    };
    match chunk {
        Chunk::Pages { pages, .. } => {
            if pages.len() > PAGES_PER_CHUNK {
                return Err(bad("more pages than a chunk carries"));
            }
            if pages
                .iter()
                .any(|(_, d)| matches!(d, PageData::Bytes(b) if b.len() != PAGE))
            {
                return Err(bad("a page is not 4096 bytes"));
            }
        }
        Chunk::Vcpu { fxsave, .. } if fxsave.len() != FXSAVE_LEN => {
            return Err(bad("the FXSAVE image is not 512 bytes"));
        }
        _ => {}
    }
    let start = out.len();
    out.extend_from_slice(&[STATE_MAGIC, STATE_FORMAT_VERSION, chunk.kind(), 0]);
    out.extend_from_slice(&[0; 4]);
    put_u32(out, n);
    encode_payload(chunk, out);
    let len = out.len() - start - CHUNK_HEADER_LEN;
    if len > MAX_CHUNK_PAYLOAD {
        out.truncate(start);
        return Err(FtError::TooLarge(len32(len)));
    }
    out[start + 4..start + 8].copy_from_slice(&len32(len).to_le_bytes());
    let crc = CRC32C.checksum(&out[start..]);
    put_u32(out, crc);
    Ok(())
}

/// A chunk's kind, number, payload and whole length.
type Split<'a> = (u8, u32, &'a [u8], usize);

/// The payload of the chunk at the start of `bytes` (`Ok(None)`: not all
/// of it is there yet).
fn split_chunk(bytes: &[u8]) -> Result<Option<Split<'_>>, FtError> {
    if let Some(&m) = bytes.first() {
        if m != STATE_MAGIC {
            return Err(FtError::BadMagic(m));
        }
    }
    if let Some(&v) = bytes.get(1) {
        if v != STATE_FORMAT_VERSION {
            return Err(FtError::UnsupportedVersion(v));
        }
    }
    if let Some(&r) = bytes.get(3) {
        if r != 0 {
            return Err(FtError::ReservedBitsSet(r));
        }
    }
    if bytes.len() < CHUNK_HEADER_LEN {
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let len = word(4);
    let n = word(8);
    let len_usize = usize::try_from(len).map_err(|_| FtError::TooLarge(len))?;
    if len_usize > MAX_CHUNK_PAYLOAD {
        return Err(FtError::TooLarge(len));
    }
    let total = CHUNK_HEADER_LEN + len_usize + CHUNK_TRAILER_LEN;
    if bytes.len() < total {
        return Ok(None);
    }
    let body = &bytes[..CHUNK_HEADER_LEN + len_usize];
    let stored = word(CHUNK_HEADER_LEN + len_usize);
    let computed = CRC32C.checksum(body);
    if stored != computed {
        return Err(FtError::CrcMismatch { stored, computed });
    }
    Ok(Some((bytes[2], n, &body[CHUNK_HEADER_LEN..], total)))
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Chunk, FtError> {
    let mut r = Reader::new(kind, payload);
    let chunk = match kind {
        1 => Chunk::Begin {
            cluster: r.u64()?,
            sender: r.u64()?,
            guest_id: r.array()?,
            machine: MachineId::from_bytes(&r.array()?),
            generation: r.u64()?,
            ram_bytes: r.u64()?,
        },
        2 => {
            let round = r.u32()?;
            let count = r.u32()? as usize;
            if count > PAGES_PER_CHUNK {
                return Err(r.bad("more pages than a chunk carries"));
            }
            let mut pages = Vec::with_capacity(count);
            for _ in 0..count {
                let n = r.u64()?;
                let data = match r.u8()? {
                    0 => PageData::Zero,
                    1 => PageData::Bytes(r.bytes(PAGE)?.to_vec()),
                    _ => return Err(r.bad("page flag is neither 0 (zero) nor 1 (bytes)")),
                };
                pages.push((n, data));
            }
            Chunk::Pages { round, pages }
        }
        3 => {
            let mut gprs = [0u64; 16];
            for g in &mut gprs {
                *g = r.u64()?;
            }
            let mut lists: [Vec<(u32, u64)>; 2] = [Vec::new(), Vec::new()];
            for list in &mut lists {
                let count = r.u32()? as usize;
                // Each pair is 12 bytes: a count beyond what is left is a lie.
                if count > r.remaining() / 12 {
                    return Err(r.bad("list longer than the payload"));
                }
                for _ in 0..count {
                    list.push((r.u32()?, r.u64()?));
                }
            }
            let [fields, msrs] = lists;
            let fxsave = r.bytes(FXSAVE_LEN)?.to_vec();
            let cr2 = r.u64()?;
            let mut debug = [0u64; 5];
            for d in &mut debug {
                *d = r.u64()?;
            }
            Chunk::Vcpu {
                gprs,
                fields,
                msrs,
                fxsave,
                cr2,
                debug,
            }
        }
        4 => Chunk::Device {
            id: r.u16()?,
            version: r.u16()?,
            blob: r.bytes(r.remaining())?.to_vec(),
        },
        5 => Chunk::Commit {
            at: r.point()?,
            guest_time_ns: r.u64()?,
            resume_seq: r.u64()?,
            chunks: r.u32()?,
            pages: r.u64()?,
            digest: r.u64()?,
        },
        6 => Chunk::Join {
            cluster: r.u64()?,
            node: r.u64()?,
            machine: MachineId::from_bytes(&r.array()?),
        },
        other => return Err(FtError::UnknownKind(other)),
    };
    r.end()?;
    Ok(chunk)
}

/// Decodes the chunk at the start of `bytes`: the chunk, its number and
/// the bytes it took; `Ok(None)` if more bytes are needed.
pub fn decode_chunk(bytes: &[u8]) -> Result<Option<(u32, Chunk, usize)>, FtError> {
    match split_chunk(bytes)? {
        None => Ok(None),
        Some((kind, n, payload, used)) => Ok(Some((n, decode_payload(kind, payload)?, used))),
    }
}

/// What the receiving node expects: its cluster and machine, and the
/// guest if it was configured with one (a joining node has no image: it
/// takes the guest the Begin names, [`Staged::guest_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub cluster: u64,
    pub guest_id: Option<[u8; 16]>,
    pub machine: MachineId,
}

/// A transfer that verified: everything but the pages (already handed
/// over), to apply before the guest starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The serving node's id and the guest it runs (from the Begin).
    pub sender: u64,
    pub guest_id: [u8; 16],
    pub generation: u64,
    pub at: ExecPoint,
    pub guest_time_ns: u64,
    pub resume_seq: u64,
    /// The last [`Chunk::Vcpu`] (sent once, after the guest stopped).
    pub vcpu: Chunk,
    /// `(id, version, blob)` of each device model.
    pub devices: Vec<(u16, u16, Vec<u8>)>,
    /// Pages received, over all rounds (a page sent twice counts twice).
    pub pages: u64,
    pub rounds: u32,
}

/// What a [`Receiver`] did with bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More chunks are expected.
    Receiving,
    /// The commit verified.
    Complete(alloc::boxed::Box<Staged>),
}

/// Why a transfer was refused (the receiver stays refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub alloc::string::String);

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "state transfer refused: {}", self.0)
    }
}

/// The joining node's side of a transfer.
#[derive(Debug)]
pub struct Receiver {
    expect: Expect,
    buf: Vec<u8>,
    next: u32,
    digest: u64,
    begin: Option<(u64, u64)>,
    sender: (u64, [u8; 16]),
    vcpu: Option<Chunk>,
    devices: Vec<(u16, u16, Vec<u8>)>,
    pages: u64,
    rounds: u32,
    refused: Option<Refused>,
    done: bool,
}

impl Receiver {
    /// A receiver for the guest and machine `expect` names.
    pub fn new(expect: Expect) -> Self {
        Self {
            expect,
            buf: Vec::new(),
            next: 0,
            digest: HASH_SEED,
            begin: None,
            sender: (0, [0; 16]),
            vcpu: None,
            devices: Vec::new(),
            pages: 0,
            rounds: 0,
            refused: None,
            done: false,
        }
    }

    /// Bytes from the sender. `page` takes each page as it arrives (page
    /// number within RAM, [`PAGE`] bytes; `None`: all zero) and may
    /// write it into the guest RAM that does not run yet.
    pub fn push(
        &mut self,
        bytes: &[u8],
        page: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<Progress, Refused> {
        if let Some(r) = &self.refused {
            return Err(r.clone());
        }
        let mut buf = core::mem::take(&mut self.buf);
        buf.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            match self.step(&buf[at..], page) {
                Ok(Some((used, done))) => {
                    at += used;
                    if let Some(staged) = done {
                        break Ok(Progress::Complete(alloc::boxed::Box::new(staged)));
                    }
                }
                Ok(None) => break Ok(Progress::Receiving),
                Err(why) => break Err(why),
            }
        };
        buf.drain(..at);
        match &result {
            Err(why) => self.refused = Some(why.clone()),
            Ok(_) => self.buf = buf,
        }
        result
    }

    /// One chunk from the start of `bytes`: its length, and the staged
    /// state if it was the commit.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        bytes: &[u8],
        page: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<Option<(usize, Option<Staged>)>, Refused> {
        let refuse = |what: alloc::string::String| Refused(what);
        let (kind, n, payload, used) = match split_chunk(bytes) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => return Err(refuse(alloc::format!("chunk {}: {e:?}", self.next))),
        };
        if self.done {
            return Err(refuse(alloc::format!("chunk {n} after the commit")));
        }
        if n != self.next {
            return Err(refuse(alloc::format!(
                "chunk {n} out of order (expected {})",
                self.next
            )));
        }
        let chunk = decode_payload(kind, payload)
            .map_err(|e| refuse(alloc::format!("chunk {n}: {e:?}")))?;
        self.next += 1;
        let staged: Option<Staged> = match chunk {
            Chunk::Begin {
                cluster,
                sender,
                guest_id,
                machine,
                generation,
                ram_bytes,
            } => {
                if n != 0 {
                    return Err(refuse(alloc::format!("a second Begin at chunk {n}")));
                }
                if cluster != self.expect.cluster {
                    return Err(refuse(alloc::format!(
                        "the sender is of cluster {cluster}, this node of cluster {}",
                        self.expect.cluster
                    )));
                }
                if self.expect.guest_id.is_some_and(|g| g != guest_id) {
                    return Err(refuse("the sender runs another guest (guest id)".into()));
                }
                self.sender = (sender, guest_id);
                if let Some((field, theirs, ours)) = self.expect.machine.first_difference(&machine)
                {
                    return Err(refuse(alloc::format!(
                        "the sender's machine differs: {field} is {theirs} there, {ours} here"
                    )));
                }
                if ram_bytes != self.expect.machine.guest_mem {
                    return Err(refuse(alloc::format!(
                        "RAM size {ram_bytes} != this node's {}",
                        self.expect.machine.guest_mem
                    )));
                }
                self.begin = Some((generation, ram_bytes));
                None
            }
            Chunk::Join { .. } => {
                return Err(refuse(alloc::format!(
                    "chunk {n} is a join request, not part of a transfer"
                )))
            }
            _ if self.begin.is_none() => {
                return Err(refuse(alloc::format!(
                    "chunk {n} (kind {kind}) before the Begin"
                )))
            }
            Chunk::Pages { round, pages } => {
                let ram_pages = self.begin.map_or(0, |b| b.1) / PAGE as u64;
                if round < self.rounds.saturating_sub(1) {
                    return Err(refuse(alloc::format!(
                        "pages of round {round} after round {}",
                        self.rounds - 1
                    )));
                }
                self.rounds = self.rounds.max(round + 1);
                for (p, data) in &pages {
                    if *p >= ram_pages {
                        return Err(refuse(alloc::format!(
                            "page {p} is outside the {ram_pages} pages of RAM"
                        )));
                    }
                    page(
                        *p,
                        match data {
                            PageData::Zero => None,
                            PageData::Bytes(b) => Some(b),
                        },
                    );
                }
                self.pages += pages.len() as u64;
                None
            }
            v @ Chunk::Vcpu { .. } => {
                self.vcpu = Some(v);
                None
            }
            Chunk::Device { id, version, blob } => {
                self.devices.push((id, version, blob));
                None
            }
            Chunk::Commit {
                at,
                guest_time_ns,
                resume_seq,
                chunks,
                pages,
                digest,
            } => {
                if chunks != n || pages != self.pages || digest != self.digest {
                    return Err(refuse(alloc::format!(
                        "the commit does not match what arrived: {chunks} chunks, {pages} pages, digest {digest:#018x}; received {n}, {}, {:#018x}",
                        self.pages, self.digest
                    )));
                }
                let vcpu = self
                    .vcpu
                    .take()
                    .ok_or_else(|| refuse("committed without the vCPU state".into()))?;
                self.done = true;
                Some(Staged {
                    sender: self.sender.0,
                    guest_id: self.sender.1,
                    generation: self.begin.map_or(0, |b| b.0),
                    at,
                    guest_time_ns,
                    resume_seq,
                    vcpu,
                    devices: core::mem::take(&mut self.devices),
                    pages: self.pages,
                    rounds: self.rounds,
                })
            }
        };
        self.digest = hash_bytes(self.digest, payload);
        Ok(Some((used, staged)))
    }
}

/// A joining node's request ([`Chunk::Join`]) as the serving node reads
/// it from the start of `bytes`: `Ok(None)` until all of it arrived; a
/// damaged chunk, another kind or another cluster is refused.
pub fn read_join(bytes: &[u8], cluster: u64) -> Result<Option<(u64, MachineId, usize)>, Refused> {
    let refuse = |what: alloc::string::String| Err(Refused(what));
    match decode_chunk(bytes) {
        Ok(None) => Ok(None),
        Ok(Some((
            0,
            Chunk::Join {
                cluster: c,
                node,
                machine,
            },
            used,
        ))) => {
            if c != cluster {
                return refuse(alloc::format!(
                    "the joining node is of cluster {c}, this node of cluster {cluster}"
                ));
            }
            Ok(Some((node, machine, used)))
        }
        Ok(Some((n, other, _))) => refuse(alloc::format!(
            "expected a join request as chunk 0, got chunk {n} of kind {}",
            other.kind()
        )),
        Err(e) => refuse(alloc::format!("join request: {e:?}")),
    }
}

/// The sender's side: numbers the chunks and keeps the running digest the
/// commit carries.
#[derive(Debug)]
pub struct Sender {
    next: u32,
    digest: u64,
    pages: u64,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

impl Sender {
    /// A new transfer.
    pub fn new() -> Self {
        Self {
            next: 0,
            digest: HASH_SEED,
            pages: 0,
        }
    }

    /// Appends `chunk` to `out` (a [`Chunk::Commit`]'s counts and digest
    /// are filled in here, whatever the caller put there).
    pub fn push(&mut self, chunk: Chunk, out: &mut Vec<u8>) -> Result<(), FtError> {
        let chunk = match chunk {
            Chunk::Commit {
                at,
                guest_time_ns,
                resume_seq,
                ..
            } => Chunk::Commit {
                at,
                guest_time_ns,
                resume_seq,
                chunks: self.next,
                pages: self.pages,
                digest: self.digest,
            },
            other => other,
        };
        let start = out.len();
        encode_chunk(self.next, &chunk, out)?;
        let payload = &out[start + CHUNK_HEADER_LEN..out.len() - CHUNK_TRAILER_LEN];
        self.digest = hash_bytes(self.digest, payload);
        if let Chunk::Pages { pages, .. } = &chunk {
            self.pages += pages.len() as u64;
        }
        self.next += 1;
        Ok(())
    }
}

/// What `ftlog state` prints for the transfer in `bytes`: what was sent,
/// round by round, and whether it would be accepted (by a receiver
/// expecting the guest and machine its Begin names: the integrity, the
/// order and the commit are checked, not the identity).
pub fn summarise(bytes: &[u8]) -> Vec<alloc::string::String> {
    use alloc::format;
    let mut lines = Vec::new();
    let mut rounds: alloc::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    let mut expect = None;
    let mut at = 0;
    while at < bytes.len() {
        let (n, chunk, used) = match decode_chunk(&bytes[at..]) {
            Ok(Some(x)) => x,
            Ok(None) => {
                lines.push(format!(
                    "byte {at}: a chunk cut short ({} bytes left)",
                    bytes.len() - at
                ));
                break;
            }
            Err(e) => {
                lines.push(format!("byte {at}: {e:?}"));
                break;
            }
        };
        at += used;
        match chunk {
            Chunk::Begin {
                cluster,
                sender,
                guest_id,
                machine,
                generation,
                ram_bytes,
            } => {
                expect = Some(Expect {
                    cluster,
                    guest_id: Some(guest_id),
                    machine,
                });
                let id: alloc::string::String =
                    guest_id.iter().map(|b| format!("{b:02x}")).collect();
                lines.push(format!(
                    "chunk {n}: begin: format {STATE_FORMAT_VERSION}, cluster {cluster}, from node {sender}, guest id {id}, generation {generation}, RAM {} MiB",
                    ram_bytes >> 20
                ));
            }
            Chunk::Join {
                cluster,
                node,
                machine,
            } => {
                lines.push(format!(
                    "chunk {n}: join request: cluster {cluster}, node {node}, machine {machine}"
                ));
            }
            Chunk::Pages { round, pages } => {
                let e = rounds.entry(round).or_default();
                e.0 += pages.len() as u64;
                e.1 += pages.iter().filter(|p| p.1 == PageData::Zero).count() as u64;
            }
            Chunk::Vcpu {
                fields,
                msrs,
                fxsave,
                ..
            } => {
                let rip = fields.iter().find(|f| f.0 == 0x681E).map_or(0, |f| f.1);
                lines.push(format!(
                    "chunk {n}: vcpu: 16 general registers, {} VMCS fields (RIP {rip:#x}), {} MSRs, {} bytes of x87/SSE state",
                    fields.len(),
                    msrs.len(),
                    fxsave.len()
                ));
            }
            Chunk::Device { id, version, blob } => {
                lines.push(format!(
                    "chunk {n}: device {id} (layout {version}): {} bytes",
                    blob.len()
                ));
            }
            Chunk::Commit {
                at: p,
                guest_time_ns,
                resume_seq,
                chunks,
                pages,
                ..
            } => {
                lines.push(format!(
                    "chunk {n}: commit: {chunks} chunks and {pages} pages before it; the pair resumes at (counter {}, rip {:#x}, rcx {:#x}), guest time {guest_time_ns} ns, log after record {resume_seq}",
                    p.counter, p.rip, p.rcx
                ));
            }
        }
    }
    for (round, (pages, zero)) in &rounds {
        lines.push(format!("round {round}: {pages} pages ({zero} zero)"));
    }
    let verdict = match expect {
        None => "not accepted: no Begin".into(),
        Some(e) => match Receiver::new(e).push(bytes, &mut |_, _| {}) {
            Ok(Progress::Complete(_)) => {
                "accepted: every chunk in order, the commit's counts and digest match".into()
            }
            Ok(Progress::Receiving) => "incomplete: no commit yet".into(),
            Err(why) => format!("not accepted: {}", why.0),
        },
    };
    lines.push(verdict);
    lines
}

#[cfg(test)]
mod tests;
