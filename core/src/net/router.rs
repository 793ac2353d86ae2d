//! What a server answers from: a node's [`ContentSource`], [`InventorySource`] and
//! [`BackupSource`], put together in a [`Router`] with the [`ServeLimits`] its peers are held
//! to, and the [`SourceError`] a source answers with when it cannot.

use super::limits::ServeLimits;
use crate::chunk::ChunkId;
use crate::compress::StoredChunk;
use crate::pki::PeerInfo;
use crate::policy::TrafficClass;
use crate::wire::{self, ErrorCode, Frame};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;

/// Layers and chunks: what every server answers from (the seed's store, a reflector's cache and
/// upstream, an in-memory map in tests).
pub trait ContentSource: Send + Sync + 'static {
    /// Signed manifest bytes; None when unknown. `version` None = latest.
    fn manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> impl Future<Output = Result<Option<Bytes>, SourceError>> + Send;

    /// A chunk as stored; None when not held. Implementations verify before returning.
    fn chunk(
        &self,
        id: ChunkId,
    ) -> impl Future<Output = Result<Option<StoredChunk>, SourceError>> + Send;

    /// A chunk asked for by `peer` (whose certificate the server verified). Default:
    /// [`ContentSource::chunk`]. A reflector answers a sibling reflector without passing the miss
    /// on to another sibling, so requests cannot go round in circles.
    fn chunk_for(
        &self,
        _peer: &PeerInfo,
        id: ChunkId,
    ) -> impl Future<Output = Result<Option<StoredChunk>, SourceError>> + Send {
        self.chunk(id)
    }

    /// A chunk asked for by `peer` in a traffic class (`GetChunksBackground` is background).
    /// Default: [`ContentSource::chunk_for`]; a reflector pulls a miss in that class.
    fn chunk_in(
        &self,
        peer: &PeerInfo,
        id: ChunkId,
        _class: TrafficClass,
    ) -> impl Future<Output = Result<Option<StoredChunk>, SourceError>> + Send {
        self.chunk_for(peer, id)
    }

    /// The ids of a GetChunks request beyond the first [`super::CHUNK_READ_AHEAD`], before any is
    /// looked up: a source that must fetch what it lacks (a reflector) starts on them now, so
    /// that the whole request is on its way over a long link instead of a few chunks at a
    /// time. Must not wait. Default: nothing.
    fn pull_ahead(&self, _peer: &PeerInfo, _ids: &[ChunkId], _class: TrafficClass) {}

    /// One flag per id, in order: is the chunk held?
    fn have(&self, ids: &[ChunkId]) -> impl Future<Output = Result<Vec<bool>, SourceError>> + Send;

    /// Published layers.
    fn layers(&self) -> impl Future<Output = Result<Vec<wire::LayerRef>, SourceError>> + Send;

    /// Layers assigned to `peer` (its site, or the device itself). Default: none.
    fn assignments(
        &self,
        _peer: &PeerInfo,
    ) -> impl Future<Output = Result<Vec<wire::Assignment>, SourceError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// A signed statement of `name`'s newest version (`manifest::Latest`, encoded) and a note
    /// for the client, empty when the statement is fresh from the seed. None when the layer is
    /// unknown. Default: not served here.
    fn latest(
        &self,
        _name: &str,
    ) -> impl Future<Output = Result<Option<LatestAnswer>, SourceError>> + Send {
        async { Err(SourceError::Refused("this node serves no latest statements".into())) }
    }

    /// Renews a node certificate (see `pki::renewal`): the seed issues, a reflector passes the
    /// request on upstream. `cert` is not revoked (the server checked). Default: refused.
    fn renew(
        &self,
        _peer: &PeerInfo,
        _cert: Bytes,
        _csr: Bytes,
    ) -> impl Future<Output = Result<Bytes, SourceError>> + Send {
        async { Err(SourceError::Refused("this node renews no certificates".into())) }
    }

    /// The entitlement statement of `site` (None: `peer`'s own) and the seal on it
    /// (`entitlement`), both empty when its digest is `known`. Default: not served here.
    fn entitlements(
        &self,
        _peer: &PeerInfo,
        _site: Option<&str>,
        _known: [u8; 32],
    ) -> impl Future<Output = Result<(Bytes, Bytes), SourceError>> + Send {
        async { Err(SourceError::Refused("this node serves no entitlement statements".into())) }
    }

    /// Which peers may connect (default: every enrolled role). A refused peer's connection is
    /// closed with [`super::close_code::FORBIDDEN`].
    fn admits(&self, _peer: &PeerInfo) -> bool {
        true
    }
}

/// What [`ContentSource::latest`] answers: the encoded statement and a note.
#[derive(Clone, Debug)]
pub struct LatestAnswer {
    pub statement: Bytes,
    pub note: String,
}

