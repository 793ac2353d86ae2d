//! `oasis-endpoint`: the endpoint's command line.

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use oasis_core::logging::{self, LogFormat};
use oasis_endpoint::apply::{self, ApplyOptions, ApplyReport};
use oasis_endpoint::device::DeviceState;
use oasis_endpoint::revert::{self, RestoreReport};
use oasis_endpoint::session::Session;
use oasis_endpoint::snapshot::{SnapshotDir, SnapshotInfo};
use oasis_endpoint::{
    fetch_with, parse_layer, Extraneous, FetchOptions, FetchReport, DEFAULT_STREAMS,
};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "oasis-endpoint",
    version,
    about = "Oasis endpoint: fetch layers, apply IT layers to a device, snapshots and restore"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// The endpoint's configuration file (default: STATE_DIR/endpoint.toml, if it exists);
    /// its `sources` are used when no --from is given, and added after --from otherwise;
    /// `snapshot_mounts = ["home", "/boot/efi"]` lists other filesystems (mount points inside
    /// the device root) that device snapshots include.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch a layer and write its tree into a directory, reusing cached and local data.
    ///
    /// Every entry gets the owner (when run as root), mode (with set-id and sticky bits),
    /// extended attributes and mtime the layer records, and hard links stay hard links; what
    /// cannot be applied when not root is counted and reported ("not applied", `not_applied`).
    /// Entries under DIR that the layer does not have are left there unless --delete is given.
    Fetch {
        /// Node state directory (written by `oasis-seed enroll --role endpoint`).
        #[arg(long)]
        state: PathBuf,
        /// A source as HOST:PORT; repeat for several, in order of preference (reflectors first,
        /// the seed last). Default: `sources` in the config file.
        #[arg(long = "from")]
        from: Vec<String>,
        /// NAME or NAME@VERSION. Without a version: the version the seed's signed "latest"
        /// statement names; one older than a latest seen before is refused, and one past its
        /// expiry (a source cut off from the seed) is used and reported as stale.
        #[arg(long)]
        layer: String,
        /// Directory to write the tree into (created if missing). Files and directories already
        /// in it that the layer does not have are left in place (see --delete).
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
        /// Make DIR exactly the layer: remove every entry under it that the layer does not have
        /// (as rsync --delete does), after the layer is written. Symlinks are removed, never
        /// followed; other filesystems mounted inside DIR and the state directory are left.
        #[arg(long)]
        delete: bool,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Concurrent chunk requests.
        #[arg(long, default_value_t = DEFAULT_STREAMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
        streams: usize,
    },
    /// Apply IT layers to the device root in place: every layer file exactly as the layers
    /// say, user files untouched, a snapshot first; crash-safe.
    Apply {
        /// Node state directory (identity, chunk store, device state, snapshots).
        #[arg(long)]
        state: PathBuf,
        /// A source as HOST:PORT; repeat for several, reflectors first, the seed last.
        /// Default: `sources` in the config file.
        #[arg(long = "from")]
        from: Vec<String>,
        /// The device root (recorded in the state dir by the first apply).
        #[arg(long)]
        root: PathBuf,
        /// The base layer, NAME@VERSION.
        #[arg(long)]
        base: String,
        /// An app layer, NAME@VERSION; repeat for several.
        #[arg(long = "app")]
        app: Vec<String>,
        /// Print one JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Concurrent chunk requests.
        #[arg(long, default_value_t = DEFAULT_STREAMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
        streams: usize,
        /// Allow a layer to go to a lower version than the one applied (refused otherwise).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Record a snapshot of the whole device now: every directory, file, symlink and hard link
    /// with its owner, mode, mtime and extended attributes.
    ///
    /// A snapshot stays on the root's filesystem: where another filesystem is mounted (/proc,
    /// /sys, /dev, /run, a tmpfs, ...) it lists the directory but does not descend. Mount points
    /// whose filesystems belong to the device (a separate /home) are listed in the config file
    /// as `snapshot_mounts = ["home"]`. Revert and restore never write into, replace or remove
    /// a mount point.
    Snapshot {
        #[arg(long)]
        state: PathBuf,
        /// The device root (default: the one recorded in the state dir).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Rehash every file, even those whose size, mtime, ctime and inode are unchanged.
        #[arg(long)]
        full_verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the device's snapshots, oldest first.
    Snapshots {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Return the whole device to a snapshot (the tree and the layers applied then).
    Revert {
        #[arg(long)]
        state: PathBuf,
        /// Snapshot id (see `snapshots`) or "latest".
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Bring back one file or directory from a snapshot (a snapshot of now is taken first).
    RestoreFile {
        #[arg(long)]
        state: PathBuf,
        /// Path inside the device root (relative to it, or absolute).
        path: PathBuf,
        /// Snapshot id or "latest".
        #[arg(long = "from")]
        from: String,
        #[arg(long)]
        json: bool,
    },
    /// Show or set how many snapshots are kept (config key `snapshot_keep`, default 10).
    Retention {
        #[arg(long)]
        state: PathBuf,
        /// Keep the newest N snapshots; older ones and chunks only they use are deleted.
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=100_000))]
        keep: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Show the device: root, applied layers, snapshots; finishes an interrupted apply.
    Status {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Send a snapshot of the device (the latest by default) to the seed: only chunks the seed
    /// lacks cross the WAN, under the bandwidth policy; an interrupted upload resumes.
    Upload {
        #[arg(long)]
        state: PathBuf,
        /// The seed, HOST:PORT.
        #[arg(long)]
        seed: String,
        /// Snapshot id (see `snapshots`) or "latest".
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// WAN bandwidth policy file (the format of config/bandwidth-policy.example.toml).
        #[arg(long, conflicts_with = "wan_rate")]
        policy: Option<PathBuf>,
        /// A flat WAN cap instead of a policy file, e.g. 2MB/s or 20Mbit/s.
        #[arg(long)]
        wan_rate: Option<String>,
        /// Concurrent upload streams.
        #[arg(long, default_value_t = oasis_endpoint::upload::DEFAULT_UPLOAD_STREAMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
        streams: usize,
        /// Reconnections after a break before giving up.
        #[arg(long, default_value_t = oasis_endpoint::upload::DEFAULT_RETRIES)]
        retries: u32,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a device from a snapshot it uploaded to the seed, onto an empty or replaced root.
    Restore {
        #[arg(long)]
        state: PathBuf,
        /// The seed, HOST:PORT.
        #[arg(long)]
        seed: String,
        /// Where layers come from for apps-and-user (reflectors first); default: the seed.
        #[arg(long = "from")]
        from: Vec<String>,
        /// DEVICE or DEVICE@SNAPSHOT (the latest when no snapshot is given).
        #[arg(long = "from-seed", value_name = "DEVICE[@SNAPSHOT]")]
        from_seed: String,
        /// The root to rebuild (full: must be empty or absent).
        #[arg(long)]
        root: PathBuf,
        /// full: the whole device; apps-and-user: the layers assigned now plus everything the
        /// user owned; user: the user's data and profile only.
        #[arg(long, value_parser = ["full", "apps-and-user", "user"])]
        mode: String,
        /// Top-level directory holding user profiles (mode user); repeat. Default: home, root,
        /// Users.
        #[arg(long = "profile-dir")]
        profile_dir: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build this device from the layers the seed assigns it (`oasis-seed provision`): asks
    /// the seed for its plan (an unknown device is listed as pending there), then applies it.
    Provision {
        #[arg(long)]
        state: PathBuf,
        /// The seed, HOST:PORT.
        #[arg(long)]
        seed: String,
        /// Where layers come from (reflectors first); default: the seed.
        #[arg(long = "from")]
        from: Vec<String>,
        /// The device root (may be empty).
        #[arg(long)]
        root: PathBuf,
        /// While pending, ask again every SECONDS until layers are assigned.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Test mode: register, then stay "asleep" listening on a UDP port until this machine's
    /// magic packet arrives; then wake, fetch the site's layers (or --layer) and report them.
    Sleep {
        #[arg(long)]
        state: PathBuf,
        /// Sources as HOST:PORT, reflectors first. Default: `sources` in the config file.
        #[arg(long = "from")]
        from: Vec<String>,
        /// UDP ADDR:PORT to listen on for the magic packet (reported as this machine's wake
        /// address).
        #[arg(long)]
        wake_listen: SocketAddr,
        /// The MAC to answer to (default: this box's interfaces').
        #[arg(long)]
        mac: Option<String>,
        /// Required SecureOn password, hex.
        #[arg(long)]
        password: Option<String>,
        /// NAME[@VERSION] to fetch on waking (repeatable); default: the site's assignments.
        #[arg(long)]
        layer: Vec<String>,
        /// Layers are written to INTO/NAME.
        #[arg(long)]
        into: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Relay wakes for this subnet: serve Wake requests on QUIC and register as a relay.
    Relay {
        #[arg(long)]
        state: PathBuf,
        /// QUIC ADDR:PORT to serve Wake on.
        #[arg(long)]
        listen: SocketAddr,
        /// Sources to register with, HOST:PORT. Default: `sources` in the config file.
        #[arg(long = "from")]
        from: Vec<String>,
        /// Register this ADDR/PREFIX instead of the interfaces' addresses (repeatable; for a
        /// box whose interface addresses are not its LAN addresses).
        #[arg(long = "addr")]
        addrs: Vec<oasis_core::wake::IpNet>,
    },
}

/// The fetch was stopped by SIGINT or SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; target paths keep their previous content")]
struct Interrupted;

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(cli.log_format);
    // Every log line of a command carries its name (`cmd{name=apply}`).
    let span = tracing::info_span!("cmd", name = matches.subcommand_name().unwrap_or("-"));
    if let Some(c) = &cli.config {
        oasis_endpoint::session::set_config_file(c);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(tracing::Instrument::instrument(run(cli), span));
    // Lets a cancelled writer finish removing its temporary files before the process exits.
    rt.shutdown_timeout(Duration::from_secs(30));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(if e.is::<Interrupted>() { 130 } else { 1 });
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Sleep { state, from, wake_listen, mac, password, layer, into, json } => {
            let sources = sources(&state, cli.config.as_deref(), &from).await?;
            let opts = oasis_endpoint::sleep::SleepOptions {
                state_dir: state,
                sources,
                listen: wake_listen,
                mac: mac.map(|m| m.parse::<oasis_core::wake::Mac>()).transpose()?.map(|m| m.0),
                password: password.map(|p| p.parse()).transpose()?,
                layers: layer,
                into,
                streams: DEFAULT_STREAMS,
            };
            let r = until_interrupted(oasis_endpoint::sleep::sleep(&opts)).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "woken by {} after {:.1} s; fetched {} layer(s)",
                    r.woken_by,
                    r.slept_seconds,
                    r.fetched.len()
                );
            }
            Ok(())
        }
        Cmd::Relay { state, listen, from, addrs } => {
            let sources = sources(&state, cli.config.as_deref(), &from).await?;
            let relay =
                oasis_endpoint::relay::RelayListener::start(oasis_endpoint::relay::RelayOptions {
                    state,
                    listen,
                    sources,
                    every: Duration::from_secs(30),
                    addrs: (!addrs.is_empty()).then_some(addrs),
                    send: oasis_core::wake::SendOptions::default(),
                })
                .await?;
            println!("relaying wakes on {}", relay.addr);
            oasis_core::shutdown::shutdown_signal().await;
            Ok(())
        }
        Cmd::Fetch { state, from, layer, into, delete, json, streams } => {
            let (name, version) = parse_layer(&layer);
            if name.is_empty() || version.as_deref() == Some("") {
                bail!("--layer {layer:?}: expected NAME or NAME@VERSION");
            }
            let sources = sources(&state, cli.config.as_deref(), &from).await?;
            let opts = FetchOptions {
                state_dir: state,
                sources,
                name,
                version,
                into,
                streams,
                progress: progress_on(json),
            };
            let extraneous = if delete { Extraneous::Delete } else { Extraneous::Keep };
            let report = until_interrupted(fetch_with(&opts, extraneous)).await?;
            emit(json, &report, print_summary)
        }
        Cmd::Apply { state, from, root, base, app, json, streams, allow_downgrade } => {
            let base = apply::parse_exact(&base, "--base")?;
            let apps = app
                .iter()
                .map(|a| apply::parse_exact(a, "--app"))
                .collect::<anyhow::Result<_>>()?;
            let sources = sources(&state, cli.config.as_deref(), &from).await?;
            let opts = ApplyOptions {
                state_dir: state,
                sources,
                root,
                base,
                apps,
                streams,
                progress: progress_on(json),
                allow_downgrade,
            };
            let report = until_interrupted(apply::apply(&opts)).await?;
            emit(json, &report, print_apply)
        }
        Cmd::Snapshot { state, root, full_verify, json } => {
            let (snap, pruned) = blocking(move || {
                let s = Session::open(&state, root.as_deref(), progress_on(json))?;
                let (_, r) = s.snapshot("manual", full_verify, false)?;
                s.progress.finish_and_clear();
                let pruned = s.prune()?;
                Ok((r, pruned))
            })
            .await?;
            if json {
                let mut v = serde_json::to_value(&snap)?;
                v["snapshots_pruned"] = serde_json::to_value(&pruned.deleted)?;
                println!("{v}");
            } else {
                print_snapshot(&snap, &pruned);
            }
            Ok(())
        }
        Cmd::Snapshots { state, json } => {
            let infos = blocking(move || {
                let dir = SnapshotDir::new(&state);
                let mut out = Vec::new();
                for id in dir.ids()? {
                    out.push(SnapshotInfo::of(&dir.load(id)?));
                }
                Ok(out)
            })
            .await?;
            emit(json, &infos, |i| print_snapshot_list(i))
        }
        Cmd::Revert { state, snapshot, json } => {
            let r = blocking(move || {
                let mut s = Session::open(&state, None, progress_on(json))?;
                revert::revert(&mut s, &snapshot)
            })
            .await?;
            print_restore(&r, json)
        }
        Cmd::RestoreFile { state, path, from, json } => {
            let r = blocking(move || {
                let mut s = Session::open(&state, None, progress_on(json))?;
                revert::restore_file(&mut s, &path, &from)
            })
            .await?;
            print_restore(&r, json)
        }
        Cmd::Retention { state, keep, json } => {
            let (keep_now, pruned) = blocking(move || {
                let s = Session::open(&state, None, false)?;
                let mut st = DeviceState::load(&state)?;
                let mut pruned = None;
                if let Some(k) = keep {
                    st.snapshot_keep = Some(k);
                    st.save(&state)?;
                    pruned = Some(oasis_endpoint::retention::prune(&state, &s.store, k)?);
                }
                Ok((st.keep(), pruned))
            })
            .await?;
            if json {
                println!("{}", serde_json::json!({ "snapshot_keep": keep_now, "pruned": pruned }));
            } else {
                println!("snapshot_keep = {keep_now}");
                if let Some(p) = pruned.filter(|p| !p.deleted.is_empty()) {
                    println!("pruned snapshots {:?} ({} freed)", p.deleted, mib(p.bytes_freed));
                }
            }
            Ok(())
        }
        Cmd::Upload { state, seed, snapshot, policy, wan_rate, streams, retries, json } => {
            use oasis_endpoint::upload;
            let policy = upload::policy_from_flags(policy.as_deref(), wan_rate.as_deref())?;
            let opts = upload::UploadOptions {
                state_dir: state,
                seed: resolve(&seed).await.context("--seed")?,
                snapshot,
                policy,
                streams,
                retries,
                progress: progress_on(json),
            };
            let r = until_interrupted(upload::upload(&opts)).await?;
            emit(json, &r, print_upload)
        }
        Cmd::Restore { state, seed, from, from_seed, root, mode, profile_dir, json } => {
            use oasis_endpoint::restore;
            let (device, snapshot) = restore::parse_target(&from_seed)?;
            let layer_sources = optional_sources(&state, cli.config.as_deref(), &from).await?;
            let mut opts = restore::RestoreOptions::new(
                state,
                resolve(&seed).await.context("--seed")?,
                &device,
                root,
                mode.parse().map_err(anyhow::Error::msg)?,
            );
            opts.snapshot = snapshot;
            opts.sources.extend(layer_sources);
            if !profile_dir.is_empty() {
                opts.profile_dirs = profile_dir;
            }
            opts.progress = progress_on(json);
            let r = until_interrupted(restore::restore(&opts)).await?;
            emit(json, &r, print_seed_restore)
        }
        Cmd::Provision { state, seed, from, root, wait, json } => {
            let seed = resolve(&seed).await.context("--seed")?;
            let sources = optional_sources(&state, cli.config.as_deref(), &from).await?;
            let opts = oasis_endpoint::restore::ProvisionOptions {
                state_dir: state,
                seed,
                sources,
                root,
                wait: wait.map(std::time::Duration::from_secs),
                streams: DEFAULT_STREAMS,
                progress: progress_on(json),
            };
            let r = until_interrupted(oasis_endpoint::restore::provision(&opts)).await?;
            emit(json, &r, print_apply)
        }
        Cmd::Status { state, json } => {
            let (st, recovered, snaps) = blocking(move || {
                let lock = oasis_endpoint::device::DeviceLock::acquire(&state)?;
                let recovered = oasis_endpoint::journal::recover(&state)?;
                drop(lock);
                Ok((DeviceState::load(&state)?, recovered, SnapshotDir::new(&state).ids()?))
            })
            .await?;
            let layers: Vec<String> = st.layers.iter().map(|l| l.label()).collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "root": st.root,
                        "layers": layers,
                        "digests": st.layers.iter().map(|l| hex::encode(l.digest)).collect::<Vec<_>>(),
                        "snapshots": snaps,
                        "snapshot_keep": st.keep(),
                        "recovered": recovered,
                    })
                );
            } else {
                if let Some(r) = &recovered {
                    println!("{r}");
                }
                match &st.root {
                    Some(r) => println!("root: {}", r.display()),
                    None => println!("root: (none yet)"),
                }
                println!(
                    "layers: {}",
                    if layers.is_empty() { "(none)".into() } else { layers.join(" ") }
                );
                println!("snapshots: {} (keeping {})", snaps.len(), st.keep());
            }
            Ok(())
        }
    }
}

