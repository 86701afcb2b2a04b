//! Test-and-set arbitration on the shared LUN (DESIGN.md §1.7) with SCSI
//! COMPARE AND WRITE (SBC-3 §5.2; sense MISCOMPARE, SPC-4 §4.5.6).
//!
//! One 512-byte block at a reserved LBA holds an
//! [`ft::arbitration::FlagRecord`] in its block form
//! ([`FlagRecord::to_block`]/[`FlagRecord::from_block`]; the layout is
//! documented and pinned byte for byte in `ft::arbitration`).
//!
//! [`Arbiter::try_acquire_from`] is a single COMPARE AND WRITE of the
//! expected record against `(generation + 1, me)`: the device compares and
//! writes atomically, so of any number of racers exactly one succeeds and
//! the others get MISCOMPARE. After a MISCOMPARE the block is read to say
//! who won; if it already holds our own `(generation + 1, me)` (our earlier
//! CAW landed but its reply was lost and the command was retried after a
//! reconnect) that is our win. Transport failures are
//! [`Error::StorageUnreachable`]: nobody may go live on them.
//!
//! [`LunFlag`] is the same flag behind `ft`'s
//! [`SharedStorage`](ft::arbitration::SharedStorage), so that
//! [`ft::arbitration::arbitrate`] (with its own-win recognition) runs on a
//! real LUN.
//!
//! # Fencing (SCSI-3 persistent reservations, SPC-4 §5.12)
//!
//! Every I_T nexus of node `n` (its flag session and its guest disk
//! session: different ISIDs are different nexuses) registers
//! [`reservation_key`]`(n)` with REGISTER AND IGNORE EXISTING KEY; the
//! first node to register also RESERVEs the LUN Write Exclusive –
//! Registrants Only ([`FENCE_TYPE`]): registered nexuses read and write,
//! every other one only reads. The winner of the flag then PREEMPTs AND
//! ABORTs the loser's key ([`LunFlag`]'s `fence`): all of the loser's
//! nexuses are unregistered, and its writes, COMPARE AND WRITEs and
//! SYNCHRONIZE CACHEs (also a WRITE its initiator re-issues after a
//! reconnect) end with RESERVATION CONFLICT ([`Error::ReservationConflict`]).
//! Registrations are only made at join: a preempted nexus can register
//! again (REGISTER with reservation key 0, or REGISTER AND IGNORE EXISTING
//! KEY, both GOOD), so a node must never register after it could have been
//! fenced.
//!
//! ## What istgt 0.4 (Debian 0.4~20111008) does (`tests/istgt.rs`)
//!
//! - Types: RESERVE accepts 1, 3, 5, 6, 7 and 8, scope LU only. Write
//!   Exclusive – Registrants Only (5) works as SPC-4 says: reads from
//!   anyone, writes/CAW/SYNCHRONIZE CACHE only from registered nexuses.
//!   (Exclusive Access – Registrants Only is type 6, not 7; it would also
//!   refuse an unregistered node's read of the flag, so 5 it is.) RESERVE
//!   while a reservation exists is GOOD only from the holder's key *and*
//!   initiator port, RESERVATION CONFLICT otherwise (so `register` reads
//!   the reservation first). "Holder" when checking a command means "a
//!   nexus registered with the holder's key".
//! - APTPL: REGISTER with APTPL=1 is CHECK CONDITION ILLEGAL REQUEST
//!   0x26/0x00; registrations and the reservation live in memory only and
//!   are gone after an istgt restart (writes are then unfenced until the
//!   nodes register again).
//! - PREEMPT [AND ABORT] of a key that is not registered: GOOD (SPC-4 says
//!   RESERVATION CONFLICT; `fence` handles both). From a nexus that is not
//!   registered: RESERVATION CONFLICT. No UNIT ATTENTION is set for the
//!   preempted nexuses.
//! - ABORT: only when the preempted key holds the reservation, and then
//!   only the tasks of the initiator port that made the RESERVE (not of
//!   every nexus registered with that key): tasks still queued for the LU
//!   are dropped without a response, a task waiting for Data-Out is
//!   failed. Preempting a key that does not hold the reservation aborts
//!   nothing, and a command of the loser already past its reservation
//!   check completes. (This point is read from
//!   `istgt_lu_disk_queue_clear_internal` and the PREEMPT code, not
//!   exercised; as far as the source shows, one LU thread runs the queued
//!   commands in order, so a PREEMPT would wait behind a loser's write
//!   that is waiting for its data.) What protects the disk is that every command checks the
//!   registration when it starts: a later command, or a command re-issued
//!   after a reconnect, conflicts.
//! - **Bug:** removing a registration that is not the last entry of its
//!   table (PREEMPT, also the unregister step of REGISTER AND IGNORE
//!   EXISTING KEY) moves the initiator ports of the later entries down one
//!   slot but leaves the keys where they were, and skips the entry it
//!   moved. With `[k1:p1, k2:p2, k3:p3]`, p3 preempting k1 leaves
//!   `[k1:p2, k2:p3]` (p1 correctly cut off, but READ KEYS still lists
//!   k1, and p2 now carries k1); a second PREEMPT of k1 then unregisters
//!   the bystander p2. With two nexuses per node (`[A:flag, B:flag,
//!   A:disk, B:disk]`), B fencing A leaves A's disk session registered.
//!   Fencing on istgt 0.4 is therefore only reliable when the loser's
//!   registrations are the last entries of the table. `fence` checks the
//!   table with READ KEYS before (a loser already gone is not preempted
//!   again) and after the PREEMPT, and a fence that did not take is
//!   [`Error::FenceIneffective`], reported as `FtError::Fenced`: this node
//!   must not act alone while the loser may still write.