/// The device inventory and Wake-on-LAN: seeds and reflectors keep an inventory, relays wake.
/// Every request defaults to a refusal (`Error(Forbidden)`).
pub trait InventorySource: Send + Sync + 'static {
    /// A device registers itself (or a reflector forwards one). Default: this node keeps no
    /// inventory, answered `Error(Forbidden)`.
    fn register(
        &self,
        _peer: &PeerInfo,
        _info: crate::wake::DeviceInfo,
    ) -> impl Future<Output = Result<(), SourceError>> + Send {
        async { Err(SourceError::Refused("this node keeps no device inventory".into())) }
    }

    /// The inventory `peer` may see (its site's devices). Default: none kept, `Forbidden`.
    fn devices(
        &self,
        _peer: &PeerInfo,
    ) -> impl Future<Output = Result<Vec<crate::wake::DeviceEntry>, SourceError>> + Send {
        async { Err(SourceError::Refused("this node keeps no device inventory".into())) }
    }

    /// Sends magic packets from this node for `peer`. Default: this node does not relay wakes.
    fn wake(
        &self,
        _peer: &PeerInfo,
        _targets: Vec<crate::wake::WakeTarget>,
    ) -> impl Future<Output = Result<Vec<crate::wake::WakeSent>, SourceError>> + Send {
        async { Err(SourceError::Refused("this node does not relay wakes".into())) }
    }
}

/// Centralized backups: uploads, device snapshots and plans (the seed). Every request defaults
/// to a refusal (`Error(Forbidden)`).
pub trait BackupSource: Send + Sync + 'static {
    /// Stores one uploaded chunk (NOT verified yet: implementations verify it against its id).
    /// Returns true when it was new. Default: this node takes no uploads.
    fn put_chunk(
        &self,
        _peer: &PeerInfo,
        _chunk: StoredChunk,
    ) -> impl Future<Output = Result<bool, SourceError>> + Send {
        async { Err(SourceError::Refused("this node takes no uploads".into())) }
    }

    /// Files an uploaded snapshot record (centralized device snapshots). Default: refused.
    fn put_snapshot(
        &self,
        _peer: &PeerInfo,
        _req: crate::backup::PutSnapshot,
    ) -> impl Future<Output = Result<crate::backup::SnapshotInfo, SourceError>> + Send {
        async { Err(SourceError::Refused("this node keeps no device snapshots".into())) }
    }

    /// A device's snapshots, oldest first. Default: refused.
    fn snapshots(
        &self,
        _peer: &PeerInfo,
        _device: &str,
    ) -> impl Future<Output = Result<Vec<crate::backup::SnapshotInfo>, SourceError>> + Send {
        async { Err(SourceError::Refused("this node keeps no device snapshots".into())) }
    }

    /// One snapshot of a device (`id` None = latest), its record reference and the seal on
    /// it (`seal::Seal`, encoded). Default: refused.
    fn snapshot(
        &self,
        _peer: &PeerInfo,
        _device: &str,
        _id: Option<&str>,
    ) -> impl Future<
        Output = Result<
            (crate::backup::SnapshotInfo, crate::backup::RecordRef, Bytes),
            SourceError,
        >,
    > + Send {
        async { Err(SourceError::Refused("this node keeps no device snapshots".into())) }
    }

    /// The layers assigned to the requesting device and the seal on them (`seal::Seal`,
    /// encoded). Default: refused.
    fn plan(
        &self,
        _peer: &PeerInfo,
    ) -> impl Future<Output = Result<(crate::backup::DevicePlan, Bytes), SourceError>> + Send {
        async { Err(SourceError::Refused("this node does not provision devices".into())) }
    }
}

/// The part a node does not serve: inventory and backup requests are refused, and as content it
/// holds nothing (a relay that only wakes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Refuse;

impl InventorySource for Refuse {}
impl BackupSource for Refuse {}

impl ContentSource for Refuse {
    async fn manifest(&self, _: &str, _: Option<&str>) -> Result<Option<Bytes>, SourceError> {
        Ok(None)
    }
    async fn chunk(&self, _: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        Ok(None)
    }
    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        Ok(vec![false; ids.len()])
    }
    async fn layers(&self) -> Result<Vec<wire::LayerRef>, SourceError> {
        Ok(Vec::new())
    }
}

