//! A serving seed's side of the signer socket (see [`super::socket`]).

use super::socket::{unhex, Answer, Hello, Request, IO_TIMEOUT, MAX_LINE_BYTES};
use super::{KeyError, Keys};
use oasis_core::manifest::RootSigner;
use oasis_core::pki::TrustRoot;
use oasis_core::seal::Sealed;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The keys of `oasis-seed signer`, asked over its socket; each call is a connection of its own.
pub struct SignerClient {
    socket: PathBuf,
    trust: TrustRoot,
}

impl SignerClient {
    /// Reaches the signer at `socket` and checks that it holds the keys of `trust`: a serving
    /// seed must not start signing with another seed's keys, nor start at all without its
    /// signer.
    pub fn connect(socket: &Path, trust: TrustRoot) -> anyhow::Result<SignerClient> {
        let client = SignerClient { socket: socket.to_path_buf(), trust };
        let hello = client.call(&Request::Hello).map_err(|e| anyhow::anyhow!("{e}"))?;
        let hello: Hello = serde_json::from_value(hello).map_err(|e| {
            anyhow::anyhow!("signer {}: a hello that does not decode: {e}", socket.display())
        })?;
        let ca = unhex("ca", &hello.ca).map_err(anyhow::Error::msg)?;
        let manifest_key =
            unhex("manifest_key", &hello.manifest_key).map_err(anyhow::Error::msg)?;
        if ca != client.trust.ca_der().as_ref()
            || manifest_key != client.trust.manifest_key().as_bytes()
        {
            anyhow::bail!(
                "the signer at {} holds the keys of another seed (its CA or manifest key differs \
                 from this seed's trust.pem)",
                socket.display()
            );
        }
        Ok(client)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request, its answer's `result`.
    fn call(&self, request: &Request) -> Result<serde_json::Value, KeyError> {
        let at = || format!("signer {}", self.socket.display());
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            KeyError::Unavailable(format!("{}: {what}: {e}", at()))
        };
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| unavailable("cannot connect (is `oasis-seed signer` running?)", &e))?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| unavailable("socket", &e))?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| unavailable("socket", &e))?;
        let mut line = serde_json::to_vec(request).map_err(|e| unavailable("encoding", &e))?;
        line.push(b'\n');
        s.write_all(&line).map_err(|e| unavailable("sending the request", &e))?;
        let mut answer = Vec::new();
        BufReader::new((&s).take(MAX_LINE_BYTES))
            .read_until(b'\n', &mut answer)
            .map_err(|e| unavailable("reading the answer", &e))?;
        if answer.last() != Some(&b'\n') {
            return Err(unavailable("the answer", &"ended early or is too long"));
        }
        let answer: Answer = serde_json::from_slice(&answer)
            .map_err(|e| unavailable("the answer does not decode", &e))?;
        match (answer.result, answer.error) {
            (_, Some(e)) if answer.refused => Err(KeyError::Refused(format!("{}: {e}", at()))),
            (_, Some(e)) => Err(unavailable("failed", &e)),
            (Some(v), None) => Ok(v),
            (None, None) => Err(unavailable("the answer", &"has neither result nor error")),
        }
    }

    fn bad_answer(&self, e: impl std::fmt::Display) -> KeyError {
        KeyError::Unavailable(format!(
            "signer {}: answered what does not verify against trust.pem: {e}",
            self.socket.display()
        ))
    }

    fn call_bytes(&self, request: &Request) -> Result<Vec<u8>, KeyError> {
        let v = self.call(request)?;
        let text = v.as_str().ok_or_else(|| {
            KeyError::Unavailable(format!(
                "signer {}: the answer is not hex",
                self.socket.display()
            ))
        })?;
        unhex("the answer", text).map_err(KeyError::Unavailable)
    }
}

impl RootSigner for SignerClient {
    fn manifest_key(&self) -> ed25519_dalek::VerifyingKey {
        *self.trust.manifest_key()
    }

    fn sign_root(&self, root_body: &[u8]) -> Result<[u8; 64], String> {
        let sig = self
            .call_bytes(&Request::SignRoot { root_body: hex::encode(root_body) })
            .map_err(|e| e.to_string())?;
        sig.try_into().map_err(|_| "the signer answered a signature that is not 64 bytes".into())
    }
}

impl Keys for SignerClient {
    fn trust(&self) -> &TrustRoot {
        &self.trust
    }

    fn root_signer(&self) -> &dyn RootSigner {
        self
    }

    fn latest(&self, signed_root: &[u8], ttl: Duration) -> Result<Vec<u8>, KeyError> {
        let ttl_s = ttl.as_secs();
        let statement =
            self.call_bytes(&Request::Latest { signed_root: hex::encode(signed_root), ttl_s })?;
        // Whatever answers on the socket passed only a hello of public keys: what it signs is
        // checked before the seed hands it out.
        oasis_core::manifest::Latest::open(&statement, self.trust.manifest_key())
            .map_err(|e| self.bad_answer(e))?;
        Ok(statement)
    }

    fn seal(&self, sealed: &Sealed) -> Result<Vec<u8>, KeyError> {
        let seal = self.call_bytes(&Request::Seal { sealed: sealed.clone() })?;
        oasis_core::seal::Seal::check(&seal, self.trust.manifest_key(), sealed)
            .map_err(|e| self.bad_answer(e))?;
        Ok(seal)
    }

    fn renew(&self, cert: &[u8], csr: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.call_bytes(&Request::Renew { cert: hex::encode(cert), csr: hex::encode(csr) })
    }

    fn revocations(&self, known: u64) -> Result<Option<Vec<u8>>, KeyError> {
        match &self.call(&Request::Revocations { known })?["crl"] {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(h) => {
                unhex("the revocation list", h).map(Some).map_err(KeyError::Unavailable)
            }
            _ => Err(KeyError::Unavailable(format!(
                "signer {}: the revocation list is not hex",
                self.socket.display()
            ))),
        }
    }
}
