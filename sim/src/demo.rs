//! `oasis-sim demo`: the loopback demo a newcomer runs first. A real seed, two branch sites
//! (berlin with two meshed reflectors, lyon with one; each site's WAN pulls capped by a
//! bandwidth policy file; and their endpoints)
//! talk QUIC on 127.0.0.1. It publishes a sample tree, every endpoint fetches it through its
//! site's reflector, it publishes a changed version, they fetch again, and it shows what
//! crossed each site's WAN against what was delivered to the endpoints.

use crate::live::{self, RateSampler, SitePolicy, TestSeed};
use anyhow::Context;
use oasis_core::pki::Role;
use oasis_endpoint::FetchReport;
use oasis_reflector::config::parse_rate;
use oasis_reflector::{RunningReflector, WanLimit};
use oasis_wanem::{EmulatorThread, WanSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The two branch offices of the demo.
pub const SITES: [&str; 2] = ["berlin", "lyon"];

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Size of the sample layer in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: usize,
    /// Endpoints per site.
    #[arg(long, default_value_t = 3)]
    pub endpoints: usize,
    /// WAN rate of each site's bandwidth policy (the reflector's policy file format).
    #[arg(long, default_value = "20MB/s")]
    pub wan_rate: String,
    /// Run each site's WAN over an emulated link (oasis-wanem): "RTT,LOSS,RATE[,key=value...]",
    /// e.g. "80ms,0.5%,100Mbit" (see `oasis-wanem --help` for every key). Each site gets its own
    /// link to the seed; its reflectors, and its endpoints' last resort, reach the seed
    /// through it.
    #[arg(long, value_name = "SPEC")]
    pub wan: Option<WanSpec>,
    /// Keep everything under this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One endpoint's fetch of one version.
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub endpoint: String,
    pub site: String,
    pub version: String,
    pub fetch: FetchReport,
}

/// What one site's WAN carried for one version.
#[derive(Debug, Serialize)]
pub struct SiteRow {
    pub site: String,
    pub version: String,
    /// Chunk payload the site's reflector pulled from the seed (`oasis_upstream_bytes_total`).
    pub wan_bytes: u64,
    /// Bytes the version added to the seed's store, file and manifest body chunks (what a site
    /// without it must pull).
    pub new_stored_bytes: u64,
    /// Plain bytes of the layer delivered to the site's endpoints (files written).
    pub delivered_bytes: u64,
    /// Chunk payload the endpoints received from the reflector over the LAN.
    pub lan_bytes: u64,
    /// Seconds from the first to the last WAN byte.
    pub wan_seconds: f64,
    pub wan_cap_bytes_per_s: u64,
    /// With `--wan`: every UDP payload byte the site's emulated link carried so far, both ways
    /// (QUIC headers, ACKs, handshakes and retransmissions included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_bytes_total: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DemoOutcome {
    pub endpoints: Vec<EndpointRow>,
    pub sites: Vec<SiteRow>,
    /// Chunk payload the seed served in all (both sites' WAN).
    pub seed_served_bytes: u64,
}

