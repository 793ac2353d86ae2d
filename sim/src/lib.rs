//! The Oasis simulator and the loopback demo.

pub mod bench;
pub mod demo;
pub mod sample;
