//! `oasis-sim`: the loopback demo, the benchmarks, the simulator and its fidelity check.

use clap::{Parser, Subcommand};
use oasis_core::logging::{self, LogFormat};

#[derive(Parser)]
#[command(name = "oasis-sim", version, about = "Oasis simulator, loopback demo and benchmarks")]
struct Cli {
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the loopback demo: a real seed and endpoints over QUIC on 127.0.0.1.
    Demo(oasis_sim::demo::DemoArgs),
    /// Measure ingest and fetch throughput against raw references in the same run.
    Bench(Box<oasis_sim::bench::BenchArgs>),
    /// Simulate a scenario (config/sim/*.toml) on a virtual clock: WAN bytes, completion
    /// times, peak rate against the policy, CSV time series and SVG charts.
    Run(oasis_sim::simcmd::RunArgs),
    /// The same scenario under two bandwidth policies, side by side.
    Compare(oasis_sim::simcmd::CompareArgs),
    /// A small scenario run in the simulator and live on loopback (real seed, reflectors and
    /// endpoints) on the same layer: WAN bytes and completion times side by side.
    Fidelity(oasis_sim::fidelity::FidelityArgs),
}

fn main() {
    let cli = Cli::parse();
    // The demo tells its own story on the terminal; its nodes log only warnings unless RUST_LOG says otherwise.
    // So do the benchmarks and the fidelity run, which start dozens of nodes in this process.
    let quiet = matches!(cli.cmd, Cmd::Demo(_) | Cmd::Bench(_) | Cmd::Fidelity(_));
    let default_level = if quiet { "warn" } else { "info" };
    logging::init_with_default(cli.log_format, default_level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    logging::exit_on_error(rt.block_on(async {
        match cli.cmd {
            Cmd::Demo(a) => oasis_sim::demo::run(a).await,
            Cmd::Bench(a) => oasis_sim::bench::run(*a).await,
            Cmd::Run(a) => oasis_sim::simcmd::run(a),
            Cmd::Compare(a) => oasis_sim::simcmd::compare(a),
            Cmd::Fidelity(a) => oasis_sim::fidelity::run(a).await,
        }
    }));
}
