//! `oasis-reflector`: the branch reflector daemon.

use clap::{Parser, Subcommand};
use oasis_core::logging;
use oasis_reflector::{check, ConfigArgs, RunningReflector};

#[derive(Parser)]
#[command(
    name = "oasis-reflector",
    version,
    about = "Oasis branch reflector: a site cache between endpoints and the seed"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve endpoints from the cache, fetching what it lacks from the upstream seed.
    Serve {
        #[command(flatten)]
        args: ConfigArgs,
    },
    /// Validate the configuration and policy and reach the upstream with this node's identity.
    Check {
        #[command(flatten)]
        args: ConfigArgs,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send Wake-on-LAN magic packets from this box to machines by MAC or inventory NAME.
    Wake {
        /// State directory (names are looked up in STATE/wake/devices.json).
        #[arg(long)]
        state: std::path::PathBuf,
        /// Destination ADDR[:PORT] instead of the subnet broadcast on port 9.
        #[arg(long)]
        to: Option<String>,
        /// SecureOn password, 4 or 6 bytes as hex.
        #[arg(long)]
        password: Option<String>,
        /// Print what was sent where as JSON.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "MAC|NAME")]
        targets: Vec<String>,
    },
    /// Show scheduled wake runs: per machine woken, online, delivered or failed (with reason).
    WakeStatus {
        #[arg(long)]
        state: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print this node's mesh peer id (creating its p2p key on first use; stable afterwards).
    Id {
        /// State directory written by `oasis-seed enroll --role reflector`.
        #[arg(long, value_name = "STATE_DIR")]
        state: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { args } => {
            let cfg = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            };
            logging::init(cfg.log_format);
            logging::exit_on_error(serve(cfg));
        }
        Cmd::Check { args, json } => {
            logging::init(args.log_format.unwrap_or_default());
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    std::process::exit(1);
                }
            };
            let report = rt.block_on(check::check(&args));
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{}", report.render());
            }
            std::process::exit(if report.ok { 0 } else { 1 });
        }
        Cmd::Wake { state, to, password, json, targets } => {
            logging::init(logging::LogFormat::default());
            std::process::exit(oasis_reflector::wake::cli_wake(
                &state,
                to.as_deref(),
                password.as_deref(),
                &targets,
                json,
            ));
        }
        Cmd::WakeStatus { state, json } => {
            std::process::exit(oasis_reflector::wake::cli_status(&state, json));
        }
        Cmd::Id { state } => {
            if !state.is_dir() {
                eprintln!(
                    "error: {} is not a directory (the state directory written by \
                     `oasis-seed enroll --role reflector`)",
                    state.display()
                );
                std::process::exit(2);
            }
            match oasis_mesh::peer_id_of_state(&state) {
                Ok(id) => println!("{id}"),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(1);
                }
            }
        }
    }
}

fn serve(cfg: oasis_reflector::ReflectorConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let reflector = RunningReflector::start(cfg).await?;
        if let Some(m) = reflector.metrics_addr {
            tracing::info!("metrics at http://{m}/metrics");
        }
        reflector.run_until_signal().await
    })
}
