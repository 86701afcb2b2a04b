//! The guest's TSC at the rate CPUID announces on any host (issue 15,
//! "time and randomness right on any host"; DESIGN.md §1.2 RDTSC).
//!
//! The guest reads its TSC only through RDTSC/RDTSCP/RDMSR exits (RDTSC
//! exiting is on, no TSC offsetting in the VMCS), so the hypervisor can
//! answer any rate: `guest = host_ticks * guest_hz / host_hz`, with the
//! host's rate calibrated at boot against PIT channel 2. The product uses
//! a 32.32 fixed-point factor (one 64x64->128 multiply per read, no
//! division; the error is below one part in 2^32 of the rate) and is
//! monotonic. [`TscScale::identity`] is the raw host TSC (`guest_tsc=host`,
//! or a host whose TSC rate could not be measured).

/// Converts host TSC ticks to guest TSC ticks and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscScale {
    /// Guest ticks per host tick, 32.32 fixed point.
    to_guest: u64,
    /// Host ticks per guest tick, 32.32 fixed point.
    to_host: u64,
    /// The measured host rate (0: not scaled).
    pub host_hz: u64,
}

impl TscScale {
    /// Guest ticks at `guest_hz` from host ticks at `host_hz` (both > 0;
    /// their ratio within 2^-16..2^16, true for any real TSC).
    pub fn new(host_hz: u64, guest_hz: u64) -> Self {
        let host = u128::from(host_hz.max(1));
        let guest = u128::from(guest_hz.max(1));
        let fixed = |num: u128, den: u128| u64::try_from((num << 32) / den).unwrap_or(u64::MAX);
        Self {
            to_guest: fixed(guest, host),
            to_host: fixed(host, guest),
            host_hz,
        }
    }

    /// The host's ticks as they are.
    pub const fn identity() -> Self {
        Self {
            to_guest: 1 << 32,
            to_host: 1 << 32,
            host_hz: 0,
        }
    }

    /// Whether this is [`TscScale::identity`].
    pub fn is_identity(&self) -> bool {
        self.to_guest == 1 << 32 && self.to_host == 1 << 32
    }

    /// Guest ticks for `host_ticks` host ticks.
    pub fn guest(&self, host_ticks: u64) -> u64 {
        ((u128::from(host_ticks) * u128::from(self.to_guest)) >> 32) as u64
    }

    /// Host ticks (what the VMX preemption timer counts) for `guest_ticks`
    /// guest ticks, at least 1 for a non-zero span.
    pub fn host(&self, guest_ticks: u64) -> u64 {
        let h = ((u128::from(guest_ticks) * u128::from(self.to_host)) >> 32) as u64;
        if guest_ticks > 0 {
            h.max(1)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_50_mhz_host_gives_a_1_ghz_guest() {
        let s = TscScale::new(50_000_000, 1_000_000_000);
        assert_eq!(s.guest(50_000_000), 1_000_000_000);
        assert!(s.host(1_000_000_000).abs_diff(50_000_000) <= 1);
        assert_eq!(s.host(1), 1, "a non-zero span is at least one tick");
        assert_eq!(s.host(0), 0);
    }

    #[test]
    fn a_3_ghz_host_scales_down_within_a_part_per_billion() {
        let s = TscScale::new(2_999_876_543, 1_000_000_000);
        let hour = 2_999_876_543u64 * 3600;
        let g = s.guest(hour);
        let want = 3_600_000_000_000u64;
        assert!(g.abs_diff(want) < want / 1_000_000_000 + 2, "{g} vs {want}");
        // Large host counts (years of uptime) do not overflow.
        assert!(s.guest(u64::MAX / 2) > 0);
    }

    #[test]
    fn scaling_is_monotonic_and_identity_is_exact() {
        let s = TscScale::new(2_400_000_000, 1_000_000_000);
        let mut last = 0;
        for t in (0..10_000_000u64).step_by(997) {
            let g = s.guest(t);
            assert!(g >= last);
            last = g;
        }
        let id = TscScale::identity();
        assert!(id.is_identity() && !s.is_identity());
        assert_eq!(id.guest(123_456_789_012), 123_456_789_012);
        assert_eq!(id.host(42), 42);
    }
}
