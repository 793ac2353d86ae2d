//! The Oasis simulator and the loopback demo.

pub mod bench;
pub mod demo;
pub mod engine;
pub mod report;
pub mod sample;
pub mod scenario;
pub mod simcmd;
