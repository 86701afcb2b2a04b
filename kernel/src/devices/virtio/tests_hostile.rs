//! Hostile descriptor chains and randomized register/ring contents.
