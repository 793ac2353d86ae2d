//! `oasis-seed`: the datacenter seed node's command line.

use anyhow::bail;
use clap::{Parser, Subcommand};
use oasis_core::chunk::ChunkParams;
use oasis_core::identity::{Role, SeedAuthority};
use oasis_core::logging::{self, LogFormat};
use oasis_core::manifest::LayerKind;
use oasis_core::store::StoreError;
use oasis_seed::admin::forward;
use oasis_seed::commands::{execute, StoreCommand};
use oasis_seed::node::open_store;
use oasis_seed::RunningSeed;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "oasis-seed",
    version,
    about = "Oasis datacenter seed: publish layers and serve them"
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
    /// Create the root of trust (CA, manifest signing key) and the seed's own identity.
    Init {
        #[arg(long)]
        data: PathBuf,
        /// The seed's node name in its certificate.
        #[arg(long, default_value = "seed")]
        name: String,
        /// The datacenter site the seed runs in.
        #[arg(long)]
        site: Option<String>,
    },
    /// Issue a certificate for a reflector or endpoint and write its state directory.
    Enroll {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        role: Role,
        #[arg(long)]
        name: String,
        /// Site the node belongs to.
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        out: PathBuf,
        /// Replace an identity already in --out.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ingest a directory tree as a signed layer.
    Publish {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long, default_value = "base")]
        kind: LayerKind,
        /// FastCDC sizes MIN/AVG/MAX, e.g. 16K/64K/256K.
        #[arg(long, default_value = "16K/64K/256K", value_parser = ChunkParams::parse)]
        chunk_sizes: ChunkParams,
        src_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List published layers.
    List {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show a layer's manifest as JSON (NAME or NAME@VERSION).
    Show {
        #[arg(long)]
        data: PathBuf,
        layer: String,
    },
    /// Serve chunks and manifests over QUIC.
    Serve {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// Assign a published layer version to a site (replaces the site's earlier version).
    Assign {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        site: String,
        /// NAME@VERSION (NAME alone: the latest version).
        layer: String,
        /// Delivery window in the site's time zone, HH:MM-HH:MM.
        #[arg(long)]
        window: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a site's assignment of a layer.
    Unassign {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        site: String,
        /// NAME or NAME@VERSION.
        layer: String,
        #[arg(long)]
        json: bool,
    },
    /// List assignments, of every site or one.
    Assignments {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-read and verify every stored chunk; drop any that fail.
    Verify {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    logging::exit_on_error(run(cli));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init { data, name, site } => {
            let auth = SeedAuthority::init_named(&data, &name, site.as_deref())?;
            println!(
                "initialised seed {name} in {}; distribute {} to every node",
                data.display(),
                data.join("trust.pem").display()
            );
            drop(auth);
        }
        Cmd::Enroll { data, role, name, site, out, force, json } => {
            if role == Role::Seed {
                bail!("enroll --role seed: the seed's identity is made by `oasis-seed init`; enroll reflectors and endpoints");
            }
            let auth = SeedAuthority::load(&data)?;
            let id = auth.enroll(role, &name, site.as_deref(), &out, force)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "role": role.to_string(), "name": name, "site": site,
                        "state_dir": out, "uri": id.info().to_uri() })
                );
            } else {
                println!("enrolled {} into {}", id.info(), out.display());
            }
        }
        Cmd::Publish { data, name, version, kind, chunk_sizes, src_dir, json } => {
            // The running seed resolves paths in its own working directory: send it an absolute one.
            let src_dir = std::path::absolute(&src_dir).unwrap_or(src_dir);
            let cmd = StoreCommand::Publish { name, version, kind, chunking: chunk_sizes, src_dir };
            let r = run_store_command(&data, &cmd, !json)?;
            if json {
                println!("{r}");
            } else {
                let g = |k: &str| r[k].as_u64().unwrap_or(0);
                println!(
                    "published {} ({}) digest {}\n  {} files, {} bytes in {} chunks ({} unique, {} bytes plain, {} stored)\n  new in store: {} chunks, {} bytes stored ({} plain); {:.1} s, {:.0} MB/s",
                    r["layer"].as_str().unwrap_or(""), r["kind"].as_str().unwrap_or(""),
                    r["digest"].as_str().unwrap_or(""), g("files"), g("bytes"), g("chunks"),
                    g("unique_chunks"), g("unique_bytes"), g("stored_bytes"), g("new_chunks"),
                    g("new_bytes"), g("new_plain_bytes"), r["seconds"].as_f64().unwrap_or(0.0),
                    r["mb_per_s"].as_f64().unwrap_or(0.0)
                );
            }
        }
        Cmd::List { data, json } => {
            let rows = run_store_command(&data, &StoreCommand::List, false)?;
            let rows = rows.as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!("no layers published");
            } else {
                println!(
                    "{:<24} {:<12} {:<6} {:>8} {:>14}  digest",
                    "name", "version", "kind", "files", "bytes"
                );
                for r in rows {
                    println!(
                        "{:<24} {:<12} {:<6} {:>8} {:>14}  {}{}",
                        r["name"].as_str().unwrap_or(""),
                        r["version"].as_str().unwrap_or(""),
                        r["kind"].as_str().unwrap_or(""),
                        r["files"].to_string(),
                        r["bytes"].to_string(),
                        r["digest"].as_str().unwrap_or("").get(..16).unwrap_or(""),
                        if r["latest"] == true { "  (latest)" } else { "" }
                    );
                }
            }
        }
        Cmd::Show { data, layer } => {
            let v = run_store_command(&data, &StoreCommand::Show { layer }, false)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Assign { data, site, layer, window, json } => {
            let v = run_store_command(&data, &StoreCommand::Assign { site, layer, window }, false)?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "assigned {}@{} to site {}{}{}",
                    v["name"].as_str().unwrap_or(""),
                    v["version"].as_str().unwrap_or(""),
                    v["site"].as_str().unwrap_or(""),
                    match v["window"].as_str() {
                        Some(w) if !w.is_empty() => format!(" in window {w}"),
                        _ => String::new(),
                    },
                    match v["replaced"].as_str() {
                        Some(old) => format!(" (replaces version {old})"),
                        None => String::new(),
                    }
                );
            }
        }
        Cmd::Unassign { data, site, layer, json } => {
            let v = run_store_command(&data, &StoreCommand::Unassign { site, layer }, false)?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "unassigned {}@{} from site {}",
                    v["name"].as_str().unwrap_or(""),
                    v["version"].as_str().unwrap_or(""),
                    v["site"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Assignments { data, site, json } => {
            let v = run_store_command(&data, &StoreCommand::Assignments { site }, false)?;
            if json {
                println!("{v}");
            } else {
                let rows = v.as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    println!("no assignments");
                }
                for a in rows {
                    println!(
                        "{:<20} {}@{}{}",
                        a["site"].as_str().unwrap_or(""),
                        a["name"].as_str().unwrap_or(""),
                        a["version"].as_str().unwrap_or(""),
                        match a["window"].as_str() {
                            Some(w) if !w.is_empty() => format!("  window {w}"),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
        Cmd::Serve { data, listen, metrics } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let seed = RunningSeed::start(&data, listen, metrics).await?;
                if let Some(m) = seed.metrics_addr {
                    tracing::info!("metrics at http://{m}/metrics");
                }
                seed.run_until_signal().await
            })?;
        }
        Cmd::Verify { data, json } => {
            let v = run_store_command(&data, &StoreCommand::Verify, false)?;
            let (ok, bad) =
                (v["chunks_ok"].as_u64().unwrap_or(0), v["chunks_dropped"].as_u64().unwrap_or(0));
            if json {
                println!("{v}");
            } else {
                println!(
                    "{ok} chunks verified ({} bytes stored); {bad} dropped as corrupt or missing",
                    v["stored_bytes"]
                );
            }
            if bad > 0 {
                std::process::exit(3);
            }
        }
    }
    Ok(())
}

/// Runs a store command here, or in the running seed when it holds the store.
fn run_store_command(
    data: &Path,
    cmd: &StoreCommand,
    progress: bool,
) -> anyhow::Result<serde_json::Value> {
    let auth = SeedAuthority::load(data)?;
    let bar = (progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        b.set_message("publishing");
        b
    });
    let result = match open_store(data) {
        Ok(store) => execute(cmd, &auth, &store, bar.clone()),
        Err(e) if e.downcast_ref::<StoreError>().is_some_and(|s| s.is_locked()) => {
            tracing::debug!("store is held by a running seed; using its admin socket");
            forward(data, cmd, bar.as_ref())
        }
        Err(e) => Err(e),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}
