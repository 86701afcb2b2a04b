//! HLT exits (reason 12): the run loop emulates the halt, delivering the
//! next interrupt or advancing guest time to the next timer deadline.
use super::{skip_instruction, Action};
use crate::vmcs::VmcsAccess;
use crate::Error;

pub fn handle(vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    skip_instruction(vmcs)?;
    Ok(Action::Halt)
}
