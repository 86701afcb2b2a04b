//! The kernel crate's one error type.
use core::fmt;

/// Everything that can go wrong in the kernel's own logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A command-line option the kernel does not know.
    UnknownOption { option: alloc::string::String },
    /// A known option with a value that does not parse.
    BadValue {
        option: &'static str,
        value: alloc::string::String,
        expected: &'static str,
    },
    /// An option given twice.
    DuplicateOption { option: &'static str },
    /// The boot loader's information is unusable.
    BootInfo(&'static str),
    /// The guest image cannot be loaded.
    GuestImage(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownOption { option } => {
                write!(f, "unknown command-line option `{option}`")
            }
            Error::BadValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "bad value `{value}` for command-line option `{option}`: expected {expected}"
            ),
            Error::DuplicateOption { option } => {
                write!(f, "command-line option `{option}` given twice")
            }
            Error::BootInfo(what) => write!(f, "unusable boot information: {what}"),
            Error::GuestImage(what) => write!(f, "guest image rejected: {what}"),
        }
    }
}