/// Runs blocking device work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Runs a command until it ends or the user interrupts it (Ctrl-C, SIGTERM). Dropping the
/// future stops it: a fetch's writer removes its temporary files while the runtime shuts down,
/// and an interrupted device transaction is finished or rolled back by the next run (journal).
async fn until_interrupted<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = f => r,
        _ = oasis_core::shutdown::shutdown_signal() => Err(Interrupted.into()),
    }
}

/// Progress bars only for people: not with `--json`, not when stderr is not a terminal.
fn progress_on(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// The report as one JSON line with `--json`, else in words.
fn emit<T: serde::Serialize>(json: bool, r: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        human(r);
    }
    Ok(())
}

fn utc(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn print_apply(r: &ApplyReport) {
    let prev = if r.previous.is_empty() { "nothing".to_string() } else { r.previous.join(" ") };
    println!("applied {} to {} (was {prev}) in {:.2}s", r.layers.join(" "), r.root, r.seconds);
    if let Some(x) = &r.recovered {
        println!("  first {x}");
    }
    println!(
        "  snapshot {} before ({:.2}s, {} files hashed)",
        r.snapshot, r.snapshot_seconds, r.snapshot_files_hashed
    );
    println!(
        "  fetched {} of {} chunks ({} on the wire); manifests {}",
        r.fetch.chunks_fetched,
        r.fetch.chunks_total,
        mib(r.fetch.bytes_network),
        kib(r.fetch.manifests.manifest_bytes)
    );
    print_changes(&r.changes);
    for p in &r.user_files_replaced {
        println!("  user file replaced by the layer (kept in snapshot {}): {p}", r.snapshot);
    }
    for p in &r.kept_user_changed {
        println!("  dropped by the layer but changed by the user, kept: {p}");
    }
    if !r.snapshots_pruned.is_empty() {
        println!("  pruned snapshots {:?}", r.snapshots_pruned);
    }
}

fn print_changes(c: &oasis_endpoint::session::Changes) {
    println!(
        "  wrote {} files ({}), {} symlinks, {} hard links, {} new directories; metadata of {} \
         set; removed {}; {} already right",
        c.files_written,
        mib(c.bytes_written),
        c.symlinks_written,
        c.hardlinks_written,
        c.dirs_created,
        c.metadata_set,
        c.removed,
        c.unchanged
    );
    if let Some(m) = c.not_applied.summary() {
        println!("  metadata {m}");
    }
    for p in &c.skipped {
        println!("  left alone: {p}");
    }
}

fn print_restore(r: &RestoreReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let what = if r.path.is_empty() { "device".to_string() } else { r.path.clone() };
    println!(
        "restored {what} from snapshot {} in {:.2}s (snapshot {} holds the state before)",
        r.from, r.seconds, r.snapshot_before
    );
    print_changes(&r.changes);
    Ok(())
}

/// The sources of a command: `--from` first, then `sources` from the endpoint's config file
/// (STATE_DIR/endpoint.toml or --config), each resolved to an address.
async fn sources(
    state: &std::path::Path,
    config: Option<&std::path::Path>,
    from: &[String],
) -> anyhow::Result<Vec<SocketAddr>> {
    let out = optional_sources(state, config, from).await?;
    if out.is_empty() {
        let file = config.map_or_else(
            || state.join(oasis_endpoint::config::CONFIG_FILE),
            std::path::Path::to_path_buf,
        );
        bail!(
            "no source to fetch from: give --from HOST:PORT, or list them as `sources = \
             [\"HOST:PORT\", ...]` in {}",
            file.display()
        );
    }
    Ok(out)
}

/// Like [`sources`], possibly none (commands that fall back on the seed).
async fn optional_sources(
    state: &std::path::Path,
    config: Option<&std::path::Path>,
    from: &[String],
) -> anyhow::Result<Vec<SocketAddr>> {
    let cfg = oasis_endpoint::config::EndpointConfig::load(state, config)?;
    let all = cfg.merged_sources(from);
    let mut out = Vec::with_capacity(all.len());
    for s in &all {
        let addr = resolve(s).await;
        match (&cfg.path, from.contains(s)) {
            (Some(path), false) => {
                out.push(addr.with_context(|| format!("config file {}: sources", path.display()))?)
            }
            _ => out.push(addr.context("--from")?),
        }
    }
    Ok(out)
}

/// HOST:PORT to one socket address (IPv4 preferred, as peers usually listen there).
async fn resolve(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(s)
        .await
        .with_context(|| format!("{s:?}: cannot resolve (expected HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{s:?}: resolves to no address"))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
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
        "  manifest: {} moved (root {}, {} of {} body chunks, {})",
        kib(r.manifest_bytes),
        kib(r.manifest_root_bytes),
        r.manifest_body_chunks_fetched,
        r.manifest_body_chunks,
        kib(r.manifest_body_bytes)
    );
    println!(
        "  written: {} files ({}), {} unchanged, {} symlinks, {} hard links, {} new directories",
        r.files_written,
        mib(r.bytes_written),
        r.files_unchanged,
        r.symlinks_written,
        r.hardlinks_written,
        r.dirs_created
    );
    if let Some(m) = r.not_applied.summary() {
        println!("  metadata {m}");
    }
    if r.deleted_files + r.deleted_dirs > 0 {
        println!(
            "  deleted (not in the layer): {} files, {} directories",
            r.deleted_files, r.deleted_dirs
        );
    }
    for p in &r.source_problems {
        println!("  skipped source {}: {}", p.addr, p.problem);
    }
    if let Some(w) = r.latest.as_ref().and_then(|l| l.warning(&r.layer)) {
        println!("  warning: {w}");
    }
}

