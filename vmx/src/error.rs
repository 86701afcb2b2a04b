//! The vmx crate's one error type.
use core::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// CPUID.1:ECX.VMX = 0.
    NoVmx,
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled.
    VmxDisabledByFirmware,
    /// A control the hypervisor needs is not allowed to be 1 on this CPU.
    MissingControl {
        register: &'static str,
        control: &'static str,
    },
    /// A VMX instruction failed with VMfailInvalid (no current VMCS).
    VmFailInvalid { instruction: &'static str },
    /// A VMX instruction failed with VMfailValid and this error number.
    VmFailValid {
        instruction: &'static str,
        number: u64,
    },
    /// Guest RAM layout not usable.
    BadGuestMemory(&'static str),
    /// A guest-physical range outside guest RAM.
    GuestAddress { gpa: u64, len: u64 },
    /// A transferred vCPU state names a VMCS field that is not guest state
    /// (`encoding`), or lacks one (`missing`).
    BadVcpuState { encoding: u32, missing: bool },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoVmx => write!(f, "CPUID.1:ECX.VMX[bit 5] = 0"),
            Error::VmxDisabledByFirmware => write!(
                f,
                "IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled (firmware setting)"
            ),
            Error::MissingControl { register, control } => {
                write!(
                    f,
                    "required VMX control {register}.{control} is not supported by this CPU"
                )
            }
            Error::VmFailInvalid { instruction } => {
                write!(f, "{instruction} failed: VMfailInvalid (no current VMCS)")
            }
            Error::VmFailValid {
                instruction,
                number,
            } => write!(
                f,
                "{instruction} failed: VM-instruction error {number} ({})",
                crate::vmcs::instruction_error_text(*number)
            ),
            Error::BadGuestMemory(why) => write!(f, "bad guest memory: {why}"),
            Error::BadVcpuState {
                encoding,
                missing: true,
            } => {
                write!(f, "transferred vCPU state lacks VMCS field {encoding:#06x}")
            }
            Error::BadVcpuState { encoding, .. } => write!(
                f,
                "transferred vCPU state names VMCS field {encoding:#06x}, which is not guest state"
            ),
            Error::GuestAddress { gpa, len } => {
                write!(
                    f,
                    "guest-physical range {gpa:#x}+{len:#x} is outside guest RAM"
                )
            }
        }
    }
}