use alloc::vec::Vec;
use core::fmt;

use ft::arbitration::{FlagRecord, NodeId, SharedStorage};
use ft::FtError;

use crate::error::{Error, Result};
use crate::iscsi::{Clock, Initiator, Transport};
use crate::scsi::{PrKeys, PrOutAction, PrOutParams, PrReservation, PrType, SenseKey};

/// The block operations arbitration needs (an iSCSI LUN, or a fake), and
/// the persistent reservation commands fencing needs, all from one I_T
/// nexus (one iSCSI session's initiator port).
pub trait FlagDisk {
    fn read_block(&mut self, lba: u64) -> Result<Vec<u8>>;
    fn write_block(&mut self, lba: u64, data: &[u8]) -> Result<()>;
    /// Atomic compare-and-write of one block; [`Error::Miscompare`] when
    /// the block differs from `compare`.
    fn compare_and_write(&mut self, lba: u64, compare: &[u8], write: &[u8]) -> Result<()>;
    fn flush(&mut self) -> Result<()>;

    /// Makes a session that failed for good usable again (log in anew on
    /// the same nexus); nothing to do for a disk without sessions.
    fn revive(&mut self) -> Result<()> {
        Ok(())
    }

    /// PERSISTENT RESERVE OUT (SPC-4 §6.16). A disk without persistent
    /// reservations answers [`Error::Unsupported`].
    fn reserve_out(&mut self, action: PrOutAction, ty: PrType, params: &PrOutParams) -> Result<()> {
        let _ = (action, ty, params);
        Err(Error::Unsupported("persistent reservations"))
    }
    /// PERSISTENT RESERVE IN READ KEYS (SPC-4 §6.15.2).
    fn read_keys(&mut self) -> Result<PrKeys> {
        Err(Error::Unsupported("persistent reservations"))
    }
    /// PERSISTENT RESERVE IN READ RESERVATION (SPC-4 §6.15.3).
    fn read_reservation(&mut self) -> Result<PrReservation> {
        Err(Error::Unsupported("persistent reservations"))
    }
}

impl<T: Transport, C: Clock> FlagDisk for Initiator<T, C> {
    fn read_block(&mut self, lba: u64) -> Result<Vec<u8>> {
        self.read16(lba, 1)
    }
    fn write_block(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.write16(lba, data.to_vec())
    }
    fn compare_and_write(&mut self, lba: u64, compare: &[u8], write: &[u8]) -> Result<()> {
        Initiator::compare_and_write(self, lba, compare, write)
    }
    fn flush(&mut self) -> Result<()> {
        self.synchronize_cache()
    }
    fn revive(&mut self) -> Result<()> {
        Initiator::revive(self)
    }
    fn reserve_out(&mut self, action: PrOutAction, ty: PrType, params: &PrOutParams) -> Result<()> {
        self.persistent_reserve_out(action, ty, params)
    }
    fn read_keys(&mut self) -> Result<PrKeys> {
        Initiator::read_keys(self)
    }
    fn read_reservation(&mut self) -> Result<PrReservation> {
        Initiator::read_reservation(self)
    }
}

