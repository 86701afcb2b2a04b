//! External-interrupt exits (reason 1). The hypervisor runs with host
//! interrupts masked and polls its devices, so a host interrupt only means
//! "re-enter after the run loop had a look"; nothing is acknowledged here.
use super::Action;
use crate::vmcs::VmcsAccess;
use crate::Error;

pub fn handle(_vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    Ok(Action::Resume)
}
