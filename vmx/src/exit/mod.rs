//! VM-exit dispatch: one module per exit reason (Intel SDM Vol. 3C §28
//! "VM Exits", appendix C "VMX Basic Exit Reasons").
//!
//! [`handle`] reads the exit reason from the VMCS, calls the reason's
//! module, and returns what the run loop must do next. Handlers see the
//! hardware only through [`VmcsAccess`] and the machine only through
//! [`Platform`], so every handler is tested on the host.
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

pub mod cpuid;
pub mod cr;
pub mod ept;
pub mod extint;
pub mod hlt;
pub mod intwin;
pub mod io;
pub mod msr;
pub mod mtf;
pub mod preempt;
pub mod rdrand;
pub mod rdtsc;
pub mod triple;
pub mod vmcall;
pub mod vmxinsn;

/// Guest general-purpose registers, indexed by x86 register number
/// (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI,
/// 7 = RDI, 8..15 = R8..R15). `gpr[4]` is not saved by the world switch:
/// RSP lives in the VMCS; [`GuestRegs::sync_rsp`] copies it when needed.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub gpr: [u64; 16],
}

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RBX: usize = 3;
pub const RSP: usize = 4;

impl GuestRegs {
    pub fn sync_rsp(&mut self, vmcs: &impl VmcsAccess) {
        self.gpr[RSP] = vmcs.get(Field::GuestRsp);
    }
}

/// Basic exit reasons (SDM appendix C).
pub mod reason {
    pub const EXCEPTION_OR_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const INIT: u16 = 3;
    pub const SIPI: u16 = 4;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const TASK_SWITCH: u16 = 9;
    pub const CPUID: u16 = 10;
    pub const GETSEC: u16 = 11;
    pub const HLT: u16 = 12;
    pub const INVD: u16 = 13;
    pub const INVLPG: u16 = 14;
    pub const RDPMC: u16 = 15;
    pub const RDTSC: u16 = 16;
    pub const VMCALL: u16 = 18;
    pub const VMCLEAR: u16 = 19;
    pub const VMXON: u16 = 27;
    pub const CR_ACCESS: u16 = 28;
    pub const DR_ACCESS: u16 = 29;
    pub const IO: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const ENTRY_FAIL_GUEST_STATE: u16 = 33;
    pub const ENTRY_FAIL_MSR_LOAD: u16 = 34;
    pub const MWAIT: u16 = 36;
    pub const MTF: u16 = 37;
    pub const MONITOR: u16 = 39;
    pub const PAUSE: u16 = 40;
    pub const ENTRY_FAIL_MACHINE_CHECK: u16 = 41;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIG: u16 = 49;
    pub const INVEPT: u16 = 50;
    pub const RDTSCP: u16 = 51;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const INVVPID: u16 = 53;
    pub const WBINVD: u16 = 54;
    pub const XSETBV: u16 = 55;
    pub const RDRAND: u16 = 57;
    pub const INVPCID: u16 = 58;
    pub const VMFUNC: u16 = 59;
    pub const RDSEED: u16 = 61;
}

/// Why the guest was stopped for good (reported, then the machine exits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest asked to exit through the hypercall.
    GuestExit {
        code: u8,
    },
    TripleFault {
        rip: u64,
    },
    /// Access to guest-physical memory that is neither RAM nor a device.
    UnmappedAccess {
        gpa: u64,
        access: &'static str,
        rip: u64,
    },
    /// HLT with interrupts disabled and no event that can wake it.
    DeadHalt {
        rip: u64,
    },
    /// Interrupts stayed disabled longer than the watchdog allows.
    Watchdog {
        rip: u64,
        ticks: u64,
    },
    /// An exit the hypervisor does not emulate.
    Unsupported {
        reason: u16,
        what: &'static str,
        rip: u64,
    },
    /// VM entry failed on guest state (SDM §28.8).
    EntryFailure {
        reason: u16,
        qualification: u64,
    },
    /// A VMX instruction failed.
    Vmx(Error),
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest.
    Resume,
    /// The guest executed HLT (RIP already advanced): wait for an event.
    Halt,
    /// Stop the guest for good.
    Stop(Stop),
}

