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
