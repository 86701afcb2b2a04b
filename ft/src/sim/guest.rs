//! A deterministic stand-in for the guest: a state machine that consumes
//! injected inputs (frames, timer interrupts, RDTSC values) and produces
//! outputs (replies) at points that depend only on its state, like a real
//! uniprocessor guest (DESIGN.md §1.1, §1.2, §1.10).

use alloc::vec::Vec;

use super::rng::mix;
use crate::log::ExecPoint;

/// Guest time per counter unit (100 units per millisecond).
pub const NS_PER_UNIT: u64 = 10_000;

/// Why [`SimGuest::advance`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStop {
    /// Reached the requested limit.
    Reached,
    /// Executes RDTSC here and needs its value ([`SimGuest::supply`]).
    NonDet(ExecPoint),
    /// Produced output number `index` here.
    Output { at: ExecPoint, index: u64 },
}

/// The simulated guest. `outputs[i]` is the content of the guest's i-th
/// output: two runs with the same inputs at the same points produce the
/// same list.
#[derive(Debug, Clone)]
pub struct SimGuest {
    counter: u64,
    state: u64,
    next_event: u64,
    blocked: bool,
    pending_replies: u32,
    /// Content of every output produced so far, by index.
    pub outputs: Vec<u64>,
}

impl SimGuest {
    /// A fresh guest; both replicas start from the same one.
    pub fn new(seed: u64) -> Self {
        let mut g = Self {
            counter: 0,
            state: mix(seed),
            next_event: 0,
            blocked: false,
            pending_replies: 0,
            outputs: Vec::new(),
        };
        g.reschedule();
        g
    }

    /// The current execution point; RIP and RCX derive from the state.
    pub fn point(&self) -> ExecPoint {
        ExecPoint::new(
            self.counter,
            0x1000 + (self.state & 0xfff),
            self.state >> 56,
        )
    }

    /// The execution counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Guest time implied by the counter.
    pub fn guest_time_ns(&self) -> u64 {
        self.counter * NS_PER_UNIT
    }

    /// A hash of the whole guest state (for checkpoints).
    pub fn state_hash(&self) -> u64 {
        mix(self.state ^ self.counter.rotate_left(17) ^ self.outputs.len() as u64)
    }

    /// The guest's "registers" for a checkpoint of the one replay engine
    /// ([`crate::replay::Replayer`] hashes a [`crate::replay::StateVector`]):
    /// the state hash and the counter, the rest zero.
    pub fn state_vector(&self) -> crate::replay::StateVector {
        let mut v = [0u64; crate::replay::STATE_WORDS];
        v[0] = self.state_hash();
        v[1] = self.counter;
        v
    }

    /// The content of output `index`, produced now: a digest of the guest's
    /// state there (never 0, so the backup's output check compares it).
    pub fn output_digest(&self, index: u64) -> u64 {
        crate::replay::hash_words(index, [self.state_hash(), self.counter]) | 1
    }

    /// The checkpoint hash of [`Self::state_vector`], as the replay engine
    /// computes it.
    pub fn checkpoint_hash(&self) -> u64 {
        crate::replay::hash_words(crate::replay::HASH_SEED, self.state_vector())
    }

    fn reschedule(&mut self) {
        self.next_event = self.counter + 100 + self.state % 400;
    }

    /// Runs until `limit` or the next guest-initiated event, whichever
    /// comes first.
    pub fn advance(&mut self, limit: u64) -> GuestStop {
        assert!(!self.blocked, "guest advanced while waiting for a value");
        if self.next_event > limit {
            self.counter = self.counter.max(limit);
            return GuestStop::Reached;
        }
        self.counter = self.next_event;
        if self.pending_replies > 0 {
            self.pending_replies -= 1;
            let index = self.outputs.len() as u64;
            let at = self.point();
            let content = mix(self.state ^ index);
            self.outputs.push(content);
            self.state = mix(self.state ^ content);
            self.reschedule();
            GuestStop::Output { at, index }
        } else {
            self.blocked = true;
            GuestStop::NonDet(self.point())
        }
    }

    /// The value of the RDTSC the guest is blocked on.
    pub fn supply(&mut self, value: u64) {
        self.blocked = false;
        self.state = mix(self.state ^ value);
        self.reschedule();
    }

    /// A network frame arrives (DMA + interrupt): the guest will reply.
    pub fn inject_frame(&mut self, frame: &[u8]) {
        let h = frame.iter().fold(self.state, |h, b| mix(h ^ u64::from(*b)));
        self.state = h;
        self.pending_replies += 1;
        self.reschedule();
    }

    /// A timer interrupt.
    pub fn inject_timer(&mut self) {
        self.state = mix(self.state ^ self.counter);
        self.reschedule();
    }
}