/// `"FT"` in the top two bytes of every reservation key.
pub const KEY_PREFIX: u64 = 0x4654_0000_0000_0000;

/// The reservation key of `node`: [`KEY_PREFIX`] XOR its id, so
/// `0x4654_0000_0000_0002` for node 2 (distinct ids have distinct keys;
/// 0, "no key", only for the nonsensical id `KEY_PREFIX`). Every I_T
/// nexus of a node (its flag session and its data session) registers this
/// key, so that one PREEMPT of it cuts all of them off.
pub fn reservation_key(node: NodeId) -> u64 {
    KEY_PREFIX ^ node.0
}

/// The reservation type fencing uses: Write Exclusive – Registrants Only
/// (every registered nexus writes, every other one only reads).
pub const FENCE_TYPE: PrType = PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY;

/// Outcome of an acquisition attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// We hold this record's generation: act alone.
    Won(FlagRecord),
    /// Someone else does (the record read back after the miscompare).
    Lost(FlagRecord),
}

/// Transport-level failures mean the storage is unreachable; SCSI and
/// record errors pass through.
fn reachability(e: Error) -> Error {
    match e {
        Error::ConnectionClosed
        | Error::Timeout
        | Error::NotLoggedIn
        | Error::StorageUnreachable => Error::StorageUnreachable,
        other => other,
    }
}

/// A block that is not a valid flag record.
fn corrupt(e: FtError) -> Error {
    match e {
        FtError::FlagCorrupt(why) => Error::CorruptRecord(why),
        _ => Error::CorruptRecord("not a flag record"),
    }
}

/// The record a successful acquisition of `r`'s successor by `me` writes.
fn successor(r: &FlagRecord, me: NodeId) -> Result<FlagRecord> {
    r.generation
        .checked_add(1)
        .map(|g| FlagRecord::new(g, me))
        .ok_or(Error::CorruptRecord("generation exhausted"))
}

/// The flag at one reserved LBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arbiter {
    pub lba: u64,
}

impl Arbiter {
    pub fn new(lba: u64) -> Self {
        Arbiter { lba }
    }

    /// Writes generation 0, owner `owner`, and flushes. Only for a fresh
    /// cluster: it overwrites whatever is there.
    pub fn init<D: FlagDisk + ?Sized>(&self, disk: &mut D, owner: NodeId) -> Result<FlagRecord> {
        let rec = FlagRecord::new(0, owner);
        disk.write_block(self.lba, &rec.to_block())
            .map_err(reachability)?;
        disk.flush().map_err(reachability)?;
        Ok(rec)
    }

    /// Reads and validates the record.
    pub fn read<D: FlagDisk + ?Sized>(&self, disk: &mut D) -> Result<FlagRecord> {
        FlagRecord::from_block(&disk.read_block(self.lba).map_err(reachability)?).map_err(corrupt)
    }

    /// One COMPARE AND WRITE: `expected` → `(expected.generation + 1, me)`.
    pub fn try_acquire_from<D: FlagDisk + ?Sized>(
        &self,
        disk: &mut D,
        expected: FlagRecord,
        me: NodeId,
    ) -> Result<Acquire> {
        let new = successor(&expected, me)?;
        match disk.compare_and_write(self.lba, &expected.to_block(), &new.to_block()) {
            Ok(()) => Ok(Acquire::Won(new)),
            Err(Error::Miscompare) => {
                let current = self.read(disk)?;
                Ok(if current == new {
                    Acquire::Won(current)
                } else {
                    Acquire::Lost(current)
                })
            }
            Err(e) => Err(reachability(e)),
        }
    }

