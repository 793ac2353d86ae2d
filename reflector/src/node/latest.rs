//! `GetLatest` at a reflector: upstream's signed statement when upstream answers within
//! `latest_timeout`, else the copy kept from the last answer, with a note that says why. The
//! statement carries its own expiry, so an endpoint can tell a copy that has gone stale.

use super::Reflector;
use bytes::Bytes;
use oasis_core::manifest::{Latest, Succession};
use oasis_core::net::{LatestAnswer, SourceError};
use std::sync::Arc;

impl Reflector {
    pub(crate) async fn latest(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<LatestAnswer>, SourceError> {
        let problem =
            match tokio::time::timeout(self.cfg.latest_timeout, self.upstream_latest(name)).await {
                Ok(Ok(Some(a))) => return Ok(Some(a)),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "upstream {} gave no answer within {} s",
                    self.upstream.target,
                    self.cfg.latest_timeout.as_secs_f64()
                ),
            };
        let kept = self.kept_latest(name).await;
        match kept {
            Some((bytes, latest)) => {
                self.metrics.latest_served_cached.inc();
                tracing::warn!(layer = %name, version = %latest.version, issued = latest.issued, %problem, "serving the kept latest statement");
                Ok(Some(LatestAnswer {
                    statement: bytes,
                    note: format!(
                        "reflector {} answers with its kept copy: {problem}",
                        self.identity.info().name
                    ),
                }))
            }
            None => Err(SourceError::Unavailable(format!(
                "latest of {name}: {problem}; no kept statement"
            ))),
        }
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
