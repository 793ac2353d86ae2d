//! `oasis-seed signer`: the process that holds the seed's private keys and answers a serving
//! seed's requests over a Unix socket (see [`super::socket`]).
//!
//! The socket is bound with its final mode from its first moment, like the admin socket. Only
//! the signer's own user, root and the uids given with `--allow-uid` (the user `serve` runs as)
//! are answered; every request is logged with the caller's uid and pid and what was signed.

use super::socket::{unhex, Answer, Hello, Request, IO_TIMEOUT, MAX_LINE_BYTES};
use super::{KeyError, Keys};
use oasis_core::manifest::{ManifestRoot, SignedRoot};
use oasis_core::pki::{peer_info_from_cert, SeedAuthority};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

/// Where `oasis-seed signer --data KEYS` listens unless told otherwise.
pub fn default_socket(keys: &Path) -> PathBuf {
    keys.join("signer.sock")
}

/// A bound signer: its socket, answering until dropped or the process ends.
pub struct RunningSigner {
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningSigner {
    fn drop(&mut self) {
        self.task.abort();
        remove_socket(&self.socket);
    }
}

/// Removes `path` if it is a socket: `--socket` naming a key file by mistake must not delete it.
fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Loads the keys in `keys` and answers on `socket`, for the signer's user, root and
/// `allow_uids`.
pub fn start(keys: &Path, socket: &Path, allow_uids: &[u32]) -> anyhow::Result<RunningSigner> {
    let auth = Arc::new(SeedAuthority::load(keys)?);
    // A socket file left by a signer that died is stale; one that answers is a live signer.
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        anyhow::bail!("{} is answered by a signer already running", socket.display());
    }
    if std::fs::symlink_metadata(socket).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        !m.file_type().is_socket()
    }) {
        anyhow::bail!("{} exists and is not a socket: give another --socket", socket.display());
    }
    remove_socket(socket);
    let mode = if allow_uids.is_empty() { 0o600 } else { 0o666 };
    let (listener, owner) = crate::admin::bind_private(socket, mode)
        .map_err(|e| anyhow::anyhow!("cannot open the signer socket {}: {e}", socket.display()))?;
    let mut allowed: Vec<u32> = [owner, 0].into_iter().chain(allow_uids.iter().copied()).collect();
    allowed.sort_unstable();
    allowed.dedup();
    tracing::info!(socket = %socket.display(), ?allowed, "signer answering");
    let task = tokio::spawn(
        async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "signer socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (auth, allowed) = (auth.clone(), allowed.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(conn, &allowed, auth).await {
                        tracing::warn!(error = %e, "signer connection failed");
                    }
                });
            }
        }
        .instrument(tracing::info_span!("task", task = "signer")),
    );
    Ok(RunningSigner { socket: socket.to_path_buf(), task })
}

