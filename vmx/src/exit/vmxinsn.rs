//! Exits for VMX instructions executed by the guest (reasons 19-27, 50, 53,
//! 59) and GETSEC: VMX is not offered to the guest, so they raise #UD as on
//! a CPU without VMX.
use super::{inject_exception, vector, Action};
use crate::vmcs::VmcsAccess;
use crate::Error;

pub fn handle(vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    inject_exception(vmcs, vector::UD, None)?;
    Ok(Action::Resume)
}
