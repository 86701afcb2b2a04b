//! VMCS field encodings and a typed accessor trait (Intel SDM Vol. 3C §25
//! "Virtual Machine Control Structures", appendix B "Field Encoding in
//! VMCS"), plus VM-instruction error decoding (§31.4).
//!
//! The kernel implements [`VmcsAccess`] with `vmread`/`vmwrite` from the
//! `x86` crate; tests use [`FakeVmcs`] so exit handling runs on the host.
use crate::Error;

/// VMCS field encodings used by ftvisor (SDM Vol. 3C appendix B).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Field {
    // 16-bit
    Vpid = 0x0000,
    GuestEsSelector = 0x0800,
    GuestCsSelector = 0x0802,
    GuestSsSelector = 0x0804,
    GuestDsSelector = 0x0806,
    GuestFsSelector = 0x0808,
    GuestGsSelector = 0x080A,
    GuestLdtrSelector = 0x080C,
    GuestTrSelector = 0x080E,
    HostEsSelector = 0x0C00,
    HostCsSelector = 0x0C02,
    HostSsSelector = 0x0C04,
    HostDsSelector = 0x0C06,
    HostFsSelector = 0x0C08,
    HostGsSelector = 0x0C0A,
    HostTrSelector = 0x0C0C,
    // 64-bit
    IoBitmapA = 0x2000,
    IoBitmapB = 0x2002,
    MsrBitmap = 0x2004,
    TscOffset = 0x2010,
    EptPointer = 0x201A,
    GuestPhysicalAddress = 0x2400,
    VmcsLinkPointer = 0x2800,
    GuestIa32Debugctl = 0x2802,
    GuestIa32Pat = 0x2804,
    GuestIa32Efer = 0x2806,
    GuestPdpte0 = 0x280A,
    GuestPdpte1 = 0x280C,
    GuestPdpte2 = 0x280E,
    GuestPdpte3 = 0x2810,
    HostIa32Pat = 0x2C00,
    HostIa32Efer = 0x2C02,
    // 32-bit
    PinBasedControls = 0x4000,
    ProcBasedControls = 0x4002,
    ExceptionBitmap = 0x4004,
    PageFaultErrorCodeMask = 0x4006,
    PageFaultErrorCodeMatch = 0x4008,
    Cr3TargetCount = 0x400A,
    ExitControls = 0x400C,
    ExitMsrStoreCount = 0x400E,
    ExitMsrLoadCount = 0x4010,
    EntryControls = 0x4012,
    EntryMsrLoadCount = 0x4014,
    EntryInterruptionInfo = 0x4016,
    EntryExceptionErrorCode = 0x4018,
    EntryInstructionLength = 0x401A,
    SecondaryControls = 0x401E,
    VmInstructionError = 0x4400,
    ExitReason = 0x4402,
    ExitInterruptionInfo = 0x4404,
    ExitInterruptionErrorCode = 0x4406,
    IdtVectoringInfo = 0x4408,
    IdtVectoringErrorCode = 0x440A,
    ExitInstructionLength = 0x440C,
    ExitInstructionInfo = 0x440E,
    GuestEsLimit = 0x4800,
    GuestCsLimit = 0x4802,
    GuestSsLimit = 0x4804,
    GuestDsLimit = 0x4806,
    GuestFsLimit = 0x4808,
    GuestGsLimit = 0x480A,
    GuestLdtrLimit = 0x480C,
    GuestTrLimit = 0x480E,
    GuestGdtrLimit = 0x4810,
    GuestIdtrLimit = 0x4812,
    GuestEsAccessRights = 0x4814,
    GuestCsAccessRights = 0x4816,
    GuestSsAccessRights = 0x4818,
    GuestDsAccessRights = 0x481A,
    GuestFsAccessRights = 0x481C,
    GuestGsAccessRights = 0x481E,
    GuestLdtrAccessRights = 0x4820,
    GuestTrAccessRights = 0x4822,
    GuestInterruptibility = 0x4824,
    GuestActivityState = 0x4826,
    GuestSysenterCs = 0x482A,
    PreemptionTimerValue = 0x482E,
    HostSysenterCs = 0x4C00,
    // natural width
    Cr0GuestHostMask = 0x6000,
    Cr4GuestHostMask = 0x6002,
    Cr0ReadShadow = 0x6004,
    Cr4ReadShadow = 0x6006,
    ExitQualification = 0x6400,
    GuestLinearAddress = 0x640A,
    GuestCr0 = 0x6800,
    GuestCr3 = 0x6802,
    GuestCr4 = 0x6804,
    GuestEsBase = 0x6806,
    GuestCsBase = 0x6808,
    GuestSsBase = 0x680A,
    GuestDsBase = 0x680C,
    GuestFsBase = 0x680E,
    GuestGsBase = 0x6810,
    GuestLdtrBase = 0x6812,
    GuestTrBase = 0x6814,
    GuestGdtrBase = 0x6816,
    GuestIdtrBase = 0x6818,
    GuestDr7 = 0x681A,
    GuestRsp = 0x681C,
    GuestRip = 0x681E,
    GuestRflags = 0x6820,
    GuestPendingDebugExceptions = 0x6822,
    GuestSysenterEsp = 0x6824,
    GuestSysenterEip = 0x6826,
    HostCr0 = 0x6C00,
    HostCr3 = 0x6C02,
    HostCr4 = 0x6C04,
    HostFsBase = 0x6C06,
    HostGsBase = 0x6C08,
    HostTrBase = 0x6C0A,
    HostGdtrBase = 0x6C0C,
    HostIdtrBase = 0x6C0E,
    HostSysenterEsp = 0x6C10,
    HostSysenterEip = 0x6C12,
    HostRsp = 0x6C14,
    HostRip = 0x6C16,
}

