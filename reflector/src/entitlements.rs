//! The reflector's copy of its site's entitlements: the seed's sealed statement of which layers
//! the site's endpoints may fetch (`oasis_core::entitlement`). Asked of the upstream every few
//! seconds while connected (an unchanged statement costs a digest each way), kept in
//! `STATE/entitlements.bin` so that a reflector restarting cut off from the seed still serves
//! its endpoints, and only what they may have.
//!
//! A statement is adopted only when its seal verifies against the manifest key, it is for this
//! reflector's site, and its generation (the seed's count of changes) is above the held one's:
//! an upstream replaying an older statement (one from before an assignment was removed)
//! changes nothing.
//!
//! The statements of other sites, for reflectors of those sites chained below this one, are
//! asked for when such a reflector asks for something, and kept for [`UPSTREAM_POLL`].

use bytes::{Buf, BufMut, Bytes};
use ed25519_dalek::VerifyingKey;
use oasis_core::entitlement::Entitlements;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a connected reflector asks its upstream for a newer statement: an assignment or a
/// plan takes effect at the reflectors within about this long.
pub const UPSTREAM_POLL: Duration = Duration::from_secs(2);
/// How long a request waits for the first statement of a reflector that holds none yet.
pub const FIRST_WAIT: Duration = Duration::from_secs(10);
/// Shortest time between two questions to the upstream: a refusal asks at once whether the
/// statement changed (a layer assigned a moment ago is served at once), and a peer asking for
/// what it may not have again and again costs the upstream no more than this.
const MIN_ASK_INTERVAL: Duration = Duration::from_millis(250);
const FILE: &str = "entitlements.bin";

/// A statement held, as received.
pub struct Held {
    pub statement: Entitlements,
    pub encoded: Bytes,
    pub seal: Bytes,
    pub digest: [u8; 32],
}

/// The statement of this reflector's site, shared by the serving side and the poller.
pub struct SiteEntitlements {
    site: String,
    key: VerifyingKey,
    held: watch::Sender<Option<Arc<Held>>>,
    state: PathBuf,
    /// When the upstream was last asked; held while asking, so that askers share one question.
    asked: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// Other sites' statements and when each was asked for; held while asking.
    others: tokio::sync::Mutex<
        std::collections::HashMap<String, (tokio::time::Instant, Arc<Entitlements>)>,
    >,
}

/// Longest wait for the upstream's answer to `GetEntitlements`.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl SiteEntitlements {
    /// The statement saved in `state`, if one is there and still opens.
    pub fn load(state: &Path, key: VerifyingKey, site: &str) -> SiteEntitlements {
        let me = SiteEntitlements {
            site: site.to_string(),
            key,
            held: watch::Sender::new(None),
            state: state.to_path_buf(),
            asked: tokio::sync::Mutex::new(None),
            others: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        };
        let path = state.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match split(&bytes).and_then(|(s, l)| me.adopt(s, l)) {
                Ok(_) => tracing::info!(path = %path.display(), "entitlements loaded"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "saved entitlements not used; asking the upstream"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read saved entitlements")
            }
        }
        me
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn current(&self) -> Option<Arc<Held>> {
        self.held.borrow().clone()
    }

    /// The statement held, waiting up to `max` for the first one.
    pub async fn wait(&self, max: Duration) -> Option<Arc<Held>> {
        let mut rx = self.held.subscribe();
        let got = tokio::time::timeout(max, rx.wait_for(|h| h.is_some())).await;
        got.ok().and_then(|r| r.ok().and_then(|h| h.clone()))
    }

    /// Opens a statement and its seal; adopts it when it is newer than the one held. Returns
    /// whether it was adopted.
    pub fn adopt(&self, statement: Bytes, seal: Bytes) -> Result<bool, String> {
        let (e, _) = Entitlements::open(&statement, &seal, &self.key, &self.site)
            .map_err(|e| e.to_string())?;
        let held = Arc::new(Held {
            statement: e,
            digest: Entitlements::digest_of(&statement),
            encoded: statement,
            seal,
        });
        let mut adopted = false;
        self.held.send_if_modified(|h| {
            adopted =
                h.as_ref().is_none_or(|old| held.statement.generation > old.statement.generation);
            if adopted {
                *h = Some(held.clone());
            }
            adopted
        });
        Ok(adopted)
    }
}

fn split(bytes: &[u8]) -> Result<(Bytes, Bytes), String> {
    let mut b = Bytes::copy_from_slice(bytes);
    if b.len() < 4 {
        return Err("truncated".into());
    }
    let n = b.get_u32() as usize;
    if b.len() < n {
        return Err("truncated".into());
    }
    let statement = b.split_to(n);
    Ok((statement, b))
}

