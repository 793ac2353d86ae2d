//! The admin socket of a running seed, `DATA/admin.sock` (mode 0600).
//!
//! sled lets one process hold the store, so while `oasis-seed serve` runs, the other
//! commands (publish, list, assign, ...) hand their work to it over this socket instead of
//! opening the store themselves. One request per connection, one JSON object per line:
//! request `StoreCommand`; answers `{"progress":[done,total]}` lines while it runs, then
//! `{"result":...}` or `{"error":"..."}`.

use crate::commands::{execute, StoreCommand};
use indicatif::ProgressBar;
use oasis_core::pki::SeedAuthority;
use oasis_core::store::ChunkStore;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tracing::Instrument;

pub fn socket_path(data: &Path) -> PathBuf {
    data.join("admin.sock")
}

/// Serves the admin socket until the process ends.
pub fn spawn(data: &Path, auth: Arc<SeedAuthority>, store: Arc<ChunkStore>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data);
    // A socket file left by a crashed seed would make bind fail; we hold the store lock, so
    // no other live seed can be using it.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(
        async move {
            loop {
                let (conn, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        continue;
                    }
                };
                let (auth, store) = (auth.clone(), store.clone());
                tokio::spawn(
                    async move {
                        if let Err(e) = handle(conn, auth, store).await {
                            tracing::warn!(error = %e, "admin request failed");
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        .instrument(tracing::info_span!("task", task = "admin-socket")),
    );
    Ok(())
}

async fn handle(
    conn: tokio::net::UnixStream,
    auth: Arc<SeedAuthority>,
    store: Arc<ChunkStore>,
) -> std::io::Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(rd).take(1 << 20).read_line(&mut line).await?;
    let cmd: StoreCommand = match serde_json::from_str(&line) {
        Ok(c) => c,
        Err(e) => {
            let msg = json!({ "error": format!("admin request does not decode: {e}") });
            wr.write_all(format!("{msg}\n").as_bytes()).await?;
            return Ok(());
        }
    };
    tracing::info!(?cmd, "admin request");
    let bar = ProgressBar::hidden();
    let work = {
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || execute(&cmd, &auth, &store, Some(bar)))
    };
    tokio::pin!(work);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let answer = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let p = json!({ "progress": [bar.position(), bar.length().unwrap_or(0)] });
                wr.write_all(format!("{p}\n").as_bytes()).await?;
            }
        }
    };
    let msg = match answer {
        Ok(Ok(v)) => json!({ "result": v }),
        Ok(Err(e)) => json!({ "error": format!("{e:#}") }),
        Err(e) => json!({ "error": format!("admin task failed: {e}") }),
    };
    wr.write_all(format!("{msg}\n").as_bytes()).await?;
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Sends a command to the running seed and waits for its answer, mirroring progress on `bar`.
pub fn forward(
    data: &Path,
    cmd: &StoreCommand,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Value> {
    let path = socket_path(data);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "the store in {} is locked by another process, and its admin socket {} does not answer ({e}); is another oasis-seed command running?",
            data.display(),
            path.display()
        )
    })?;
    s.write_all(format!("{}\n", serde_json::to_string(cmd)?).as_bytes())?;
    for line in BufReader::new(s).lines() {
        let v: Value = serde_json::from_str(&line?)?;
        if let Some(p) = v.get("progress") {
            if let Some(bar) = bar {
                bar.set_length(p[1].as_u64().unwrap_or(0));
                bar.set_position(p[0].as_u64().unwrap_or(0));
            }
        } else if let Some(r) = v.get("result") {
            return Ok(r.clone());
        } else if let Some(e) = v.get("error") {
            anyhow::bail!("{}", e.as_str().unwrap_or("unknown error"));
        }
    }
    anyhow::bail!("the running seed closed the admin socket without an answer")
}