/// The machine around the vCPU: devices, time, randomness, console, memory.
/// The kernel implements it; tests use a fake. Record/replay wraps it.
pub trait Platform {
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    fn port_out(&mut self, port: u16, size: u8, value: u32);
    /// MSRs not held in the VMCS. `None` means #GP for the guest.
    fn rdmsr(&mut self, msr: u32) -> Option<u64>;
    /// `false` means #GP for the guest.
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool;
    /// The guest's time-stamp counter now (RDTSC/RDTSCP result).
    fn rdtsc(&mut self) -> u64;
    /// IA32_TSC_AUX for RDTSCP.
    fn tsc_aux(&mut self) -> u32 {
        0
    }
    /// A random value for RDRAND (`seed = false`) or RDSEED.
    fn random(&mut self, seed: bool) -> u64;
    /// MMIO access at `gpa` by the instruction at `rip` (bytes in `insn`).
    /// `None`: no device there.
    fn mmio(&mut self, gpa: u64, access: &mut MmioRequest<'_>) -> Option<Result<(), &'static str>>;
    /// Copies guest-physical memory out; `Err` when outside guest RAM.
    fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// Guest console output from the print hypercall.
    fn console(&mut self, text: &str);
    /// A guest write to RAM page `gpa` faulted because dirty logging
    /// protects it (`crate::ept::Ept::on_write_violation`): `true` if so
    /// (recorded, now writable: resume at the same instruction).
    fn dirty_write(&mut self, _gpa: u64) -> bool {
        false
    }
}

/// An MMIO access to be decoded and emulated by the platform.
pub struct MmioRequest<'a> {
    pub regs: &'a mut GuestRegs,
    pub rip: u64,
    /// Set by the platform: length of the emulated instruction.
    pub instruction_len: u64,
    pub is_write: bool,
    /// Code segment mode: 16, 32 or 64.
    pub code_bits: u8,
    /// CS base (linear address of RIP = base + RIP outside 64-bit mode).
    pub cs_base: u64,
    /// Guest paging state, to fetch the instruction bytes.
    pub paging: crate::guest_walk::PagingMode,
}

/// Advances RIP past the exiting instruction and clears STI/MOV-SS
/// blocking, as completing the instruction would (SDM §27.3).
pub fn skip_instruction(vmcs: &mut impl VmcsAccess) -> Result<(), Error> {
    let rip = vmcs.get(Field::GuestRip);
    let len = vmcs.get(Field::ExitInstructionLength);
    vmcs.write(Field::GuestRip, rip.wrapping_add(len))?;
    let intr = vmcs.get(Field::GuestInterruptibility);
    if intr & 0b11 != 0 {
        vmcs.write(Field::GuestInterruptibility, intr & !0b11)?;
    }
    Ok(())
}

/// Hardware exception vectors injected into the guest.
pub mod vector {
    pub const UD: u8 = 6;
    pub const GP: u8 = 13;
}

/// Injects a hardware exception at the next VM entry (SDM §26.6).
pub fn inject_exception(
    vmcs: &mut impl VmcsAccess,
    vector: u8,
    error_code: Option<u32>,
) -> Result<(), Error> {
    let mut info = vector as u64 | (3 << 8) | (1 << 31);
    if let Some(code) = error_code {
        info |= 1 << 11;
        vmcs.write(Field::EntryExceptionErrorCode, code as u64)?;
    }
    vmcs.write(Field::EntryInterruptionInfo, info)
}

/// Injects an external interrupt at the next VM entry.
pub fn inject_interrupt(vmcs: &mut impl VmcsAccess, vector: u8) -> Result<(), Error> {
    vmcs.write(Field::EntryInterruptionInfo, vector as u64 | (1 << 31))
}

/// Decodes and handles one VM exit.
pub fn handle(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
) -> Result<Action, Error> {
    let raw = vmcs.get(Field::ExitReason);
    let basic = raw as u16;
    let rip = vmcs.get(Field::GuestRip);
    if raw & (1 << 31) != 0 {
        return Ok(Action::Stop(Stop::EntryFailure {
            reason: basic,
            qualification: vmcs.get(Field::ExitQualification),
        }));
    }
    use reason::*;
    match basic {
        CPUID => cpuid::handle(vmcs, regs),
        HLT => hlt::handle(vmcs),
        RDTSC | RDTSCP => rdtsc::handle(vmcs, regs, platform, basic == RDTSCP),
        RDRAND | RDSEED => rdrand::handle(vmcs, regs, platform, basic == RDSEED),
        IO => io::handle(vmcs, regs, platform),
        RDMSR => msr::handle_read(vmcs, regs, platform),
        WRMSR => msr::handle_write(vmcs, regs, platform),
        CR_ACCESS => cr::handle(vmcs, regs, platform),
        EPT_VIOLATION => ept::handle_violation(vmcs, regs, platform),
        EPT_MISCONFIG => Ok(Action::Stop(Stop::Unsupported {
            reason: basic,
            what: "EPT misconfiguration (hypervisor bug)",
            rip,
        })),
        EXTERNAL_INTERRUPT => extint::handle(vmcs),
        INTERRUPT_WINDOW => intwin::handle(vmcs),
        MTF => mtf::handle(vmcs),
        PREEMPTION_TIMER => preempt::handle(vmcs),
        TRIPLE_FAULT => triple::handle(vmcs),
        VMCALL => vmcall::handle(vmcs, regs, platform),
        VMCLEAR..=VMXON | INVEPT | INVVPID | VMFUNC | GETSEC => vmxinsn::handle(vmcs),
        MWAIT | MONITOR | PAUSE | WBINVD | INVD => {
            // Treated as NOPs: MONITOR/MWAIT are not advertised (CPUID), so
            // a guest using them anyway gets harmless behaviour.
            skip_instruction(vmcs)?;
            Ok(Action::Resume)
        }
        XSETBV => {
            // XSAVE is not advertised by the guest CPU model.
            inject_exception(vmcs, vector::UD, None)?;
            Ok(Action::Resume)
        }
        other => Ok(Action::Stop(Stop::Unsupported {
            reason: other,
            what: "exit reason not handled",
            rip,
        })),
    }
}