    /// Acquire generation `expected_generation + 1` if the flag still holds
    /// `expected_generation`: reads the record to learn its owner, then one
    /// COMPARE AND WRITE. A flag already at our own
    /// `(expected_generation + 1, me)` is our win.
    pub fn try_acquire<D: FlagDisk + ?Sized>(
        &self,
        disk: &mut D,
        expected_generation: u64,
        me: NodeId,
    ) -> Result<Acquire> {
        let current = self.read(disk)?;
        if current.generation != expected_generation {
            let ours = current.owner == me
                && Some(current.generation) == expected_generation.checked_add(1);
            return Ok(if ours {
                Acquire::Won(current)
            } else {
                Acquire::Lost(current)
            });
        }
        self.try_acquire_from(disk, current, me)
    }
}

/// Which step of a [`LunFlag`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagStep {
    /// Reading the flag block (before the COMPARE AND WRITE, or after its
    /// MISCOMPARE).
    Read,
    /// The COMPARE AND WRITE itself.
    CompareAndWrite,
    /// REGISTER AND IGNORE EXISTING KEY of our key.
    Register,
    /// READ RESERVATION (during `register`).
    ReadReservation,
    /// RESERVE Write Exclusive – Registrants Only.
    Reserve,
    /// PREEMPT AND ABORT of the loser's key.
    Preempt,
    /// READ KEYS (before and after the PREEMPT AND ABORT).
    ReadKeys,
    /// The check after the PREEMPT AND ABORT.
    Verify,
}

impl fmt::Display for FlagStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlagStep::Read => "reading the flag",
            FlagStep::CompareAndWrite => "COMPARE AND WRITE",
            FlagStep::Register => "PERSISTENT RESERVE OUT REGISTER AND IGNORE EXISTING KEY",
            FlagStep::ReadReservation => "PERSISTENT RESERVE IN READ RESERVATION",
            FlagStep::Reserve => "PERSISTENT RESERVE OUT RESERVE",
            FlagStep::Preempt => "PERSISTENT RESERVE OUT PREEMPT AND ABORT",
            FlagStep::ReadKeys => "PERSISTENT RESERVE IN READ KEYS",
            FlagStep::Verify => "checking the fence with READ KEYS",
        })
    }
}

/// The flag of `arbiter` on `disk` as `ft`'s [`SharedStorage`].
///
/// [`SharedStorage::try_acquire`] reads the current record (COMPARE AND
/// WRITE compares whole blocks, so the owner must be known) and, if it
/// holds `expected_generation`, issues one COMPARE AND WRITE of it against
/// `FlagRecord::new(expected_generation + 1, me)`. It leaves the own-win
/// recognition to [`ft::arbitration::arbitrate`]. Errors map to
/// [`FtError`]: MISCOMPARE (or a stale generation) is
/// [`FtError::Miscompare`] with the record read back; a block that does
/// not parse is [`FtError::FlagCorrupt`]; every other failure (transport,
/// or a SCSI error that leaves the flag unusable) is
/// [`FtError::StorageUnreachable`]: no one may go live on it.
/// [`LunFlag::last_error`] keeps the drivers error behind the last failure.
pub struct LunFlag<'a, D: FlagDisk + ?Sized> {
    pub disk: &'a mut D,
    pub arbiter: Arbiter,
    /// The step and drivers error behind the last [`FtError`] other than a
    /// miscompare (`None` after a call that succeeded or miscompared).
    pub last_error: Option<(FlagStep, Error)>,
}

impl<'a, D: FlagDisk + ?Sized> LunFlag<'a, D> {
    pub fn new(disk: &'a mut D, arbiter: Arbiter) -> Self {
        LunFlag {
            disk,
            arbiter,
            last_error: None,
        }
    }

    /// Records `e` and maps it to `ft`'s error: a corrupt block is
    /// [`FtError::FlagCorrupt`], RESERVATION CONFLICT [`FtError::Fenced`],
    /// a device without persistent reservations (or reserved in a way we
    /// cannot use) [`FtError::FencingUnsupported`], anything else
    /// [`FtError::StorageUnreachable`].
    fn fail(&mut self, step: FlagStep, e: Error) -> FtError {
        let mapped = match &e {
            Error::CorruptRecord(why) => FtError::FlagCorrupt(why),
            Error::ReservationConflict | Error::FenceIneffective(_) => FtError::Fenced,
            Error::Unsupported(_) | Error::ForeignReservation { .. } => FtError::FencingUnsupported,
            // INVALID COMMAND OPERATION CODE (SPC-4 table 49, ASC 0x20):
            // a target without PERSISTENT RESERVE IN/OUT.
            Error::Scsi { sense: Some(s), .. }
                if s.key == SenseKey::ILLEGAL_REQUEST && s.asc == 0x20 =>
            {
                FtError::FencingUnsupported
            }
            _ => FtError::StorageUnreachable,
        };
        self.last_error = Some((step, e));
        mapped
    }