struct Site {
    name: &'static str,
    reflectors: Vec<RunningReflector>,
    endpoints: Vec<(String, PathBuf)>,
    /// The site's emulated WAN link (`--wan`), and where the seed is reached through it.
    link: Option<EmulatorThread>,
    seed_addr: std::net::SocketAddr,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let out = run_demo(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "{:<18} {:<8} {:<14} {:>12} {:>14} {:>12} {:>8} {:>8}",
        "endpoint", "site", "layer", "delivered", "over the LAN", "reused", "chunks", "seconds"
    );
    for row in &out.endpoints {
        let r = &row.fetch;
        println!(
            "{:<18} {:<8} {:<14} {:>12} {:>14} {:>12} {:>8} {:>8.2}",
            row.endpoint,
            row.site,
            format!("{}@{}", r.layer, r.version),
            mb(r.bytes),
            mb(r.bytes_network),
            mb(r.bytes_reused),
            r.chunks_fetched,
            r.seconds
        );
    }
    println!();
    println!(
        "{:<8} {:<8} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "site",
        "version",
        "over WAN",
        "new stored",
        "over LAN",
        "delivered",
        "WAN/deliv",
        "WAN MB/s"
    );
    for s in &out.sites {
        let rate = if s.wan_seconds >= 0.5 {
            format!("{:.1}", s.wan_bytes as f64 / s.wan_seconds / 1e6)
        } else {
            "-".into() // too little to time
        };
        println!(
            "{:<8} {:<8} {:>12} {:>12} {:>12} {:>12} {:>9.1}% {:>5}/{:.0}",
            s.site,
            s.version,
            mb(s.wan_bytes),
            mb(s.new_stored_bytes),
            mb(s.lan_bytes),
            mb(s.delivered_bytes),
            100.0 * s.wan_bytes as f64 / s.delivered_bytes.max(1) as f64,
            rate,
            s.wan_cap_bytes_per_s as f64 / 1e6
        );
    }
    for s in out.sites.iter().filter(|s| s.version == "2") {
        if let Some(link) = s.link_bytes_total {
            let counted: u64 =
                out.sites.iter().filter(|r| r.site == s.site).map(|r| r.wan_bytes).sum();
            println!(
                "site {}: its emulated WAN link carried {} both ways for {} of chunks counted \
                 ({:.3}x: QUIC framing, ACKs, handshakes, manifests and retransmissions)",
                s.site,
                mb(link),
                mb(counted),
                link as f64 / counted.max(1) as f64
            );
        }
    }
    let wan: u64 = out.sites.iter().map(|s| s.wan_bytes).sum();
    let delivered: u64 = out.sites.iter().map(|s| s.delivered_bytes).sum();
    println!(
        "\ntotal: {} delivered to {} endpoints, {} over the WAN ({:.1}% of delivered); the seed served {}",
        mb(delivered),
        out.endpoints.len() / 2, // two versions each
        mb(wan),
        100.0 * wan as f64 / delivered.max(1) as f64,
        mb(out.seed_served_bytes)
    );
    println!(
        "each site pulled each new chunk over its WAN once, at no more than its policy's rate; \
         version 2 moved only the changed chunks."
    );
    Ok(())
}

