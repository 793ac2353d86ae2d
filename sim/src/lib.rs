//! The Oasis simulator and the loopback demo.

pub mod bench;
pub mod bench_device;
pub mod bench_hostile;
pub mod bench_reflector;
pub mod bench_tree;
pub mod bench_wan;
pub mod bench_yield;
pub mod demo;
pub mod engine;
pub mod fidelity;
pub mod live;
pub mod report;
pub mod sample;
pub mod scenario;
pub mod simcmd;
