//! VMX-preemption-timer exits (reason 52; SDM Vol. 3C §26.5.1): the run
//! loop's time slice ended (timers due, watchdog check, log flush).
use super::Action;
use crate::vmcs::VmcsAccess;
use crate::Error;

pub fn handle(_vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    Ok(Action::Resume)
}
