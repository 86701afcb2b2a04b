//! Arbitration through a test-and-set flag on the shared storage
//! (DESIGN.md §1.7; seeds/003 around "both basically reach out to the
//! storage server and try to write a flag"; SBC-3 COMPARE AND WRITE).
//!
//! The flag is one reserved 512-byte block of the shared LUN holding a
//! [`FlagRecord`] `{magic, version, generation, owner, crc}`. The layout,
//! little-endian (pinned byte for byte by the `layout_is_pinned` test):
//!
//! | bytes  | field                               |
//! |--------|-------------------------------------|
//! | 0..4   | magic `"FTFL"` (u32)                |
//! | 4..6   | version [`FLAG_VERSION`] (u16)      |
//! | 6..8   | zero                                |
//! | 8..16  | generation (u64)                    |
//! | 16..24 | owner [`NodeId`] (u64)              |
//! | 24..28 | CRC32C of bytes 0..24 (u32)         |
//! | 28..   | zero to the end of the block        |
//!
//! [`FlagRecord::to_bytes`]/[`FlagRecord::from_bytes`] are the
//! [`FLAG_LEN`] meaningful bytes; [`FlagRecord::to_block`]/
//! [`FlagRecord::from_block`] the whole [`FLAG_BLOCK`]-byte block as it is
//! on the LUN (what COMPARE AND WRITE compares). Whoever wants
//! to act alone calls [`SharedStorage::try_acquire`] with the generation
//! it believes current; it succeeds atomically iff the stored generation
//! still equals that value, and writes `generation + 1` with itself as
//! owner. A miscompare means someone else won: halt for good. Storage
//! unreachable is a distinct error: nobody goes live (safety over
//! availability).

use crc::{Crc, CRC_32_ISCSI};

use crate::FtError;

/// A hypervisor's identity in the cluster (nonzero by convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// `"FTFL"` little-endian.
pub const FLAG_MAGIC: u32 = u32::from_le_bytes(*b"FTFL");
/// Flag block layout version.
pub const FLAG_VERSION: u16 = 1;
/// Meaningful bytes of an encoded flag (the rest of its block is zero).
pub const FLAG_LEN: usize = 28;
/// The flag's block on the shared LUN (one logical block).
pub const FLAG_BLOCK: usize = 512;

static CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// The arbitration record stored on the shared LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagRecord {
    /// [`FLAG_MAGIC`].
    pub magic: u32,
    /// [`FLAG_VERSION`].
    pub version: u16,
    /// Bumped by every successful acquisition.
    pub generation: u64,
    /// The node that wrote this generation.
    pub owner: NodeId,
    /// CRC32C over the encoded bytes before it.
    pub crc: u32,
}

