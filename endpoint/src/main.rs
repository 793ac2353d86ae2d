//! `oasis-endpoint`: the endpoint's command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use oasis_core::logging::{self, LogFormat};
use oasis_endpoint::{fetch, parse_layer, FetchOptions, FetchReport, DEFAULT_STREAMS};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "oasis-endpoint",
    version,
    about = "Oasis endpoint: fetch layers into a directory"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch a layer and write its tree into a directory, reusing cached and local data.
    Fetch {
        /// Node state directory (written by `oasis-seed enroll --role endpoint`).
        #[arg(long)]
        state: PathBuf,
        /// A source as HOST:PORT; repeat for several, in order of preference (reflectors first,
        /// the seed last).
        #[arg(long = "from", required = true)]
        from: Vec<String>,
        /// NAME or NAME@VERSION (latest when no version is given).
        #[arg(long)]
        layer: String,
        /// Directory to write the tree into (created if missing).
        #[arg(long)]
        into: PathBuf,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Concurrent chunk requests.
        #[arg(long, default_value_t = DEFAULT_STREAMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
        streams: usize,
    },
}

/// The fetch was stopped by SIGINT or SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; target paths keep their previous content")]
struct Interrupted;

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(run(cli));
    // Lets a cancelled writer finish removing its temporary files before the process exits.
    rt.shutdown_timeout(Duration::from_secs(30));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(if e.is::<Interrupted>() { 130 } else { 1 });
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Fetch { state, from, layer, into, json, streams } => {
            let (name, version) = parse_layer(&layer);
            if name.is_empty() || version.as_deref() == Some("") {
                bail!("--layer {layer:?}: expected NAME or NAME@VERSION");
            }
            let mut sources = Vec::with_capacity(from.len());
            for s in &from {
                sources.push(resolve(s).await?);
            }
            let opts = FetchOptions {
                state_dir: state,
                sources,
                name,
                version,
                into,
                streams,
                progress: !json && std::io::stderr().is_terminal(),
            };
            let report = tokio::select! {
                r = fetch(&opts) => r?,
                // Dropping the fetch stops it; the writer removes its temporary files while the
                // runtime shuts down.
                _ = oasis_core::shutdown::shutdown_signal() => return Err(Interrupted.into()),
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_summary(&report);
            }
            Ok(())
        }
    }
}

/// HOST:PORT to one socket address (IPv4 preferred, as peers usually listen there).
async fn resolve(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(s)
        .await
        .with_context(|| format!("--from {s:?}: cannot resolve (expected HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("--from {s:?}: resolves to no address"))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn print_summary(r: &FetchReport) {
    let rate = if r.seconds > 0.0 { r.bytes as f64 / r.seconds / (1u64 << 20) as f64 } else { 0.0 };
    println!(
        "fetched {}@{} ({}) from {}: {} files, {} in {:.2}s ({rate:.0} MiB/s)",
        r.layer,
        r.version,
        &r.digest[..16.min(r.digest.len())],
        r.sources_used.join(", "),
        r.files,
        mib(r.bytes),
        r.seconds
    );
    println!(
        "  network: {} chunks, {} on the wire ({} plain){}",
        r.chunks_fetched,
        mib(r.bytes_network),
        mib(r.bytes_fetched),
        if r.chunks_refetched > 0 {
            format!(", {} corrupt chunks discarded and fetched again", r.chunks_refetched)
        } else {
            String::new()
        }
    );
    println!(
        "  reused: {} ({} chunks from the cache, {} from files already in place)",
        mib(r.bytes_reused),
        r.chunks_from_cache,
        r.chunks_from_local_files
    );
    println!(
        "  written: {} files ({}), {} unchanged, {} symlinks, {} new directories",
        r.files_written,
        mib(r.bytes_written),
        r.files_unchanged,
        r.symlinks_written,
        r.dirs_created
    );
    for p in &r.source_problems {
        println!("  skipped source {}: {}", p.addr, p.problem);
    }
}
