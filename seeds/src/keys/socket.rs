//! The signer socket's protocol, spoken by `oasis-seed signer` and `serve --signer`.
//!
//! One request per connection over a Unix stream socket: the client writes one JSON object
//! and a newline, the signer answers one JSON object and a newline and closes. Binary fields
//! are lower-case hex. Requests (`op`):
//! - `hello`: answers `{"ca": DER, "manifest_key": 32 bytes}`, the public halves, so a serving
//!   seed checks at start that the signer holds its seed's keys;
//! - `sign_root {root_body}`: the ed25519 signature (64 bytes) over a manifest root, as
//!   `RootSigner::sign_root`;
//! - `latest {signed_root, ttl_s}`: a latest statement for that signed root;
//! - `seal {sealed}`: a seal (`sealed` as its JSON form, e.g. `{"DevicePlan":{"device":..,
//!   "digest":[32 numbers]}}`);
//! - `renew {cert, csr}`: the renewed certificate (DER);
//! - `revocations {known}`: `{"crl": DER}` when the revocation list's number is above `known`,
//!   else `{"crl": null}`.
//!
//! Answers: `{"result": ...}`, or `{"error": "...", "refused": true|false}`: refused means the
//! request was at fault, false that the signer could not do it.

use oasis_core::seal::Sealed;
use serde::{Deserialize, Serialize};

/// Longest request or answer line: a manifest root (4 MiB) or a revocation list (2 MiB), in
/// hex, and room for the rest.
pub const MAX_LINE_BYTES: u64 = 9 << 20;
/// How long either side waits for the other's line.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello,
    SignRoot { root_body: String },
    Latest { signed_root: String, ttl_s: u64 },
    Seal { sealed: Sealed },
    Renew { cert: String, csr: String },
    Revocations { known: u64 },
}

impl Request {
    /// What the log says of the request (not its bytes).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::SignRoot { .. } => "sign_root",
            Request::Latest { .. } => "latest",
            Request::Seal { .. } => "seal",
            Request::Renew { .. } => "renew",
            Request::Revocations { .. } => "revocations",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub ca: String,
    pub manifest_key: String,
}

/// Hex of `field`, or why not.
pub fn unhex(field: &str, text: &str) -> Result<Vec<u8>, String> {
    hex::decode(text).map_err(|e| format!("{field} is not hex: {e}"))
}