impl FlagRecord {
    /// A valid record for `generation` owned by `owner`.
    pub fn new(generation: u64, owner: NodeId) -> Self {
        let mut r = Self {
            magic: FLAG_MAGIC,
            version: FLAG_VERSION,
            generation,
            owner,
            crc: 0,
        };
        r.crc = CRC32C.checksum(&r.to_bytes()[..24]);
        r
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; FLAG_LEN] {
        let mut b = [0u8; FLAG_LEN];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.owner.0.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Parses and validates the [`FLAG_LEN`] meaningful bytes (exactly
    /// that many).
    pub fn from_bytes(b: &[u8]) -> Result<Self, FtError> {
        let b: &[u8; FLAG_LEN] = b
            .try_into()
            .map_err(|_| FtError::FlagCorrupt("not 28 bytes"))?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let r = Self {
            magic: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            version: u16::from_le_bytes([b[4], b[5]]),
            generation: u64_at(8),
            owner: NodeId(u64_at(16)),
            crc: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
        };
        if r.magic != FLAG_MAGIC {
            return Err(FtError::FlagCorrupt("bad magic"));
        }
        if r.version != FLAG_VERSION {
            return Err(FtError::FlagCorrupt("unknown version"));
        }
        if b[6..8] != [0, 0] {
            return Err(FtError::FlagCorrupt("reserved bytes set"));
        }
        if CRC32C.checksum(&b[..24]) != r.crc {
            return Err(FtError::FlagCorrupt("crc mismatch"));
        }
        Ok(r)
    }

    /// The whole block as it is on the LUN: [`Self::to_bytes`], then zeros.
    pub fn to_block(&self) -> [u8; FLAG_BLOCK] {
        let mut b = [0u8; FLAG_BLOCK];
        b[..FLAG_LEN].copy_from_slice(&self.to_bytes());
        b
    }

    /// Parses and validates a whole block: exactly [`FLAG_BLOCK`] bytes,
    /// a valid record in the first [`FLAG_LEN`], zeros after it.
    pub fn from_block(b: &[u8]) -> Result<Self, FtError> {
        if b.len() != FLAG_BLOCK {
            return Err(FtError::FlagCorrupt("block is not 512 bytes"));
        }
        let r = Self::from_bytes(&b[..FLAG_LEN])?;
        if b[FLAG_LEN..].iter().any(|&x| x != 0) {
            return Err(FtError::FlagCorrupt("reserved bytes set"));
        }
        Ok(r)
    }
}

/// The shared storage's flag block. The real implementation issues
/// COMPARE AND WRITE over iSCSI (crate `drivers`); the simulator has its
/// own.
pub trait SharedStorage {
    /// Reads the current flag.
    fn read_flag(&mut self) -> Result<FlagRecord, FtError>;

    /// Atomically: if the stored generation equals `expected_generation`,
    /// store `FlagRecord::new(expected_generation + 1, me)` and return it.
    /// Otherwise [`FtError::Miscompare`] with the stored record, or
    /// [`FtError::StorageUnreachable`] when the server cannot be reached
    /// (the write may or may not have happened).
    fn try_acquire(&mut self, expected_generation: u64, me: NodeId) -> Result<FlagRecord, FtError>;

    /// Registers `me`'s reservation key on the shared disk (SCSI-3 PR
    /// REGISTER; the LUN is reserved Write Exclusive – Registrants Only),
    /// so that only registered nodes may write it.
    fn register(&mut self, me: NodeId) -> Result<(), FtError> {
        let _ = me;
        Err(FtError::FencingUnsupported)
    }

    /// Cuts `loser` off the shared disk (PREEMPT AND ABORT of its key by
    /// `me`): its later writes, and its commands still queued, fail with
    /// RESERVATION CONFLICT. Idempotent.
    fn fence(&mut self, me: NodeId, loser: NodeId) -> Result<(), FtError> {
        let _ = (me, loser);
        Err(FtError::FencingUnsupported)
    }
}

/// Outcome of one arbitration attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// We hold `generation`: act alone.
    Won(FlagRecord),
    /// Someone else holds the flag: halt for good.
    Lost(FlagRecord),
    /// Storage unreachable (or its flag unreadable): do nothing, retry.
    Unreachable,
}

/// One test-and-set attempt. A miscompare that shows our own win at
/// `expected_generation + 1` (our earlier write landed but the reply was
/// lost) counts as a win.
pub fn arbitrate<S: SharedStorage + ?Sized>(
    storage: &mut S,
    expected_generation: u64,
    me: NodeId,
) -> Verdict {
    match storage.try_acquire(expected_generation, me) {
        Ok(rec) => Verdict::Won(rec),
        Err(FtError::Miscompare { current })
            if current.owner == me
                && Some(current.generation) == expected_generation.checked_add(1) =>
        {
            Verdict::Won(current)
        }
        Err(FtError::Miscompare { current }) => Verdict::Lost(current),
        // The storage refused us (our reservation was preempted): someone
        // else won a later generation.
        Err(FtError::Fenced) => match storage.read_flag() {
            Ok(current) => Verdict::Lost(current),
            Err(_) => Verdict::Unreachable,
        },
        Err(_) => Verdict::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_roundtrip_and_corruption() {
        let r = FlagRecord::new(7, NodeId(2));
        let b = r.to_bytes();
        assert_eq!(FlagRecord::from_bytes(&b), Ok(r));
        for i in 0..FLAG_LEN {
            let mut bad = b;
            bad[i] ^= 0x40;
            assert!(FlagRecord::from_bytes(&bad).is_err(), "flip at byte {i}");
        }
        assert!(FlagRecord::from_bytes(&b[..FLAG_LEN - 1]).is_err());
        assert!(FlagRecord::from_bytes(&[b.as_slice(), &[0]].concat()).is_err());
    }

    /// The exact bytes of one record: the on-LUN format may not drift
    /// (the kernel, the drivers' COMPARE AND WRITE and the host tests that
    /// write the LUN image all use this type).
    #[test]
    fn layout_is_pinned() {
        #[rustfmt::skip]
        const GEN7_OWNER2: [u8; FLAG_LEN] = [
            0x46, 0x54, 0x46, 0x4c, // magic "FTFL"
            0x01, 0x00,             // version 1
            0x00, 0x00,             // zero
            0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // generation 7
            0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // owner 2
            0xd6, 0x20, 0xb8, 0x64, // CRC32C of bytes 0..24
        ];
        let r = FlagRecord::new(7, NodeId(2));
        assert_eq!(r.crc, 0x64b8_20d6);
        assert_eq!(r.to_bytes(), GEN7_OWNER2);
        let block = r.to_block();
        assert_eq!(block[..FLAG_LEN], GEN7_OWNER2);
        assert!(block[FLAG_LEN..].iter().all(|&x| x == 0));
        assert_eq!(FlagRecord::from_bytes(&GEN7_OWNER2), Ok(r));
        // The initial flag every test rig writes: generation 0, owner 0.
        assert_eq!(FlagRecord::new(0, NodeId(0)).crc, 0x233c_1680);
    }

    #[test]
    fn block_roundtrip_and_tail() {
        for r in [
            FlagRecord::new(0, NodeId(0)),
            FlagRecord::new(7, NodeId(2)),
            FlagRecord::new(u64::MAX, NodeId(u64::MAX)),
        ] {
            let b = r.to_block();
            assert_eq!(b.len(), FLAG_BLOCK);
            assert_eq!(FlagRecord::from_block(&b), Ok(r));
            // Any nonzero byte after the record is rejected.
            for i in FLAG_LEN..FLAG_BLOCK {
                let mut bad = b;
                bad[i] = 1;
                assert_eq!(
                    FlagRecord::from_block(&bad),
                    Err(FtError::FlagCorrupt("reserved bytes set")),
                    "tail byte {i}"
                );
            }
            for i in 0..FLAG_LEN {
                let mut bad = b;
                bad[i] ^= 0x10;
                assert!(FlagRecord::from_block(&bad).is_err(), "byte {i}");
            }
            assert!(FlagRecord::from_block(&b[..FLAG_BLOCK - 1]).is_err());
            assert!(FlagRecord::from_block(&[b.as_slice(), &[0]].concat()).is_err());
            assert!(FlagRecord::from_block(&b[..FLAG_LEN]).is_err());
        }
        assert!(
            FlagRecord::from_block(&[0; FLAG_BLOCK]).is_err(),
            "a blank disk is not a record"
        );
    }

    struct Mem(FlagRecord, bool);
    impl SharedStorage for Mem {
        fn read_flag(&mut self) -> Result<FlagRecord, FtError> {
            Ok(self.0)
        }
        fn try_acquire(&mut self, expected: u64, me: NodeId) -> Result<FlagRecord, FtError> {
            if self.1 {
                return Err(FtError::StorageUnreachable);
            }
            if self.0.generation != expected {
                return Err(FtError::Miscompare { current: self.0 });
            }
            self.0 = FlagRecord::new(expected + 1, me);
            Ok(self.0)
        }
    }

    #[test]
    fn a_fenced_node_has_lost() {
        struct Preempted(FlagRecord);
        impl SharedStorage for Preempted {
            fn read_flag(&mut self) -> Result<FlagRecord, FtError> {
                Ok(self.0)
            }
            fn try_acquire(&mut self, _: u64, _: NodeId) -> Result<FlagRecord, FtError> {
                Err(FtError::Fenced)
            }
        }
        let f = FlagRecord::new(5, NodeId(2));
        assert_eq!(arbitrate(&mut Preempted(f), 4, NodeId(1)), Verdict::Lost(f));
    }

    #[test]
    fn exactly_one_winner_and_lost_reply_is_recognised() {
        let mut s = Mem(FlagRecord::new(3, NodeId(1)), false);
        assert!(matches!(arbitrate(&mut s, 3, NodeId(2)), Verdict::Won(r) if r.generation == 4));
        assert!(
            matches!(arbitrate(&mut s, 3, NodeId(1)), Verdict::Lost(r) if r.owner == NodeId(2))
        );
        // Node 2 retries after a lost reply: still its win.
        assert!(matches!(arbitrate(&mut s, 3, NodeId(2)), Verdict::Won(_)));
        s.1 = true;
        assert_eq!(arbitrate(&mut s, 4, NodeId(2)), Verdict::Unreachable);
    }
}
