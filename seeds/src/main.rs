//! `oasis-seed`: the datacenter seed node's command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use oasis_core::chunk::ChunkParams;
use oasis_core::identity::{Role, SeedAuthority};
use oasis_core::logging::{self, LogFormat};
use oasis_core::manifest::{self, LayerKind, SignedManifest};
use oasis_seed::node::open_store;
use oasis_seed::{publish, PublishOptions, RunningSeed};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "oasis-seed", version, about = "Oasis datacenter seed: publish layers and serve them")]
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
    /// Re-read and verify every stored chunk; drop any that fail.
    Verify {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Splits NAME[@VERSION].
pub fn split_layer(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    }
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
            let auth = SeedAuthority::load(&data)?;
            let store = open_store(&data)?;
            let opts = PublishOptions {
                name,
                version,
                kind,
                chunking: chunk_sizes,
                progress: !json && std::io::stderr().is_terminal(),
            };
            let (_, r) = publish(&store, auth.signing_key(), &src_dir, &opts)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "published {} ({}) digest {}\n  {} files, {} bytes in {} chunks ({} unique, {} bytes plain, {} stored)\n  new in store: {} chunks, {} bytes stored ({} plain); {:.1} s, {:.0} MB/s",
                    r.layer, r.kind, r.digest, r.files, r.bytes, r.chunks, r.unique_chunks,
                    r.unique_bytes, r.stored_bytes, r.new_chunks, r.new_bytes, r.new_plain_bytes,
                    r.seconds, r.mb_per_s
                );
            }
        }
        Cmd::List { data, json } => {
            let auth = SeedAuthority::load(&data)?;
            let store = open_store(&data)?;
            let mut rows = Vec::new();
            for item in store.manifests() {
                let (name, version, bytes) = item?;
                let sm = SignedManifest::open(&bytes, auth.trust().manifest_key())
                    .with_context(|| format!("stored manifest {name}@{version}"))?;
                let m = &sm.manifest;
                rows.push(serde_json::json!({
                    "name": name, "version": version, "kind": m.kind.to_string(),
                    "digest": sm.digest_hex(), "files": m.files().count(), "bytes": m.total_bytes(),
                    "created": m.created,
                    "latest": store.latest_version(&name)?.as_deref() == Some(version.as_str()),
                }));
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!("no layers published");
            } else {
                println!("{:<24} {:<12} {:<6} {:>8} {:>14}  digest", "name", "version", "kind", "files", "bytes");
                for r in rows {
                    println!(
                        "{:<24} {:<12} {:<6} {:>8} {:>14}  {}{}",
                        r["name"].as_str().unwrap_or(""),
                        r["version"].as_str().unwrap_or(""),
                        r["kind"].as_str().unwrap_or(""),
                        r["files"].to_string(),
                        r["bytes"].to_string(),
                        &r["digest"].as_str().unwrap_or("")[..16],
                        if r["latest"] == true { "  (latest)" } else { "" }
                    );
                }
            }
        }
        Cmd::Show { data, layer } => {
            let auth = SeedAuthority::load(&data)?;
            let store = open_store(&data)?;
            let (name, version) = split_layer(&layer);
            let bytes = store
                .manifest_bytes(name, version)?
                .with_context(|| format!("layer {layer} is not published in {}", data.display()))?;
            let sm = SignedManifest::open(&bytes, auth.trust().manifest_key())?;
            println!("{}", serde_json::to_string_pretty(&manifest::to_json(&sm))?);
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
            let store = open_store(&data)?;
            let (mut ok, mut bad, mut bytes) = (0u64, 0u64, 0u64);
            let ids: Vec<_> = store.ids().collect::<Result<_, _>>()?;
            for (id, e) in ids {
                match store.get(&id)? {
                    Some(_) => {
                        ok += 1;
                        bytes += e.stored_len as u64;
                    }
                    None => bad += 1,
                }
            }
            if json {
                println!("{}", serde_json::json!({ "chunks_ok": ok, "chunks_dropped": bad, "stored_bytes": bytes }));
            } else {
                println!("{ok} chunks verified ({bytes} bytes stored); {bad} dropped as corrupt or missing");
            }
            if bad > 0 {
                std::process::exit(3);
            }
        }
    }
    Ok(())
}
