//! `GetLatest` at a reflector: upstream's signed statement when upstream answers within
//! `latest_timeout`, else the copy kept from the last answer, with a note that says why. The
//! statement carries its own expiry, so an endpoint can tell a copy that has gone stale.
//! Endpoints asking at once share one question upstream.

use super::{locked, Reflector};
use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use oasis_core::manifest::{Latest, Succession};
use oasis_core::net::{LatestAnswer, SourceError};
use std::sync::Arc;

/// An upstream `GetLatest` in flight, shared by everyone asking for the same layer meanwhile.
pub(super) type LatestFlight = Shared<BoxFuture<'static, Result<Option<LatestAnswer>, String>>>;

impl Reflector {
    /// The answer to an endpoint's `GetLatest`.
    pub(crate) async fn latest(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<LatestAnswer>, SourceError> {
        let (answer, kept) = self.latest_or_kept(name).await?;
        if let (Some(a), Some((version, problem))) = (&answer, kept) {
            self.metrics.latest_served_cached.inc();
            tracing::warn!(layer = %name, %version, %problem, "serving the kept latest statement");
            let me = &self.identity.info().name;
            let note = format!("reflector {me} answers with its kept copy: {problem}");
            return Ok(Some(LatestAnswer { statement: a.statement.clone(), note }));
        }
        Ok(answer)
    }

    /// The version the upstream's statement names, or the kept statement's when the upstream
    /// does not answer in time; None when there is neither, or the layer is not published.
    pub(super) async fn latest_version(self: &Arc<Self>, name: &str) -> Option<String> {
        let answer = self.latest_or_kept(name).await.ok()?.0?;
        let latest = Latest::open(&answer.statement, self.identity.trust().manifest_key()).ok()?;
        Some(latest.version)
    }

    /// The upstream's statement when it answers within `latest_timeout`, else the kept one
    /// with (its version, why the upstream's was not had).
    async fn latest_or_kept(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(Option<LatestAnswer>, Option<(String, String)>), SourceError> {
        let problem =
            match tokio::time::timeout(self.cfg.latest_timeout, self.shared_latest(name)).await {
                Ok(Ok(answer)) => return Ok((answer, None)),
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "upstream {} gave no answer within {} s",
                    self.upstream.target,
                    self.cfg.latest_timeout.as_secs_f64()
                ),
            };
        match self.kept_latest(name).await {
            Some((statement, latest)) => Ok((
                Some(LatestAnswer { statement, note: String::new() }),
                Some((latest.version, problem)),
            )),
            None => Err(SourceError::Unavailable(format!(
                "latest of {name}: {problem}; no kept statement"
            ))),
        }
    }

    /// [`Self::upstream_latest`], joined to the question in flight for `name` if there is one.
    async fn shared_latest(self: &Arc<Self>, name: &str) -> Result<Option<LatestAnswer>, String> {
        let flight = {
            let mut flights = locked(&self.latest_flights);
            match flights.get(name) {
                Some(f) => f.clone(),
                None => {
                    let (me, n) = (self.clone(), name.to_string());
                    let work = async move {
                        let r = me.upstream_latest(&n).await;
                        locked(&me.latest_flights).remove(&n);
                        r
                    };
                    let f = self.spawn_shared(work, "latest");
                    flights.insert(name.to_string(), f.clone());
                    f
                }
            }
        };
        flight.await
    }

    /// Asks upstream, verifies the answer and keeps it. A statement naming a lower version
    /// than the one kept is refused: upstream went back, or someone replays an old answer.
    async fn upstream_latest(self: &Arc<Self>, name: &str) -> Result<Option<LatestAnswer>, String> {
        let client = self
            .upstream
            .wait(self.cfg.latest_timeout)
            .await
            .ok_or_else(|| self.upstream.trouble())?;
        let (bytes, note) = match client.latest(name).await {
            Ok(a) => a,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(format!("asking upstream for the latest of {name}: {e}")),
        };
        let latest = Latest::open(&bytes, self.identity.trust().manifest_key())
            .and_then(|l| l.check_request(name).map(|()| l))
            .map_err(|e| format!("upstream's latest statement refused: {e}"))?;
        if let Some((kept_bytes, kept)) = self.kept_latest(name).await {
            match latest.succeeds(&kept) {
                Succession::Rollback => {
                    return Err(format!(
                        "upstream says {} is the latest, but {} was seen as latest before",
                        latest.label(),
                        kept.label()
                    ))
                }
                // Upstream's copy was signed before the one kept (a parent reflector's cache):
                // pass on the newer.
                Succession::Older => {
                    return Ok(Some(LatestAnswer { statement: kept_bytes, note }));
                }
                Succession::Newer => {}
            }
        }
        let (cache, n, b) = (self.cache.clone(), name.to_string(), bytes.clone());
        match tokio::task::spawn_blocking(move || cache.keep_latest_statement(&n, &b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(layer = %name, error = %e, "cannot keep the latest statement")
            }
            Err(e) => tracing::warn!(layer = %name, error = %e, "cannot keep the latest statement"),
        }
        Ok(Some(LatestAnswer { statement: bytes, note }))
    }

    /// The statement kept for `name`, verified again (the cache is on disk).
    async fn kept_latest(&self, name: &str) -> Option<(Bytes, Latest)> {
        let (cache, n) = (self.cache.clone(), name.to_string());
        let bytes = match tokio::task::spawn_blocking(move || cache.latest_statement(&n)).await {
            Ok(Ok(b)) => b?,
            Ok(Err(e)) => {
                tracing::warn!(layer = %name, error = %e, "cannot read the kept latest statement");
                return None;
            }
            Err(_) => return None,
        };
        match Latest::open(&bytes, self.identity.trust().manifest_key()) {
            Ok(l) if l.name == name => Some((bytes, l)),
            Ok(_) | Err(_) => {
                tracing::warn!(layer = %name, "the kept latest statement does not verify; ignoring it");
                None
            }
        }
    }
}
