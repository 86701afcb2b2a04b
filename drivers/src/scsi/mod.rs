//! SCSI commands the hypervisor issues over iSCSI (SPC-4 and SBC-3), their
//! responses, and sense data.
//!
//! Transport independent: a [`Command`] is a CDB plus a data direction;
//! the iSCSI session carries it (RFC 7143 §11.3) and returns a status and
//! sense bytes, which [`check_status`] turns into the crate's `Error`.
//! Persistent reservations (SPC-4 §5.12) are in [`pr`].

pub mod cdb;
pub mod pr;
pub mod sense;

pub use cdb::{Command, DataDir, Inquiry, ReadCapacity16};
pub use pr::{PrInAction, PrKeys, PrOutAction, PrOutParams, PrReservation, PrType, Reservation};
pub use sense::{Sense, SenseKey};

use crate::error::{Error, Result};

/// SCSI status codes (SAM-5 §5.3.1).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Maps a completed command's status and sense bytes to `Ok(())` or a
/// typed error: MISCOMPARE (sense key 0x0E, ASC 0x1D) becomes
/// [`Error::Miscompare`], RESERVATION CONFLICT (status 0x18, whatever
/// the command) [`Error::ReservationConflict`], other failures
/// [`Error::Scsi`]. Sense bytes that do not parse on a CHECK CONDITION
/// are an error of their own.
pub fn check_status(status: u8, sense: &[u8]) -> Result<()> {
    match status {
        status::GOOD | status::CONDITION_MET => Ok(()),
        status::RESERVATION_CONFLICT => Err(Error::ReservationConflict),
        status::CHECK_CONDITION => {
            let s = Sense::decode(sense)?;
            if s.is_miscompare() {
                Err(Error::Miscompare)
            } else {
                Err(Error::Scsi {
                    status,
                    sense: Some(s),
                })
            }
        }
        _ => Err(Error::Scsi {
            status,
            sense: Sense::decode(sense).ok(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(check_status(0, &[]), Ok(()));
        let mis = [
            0x70, 0, 0x0e, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0,
        ];
        assert_eq!(check_status(2, &mis), Err(Error::Miscompare));
        let ill = [0x72, 0x05, 0x20, 0x00, 0, 0, 0, 0];
        match check_status(2, &ill) {
            Err(Error::Scsi {
                status: 2,
                sense: Some(s),
            }) => {
                assert_eq!((s.key, s.asc, s.ascq), (SenseKey::ILLEGAL_REQUEST, 0x20, 0))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_status(2, &[]),
            Err(Error::MalformedSense(_))
        ));
        assert_eq!(
            check_status(status::RESERVATION_CONFLICT, &[]),
            Err(Error::ReservationConflict)
        );
        assert_eq!(
            check_status(0x18, &ill),
            Err(Error::ReservationConflict),
            "sense bytes do not change a conflict"
        );
        assert_eq!(
            check_status(status::BUSY, &[]),
            Err(Error::Scsi {
                status: 8,
                sense: None
            })
        );
    }
}
