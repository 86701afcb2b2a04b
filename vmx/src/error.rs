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
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoVmx => write!(f, "CPUID.1:ECX.VMX[bit 5] is 0"),
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
        }
    }
}
