//! Triple-fault exits (reason 2): the guest is stopped with a report (a
//! later policy may reset it instead).
use super::{Action, Stop};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

pub fn handle(vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    Ok(Action::Stop(Stop::TripleFault {
        rip: vmcs.get(Field::GuestRip),
    }))
}