async fn handle(
    conn: tokio::net::UnixStream,
    allowed: &[u32],
    auth: Arc<SeedAuthority>,
) -> std::io::Result<()> {
    let cred = conn.peer_cred()?;
    let (uid, pid) = (cred.uid(), cred.pid());
    let (rd, mut wr) = conn.into_split();
    let answer = if !allowed.contains(&uid) {
        tracing::warn!(uid, pid, "signer request refused: uid not allowed");
        Answer {
            error: Some(format!("uid {uid} may not use this signer (allowed: {allowed:?})")),
            refused: true,
            ..Answer::default()
        }
    } else {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            IO_TIMEOUT,
            tokio::io::BufReader::new(rd.take(MAX_LINE_BYTES)).read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Ok(Ok(_)) if line.last() == Some(&b'\n') => {
                match tokio::task::spawn_blocking(move || respond(&auth, &line, uid, pid)).await {
                    Ok(answer) => answer,
                    Err(e) => Answer {
                        error: Some(format!("signer task failed: {e}")),
                        ..Answer::default()
                    },
                }
            }
            Ok(Ok(_)) => Answer {
                error: Some(format!(
                    "signer request ended early or exceeds {MAX_LINE_BYTES} bytes"
                )),
                refused: true,
                ..Answer::default()
            },
            Ok(Err(e)) => return Err(e),
            Err(_) => Answer {
                error: Some(format!("no request within {} s", IO_TIMEOUT.as_secs())),
                refused: true,
                ..Answer::default()
            },
        }
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, wr.write_all(&out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing the answer"))?
}

/// The answer to one request line from caller `uid`/`pid`, logged. Blocking (the keys'
/// files: the register, the revocation list).
pub fn respond(keys: &SeedAuthority, line: &[u8], uid: u32, pid: Option<i32>) -> Answer {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                error: Some(format!("signer request does not decode: {e}")),
                refused: true,
                ..Answer::default()
            }
        }
    };
    let op = request.op();
    match answer(keys, &request) {
        // What signs is worth a line each; the list polled every second and the start-up
        // check are not.
        Ok((result, what)) => {
            if request_signs(op) {
                tracing::info!(uid, pid, op, %what, "signed");
            } else {
                tracing::debug!(uid, pid, op, %what, "answered");
            }
            Answer { result: Some(result), ..Answer::default() }
        }
        Err(e) => {
            tracing::warn!(uid, pid, op, error = %e, "signer request refused");
            let refused = matches!(e, KeyError::Refused(_));
            Answer { error: Some(e.to_string()), refused, ..Answer::default() }
        }
    }
}

fn request_signs(op: &str) -> bool {
    !matches!(op, "hello" | "revocations")
}

/// Does what `request` asks with `keys`: the result and what the log says it signed.
fn answer(
    keys: &SeedAuthority,
    request: &Request,
) -> Result<(serde_json::Value, String), KeyError> {
    let field = |name: &str, text: &str| unhex(name, text).map_err(KeyError::Refused);
    let hex_of = |b: &[u8]| serde_json::Value::String(hex::encode(b));
    Ok(match request {
        Request::Hello => {
            let trust = Keys::trust(keys);
            let hello = Hello {
                ca: hex::encode(trust.ca_der()),
                manifest_key: hex::encode(trust.manifest_key().as_bytes()),
            };
            (
                serde_json::to_value(hello).map_err(|e| KeyError::Unavailable(e.to_string()))?,
                "keys".into(),
            )
        }
        Request::SignRoot { root_body } => {
            let body = field("root_body", root_body)?;
            let sig = keys.root_signer().sign_root(&body).map_err(KeyError::Refused)?;
            let label = ManifestRoot::from_canonical(&body)
                .map_or_else(|_| "a manifest root".to_string(), |r| r.label());
            (hex_of(&sig), format!("manifest {label}"))
        }
        Request::Latest { signed_root, ttl_s } => {
            let root = field("signed_root", signed_root)?;
            let statement = keys.latest(&root, Duration::from_secs(*ttl_s))?;
            let label = SignedRoot::open(&root, Keys::trust(keys).manifest_key())
                .map_or_else(|_| "?".into(), |r| r.label());
            (hex_of(&statement), format!("latest {label} for {ttl_s} s"))
        }
        Request::Seal { sealed } => (hex_of(&keys.seal(sealed)?), format!("seal {sealed:?}")),
        Request::Renew { cert, csr } => {
            let cert = field("cert", cert)?;
            let renewed = Keys::renew(keys, &cert, &field("csr", csr)?)?;
            let who = peer_info_from_cert(&renewed.clone().into())
                .map_or_else(|_| "?".into(), |p| p.to_string());
            (hex_of(&renewed), format!("renewal of {who}"))
        }
        Request::Revocations { known } => match keys.revocations(*known)? {
            Some(der) => (
                serde_json::json!({ "crl": hex::encode(der) }),
                format!("revocation list above {known}"),
            ),
            None => {
                (serde_json::json!({ "crl": null }), format!("no revocation list above {known}"))
            }
        },
    })
}
