//! Monitor-trap-flag exits (reason 37; SDM Vol. 3C §26.5.2): one exit after
//! each guest instruction while MTF is on. The execution-counter backends
//! (`mtf`, and `preempt` for landing) count these; here it only resumes.
use super::Action;
use crate::vmcs::VmcsAccess;
use crate::Error;

pub fn handle(_vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    Ok(Action::Resume)
}