    fn read(&mut self) -> core::result::Result<FlagRecord, FtError> {
        let r = self.arbiter.read(&mut *self.disk);
        r.map_err(|e| self.fail(FlagStep::Read, e))
    }
}

impl<D: FlagDisk + ?Sized> SharedStorage for LunFlag<'_, D> {
    fn read_flag(&mut self) -> core::result::Result<FlagRecord, FtError> {
        self.last_error = None;
        self.read()
    }

    fn try_acquire(
        &mut self,
        expected_generation: u64,
        me: NodeId,
    ) -> core::result::Result<FlagRecord, FtError> {
        self.last_error = None;
        let current = self.read()?;
        if current.generation != expected_generation {
            return Err(FtError::Miscompare { current });
        }
        let new = successor(&current, me).map_err(|e| self.fail(FlagStep::CompareAndWrite, e))?;
        let lba = self.arbiter.lba;
        match self
            .disk
            .compare_and_write(lba, &current.to_block(), &new.to_block())
        {
            Ok(()) => Ok(new),
            Err(Error::Miscompare) => Err(FtError::Miscompare {
                current: self.read()?,
            }),
            Err(e) => Err(self.fail(FlagStep::CompareAndWrite, reachability(e))),
        }
    }

    /// REGISTER AND IGNORE EXISTING KEY of [`reservation_key`]`(me)` from
    /// this nexus, then, unless the LUN is already reserved Write
    /// Exclusive – Registrants Only (by anyone: under that type every
    /// registrant may write), RESERVE it so with our key. A RESERVE that
    /// conflicts because the peer reserved in between is fine if the
    /// reservation read back is of our type. Another reservation type is
    /// [`FtError::FencingUnsupported`] ([`Error::ForeignReservation`]).
    fn register(&mut self, me: NodeId) -> core::result::Result<(), FtError> {
        self.last_error = None;
        let key = reservation_key(me);
        if key == 0 {
            let why = "node id gives reservation key 0";
            self.last_error = Some((FlagStep::Register, Error::InvalidArgument(why)));
            return Err(FtError::WrongState(why));
        }
        let register = PrOutParams {
            service_action_key: key,
            ..PrOutParams::default()
        };
        self.disk
            .reserve_out(
                PrOutAction::RegisterAndIgnoreExistingKey,
                PrType::NONE,
                &register,
            )
            .map_err(|e| self.fail(FlagStep::Register, reachability(e)))?;
        if self.reserved_for_fencing()? {
            return Ok(());
        }
        let reserve = PrOutParams {
            reservation_key: key,
            ..PrOutParams::default()
        };
        match self
            .disk
            .reserve_out(PrOutAction::Reserve, FENCE_TYPE, &reserve)
        {
            Ok(()) => Ok(()),
            Err(Error::ReservationConflict) if self.reserved_for_fencing()? => Ok(()),
            Err(e) => Err(self.fail(FlagStep::Reserve, reachability(e))),
        }
    }

    /// Cuts `loser` off: PREEMPT AND ABORT of [`reservation_key`]`(loser)`
    /// by our key, type Write Exclusive – Registrants Only. Every nexus
    /// registered with the loser's key is unregistered, so its later
    /// writes (and COMPARE AND WRITEs) fail with RESERVATION CONFLICT; if
    /// the loser held the reservation, we hold it now.
    ///
    /// READ KEYS comes first and last:
    /// - before: the loser's key gone and ours present is Ok without a
    ///   PREEMPT (idempotent; a repeated PREEMPT on istgt 0.4 would remove
    ///   a bystander, see the module docs);
    /// - after a GOOD PREEMPT: the loser's key must be gone and ours
    ///   present. If not, the target did not do what it answered
    ///   ([`Error::FenceIneffective`]); the loser may still write, so this
    ///   is [`FtError::Fenced`]: we must not act alone, and a retry would
    ///   only damage the table further.
    ///
    /// A RESERVATION CONFLICT means this nexus is not registered: we were
    /// preempted ourselves, [`FtError::Fenced`]. Transport failures are
    /// [`FtError::StorageUnreachable`] (retry).
    fn fence(&mut self, me: NodeId, loser: NodeId) -> core::result::Result<(), FtError> {
        self.last_error = None;
        if me == loser {
            return Err(FtError::WrongState("a node cannot fence itself"));
        }
        let (ours, theirs) = (reservation_key(me), reservation_key(loser));
        let fenced = |k: &PrKeys| k.contains(ours) && !k.contains(theirs);
        let mut before = self.keys()?;
        if fenced(&before) {
            return Ok(());
        }
        if !before.contains(ours) && !before.contains(theirs) {
            // Neither key: the target lost its registrations (istgt keeps
            // none across a restart: no APTPL). Register again, which
            // reserves the LUN again; the loser stays out.
            self.register(me)?;
            before = self.keys()?;
            if fenced(&before) {
                return Ok(());
            }
        }
        // What the table must hold afterwards: exactly the registrations
        // it had, minus the loser's (a count, not just a set: istgt can
        // leave a session of the loser registered under another key).
        let mut want: Vec<u64> = before
            .keys
            .iter()
            .copied()
            .filter(|&k| k != theirs)
            .collect();
        want.sort_unstable();
        let p = PrOutParams {
            reservation_key: ours,
            service_action_key: theirs,
            ..PrOutParams::default()
        };
        self.disk
            .reserve_out(PrOutAction::PreemptAndAbort, FENCE_TYPE, &p)
            .map_err(|e| self.fail(FlagStep::Preempt, reachability(e)))?;
        // istgt 0.4 compacts its registration table by moving sessions down
        // and leaving the keys in place: with our nexus after the loser's,
        // ours ends up under the loser's key (and a third one would stay
        // registered). Registering this nexus again with our own key puts
        // it right; with one nexus per node (the kernel's layout when the
        // guest disk is on the LUN) the table is then exactly ours.
        let again = PrOutParams {
            service_action_key: ours,
            ..PrOutParams::default()
        };
        self.disk
            .reserve_out(
                PrOutAction::RegisterAndIgnoreExistingKey,
                PrType::NONE,
                &again,
            )
            .map_err(|e| self.fail(FlagStep::Register, reachability(e)))?;
        let after = self.keys()?;
        let mut have = after.keys.clone();
        have.sort_unstable();
        if fenced(&after) && have == want {
            return Ok(());
        }
        let why = if !after.contains(ours) {
            "our own key is gone"
        } else if after.contains(theirs) {
            "the preempted key is still registered"
        } else {
            "the registrations left are not ours alone (a session of the loser may still be registered)"
        };
        Err(self.fail(FlagStep::Verify, Error::FenceIneffective(why)))
    }
}

impl<D: FlagDisk + ?Sized> LunFlag<'_, D> {
    /// READ KEYS.
    fn keys(&mut self) -> core::result::Result<PrKeys, FtError> {
        let r = self.disk.read_keys();
        r.map_err(|e| self.fail(FlagStep::ReadKeys, reachability(e)))
    }

    /// Whether the LUN is reserved Write Exclusive – Registrants Only;
    /// `Err` for another type or a failed READ RESERVATION.
    fn reserved_for_fencing(&mut self) -> core::result::Result<bool, FtError> {
        let r = self
            .disk
            .read_reservation()
            .map_err(|e| self.fail(FlagStep::ReadReservation, reachability(e)))?;
        match r.reservation {
            None => Ok(false),
            Some(r) if r.ty == FENCE_TYPE => Ok(true),
            Some(r) => Err(self.fail(
                FlagStep::ReadReservation,
                Error::ForeignReservation {
                    key: r.key,
                    ty: r.ty.0,
                },
            )),
        }
    }
}

#[cfg(test)]
mod pr_tests;
#[cfg(test)]
mod tests;
