//! VMCALL exits (reason 18): ftvisor's small hypercall interface for test
//! guests. RAX selects the function; results return in RAX.
//!
//! | RAX | function | arguments | result |
//! |---|---|---|---|
//! | 0 | print | RBX = guest-physical address, RCX = length (≤ 4096) | 0, or -2 for a bad range |
//! | 1 | exit | RBX = exit code (0..255) | does not return: the guest stops |
//! | other | — | — | -1 (unknown function) |
use super::{skip_instruction, Action, GuestRegs, Platform, Stop, RAX, RBX, RCX};
use crate::vmcs::VmcsAccess;
use crate::Error;

pub const HC_PRINT: u64 = 0;
pub const HC_EXIT: u64 = 1;
pub const ERR_UNKNOWN: u64 = u64::MAX;
pub const ERR_BAD_RANGE: u64 = u64::MAX - 1;
pub const MAX_PRINT: u64 = 4096;

pub fn handle(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
) -> Result<Action, Error> {
    match regs.gpr[RAX] {
        HC_PRINT => {
            let (gpa, len) = (regs.gpr[RBX], regs.gpr[RCX]);
            let mut buf = [0u8; MAX_PRINT as usize];
            regs.gpr[RAX] = if len > MAX_PRINT {
                ERR_BAD_RANGE
            } else {
                let buf = &mut buf[..len as usize];
                match platform.read_guest(gpa, buf) {
                    Ok(()) => {
                        match core::str::from_utf8(buf) {
                            Ok(s) => platform.console(s),
                            Err(_) => platform.console("<non-UTF-8 hypercall print>"),
                        }
                        0
                    }
                    Err(_) => ERR_BAD_RANGE,
                }
            };
        }
        HC_EXIT => {
            return Ok(Action::Stop(Stop::GuestExit {
                code: regs.gpr[RBX] as u8,
            }))
        }
        _ => regs.gpr[RAX] = ERR_UNKNOWN,
    }
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::FakeVmcs;

    fn call(p: &mut FakePlatform, rax: u64, rbx: u64, rcx: u64) -> (Action, u64) {
        let mut v = FakeVmcs::default();
        let mut r = GuestRegs::default();
        r.gpr[RAX] = rax;
        r.gpr[RBX] = rbx;
        r.gpr[RCX] = rcx;
        let a = handle(&mut v, &mut r, p).unwrap();
        (a, r.gpr[RAX])
    }

    #[test]
    fn print_exit_and_bogus_calls() {
        let mut p = FakePlatform {
            memory: b"....hello".to_vec(),
            ..Default::default()
        };
        assert_eq!(call(&mut p, HC_PRINT, 4, 5), (Action::Resume, 0));
        assert_eq!(p.console, "hello");
        assert_eq!(
            call(&mut p, HC_PRINT, 0xFFFF_FFFF_0000, 16).1,
            ERR_BAD_RANGE
        );
        assert_eq!(call(&mut p, HC_PRINT, 0, 1 << 40).1, ERR_BAD_RANGE);
        assert_eq!(call(&mut p, HC_PRINT, u64::MAX, 2).1, ERR_BAD_RANGE);
        assert_eq!(call(&mut p, 0xdead, 0, 0).1, ERR_UNKNOWN);
        assert_eq!(
            call(&mut p, HC_EXIT, 7, 0).0,
            Action::Stop(Stop::GuestExit { code: 7 })
        );
    }
}
