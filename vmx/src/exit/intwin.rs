//! Interrupt-window exits (reason 7; SDM Vol. 3C §26.7.5): the guest can take
//! an interrupt now. The run loop clears the window request and injects.
use super::Action;
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

/// Primary processor-based control bit 2.
pub const INTERRUPT_WINDOW_EXITING: u64 = 1 << 2;

pub fn handle(vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    let proc = vmcs.get(Field::ProcBasedControls);
    vmcs.write(Field::ProcBasedControls, proc & !INTERRUPT_WINDOW_EXITING)?;
    Ok(Action::Resume)
}