/// Runs the demo and returns what happened (the command prints it).
pub async fn run_demo(args: &DemoArgs) -> anyhow::Result<DemoOutcome> {
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
    let rate = parse_rate(&args.wan_rate).map_err(|e| anyhow::anyhow!("--wan-rate: {e}"))?;
    let started = Instant::now();
    let say = |s: &str| {
        if !args.json {
            eprintln!("[{:>5.1}s] {s}", started.elapsed().as_secs_f64());
        }
    };
    let seed = TestSeed::start_in(base).await?;
    say(&format!("seed listening on {} (QUIC, mutual TLS)", seed.seed.addr));

    // Each site: reflectors under the site's policy file, and endpoints that use them first and
    // the seed as their last resort.
    let mut sites = Vec::new();
    for name in SITES {
        let policy = base.join(format!("policy-{name}.toml"));
        std::fs::write(
            &policy,
            format!(
                "# WAN policy of site {name}: pulls from the seed at most {}.\n[wan]\nrate = {}\nburst = \"1MiB\"\n",
                args.wan_rate, rate
            ),
        )?;
        let n = if name == SITES[0] { 2 } else { 1 };
        let wan = SitePolicy::Limit(WanLimit::PolicyFile(policy.clone()));
        let link = match &args.wan {
            Some(spec) => Some(
                EmulatorThread::start("127.0.0.1:0".parse()?, seed.seed.addr, spec.clone())
                    .with_context(|| format!("starting the emulated WAN link of {name}"))?,
            ),
            None => None,
        };
        let seed_addr = link.as_ref().map_or(seed.seed.addr, |l| l.local_addr());
        if let Some(spec) = &args.wan {
            say(&format!("site {name}: WAN link to the seed emulated on {seed_addr}: {spec}"));
        }
        let reflectors = live::site_reflectors_via(&seed, name, n, wan, seed_addr)
            .await
            .with_context(|| format!("starting the reflectors of {name}"))?;
        let addrs: Vec<String> = reflectors.iter().map(|r| r.addr.to_string()).collect();
        say(&format!(
            "site {name}: {} on {}{}, WAN capped at {} by {}",
            if n > 1 { "reflectors" } else { "reflector" },
            addrs.join(" and "),
            if n > 1 { " (meshed: each chunk crosses the site's WAN once)" } else { "" },
            args.wan_rate,
            policy.display()
        ));
        let mut endpoints = Vec::new();
        for i in 0..args.endpoints {
            let ep = format!("{name}-pc{i}");
            let state = seed.enroll_in_site(Role::Endpoint, &ep, name)?;
            endpoints.push((ep, state));
        }
        sites.push(Site { name, reflectors, endpoints, link, seed_addr });
    }

    let src = base.join("sample-tree");
    let size = args.size_mib << 20;
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    let written = crate::sample::write_tree(&src, size, 1)?;
    say(&format!("generated a sample tree of {} MiB at {}", written >> 20, src.display()));

    let mut out = DemoOutcome { endpoints: Vec::new(), sites: Vec::new(), seed_served_bytes: 0 };
    for version in ["1", "2"] {
        if version == "2" {
            crate::sample::change_tree(&src, 2)?;
            say("changed a few files: publishing version 2");
        }
        let report = seed.publish_blocking("demo-base", version, &src).await?;
        for site in &sites {
            seed.make_available(site.name, "demo-base", version)?;
        }
        let previous = (version == "2").then_some("1");
        // What a site that holds the previous version must pull: the new file chunks and the
        // manifest body chunks that changed.
        let new_stored = report.new_bytes + seed.new_body_bytes("demo-base", version, previous)?;
        say(&format!(
            "published demo-base@{version}: {} files, {} MB, {} MB new in the store",
            report.files,
            report.bytes / 1_000_000,
            report.new_bytes / 1_000_000
        ));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        let mut samplers = Vec::new();
        for site in &sites {
            let wan: Vec<_> =
                site.reflectors.iter().map(|r| r.stats.upstream_bytes.clone()).collect();
            let read = move || wan.iter().map(|c| c.get()).sum::<u64>();
            samplers.push((read(), RateSampler::start_at(t0, Duration::from_millis(50), read)));
            for (i, (ep, state)) in site.endpoints.iter().enumerate() {
                // Its own reflector first, the site's other ones next, the seed last.
                let n = site.reflectors.len();
                let mut sources: Vec<_> =
                    (0..n).map(|k| site.reflectors[(i + k) % n].addr).collect();
                sources.push(site.seed_addr);
                let (ep, state, into) = (ep.clone(), state.clone(), base.join(ep).join("root"));
                let site = site.name;
                tasks.push(tokio::spawn(async move {
                    let r = live::full_fetch(&state, sources, "demo-base", version, &into).await;
                    (ep, site, r)
                }));
            }
        }
        for t in tasks {
            let (ep, site, r) = t.await?;
            let r = r.with_context(|| format!("{ep} fetching demo-base@{version}"))?;
            out.endpoints.push(EndpointRow {
                endpoint: ep,
                site: site.into(),
                version: version.into(),
                fetch: r,
            });
        }
        for (site, (before, sampler)) in sites.iter().zip(samplers) {
            let samples = sampler.finish().await?.0;
            let wan_bytes =
                site.reflectors.iter().map(|r| r.stats.upstream_bytes.get()).sum::<u64>() - before;
            let first = samples.iter().find(|s| s.1 > before).map_or(0.0, |s| s.0);
            let last = samples.iter().find(|s| s.1 >= before + wan_bytes).map_or(0.0, |s| s.0);
            let rows = out.endpoints.iter().filter(|e| e.site == site.name && e.version == version);
            let (delivered, lan) = rows.fold((0, 0), |a, e| {
                (a.0 + e.fetch.bytes, a.1 + e.fetch.bytes_network + e.fetch.manifest_body_bytes)
            });
            let link_bytes = site.link.as_ref().map(|l| {
                let c = l.counters();
                c.down.offered_bytes + c.up.offered_bytes
            });
            out.sites.push(SiteRow {
                site: site.name.into(),
                version: version.into(),
                wan_bytes,
                link_bytes_total: link_bytes,
                new_stored_bytes: new_stored,
                delivered_bytes: delivered,
                lan_bytes: lan,
                wan_seconds: (last - first).max(0.0),
                wan_cap_bytes_per_s: rate,
            });
        }
        say(&format!(
            "version {version}: {} MB over the WAN of {} sites, {} MB delivered",
            out.sites.iter().filter(|s| s.version == version).map(|s| s.wan_bytes).sum::<u64>()
                / 1_000_000,
            sites.len(),
            out.sites
                .iter()
                .filter(|s| s.version == version)
                .map(|s| s.delivered_bytes)
                .sum::<u64>()
                / 1_000_000
        ));
    }
    out.seed_served_bytes = seed.seed.metrics.served_bytes.get();
    for site in sites {
        for r in site.reflectors {
            r.stop().await;
        }
    }
    seed.seed.shutdown();
    Ok(out)
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}
