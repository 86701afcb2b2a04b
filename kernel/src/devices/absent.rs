//! Accesses to hardware the machine does not have (issue 10: "unknown MSRs,
//! ports and MMIO get the behaviour of absent hardware, and each is counted
//! and reported once").
//!
//! The behaviour itself is the caller's (a port read nobody claims returns
//! all ones and a write is dropped, an absent MSR raises #GP, an MMIO
//! access outside RAM and the device windows reads all ones and drops
//! writes for a `guest=linux` guest); [`Absent`] is only the bookkeeping:
//! one counter per distinct (access, address) — port number, MSR index or
//! 4 KiB MMIO page — and the news that an access is the first of its kind,
//! so the hypervisor reports each one once and sums them up at the end.
//! At most [`MAX_DISTINCT`] addresses are remembered (a guest cannot grow
//! the table without bound); accesses beyond that are counted together.
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// Distinct (access, address) pairs remembered one by one.
pub const MAX_DISTINCT: usize = 64;

/// What was accessed, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    PortRead,
    PortWrite,
    MmioRead,
    MmioWrite,
    MsrRead,
    MsrWrite,
}

impl Access {
    fn name(self) -> (&'static str, &'static str) {
        match self {
            Access::PortRead => ("port", "read"),
            Access::PortWrite => ("port", "write"),
            Access::MmioRead => ("MMIO page", "read"),
            Access::MmioWrite => ("MMIO page", "write"),
            Access::MsrRead => ("MSR", "read"),
            Access::MsrWrite => ("MSR", "write"),
        }
    }

    /// The address this bookkeeping keys on: MMIO by its 4 KiB page.
    fn key(self, addr: u64) -> u64 {
        match self {
            Access::MmioRead | Access::MmioWrite => addr & !0xFFF,
            _ => addr,
        }
    }

    /// What the guest got for it.
    fn outcome(self) -> &'static str {
        match self {
            Access::PortRead | Access::MmioRead => "all ones",
            Access::PortWrite | Access::MmioWrite => "ignored",
            Access::MsrRead | Access::MsrWrite => "#GP",
        }
    }
}

/// One remembered (access, address) and how often it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub access: Access,
    /// Port, MSR index or MMIO page address.
    pub addr: u64,
    pub count: u64,
}

impl Seen {
    /// `port 0x61 read`, `MMIO page 0xfed00000 write`, `MSR 0x140 read`.
    pub fn describe(&self) -> String {
        let (what, how) = self.access.name();
        alloc::format!("{what} {:#x} {how}", self.addr)
    }
}

/// The counters (plain data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Absent {
    seen: Vec<Seen>,
    /// Accesses to addresses past the first [`MAX_DISTINCT`].
    others: u64,
}

impl Absent {
    /// Counts one access; `Some` (what to report) only the first time this
    /// (access, address) is met.
    pub fn note(&mut self, access: Access, addr: u64) -> Option<Seen> {
        let addr = access.key(addr);
        if let Some(s) = self
            .seen
            .iter_mut()
            .find(|s| s.access == access && s.addr == addr)
        {
            s.count += 1;
            return None;
        }
        if self.seen.len() >= MAX_DISTINCT {
            self.others += 1;
            return None;
        }
        let s = Seen {
            access,
            addr,
            count: 1,
        };
        self.seen.push(s);
        Some(s)
    }

    /// The report line of a first access (without the `hypervisor: ` prefix).
    pub fn first_time(s: &Seen) -> String {
        alloc::format!(
            "absent hardware: {} (first time; {}; counted)",
            s.describe(),
            s.access.outcome()
        )
    }

    /// Everything met, in order of first access.
    pub fn seen(&self) -> &[Seen] {
        &self.seen
    }

    /// All accesses counted.
    pub fn total(&self) -> u64 {
        self.seen.iter().map(|s| s.count).sum::<u64>() + self.others
    }

    /// The end-of-run line (without the `hypervisor: ` prefix).
    pub fn summary(&self) -> String {
        let mut line = alloc::format!(
            "absent hardware: {} accesses to {} addresses",
            self.total(),
            self.seen.len()
        );
        for (i, s) in self.seen.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            let _ = write!(line, "{sep}{} x{}", s.describe(), s.count);
        }
        if self.others > 0 {
            let _ = write!(line, "; {} more to other addresses", self.others);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_access_is_news_later_ones_are_counted() {
        let mut a = Absent::default();
        let first = a.note(Access::PortRead, 0x61).expect("first");
        assert_eq!(
            Absent::first_time(&first),
            "absent hardware: port 0x61 read (first time; all ones; counted)"
        );
        assert_eq!(a.note(Access::PortRead, 0x61), None);
        assert_eq!(a.note(Access::PortRead, 0x61), None);
        // Another direction or another address is another entry.
        assert!(a.note(Access::PortWrite, 0x61).is_some());
        assert!(a.note(Access::MsrRead, 0x61).is_some());
        assert_eq!(a.seen()[0].count, 3);
        assert_eq!(a.total(), 5);
    }

    #[test]
    fn mmio_is_counted_per_page() {
        let mut a = Absent::default();
        let s = a.note(Access::MmioRead, 0xFED0_00F0).expect("first");
        assert_eq!(s.addr, 0xFED0_0000);
        assert_eq!(a.note(Access::MmioRead, 0xFED0_0FFC), None);
        assert!(a.note(Access::MmioRead, 0xFED0_1000).is_some());
        assert!(a.note(Access::MmioWrite, 0xFED0_0000).is_some());
        assert_eq!(
            Absent::first_time(&a.seen()[1]),
            "absent hardware: MMIO page 0xfed01000 read (first time; all ones; counted)"
        );
        assert_eq!(
            Absent::first_time(&a.seen()[2]),
            "absent hardware: MMIO page 0xfed00000 write (first time; ignored; counted)"
        );
    }

    #[test]
    fn table_is_bounded_and_summary_lists_everything() {
        let mut a = Absent::default();
        assert_eq!(a.summary(), "absent hardware: 0 accesses to 0 addresses");
        for msr in 0..MAX_DISTINCT as u64 + 10 {
            let news = a.note(Access::MsrWrite, msr);
            assert_eq!(news.is_some(), msr < MAX_DISTINCT as u64);
        }
        assert_eq!(a.seen().len(), MAX_DISTINCT);
        // A remembered address still counts; a new one goes to `others`.
        assert_eq!(a.note(Access::MsrWrite, 0), None);
        assert_eq!(a.note(Access::MsrWrite, 1 << 20), None);
        assert_eq!(a.total(), MAX_DISTINCT as u64 + 12);
        let s = a.summary();
        assert!(s.starts_with(
            "absent hardware: 76 accesses to 64 addresses: MSR 0x0 write x2, MSR 0x1 write x1"
        ));
        assert!(s.ends_with("; 11 more to other addresses"), "{s}");
        assert_eq!(
            Absent::first_time(&Seen {
                access: Access::MsrRead,
                addr: 0x140,
                count: 1
            }),
            "absent hardware: MSR 0x140 read (first time; #GP; counted)"
        );
    }
}