fn print_snapshot(
    snap: &oasis_endpoint::take::TakeReport,
    pruned: &oasis_endpoint::retention::PruneReport,
) {
    println!(
        "snapshot {}: {} entries, {} files, {}; {} files hashed ({}), {} unchanged, {} new chunks ({}) in {:.2}s",
        snap.id, snap.entries, snap.files, mib(snap.bytes), snap.files_hashed,
        mib(snap.bytes_hashed), snap.files_unchanged, snap.chunks_new, mib(snap.bytes_new), snap.seconds
    );
    if snap.hardlinks > 0 {
        println!("  {} hard links (further names of files listed)", snap.hardlinks);
    }
    if !snap.other_filesystems.is_empty() {
        println!("  other filesystems not descended into: {}", snap.other_filesystems.join(", "));
    }
    if !snap.included_filesystems.is_empty() {
        println!("  other filesystems included: {}", snap.included_filesystems.join(", "));
    }
    for p in &snap.changed_behind_stamp {
        println!("  changed without a stamp change: {p}");
    }
    for p in &snap.skipped {
        println!("  left out: {p}");
    }
    if !pruned.deleted.is_empty() {
        println!("  pruned snapshots {:?} ({} freed)", pruned.deleted, mib(pruned.bytes_freed));
    }
}

