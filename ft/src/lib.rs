//! The FT protocol, hardware-free (DESIGN.md §1).
#![cfg_attr(not(test), no_std)]
