//! `oasis-seed`: the datacenter seed node's command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use oasis_core::chunk::ChunkParams;
use oasis_core::logging::{self, LogFormat};
use oasis_core::manifest::LayerKind;
use oasis_core::net::ServeLimits;
use oasis_core::pki::{RevokeTarget, Role, SeedAuthority};
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
        /// Lifetime of the certificate in days; the node renews it over its connections once a
        /// third is left, each renewal as long.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node's certificate (every unrevoked one of NAME, or one by --serial) and sign a
    /// new revocation list; the serving seed takes it within a second and reflectors soon after,
    /// and from then on refuse the node's connections and its gossip.
    Revoke {
        #[arg(long)]
        data: PathBuf,
        /// The node name to revoke.
        #[arg(required_unless_present_any = ["serial", "cert"], conflicts_with_all = ["serial", "cert"])]
        name: Option<String>,
        /// Only the certificates of this role (with NAME).
        #[arg(long, requires = "name")]
        role: Option<Role>,
        /// The certificate serial (hex, as `oasis-seed certs` lists it).
        #[arg(long, conflicts_with = "cert")]
        serial: Option<String>,
        /// A certificate file (a node's node.pem): also revokes one issued before the seed kept
        /// its register.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List the certificates this seed issued, and which are revoked.
    Certs {
        #[arg(long)]
        data: PathBuf,
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
        /// Sign the manifest through the `oasis-seed signer` on this socket (a DATA whose keys
        /// were split off, with no seed serving it).
        #[arg(long, value_name = "SOCKET")]
        signer: Option<PathBuf>,
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
        /// Join the reflector mesh listening on this libp2p address (repeatable), e.g.
        /// /ip4/0.0.0.0/tcp/7411 and /ip4/0.0.0.0/udp/7411/quic-v1. The seed joins the mesh
        /// when this or --bootstrap is given.
        #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
        p2p_listen: Vec<String>,
        /// Mesh peer to dial at start (repeatable), with or without a trailing /p2p/PEER_ID.
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// Do not look for mesh peers with mDNS on the local network.
        #[arg(long)]
        no_mdns: bool,
        /// The ip:port reflectors and endpoints reach this seed's QUIC service at, published in
        /// the mesh (default: the --listen address unless it is 0.0.0.0 or ::).
        #[arg(long, value_name = "ADDR")]
        advertise: Option<SocketAddr>,
        /// Connections served at once, all peers together; more are refused at the handshake.
        #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_connections)]
        max_connections: u32,
        /// Connections one node identity may hold at once.
        #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_connections_per_peer)]
        max_connections_per_peer: u32,
        /// Longest an answer waits for a peer that takes none of its bytes before it is reset
        /// ("30s", "2m").
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = oasis_core::units::parse_duration)]
        write_stall: std::time::Duration,
        /// Requests one connection may have open at once; more wait for one to end.
        #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_streams_per_connection)]
        max_streams_per_connection: u32,
        /// Answer bytes one connection may have in flight, not yet acknowledged ("64MiB",
        /// 64 KiB to 1 GiB): what answers hold in memory per connection.
        #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = oasis_core::units::parse_amount)]
        max_answer_bytes_per_connection: u64,
        /// How long a client socket (IP and port) whose connection was turned away after its
        /// handshake (over its share, revoked, refused by TLS, bad requests) has further
        /// connections refused before the handshake ("10s"; "0s" turns it off).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = oasis_core::units::parse_duration)]
        source_ban: std::time::Duration,
        /// Snapshot record bytes assembled in memory at once over every upload ("1GiB", 1 MiB
        /// to 64 GiB); each device assembles one record at a time, and a record larger than
        /// this is refused.
        #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = oasis_core::units::parse_amount)]
        max_record_assembly_bytes: u64,
        /// How long a signed "latest" statement stays fresh ("1h", 1 s to 30 days). A reflector
        /// cut off from the seed serves its last copy; past this, endpoints report it stale.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = oasis_core::units::parse_duration)]
        latest_ttl: std::time::Duration,
        /// Sign through the `oasis-seed signer` answering on this socket instead of with keys
        /// in DATA, which must then hold none (see `split-keys`).
        #[arg(long, value_name = "SOCKET")]
        signer: Option<PathBuf>,
    },
    /// Hold the seed's private keys (the CA key and the manifest key) in a process of their
    /// own and sign for `oasis-seed serve --signer` over a Unix socket. KEYS is the directory
    /// `split-keys` moved them to; `enroll`, `revoke` and `certs` run with --data KEYS.
    Signer {
        /// The keys directory (ca.key, manifest.key, trust.pem, ca.pem, the register).
        #[arg(long)]
        data: PathBuf,
        /// The socket to answer on (default KEYS/signer.sock), created with mode 0600, or
        /// 0666 when --allow-uid admits other users (every caller's uid is checked).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also answer this uid (repeatable): the user `serve` runs as, or sshd's when the
        /// socket is forwarded from another host. The signer's own uid and root always may.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uid: Vec<u32>,
    },
    /// Move the CA key and the manifest key (with the register of issued certificates and the
    /// revocation list) out of DATA into KEYS, for `oasis-seed signer --data KEYS`; then run
    /// `serve --signer`. Stop `serve` first.
    SplitKeys {
        #[arg(long)]
        data: PathBuf,
        /// The new keys directory (created with mode 0700; must not hold keys already).
        #[arg(long, value_name = "KEYS")]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the seed's mesh peer id (creating its p2p key on first use; stable afterwards).
    Id {
        #[arg(long)]
        data: PathBuf,
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
        /// Make the layer available to the site's endpoints on demand, without delivering it
        /// (no pin, no prefetch, no wake). Either way the site's endpoints may fetch it, and no
        /// other site's may.
        #[arg(long, conflicts_with = "window")]
        available: bool,
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
    /// Wake devices through an awake relay on each one's subnet (a reflector, or a relay
    /// endpoint); the seed sends no magic packet itself.
    Wake {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "DEVICE")]
        devices: Vec<String>,
    },
    /// List the device inventory: endpoints and reflectors that registered.
    Devices {
        #[arg(long)]
        data: PathBuf,
        /// Only devices without a plan yet.
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        json: bool,
    },
    /// Assign a base layer and app layers to a device (a pending one, or change its plan); the
    /// endpoint applies them with `oasis-endpoint provision`.
    Provision {
        #[arg(long)]
        data: PathBuf,
        /// The device's node name, as listed by `oasis-seed devices`.
        device: String,
        /// NAME@VERSION of a published base layer (NAME alone: the latest version).
        #[arg(long)]
        base: String,
        /// NAME@VERSION of a published app layer; repeat for several, applied in order.
        #[arg(long = "app")]
        apps: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List device snapshots uploaded by endpoints: every device's latest, or one device's all.
    Snapshots {
        #[arg(long)]
        data: PathBuf,
        device: Option<String>,
        /// Forget snapshot ID of DEVICE (its chunks stay stored).
        #[arg(long, value_name = "ID", requires = "device")]
        forget: Option<String>,
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

/// The seed's mesh settings from the `serve` flags; None when neither --p2p-listen nor
/// --bootstrap is given (the seed stays out of the mesh).
fn mesh_settings(
    listen: &[String],
    bootstrap: &[String],
    no_mdns: bool,
    advertise: Option<SocketAddr>,
) -> anyhow::Result<Option<oasis_mesh::MeshConfig>> {
    if listen.is_empty() && bootstrap.is_empty() {
        if no_mdns || advertise.is_some() {
            bail!("--no-mdns and --advertise take effect in the mesh: give --p2p-listen too");
        }
        return Ok(None);
    }
    let parse = |flag: &str, v: &[String]| -> anyhow::Result<Vec<_>> {
        v.iter()
            .map(|a| oasis_mesh::parse_multiaddr(a).map_err(|p| anyhow::anyhow!("{flag} {p}")))
            .collect()
    };
    let mut listen = parse("--p2p-listen", listen)?;
    if listen.is_empty() {
        listen = oasis_mesh::MeshConfig::default().listen;
    }
    Ok(Some(oasis_mesh::MeshConfig {
        listen,
        bootstrap: parse("--bootstrap", bootstrap)?,
        mdns: !no_mdns,
        serving_addr: advertise,
        ..oasis_mesh::MeshConfig::default()
    }))
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
        Cmd::Enroll { data, role, name, site, out, force, days, json } => {
            if role == Role::Seed {
                bail!("enroll --role seed: the seed's identity is made by `oasis-seed init`; enroll reflectors and endpoints");
            }
            let auth = SeedAuthority::load(&data)?;
            let lifetime = std::time::Duration::from_secs(days * 86_400);
            let valid = |c: &oasis_core::pki::IssuedCert| {
                c.role == role && c.name == name && c.revoked_at.is_none()
            };
            let before: Vec<String> =
                auth.issued()?.into_iter().filter(valid).map(|c| c.serial).collect();
            let id = auth.enroll_for(role, &name, site.as_deref(), &out, force, lifetime)?;
            let expires = id.expires_at().max(0) as u64;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "role": role.to_string(), "name": name, "site": site,
                        "state_dir": out, "uri": id.info().to_uri(), "expires": expires,
                        "revoked": before })
                );
            } else {
                println!(
                    "enrolled {} into {} (certificate valid until {}, renewed while in use)",
                    id.info(),
                    out.display(),
                    day_of(expires)
                );
                for serial in &before {
                    println!("revoked the certificate it replaces (serial {serial})");
                }
            }
        }
        Cmd::Revoke { data, name, role, serial, cert, json } => {
            let auth = SeedAuthority::load(&data)?;
            let target = match (name, serial, cert) {
                (_, _, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let pem = pem::parse(&text)
                        .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
                    RevokeTarget::Cert(pem.into_contents())
                }
                (_, Some(serial), None) => RevokeTarget::Serial(serial),
                (Some(name), None, None) => RevokeTarget::Name { name, role },
                (None, None, None) => bail!("revoke: give a node NAME, --serial or --cert"),
            };
            let revoked = auth.revoke(&target)?;
            if json {
                println!("{}", serde_json::json!({ "revoked": revoked }));
            } else {
                for c in &revoked {
                    println!("revoked {} {} (serial {})", c.role, c.name, c.serial);
                }
            }
        }
        Cmd::Certs { data, json } => {
            let certs = SeedAuthority::load(&data)?.issued()?;
            if json {
                println!("{}", serde_json::to_string(&certs)?);
            } else {
                println!(
                    "{:<10} {:<24} {:<12} {:<34} {:<10}  state",
                    "role", "name", "site", "serial", "expires"
                );
                for c in &certs {
                    println!(
                        "{:<10} {:<24} {:<12} {:<34} {:<10}  {}",
                        c.role.as_str(),
                        c.name,
                        c.site.as_deref().unwrap_or("-"),
                        c.serial,
                        day_of(c.not_after),
                        c.revoked_at
                            .map_or("valid".to_string(), |t| format!("revoked {}", day_of(t)))
                    );
                }
            }
        }
        Cmd::Publish { data, name, version, kind, chunk_sizes, src_dir, signer, json } => {
            // The running seed resolves paths in its own working directory: send it an absolute one.
            let src_dir = std::path::absolute(&src_dir).unwrap_or(src_dir);
            let cmd = StoreCommand::Publish { name, version, kind, chunking: chunk_sizes, src_dir };
            let r = run_store_command_with(&data, &cmd, !json, signer.as_deref())?;
            if json {
                println!("{r}");
            } else {
                let g = |k: &str| r[k].as_u64().unwrap_or(0);
                println!(
                    "published {} ({}) digest {}\n  {} files, {} bytes in {} chunks ({} unique, {} bytes plain, {} stored)\n  {} directories, {} symlinks, {} hard links; manifest body {} bytes in {} chunks\n  new in store: {} chunks, {} bytes stored ({} plain); {:.1} s, {:.0} MB/s",
                    r["layer"].as_str().unwrap_or(""), r["kind"].as_str().unwrap_or(""),
                    r["digest"].as_str().unwrap_or(""), g("files"), g("bytes"), g("chunks"),
                    g("unique_chunks"), g("unique_bytes"), g("stored_bytes"), g("dirs"),
                    g("symlinks"), g("hardlinks"), g("body_bytes"), g("body_chunks"),
                    g("new_chunks"), g("new_bytes"), g("new_plain_bytes"),
                    r["seconds"].as_f64().unwrap_or(0.0), r["mb_per_s"].as_f64().unwrap_or(0.0)
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
        Cmd::Assign { data, site, layer, window, available, json } => {
            let v = run_store_command(
                &data,
                &StoreCommand::Assign { site, layer, window, available },
                false,
            )?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "{} {}@{} to site {}{}{}",
                    if available { "made available" } else { "assigned" },
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
                        match (a["available"].as_bool(), a["window"].as_str()) {
                            (Some(true), _) => "  available (not delivered)".to_string(),
                            (_, Some(w)) if !w.is_empty() => format!("  window {w}"),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
        Cmd::Serve {
            data,
            listen,
            metrics,
            p2p_listen,
            bootstrap,
            no_mdns,
            advertise,
            max_connections,
            max_connections_per_peer,
            write_stall,
            max_streams_per_connection,
            max_answer_bytes_per_connection,
            source_ban,
            max_record_assembly_bytes,
            latest_ttl,
            signer,
        } => {
            let mesh = mesh_settings(&p2p_listen, &bootstrap, no_mdns, advertise)?;
            let limits = ServeLimits {
                max_connections,
                max_connections_per_peer,
                write_stall,
                max_streams_per_connection,
                max_answer_bytes_per_connection,
                source_ban,
            };
            limits.validate().map_err(|e| anyhow::anyhow!("oasis-seed serve: {e}"))?;
            oasis_seed::snapshots::configure_record_budget(max_record_assembly_bytes)
                .map_err(|e| anyhow::anyhow!("oasis-seed serve: {e}"))?;
            oasis_seed::signer::check_ttl(latest_ttl)
                .map_err(|e| anyhow::anyhow!("oasis-seed serve: {e}"))?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let mut seed = RunningSeed::start_with_limits(
                    &data,
                    listen,
                    metrics,
                    limits,
                    latest_ttl,
                    signer.as_deref(),
                )
                .await?;
                if let Some(m) = mesh {
                    seed.join_mesh(&data, m)?;
                }
                if let Some(m) = seed.metrics_addr {
                    tracing::info!("metrics at http://{m}/metrics");
                }
                seed.run_until_signal().await
            })?;
        }
        Cmd::Signer { data, socket, allow_uid } => {
            let socket = socket.unwrap_or_else(|| oasis_seed::keys::daemon::default_socket(&data));
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let signer = oasis_seed::keys::daemon::start(&data, &socket, &allow_uid)?;
                println!("signer answering on {}", signer.socket.display());
                oasis_core::shutdown::shutdown_signal().await;
                tracing::info!("signer stopping");
                drop(signer);
                anyhow::Ok(())
            })?;
        }
        Cmd::SplitKeys { data, to, json } => {
            if std::os::unix::net::UnixStream::connect(oasis_seed::admin::socket_path(&data))
                .is_ok()
            {
                bail!(
                    "a seed is serving {}: stop it first (it holds the keys in memory), then \
                     split, start `oasis-seed signer --data {}` and serve with --signer",
                    data.display(),
                    to.display()
                );
            }
            let written = SeedAuthority::split_keys(&data, &to)?;
            let socket = oasis_seed::keys::daemon::default_socket(&to);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "keys": to, "written": written, "socket": socket })
                );
            } else {
                println!(
                    "moved the private keys of {} to {}\nnext: oasis-seed signer --data {}\n      \
                     oasis-seed serve --data {} --signer {} ...",
                    data.display(),
                    to.display(),
                    to.display(),
                    data.display(),
                    socket.display()
                );
            }
        }
        Cmd::Id { data } => {
            if !data.join(oasis_core::pki::TRUST_FILE).exists() {
                bail!(
                    "{} is not a seed data directory (no trust.pem): run `oasis-seed init --data {}` first",
                    data.display(),
                    data.display()
                );
            }
            println!("{}", oasis_mesh::peer_id_of_state(&data)?);
        }
        Cmd::Wake { data, json, devices } => {
            let v = run_store_command(&data, &StoreCommand::Devices { pending: false }, false)?;
            let inventory: Vec<oasis_seed::devices::DeviceRecord> = serde_json::from_value(v)?;
            let identity = oasis_core::pki::NodeIdentity::load(&data)?;
            let rt = tokio::runtime::Runtime::new()?;
            let outcomes = rt.block_on(async {
                let ep = oasis_core::net::client_endpoint(
                    &identity,
                    &oasis_core::net::TransportOptions::default(),
                )?;
                let o = oasis_seed::devices::wake_devices(&ep, &inventory, &devices).await;
                ep.close(0u32.into(), b"done");
                anyhow::Ok(o)
            })?;
            let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
            if json {
                println!("{}", serde_json::to_string(&outcomes)?);
            } else {
                for o in &outcomes {
                    match &o.error {
                        None => println!(
                            "woke {} ({}) through {}: {} packets to {}",
                            o.device,
                            o.mac.as_deref().unwrap_or("-"),
                            o.relay.as_deref().unwrap_or("-"),
                            o.packets,
                            o.sent_to.join(", ")
                        ),
                        Some(e) => println!("FAILED {}: {e}", o.device),
                    }
                    for s in &o.skipped {
                        println!("  skipped {s}");
                    }
                }
            }
            if failed > 0 {
                std::process::exit(1);
            }
        }
        Cmd::Devices { data, pending, json } => {
            let v = run_store_command(&data, &StoreCommand::Devices { pending }, false)?;
            if json {
                println!("{v}");
            } else {
                print_devices(&v);
            }
        }
        Cmd::Provision { data, device, base, apps, json } => {
            let cmd = StoreCommand::Provision { device, base, apps };
            let v = run_store_command(&data, &cmd, false)?;
            if json {
                println!("{v}");
            } else {
                let pair = |x: &serde_json::Value| {
                    format!("{}@{}", x[0].as_str().unwrap_or(""), x[1].as_str().unwrap_or(""))
                };
                let mut plan = pair(&v["plan"]["base"]);
                for a in v["plan"]["apps"].as_array().into_iter().flatten() {
                    plan.push_str(" + ");
                    plan.push_str(&pair(a));
                }
                println!("provisioned {}: {plan}", v["name"].as_str().unwrap_or(""));
            }
        }
        Cmd::Snapshots { data, device, forget, json } => {
            let listing_one = device.is_some() && forget.is_none();
            let v = run_store_command(&data, &StoreCommand::Snapshots { device, forget }, false)?;
            if json {
                println!("{v}");
            } else if let Some(rows) = v.as_array() {
                print_snapshots(rows, listing_one);
            } else {
                println!(
                    "forgot snapshot {} of {}",
                    v["id"].as_str().unwrap_or(""),
                    v["device"].as_str().unwrap_or("")
                );
            }
        }
        Cmd::Verify { data, json } => {
            let v = run_store_command(&data, &StoreCommand::Verify, false)?;
            let (ok, bad) =
                (v["chunks_ok"].as_u64().unwrap_or(0), v["chunks_dropped"].as_u64().unwrap_or(0));
            let bad_layers = v["manifests_bad"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{v}");
            } else {
                println!(
                    "{ok} chunks verified ({} bytes stored); {bad} dropped as corrupt or missing",
                    v["stored_bytes"]
                );
                println!(
                    "{} manifests open; {} do not",
                    v["manifests_ok"].as_u64().unwrap_or(0),
                    bad_layers.len()
                );
                for l in &bad_layers {
                    println!(
                        "  {}: {}",
                        l["layer"].as_str().unwrap_or(""),
                        l["problem"].as_str().unwrap_or("")
                    );
                }
            }
            if bad > 0 || !bad_layers.is_empty() {
                std::process::exit(3);
            }
        }
    }
    Ok(())
}