fn joined(held: &Held) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + held.encoded.len() + held.seal.len());
    out.put_u32(held.encoded.len() as u32);
    out.put_slice(&held.encoded);
    out.put_slice(&held.seal);
    out
}

impl SiteEntitlements {
    /// Asks the upstream for a newer statement (unless it was asked within
    /// `MIN_ASK_INTERVAL`), adopts and saves it. Returns whether one was adopted.
    pub async fn refresh(&self, upstream: &crate::upstream::Upstream) -> bool {
        let wanted = tokio::time::Instant::now();
        let mut asked = self.asked.lock().await;
        match *asked {
            // A question asked since this caller wanted one answers it too.
            Some(t) if t >= wanted => return false,
            // One asked just before: this caller's question waits out the interval (the
            // callers behind it then find it fresh enough), so that what the seed says now is
            // what a refusal rests on.
            Some(t) if t.elapsed() < MIN_ASK_INTERVAL => {
                tokio::time::sleep(MIN_ASK_INTERVAL - t.elapsed()).await;
            }
            _ => {}
        }
        // No connection, no question: the next caller may ask the moment one is up.
        let Some(client) = upstream.current() else { return false };
        *asked = Some(tokio::time::Instant::now());
        let known = self.current().map_or([0; 32], |h| h.digest);
        let answer = tokio::time::timeout(ASK_TIMEOUT, client.entitlements(None, known)).await;
        let (statement, seal) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream gave no entitlements");
                return false;
            }
            Err(_) => {
                tracing::debug!("upstream gave no entitlements within {ASK_TIMEOUT:?}");
                return false;
            }
        };
        if statement.is_empty() {
            return false;
        }
        match self.adopt(statement, seal) {
            Ok(true) => {
                let held = self.current().expect("just adopted");
                tracing::info!(
                    site_layers = held.statement.site_layers.len(),
                    devices = held.statement.devices.len(),
                    "entitlements adopted from upstream"
                );
                let (path, bytes) = (self.state.join(FILE), joined(&held));
                let saved = tokio::task::spawn_blocking(move || {
                    oasis_core::durable::write_durably(&path, &bytes)
                })
                .await;
                if !matches!(saved, Ok(Ok(()))) {
                    tracing::warn!(
                        "cannot save the entitlements: a restart cut off from the seed asks again"
                    );
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "upstream's entitlements refused");
                false
            }
        }
    }
}

impl SiteEntitlements {
    /// The statement of another `site`, asked of the upstream (which passes the question to
    /// the seed) at most every [`UPSTREAM_POLL`]; the last one held when the upstream does not
    /// answer. None when none was ever had.
    pub async fn of_site(
        &self,
        upstream: &crate::upstream::Upstream,
        site: &str,
    ) -> Option<Arc<Entitlements>> {
        let mut others = self.others.lock().await;
        let held = others.get(site).cloned();
        if let Some((t, e)) = &held {
            if t.elapsed() < UPSTREAM_POLL {
                return Some(e.clone());
            }
        }
        let held = held.map(|(_, e)| e);
        let Some(client) = upstream.current() else { return held };
        let answer = tokio::time::timeout(ASK_TIMEOUT, client.entitlements(Some(site), [0; 32]));
        let opened = match answer.await {
            Ok(Ok((statement, seal))) => Entitlements::open(&statement, &seal, &self.key, site)
                .map(|(e, _)| e)
                .map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
        };
        match opened {
            Ok(e) if held.as_ref().is_none_or(|h| e.generation >= h.generation) => {
                let e = Arc::new(e);
                // A few sites chain below one reflector; a bound all the same.
                if others.len() >= 256 {
                    others.clear();
                }
                others.insert(site.to_string(), (tokio::time::Instant::now(), e.clone()));
                Some(e)
            }
            Ok(_) => held,
            Err(e) => {
                tracing::debug!(%site, error = %e, "no entitlements of another site from upstream");
                held
            }
        }
    }
}

/// Asks the upstream for a newer statement every `every` (more often while it holds none).
pub async fn run(
    upstream: Arc<crate::upstream::Upstream>,
    ents: Arc<SiteEntitlements>,
    every: Duration,
) {
    loop {
        if ents.current().is_none() {
            // Until the first statement arrives, endpoints' requests wait for it: ask the
            // moment the upstream is connected, not at the next poll.
            upstream.wait(every).await;
        }
        ents.refresh(&upstream).await;
        let pause = if ents.current().is_some() { every } else { MIN_ASK_INTERVAL };
        tokio::time::sleep(pause).await;
    }
}