impl Field {
    pub fn encoding(self) -> u32 {
        self as u32
    }
}

/// Reads and writes the current VMCS.
pub trait VmcsAccess {
    fn read(&self, field: Field) -> Result<u64, Error>;
    fn write(&mut self, field: Field, value: u64) -> Result<(), Error>;

    /// Read, with a failure reported as 0 (for fields that always exist
    /// once the VMCS is current; used on the exit path).
    fn get(&self, field: Field) -> u64 {
        self.read(field).unwrap_or(0)
    }
}

/// VM-instruction error numbers (SDM Vol. 3C §31.4, Table 31-1).
pub fn instruction_error_text(number: u64) -> &'static str {
    match number {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

/// An in-memory VMCS for host tests.
#[cfg(test)]
#[derive(Default, Debug)]
pub struct FakeVmcs {
    pub fields: std::collections::BTreeMap<Field, u64>,
}

#[cfg(test)]
impl VmcsAccess for FakeVmcs {
    fn read(&self, field: Field) -> Result<u64, Error> {
        Ok(*self.fields.get(&field).unwrap_or(&0))
    }
    fn write(&mut self, field: Field, value: u64) -> Result<(), Error> {
        self.fields.insert(field, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_follow_appendix_b_width_bits() {
        // Bits 14:13 give the width: 0 = 16-bit, 1 = 64-bit, 2 = 32-bit, 3 = natural.
        let width = |f: Field| (f.encoding() >> 13) & 3;
        assert_eq!(width(Field::GuestCsSelector), 0);
        assert_eq!(width(Field::EptPointer), 1);
        assert_eq!(width(Field::ExitReason), 2);
        assert_eq!(width(Field::GuestRip), 3);
        // Bits 11:10: 1 = read-only data fields.
        assert_eq!((Field::ExitQualification.encoding() >> 10) & 3, 1);
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            instruction_error_text(7),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(instruction_error_text(999), "unknown VM-instruction error");
    }
}