/// Runs a store command here, or in the running seed when it holds the store.
/// A unix time as its UTC day (YYYY-MM-DD).
fn day_of(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .map_or_else(|_| unix.to_string(), |t| t.strftime("%Y-%m-%d").to_string())
}

fn run_store_command(
    data: &Path,
    cmd: &StoreCommand,
    progress: bool,
) -> anyhow::Result<serde_json::Value> {
    run_store_command_with(data, cmd, progress, None)
}

/// [`run_store_command`], signing through the signer at `signer` when given.
fn run_store_command_with(
    data: &Path,
    cmd: &StoreCommand,
    progress: bool,
    signer: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let keys = oasis_seed::keys::open(data, signer)?;
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
        Ok(store) => execute(cmd, &*keys, &store, bar.clone()),
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

fn print_devices(v: &serde_json::Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no devices registered");
        return;
    }
    let now = oasis_seed::devices::unix_now();
    println!(
        "{:<20} {:<9} {:<12} {:<17} {:<18} {:>10}  plan",
        "name", "role", "site", "mac", "address", "seen"
    );
    for r in rows {
        let first = |k: &str| r[k].as_array().and_then(|a| a.first()).and_then(|x| x.as_str());
        let seen = now.saturating_sub(r["last_seen"].as_u64().unwrap_or(0));
        let plan = match &r["plan"] {
            serde_json::Value::Null => "(pending)".to_string(),
            p => {
                let pair = |x: &serde_json::Value| {
                    format!("{}@{}", x[0].as_str().unwrap_or(""), x[1].as_str().unwrap_or(""))
                };
                let mut s = pair(&p["base"]);
                for a in p["apps"].as_array().into_iter().flatten() {
                    s.push_str(" + ");
                    s.push_str(&pair(a));
                }
                s
            }
        };
        println!(
            "{:<20} {:<9} {:<12} {:<17} {:<18} {:>9}s  {plan}",
            r["name"].as_str().unwrap_or(""),
            r["role"].as_str().unwrap_or(""),
            r["site"].as_str().unwrap_or("-"),
            first("macs").unwrap_or("-"),
            first("addrs").unwrap_or("-"),
            seen,
        );
    }
}

fn print_snapshots(rows: &[serde_json::Value], one_device: bool) {
    if rows.is_empty() {
        println!("no device snapshots uploaded");
        return;
    }
    println!(
        "{:<20} {:<10} {:>8} {:>14} {:<20} {}",
        "device",
        "snapshot",
        "files",
        "bytes",
        "created",
        if one_device { "layers" } else { "count" }
    );
    for r in rows {
        let info = if one_device { r } else { &r["latest"] };
        let age =
            oasis_seed::devices::unix_now().saturating_sub(info["created"].as_u64().unwrap_or(0));
        let created = format!("{}h{:02}m ago", age / 3600, age % 3600 / 60);
        println!(
            "{:<20} {:<10} {:>8} {:>14} {:<20} {}",
            info["device"].as_str().unwrap_or(""),
            info["id"].as_str().unwrap_or(""),
            info["files"].as_u64().unwrap_or(0),
            info["bytes"].as_u64().unwrap_or(0),
            created,
            if one_device {
                info["layers"].as_str().unwrap_or("").to_string()
            } else {
                r["count"].to_string()
            }
        );
    }
}
