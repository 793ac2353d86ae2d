//! Getting the layers an apply needs into the endpoint's chunk store, without writing any tree:
//! manifests kept from an earlier apply are reused (verified again), others come from the
//! first source that has them (their body chunks, too, are kept in the store, so a new version
//! moves only the body chunks that changed); then only the chunks the store lacks are
//! downloaded, failing over source by source. When everything is local no connection is made
//! at all.

use crate::device;
use crate::download::{CacheForm, CacheWriter, Downloader, NetCounters};
use crate::sources::{self, Sources};
use anyhow::bail;
use indicatif::ProgressBar;
use oasis_core::manifest::{ChunkRef, SignedManifest};
use oasis_core::pki::NodeIdentity;
use oasis_core::store::ChunkStore;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LayerFetchReport {
    pub chunks_total: u64,
    pub chunks_fetched: u64,
    pub bytes_network: u64,
    pub bytes_fetched: u64,
    pub chunks_refetched: u64,
    pub sources_used: Vec<String>,
    pub source_problems: Vec<sources::SourceFailure>,
    /// What the manifests not kept from an earlier apply cost.
    #[serde(flatten)]
    pub manifests: sources::ManifestTraffic,
}

/// Manifests of `wanted` (NAME, VERSION) in order, with every chunk they use in `store`.
/// `check` sees the manifests before any chunk is fetched and may refuse them.
/// Where layers come from: the node's identity and state dir, the sources in order.
pub struct LayerSources<'a> {
    pub state_dir: &'a Path,
    pub identity: &'a NodeIdentity,
    pub addrs: &'a [SocketAddr],
    /// Concurrent chunk requests.
    pub streams: usize,
}

pub async fn fetch_layers(
    from: &LayerSources<'_>,
    wanted: &[(String, String)],
    store: Arc<ChunkStore>,
    progress: &ProgressBar,
    check: &dyn Fn(&[SignedManifest]) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<SignedManifest>, LayerFetchReport)> {
    let (state_dir, identity, addrs, streams) =
        (from.state_dir, from.identity, from.addrs, from.streams);
    let mut report = LayerFetchReport::default();
    let mut manifests: Vec<Option<SignedManifest>> = Vec::with_capacity(wanted.len());
    for (name, version) in wanted {
        manifests.push(device::load_manifest(state_dir, identity, name, version)?);
    }
    let mut net: Option<Sources> = None;
    let mut client = None;
    for (i, (name, version)) in wanted.iter().enumerate() {
        if manifests[i].is_some() {
            continue;
        }
        let sources = match &mut net {
            Some(s) => s,
            None => net.insert(Sources::new(identity, state_dir, addrs.to_vec())?),
        };
        let sm = loop {
            let c = match &client {
                Some(c) => c,
                None => match sources.connect_next().await {
                    Some(c) => client.insert(c),
                    None => bail!(
                        "layer {name}@{version}: no source could provide its manifest: {}",
                        problems(&sources.failures)
                    ),
                },
            };
            match sources::get_manifest_with(c, name, Some(version), identity.trust(), Some(&store))
                .await
            {
                Ok(got) => {
                    report.manifests.add(&got);
                    break got.manifest;
                }
                Err(e) => {
                    // Not found at a reflector may still be found at the seed.
                    let addr = c.remote_addr();
                    sources.fail(addr, format!("{e:#}"));
                    c.close();
                    client = None;
                }
            }
        };
        manifests[i] = Some(sm);
    }
    let manifests: Vec<SignedManifest> =
        manifests.into_iter().map(|m| m.expect("filled")).collect();
    // Refusals (conflicts) come before any chunk is downloaded.
    if let Err(e) = check(&manifests) {
        if let Some(s) = net {
            s.close().await;
        }
        return Err(e);
    }

    let mut seen = HashSet::new();
    let mut missing: Vec<ChunkRef> = Vec::new();
    for sm in &manifests {
        for c in sm.manifest.unique_chunks() {
            if seen.insert(c.id) {
                report.chunks_total += 1;
                if !store.contains(&c.id)? {
                    missing.push(c);
                }
            }
        }
    }
    if missing.is_empty() {
        if let Some(s) = net {
            report.source_problems = s.failures.clone();
            close_later(s);
        }
        return Ok((manifests, report));
    }
    let mut sources = match net {
        Some(s) => s,
        None => Sources::new(identity, state_dir, addrs.to_vec())?,
    };
    progress.set_message("fetch");
    progress.set_length(missing.iter().map(|c| c.len as u64).sum());
    progress.set_position(0);
    let counters = Arc::new(NetCounters::default());
    // Layer chunks are written out by every apply that needs them: kept plain, so applying
    // reads and checks them without decoding.
    let cache = Arc::new(CacheWriter::start(store.clone(), CacheForm::Plain)?);
    let downloader = Downloader {
        cache: cache.clone(),
        streams: streams.max(1),
        counters: counters.clone(),
        progress: progress.clone(),
        sink: None,
    };
    let mut pending = missing;
    while !pending.is_empty() {
        let c = match client.take() {
            Some(c) => c,
            None => match sources.connect_next().await {
                Some(c) => c,
                None => bail!(
                    "{} chunks (first {}) could not be fetched from any source: {}",
                    pending.len(),
                    pending[0].id,
                    problems(&sources.failures)
                ),
            },
        };
        let addr = c.remote_addr().to_string();
        if !report.sources_used.contains(&addr) {
            report.sources_used.push(addr.clone());
        }
        let out = downloader.fetch_from(&c, pending).await?;
        if out.is_complete() {
            client = Some(c);
            pending = Vec::new();
            continue;
        }
        sources.fail(
            c.remote_addr(),
            out.error.clone().unwrap_or_else(|| {
                format!("lacked {} chunks, sent {} corrupt", out.missing.len(), out.rejected.len())
            }),
        );
        c.close();
        pending = out.unfinished;
        pending.extend(out.missing);
        pending.extend(out.rejected);
    }
    drop(downloader);
    let errors = {
        let cw = cache.clone();
        tokio::task::spawn_blocking(move || cw.finish()).await?
    };
    if errors > 0 {
        bail!("{errors} fetched chunks could not be stored in the chunk store; is the disk full?");
    }
    if let Some(c) = client {
        c.close();
    }
    report.chunks_fetched = counters.chunks_fetched.load(Ordering::Relaxed);
    report.bytes_network = counters.bytes_network.load(Ordering::Relaxed);
    report.bytes_fetched = counters.bytes_plain.load(Ordering::Relaxed);
    report.chunks_refetched = counters.chunks_refetched.load(Ordering::Relaxed);
    report.source_problems = sources.failures.clone();
    close_later(sources);
    Ok((manifests, report))
}

/// Closes the connections without waiting for them to drain: the close is sent at once, and
/// the drain (three probe timeouts, about 0.1 s even on a LAN) would only delay the apply.
fn close_later(s: Sources) {
    tokio::spawn(s.close());
}

fn problems(f: &[sources::SourceFailure]) -> String {
    if f.is_empty() {
        return "no source given".into();
    }
    f.iter().map(|f| format!("{}: {}", f.addr, f.problem)).collect::<Vec<_>>().join("; ")
}