fn print_snapshot_list(infos: &[SnapshotInfo]) {
    if infos.is_empty() {
        println!("no snapshots yet");
    } else {
        println!(
            "{:>6}  {:<20}  {:>8}  {:>10}  {:<24}  reason",
            "id", "created (UTC)", "files", "size", "layers"
        );
        for i in infos {
            println!(
                "{:>6}  {:<20}  {:>8}  {:>10}  {:<24}  {}",
                i.id,
                utc(i.created),
                i.files,
                mib(i.bytes),
                i.layers.join(" "),
                i.reason
            );
        }
    }
}

fn print_upload(r: &oasis_endpoint::upload::UploadReport) {
    println!(
        "uploaded snapshot {} of {} as {}@{}: {} files, {:.1} MiB",
        r.snapshot,
        r.device,
        r.filed.device,
        r.filed.id,
        r.files,
        r.bytes as f64 / 1048576.0
    );
    println!(
        "  {} of {} chunks already at the seed; sent {} chunks, {:.1} MiB on the wire ({:.1} MiB plain) in {:.1}s{}",
        r.chunks_at_seed, r.chunks_total, r.chunks_sent,
        r.bytes_sent as f64 / 1048576.0, r.bytes_sent_plain as f64 / 1048576.0,
        r.seconds,
        if r.attempts > 1 { format!(", {} connections (resumed)", r.attempts) } else { String::new() }
    );
}

fn print_seed_restore(r: &oasis_endpoint::restore::RestoreReport) {
    println!(
        "restored {}@{} ({}) onto {}: {} entries, {} files, {:.1} MiB; {} chunks fetched ({:.1} MiB) in {:.1}s",
        r.device, r.snapshot.id, r.mode, r.root, r.entries, r.files,
        r.bytes as f64 / 1048576.0, r.chunks_fetched,
        r.bytes_network as f64 / 1048576.0, r.seconds
    );
    if !r.layers.is_empty() {
        println!("  layers applied: {}", r.layers.join(" "));
    }
    if r.hardlinks > 0 {
        println!("  {} hard links", r.hardlinks);
    }
    if let Some(m) = r.not_applied.summary() {
        println!("  metadata {m}");
    }
    if r.skipped_layer_owned > 0 {
        println!(
            "  {} user files left to the layers that now own their paths",
            r.skipped_layer_owned
        );
    }
}