/// What [`super::serve`] answers from: each request goes to the part it belongs to (content,
/// inventory and wakes, backups); a node lacking a part leaves it [`Refuse`].
pub struct Router<C, I = Refuse, B = Refuse> {
    pub content: Arc<C>,
    pub inventory: Arc<I>,
    pub backup: Arc<B>,
    /// What every peer may hold of this server.
    pub limits: Arc<ServeLimits>,
    /// The revocation list peers are checked against (at connection and whenever a newer list
    /// arrives) and `GetRevocations` is answered from.
    pub revocations: crate::pki::Revocations,
    /// Who may fetch which layer and read which chunk; None: every peer may read everything.
    pub access: Option<Arc<dyn Access>>,
}

/// Who may fetch which layers and read which chunks of a server (the entitlements):
/// - `GetManifest` and `GetLatest` of a layer the peer may not fetch are refused with
///   `Forbidden`, and `ListLayers` leaves it out;
/// - `GetChunks` and `GetChunksBackground` naming a chunk the peer may not read are refused with
///   `Forbidden` (a reflector's batch: such ids are answered `Missing`), and `Have` answers it
///   "not stored".
///
/// Answers must not depend on whether a layer or chunk is stored, so that no answer tells a peer
/// about what it may not read.
pub trait Access: Send + Sync + 'static {
    /// Whether `peer` may fetch layer `name` (any version of it).
    fn may_fetch_layer<'a>(
        &'a self,
        peer: &'a PeerInfo,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, SourceError>>;

    /// For each of `ids`, whether `peer` may read it.
    fn may_read<'a>(
        &'a self,
        peer: &'a PeerInfo,
        ids: &'a [ChunkId],
    ) -> BoxFuture<'a, Result<Vec<bool>, SourceError>>;
}

impl<C, I, B> Clone for Router<C, I, B> {
    fn clone(&self) -> Self {
        Router {
            content: self.content.clone(),
            inventory: self.inventory.clone(),
            backup: self.backup.clone(),
            limits: self.limits.clone(),
            revocations: self.revocations.clone(),
            access: self.access.clone(),
        }
    }
}

impl<C: ContentSource> Router<C> {
    /// Content only: inventory and backup requests are refused. Default [`ServeLimits`].
    pub fn new(content: Arc<C>) -> Router<C> {
        Router {
            content,
            inventory: Arc::new(Refuse),
            backup: Arc::new(Refuse),
            limits: Arc::new(ServeLimits::default()),
            revocations: crate::pki::Revocations::default(),
            access: None,
        }
    }
}

impl<C, I, B> Router<C, I, B> {
    /// The same router answering inventory and wake requests from `inventory`.
    pub fn inventory<I2: InventorySource>(self, inventory: Arc<I2>) -> Router<C, I2, B> {
        Router {
            content: self.content,
            inventory,
            backup: self.backup,
            limits: self.limits,
            revocations: self.revocations,
            access: self.access,
        }
    }

    /// The same router answering backup requests from `backup`.
    pub fn backup<B2: BackupSource>(self, backup: Arc<B2>) -> Router<C, I, B2> {
        Router {
            content: self.content,
            inventory: self.inventory,
            backup,
            limits: self.limits,
            revocations: self.revocations,
            access: self.access,
        }
    }

    /// The same router holding peers to `limits`.
    pub fn limits(self, limits: ServeLimits) -> Router<C, I, B> {
        Router { limits: Arc::new(limits), ..self }
    }

    /// The same router letting peers fetch only the layers and chunks `access` allows them.
    pub fn access(self, access: Arc<dyn Access>) -> Router<C, I, B> {
        Router { access: Some(access), ..self }
    }

    /// The same router refusing the peers `revocations` revokes.
    pub fn revocations(self, revocations: crate::pki::Revocations) -> Router<C, I, B> {
        Router { revocations, ..self }
    }
}

/// Why a source could not answer; sent to the client as an `Error` frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Temporarily unable (overloaded, upstream unreachable): answered `Unavailable`.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Broken (storage error, corrupt data): answered `Internal`.
    #[error("internal error: {0}")]
    Internal(String),
    /// The peer may not make this request here: answered `Forbidden`.
    #[error("refused: {0}")]
    Refused(String),
    /// The request is refused with this error code (bad input, not found...).
    #[error("{1} ({0:?})")]
    Rejected(ErrorCode, String),
}

impl SourceError {
    pub(super) fn code(&self) -> ErrorCode {
        match self {
            SourceError::Unavailable(_) => ErrorCode::Unavailable,
            SourceError::Internal(_) => ErrorCode::Internal,
            SourceError::Refused(_) => ErrorCode::Forbidden,
            SourceError::Rejected(code, _) => *code,
        }
    }

    pub(super) fn into_frame(self) -> Frame {
        let code = self.code();
        let message = match self {
            SourceError::Unavailable(m)
            | SourceError::Internal(m)
            | SourceError::Refused(m)
            | SourceError::Rejected(_, m) => m,
        };
        Frame::Error { code, message }
    }
}
