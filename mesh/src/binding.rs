//! Binding of a node's libp2p peer id to its enrolled certificate, and the persisted p2p key.
//!
//! Scheme: each node signs [`binding_message`]`(peer_id bytes)` with the private key of its
//! node certificate (the TLS key issued by the seed's CA, ECDSA P-256) and publishes
//! `Hello { cert_der, scheme, signature }` on the gossip topic. Gossipsub messages are signed
//! with the author's ed25519 libp2p key (strict validation), so the author peer id of every
//! message is authentic; a receiver accepts a hello when the certificate chains to the CA in its
//! `trust.pem` (rustls-webpki, client-auth usage, current time), carries an Oasis node URI of a
//! reflector or the seed, and the signature over the *author's* peer id verifies with the
//! certificate's key. Until an author's hello has verified, its other messages are dropped and
//! counted (`oasis_gossip_dropped_total{reason="unverified"}`).

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use oasis_core::gossip::{binding_message, Hello};
use oasis_core::pki::{peer_info_from_cert, NodeIdentity, PeerInfo, Role, TrustRoot};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::SignatureScheme;
use webpki::ring as algs;

/// File name of the node's libp2p key in its state dir (secret, 0600).
pub const P2P_KEY_FILE: &str = "p2p.key";

/// Loads `STATE_DIR/p2p.key` (libp2p protobuf encoding of an ed25519 keypair), creating it on
/// first use (mode 0600, written to a temporary file, synced, then renamed into place).
pub fn load_or_create_keypair(state: &Path) -> Result<Keypair> {
    let path = state.join(P2P_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{}: not a libp2p key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().context("encoding the p2p key")?;
            // Two processes racing: the first to place the file wins and both then read it.
            let secret = oasis_core::durable::Options { mode: 0o600, overwrite: false };
            match oasis_core::durable::write_with(&path, &bytes, secret) {
                Ok(()) => {}
                // Read what is there once (no retry: a dangling symlink would loop for ever).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let bytes = fs::read(&path).with_context(|| {
                        format!("{}: exists but cannot be read", path.display())
                    })?;
                    return Keypair::from_protobuf_encoding(&bytes)
                        .with_context(|| format!("{}: not a libp2p key", path.display()));
                }
                Err(e) => return Err(e).with_context(|| format!("{}: writing", path.display())),
            }
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("{}: reading", path.display())),
    }
}

/// The peer id of the node whose state dir is `state` (creating its p2p key on first use), for
/// `oasis-reflector id --state DIR`.
pub fn peer_id_of_state(state: &Path) -> Result<PeerId> {
    Ok(load_or_create_keypair(state)?.public().to_peer_id())
}

const SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
];

/// Signs the binding of `peer` with the node certificate's key.
pub fn sign_binding(identity: &NodeIdentity, peer: &PeerId) -> Result<Hello> {
    let config = identity.rustls_client_config()?;
    let certified = config
        .client_auth_cert_resolver
        .resolve(&[], &SCHEMES)
        .ok_or_else(|| anyhow!("the node certificate key supports none of {SCHEMES:?}"))?;
    let signer = certified
        .key
        .choose_scheme(&SCHEMES)
        .ok_or_else(|| anyhow!("the node certificate key supports none of {SCHEMES:?}"))?;
    let signature = signer
        .sign(&binding_message(&peer.to_bytes()))
        .map_err(|e| anyhow!("signing the peer id binding: {e}"))?;
    Ok(Hello {
        cert_der: identity.cert_der().to_vec(),
        scheme: u16::from(signer.scheme()),
        signature,
    })
}

/// Verifies that `hello` binds `author` to a certificate issued by the CA of `trust` for a
/// reflector or the seed; returns who the author is.
pub fn verify_binding(hello: &Hello, author: &PeerId, trust: &TrustRoot) -> Result<PeerInfo> {
    let cert = CertificateDer::from(hello.cert_der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| anyhow!("hello certificate does not parse: {e}"))?;
    let anchor =
        webpki::anchor_from_trusted_cert(trust.ca_der()).map_err(|e| anyhow!("trust root: {e}"))?;
    let supported = [
        algs::ECDSA_P256_SHA256,
        algs::ECDSA_P256_SHA384,
        algs::ECDSA_P384_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
    ];
    ee.verify_for_usage(
        &supported,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| anyhow!("hello certificate not issued by our CA: {e}"))?;
    let alg = match SignatureScheme::from(hello.scheme) {
        SignatureScheme::ECDSA_NISTP256_SHA256 => algs::ECDSA_P256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => algs::ECDSA_P384_SHA384,
        SignatureScheme::ED25519 => algs::ED25519,
        other => bail!("hello signature scheme {other:?} is not supported"),
    };
    ee.verify_signature(alg, &binding_message(&author.to_bytes()), &hello.signature)
        .map_err(|e| anyhow!("hello signature does not bind the author's peer id: {e}"))?;
    let info = peer_info_from_cert(&cert)?;
    if !matches!(info.role, Role::Reflector | Role::Seed) {
        bail!("{info} is not a reflector or the seed");
    }
    Ok(info)
}