#[cfg(test)]
pub mod fake {
    //! A fake platform for exit-handler tests.
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct FakePlatform {
        pub ports: HashMap<u16, u32>,
        pub out: Vec<(u16, u8, u32)>,
        pub msrs: HashMap<u32, u64>,
        pub tsc: u64,
        pub rand: u64,
        pub console: String,
        pub memory: Vec<u8>,
    }

    impl Platform for FakePlatform {
        fn port_in(&mut self, port: u16, _size: u8) -> u32 {
            *self.ports.get(&port).unwrap_or(&0xffff_ffff)
        }
        fn port_out(&mut self, port: u16, size: u8, value: u32) {
            self.out.push((port, size, value));
        }
        fn rdmsr(&mut self, msr: u32) -> Option<u64> {
            self.msrs.get(&msr).copied()
        }
        fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
            if let std::collections::hash_map::Entry::Occupied(mut e) = self.msrs.entry(msr) {
                e.insert(value);
                true
            } else {
                false
            }
        }
        fn rdtsc(&mut self) -> u64 {
            self.tsc
        }
        fn random(&mut self, _seed: bool) -> u64 {
            self.rand
        }
        fn mmio(
            &mut self,
            _gpa: u64,
            _access: &mut MmioRequest<'_>,
        ) -> Option<Result<(), &'static str>> {
            None
        }
        fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Error> {
            let start = gpa as usize;
            let end = start
                .checked_add(buf.len())
                .filter(|&e| e <= self.memory.len());
            match end {
                Some(end) => {
                    buf.copy_from_slice(&self.memory[start..end]);
                    Ok(())
                }
                None => Err(Error::GuestAddress {
                    gpa,
                    len: buf.len() as u64,
                }),
            }
        }
        fn console(&mut self, text: &str) {
            self.console.push_str(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakePlatform;
    use super::*;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn skip_advances_rip_and_clears_sti_blocking() {
        let mut v = FakeVmcs::default();
        v.write(Field::GuestRip, 0x1000).unwrap();
        v.write(Field::ExitInstructionLength, 3).unwrap();
        v.write(Field::GuestInterruptibility, 0b1).unwrap();
        skip_instruction(&mut v).unwrap();
        assert_eq!(v.get(Field::GuestRip), 0x1003);
        assert_eq!(v.get(Field::GuestInterruptibility), 0);
    }

    #[test]
    fn entry_failure_is_reported() {
        let mut v = FakeVmcs::default();
        v.write(Field::ExitReason, (1 << 31) | 33).unwrap();
        let a = handle(
            &mut v,
            &mut GuestRegs::default(),
            &mut FakePlatform::default(),
        )
        .unwrap();
        assert!(matches!(
            a,
            Action::Stop(Stop::EntryFailure { reason: 33, .. })
        ));
    }

    #[test]
    fn unknown_reason_stops_cleanly() {
        let mut v = FakeVmcs::default();
        v.write(Field::ExitReason, 62).unwrap();
        let a = handle(
            &mut v,
            &mut GuestRegs::default(),
            &mut FakePlatform::default(),
        )
        .unwrap();
        assert!(matches!(
            a,
            Action::Stop(Stop::Unsupported { reason: 62, .. })
        ));
    }

    #[test]
    fn exception_injection_encodes_error_code() {
        let mut v = FakeVmcs::default();
        inject_exception(&mut v, vector::GP, Some(0)).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
        inject_interrupt(&mut v, 0x40).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0040);
    }
}
