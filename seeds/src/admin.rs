//! The admin socket of a running seed, `DATA/admin.sock` (mode 0600).
//!
//! The socket is bound inside a fresh directory only the seed's user can enter, given its
//! final mode there, and only then renamed into place: at no moment can another user connect
//! to it, whatever the umask. Each request is logged with the caller's uid and pid
//! (`SO_PEERCRED`), and a caller that is neither the seed's user nor root is refused.
//!
//! sled lets one process hold the store, so while `oasis-seed serve` runs, the other
//! commands (publish, list, assign, ...) hand their work to it over this socket instead of
//! opening the store themselves. One request per connection, one JSON object per line:
//! request `StoreCommand`; answers `{"progress":[done,total]}` lines while it runs, then
//! `{"result":...}` or `{"error":"..."}`.

use crate::commands::{execute, StoreCommand};
use crate::keys::Keys;
use indicatif::ProgressBar;
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

/// Binds a socket at `path` with `mode` from its first moment (see the module docs): 0600 for
/// the admin socket.
/// Returns the listener and the uid that owns the socket (this process's effective uid).
pub(crate) fn bind_private(
    path: &Path,
    mode: u32,
) -> std::io::Result<(tokio::net::UnixListener, u32)> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    // Short: a Unix socket path has room for 107 bytes, and `.aPID/s` is no longer than
    // `admin.sock`, so a data directory that fits the final path fits this one.
    let staging = dir.join(format!(".a{}", std::process::id()));
    // A staging directory left by a crashed seed of the same pid is stale.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let inside = staging.join("s");
        let listener = tokio::net::UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(mode))?;
        let owner = std::fs::symlink_metadata(&inside)?.uid();
        std::fs::rename(&inside, path)?;
        Ok((listener, owner))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Who is asking, from the socket's peer credentials: the seed's own user (`owner`) or root;
/// anyone else is refused (the file mode keeps them out already; this holds if it is ever
/// loosened).
fn caller(conn: &tokio::net::UnixStream, owner: u32) -> Result<(u32, Option<i32>), String> {
    let cred =
        conn.peer_cred().map_err(|e| format!("cannot read the caller's credentials: {e}"))?;
    if cred.uid() != owner && cred.uid() != 0 {
        return Err(format!(
            "uid {} may not use this seed's admin socket (only uid {owner} and root)",
            cred.uid()
        ));
    }
    Ok((cred.uid(), cred.pid()))
}

/// Serves the admin socket until the process ends.
pub fn spawn(data: &Path, keys: Arc<dyn Keys>, store: Arc<ChunkStore>) -> std::io::Result<()> {
    let path = socket_path(data);
    // A socket file left by a crashed seed is stale: we hold the store lock, so no other live
    // seed can be using it.
    let _ = std::fs::remove_file(&path);
    let (listener, owner) = bind_private(&path, 0o600)?;
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
                let (keys, store) = (keys.clone(), store.clone());
                tokio::spawn(
                    async move {
                        if let Err(e) = handle(conn, owner, keys, store).await {
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
    owner: u32,
    keys: Arc<dyn Keys>,
    store: Arc<ChunkStore>,
) -> std::io::Result<()> {
    let who = caller(&conn, owner);
    let (rd, mut wr) = conn.into_split();
    let (uid, pid) = match who {
        Ok(who) => who,
        Err(problem) => {
            tracing::warn!(%problem, "admin request refused");
            let msg = json!({ "error": problem });
            wr.write_all(format!("{msg}\n").as_bytes()).await?;
            return Ok(());
        }
    };
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
    tracing::info!(uid, pid, ?cmd, "admin request");
    let bar = ProgressBar::hidden();
    let work = {
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || execute(&cmd, &*keys, &store, Some(bar)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Run as another user by `the_socket_is_private_from_its_first_moment_and_names_its_caller`
    /// (re-executing this binary): connects to the socket and waits for the seed to answer.
    #[test]
    #[ignore = "helper: run as another user by the admin socket test"]
    fn admin_connect_helper() {
        let Ok(path) = std::env::var("OASIS_ADMIN_SOCK") else { return };
        let mut s = std::os::unix::net::UnixStream::connect(path).expect("connects");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        println!("ANSWER {answer}");
    }

    #[tokio::test]
    async fn the_socket_is_private_from_its_first_moment_and_names_its_caller() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("admin.sock");
        let (listener, owner) = bind_private(&path, 0o600).unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(md.uid(), owner);
        let left: Vec<_> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("admin.sock")], "no staging left");

        // This process: its own uid and pid.
        let (_client, server) =
            tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        let (server, _) = server.unwrap();
        assert_eq!(caller(&server, owner), Ok((owner, Some(std::process::id() as i32))));

        // Another user, with the mode loosened: still refused, and named.
        if owner != 0 {
            eprintln!("SKIPPED part: connecting as another user needs root");
            return;
        }
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let helper = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "admin::tests::admin_connect_helper", "--nocapture"])
            .env("OASIS_ADMIN_SOCK", &path)
            .uid(65534)
            .gid(65534)
            .output();
        let accepted = async {
            let (conn, _) = listener.accept().await.unwrap();
            let who = caller(&conn, owner);
            drop(conn);
            who
        };
        let (out, who) = tokio::join!(helper, accepted);
        let out = out.unwrap();
        if !out.status.success() {
            eprintln!(
                "SKIPPED part: the test binary cannot run as uid 65534 here: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let e = who.expect_err("uid 65534 is neither the seed's user nor root");
        assert!(e.contains("uid 65534 may not use this seed's admin socket"), "{e}");
    }
}
