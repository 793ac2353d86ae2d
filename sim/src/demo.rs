//! `oasis-sim demo`: the loopback demo a newcomer runs first. A real seed and real endpoints
//! talk QUIC on 127.0.0.1; it publishes a sample tree, fetches it with a few endpoints,
//! publishes a changed version, fetches again, and shows what crossed the network.

use anyhow::Context;
use oasis_core::identity::{Role, SeedAuthority};
use oasis_core::manifest::LayerKind;
use oasis_endpoint::{fetch, FetchOptions, FetchReport};
use oasis_seed::{publish, PublishOptions, RunningSeed};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Size of the sample layer in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: usize,
    /// Number of endpoints.
    #[arg(long, default_value_t = 3)]
    pub endpoints: usize,
    /// Keep everything under this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tmp;
    let base: &Path = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path()
        }
    };
    let started = std::time::Instant::now();
    let say = |s: &str| {
        if !args.json {
            eprintln!("[{:>5.1}s] {s}", started.elapsed().as_secs_f64());
        }
    };
    let data = base.join("seed");
    let auth = SeedAuthority::init(&data).context("initialising the demo seed")?;
    let seed = RunningSeed::start(&data, "127.0.0.1:0".parse()?, None).await?;
    say(&format!("seed listening on {} (QUIC, mutual TLS)", seed.addr));

    let src = base.join("sample-tree");
    let size = args.size_mib << 20;
    let written = oasis_core_tree(&src, size)?;
    say(&format!("generated a sample tree of {} MiB at {}", written >> 20, src.display()));

    let mut rows = Vec::new();
    for version in ["1", "2"] {
        if version == "2" {
            crate::sample::change_tree(&src, 2)?;
            say("changed a few files: publishing version 2");
        }
        let opts = PublishOptions {
            name: "demo-base".into(),
            version: version.into(),
            kind: LayerKind::Base,
            chunking: Default::default(),
            progress: false,
        };
        let store = seed.store.clone();
        let key = auth.signing_key().clone();
        let src2 = src.clone();
        let (_, report) =
            tokio::task::spawn_blocking(move || publish(&store, &key, &src2, &opts)).await??;
        say(&format!(
            "published demo-base@{version}: {} files, {} MB, {} MB new in the store",
            report.files,
            report.bytes / 1_000_000,
            report.new_bytes / 1_000_000
        ));
        let before = seed.metrics.served_bytes.get();
        let mut tasks = Vec::new();
        for i in 0..args.endpoints {
            let name = format!("endpoint-{i}");
            let state = base.join(&name).join("state");
            if version == "1" {
                auth.enroll(Role::Endpoint, &name, Some("demo"), &state, true)?;
            }
            let opts = FetchOptions {
                state_dir: state,
                sources: vec![seed.addr],
                name: "demo-base".into(),
                version: Some(version.into()),
                into: base.join(&name).join("root"),
                streams: 8,
                progress: false,
            };
            tasks.push(tokio::spawn(async move { (name, fetch(&opts).await) }));
        }
        for t in tasks {
            let (name, r) = t.await?;
            let r: FetchReport =
                r.with_context(|| format!("{name} fetching demo-base@{version}"))?;
            rows.push((name, r));
        }
        let served = seed.metrics.served_bytes.get() - before;
        say(&format!(
            "seed served {} MB of chunk payload for version {version}",
            served / 1_000_000
        ));
    }
    seed.shutdown();

    if args.json {
        let out: Vec<_> =
            rows.iter().map(|(n, r)| serde_json::json!({ "endpoint": n, "fetch": r })).collect();
        println!("{}", serde_json::Value::Array(out));
        return Ok(());
    }
    println!();
    println!(
        "{:<12} {:<14} {:>12} {:>14} {:>12} {:>10} {:>8}",
        "endpoint", "layer", "delivered", "over network", "reused", "chunks", "seconds"
    );
    for (name, r) in &rows {
        println!(
            "{:<12} {:<14} {:>12} {:>14} {:>12} {:>10} {:>8.2}",
            name,
            format!("{}@{}", r.layer, r.version),
            mb(r.bytes),
            mb(r.bytes_network),
            mb(r.bytes_reused),
            r.chunks_fetched,
            r.seconds
        );
    }
    let delivered: u64 = rows.iter().map(|(_, r)| r.bytes).sum();
    let network: u64 = rows.iter().map(|(_, r)| r.bytes_network).sum();
    println!(
        "\ntotal: {} delivered, {} over the network ({:.1}% of delivered)",
        mb(delivered),
        mb(network),
        100.0 * network as f64 / delivered.max(1) as f64
    );
    println!("version 2 moved only the changed chunks; files already on disk were reused.");
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn oasis_core_tree(root: &Path, size: usize) -> anyhow::Result<u64> {
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    Ok(crate::sample::write_tree(root, size, 1)?)
}
