//! The Oasis wire protocol, `oasis/1`: frame layout and message encoding, with no I/O.
//!
//! Every request runs on its own bidirectional QUIC stream: the client writes one request frame
//! and finishes its side; the server answers with one or more frames and finishes its side.
//! A frame is `u32 length (big-endian) | u8 type | body`, where `length` counts the type byte
//! and the body. docs/protocol.md is the normative description; keep the two in step.

use crate::chunk::ChunkId;
use crate::compress::{Encoding, StoredChunk};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest chunk the protocol carries (plain or stored). Chunking parameters above it are refused.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;
/// Largest frame a peer may send: a chunk frame with its 42-byte header (length prefix included) fits with room to spare.
pub const MAX_FRAME_BYTES: usize = MAX_CHUNK_BYTES + 1024;
/// Largest request frame a server accepts (requests carry ids, not data).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Most ids in one GetChunks or Have request.
pub const MAX_IDS_PER_REQUEST: usize = 16_384;
/// Longest layer name or version, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Largest revocation list (a DER X.509 CRL) a `Revocations` frame carries: about 40 bytes per
/// revoked certificate, some 50,000 of them.
pub const MAX_REVOCATION_LIST_BYTES: usize = 2 << 20;
/// Largest certificate or certificate signing request a `Renew` or `Renewed` frame carries.
pub const MAX_CERT_BYTES: usize = 8 << 10;

pub mod frame_type {
    pub const GET_MANIFEST: u8 = 0x01;
    pub const GET_CHUNKS: u8 = 0x02;
    pub const HAVE: u8 = 0x03;
    pub const LIST_LAYERS: u8 = 0x04;
    pub const GET_ASSIGNMENTS: u8 = 0x05;
    pub const GET_CHUNKS_BACKGROUND: u8 = 0x06;
    pub const GET_LATEST: u8 = 0x07;
    pub const GET_REVOCATIONS: u8 = 0x08;
    pub const RENEW: u8 = 0x09;
    pub const GET_ENTITLEMENTS: u8 = 0x0A;
    pub const MANIFEST: u8 = 0x81;
    pub const CHUNK: u8 = 0x82;
    pub const MISSING: u8 = 0x83;
    pub const HAVE_REPLY: u8 = 0x84;
    pub const END: u8 = 0x85;
    pub const LAYERS: u8 = 0x86;
    pub const ASSIGNMENTS: u8 = 0x87;
    pub const LATEST: u8 = 0x88;
    pub const REVOCATIONS: u8 = 0x89;
    pub const RENEWED: u8 = 0x8A;
    pub const ENTITLEMENTS: u8 = 0x8B;
    // Device inventory and Wake-on-LAN (0x10-0x17, 0x90-0x97): see crate::wake::msg.
    pub const REGISTER: u8 = 0x10;
    pub const WAKE: u8 = 0x11;
    pub const GET_DEVICES: u8 = 0x12;
    pub const REGISTERED: u8 = 0x90;
    pub const WAKE_REPORT: u8 = 0x91;
    pub const DEVICES: u8 = 0x92;
    // Centralized snapshots and provisioning (0x20-0x27, 0xA0-0xA7): see crate::backup.
    pub const PUT_CHUNKS: u8 = 0x20;
    pub const PUT_SNAPSHOT: u8 = 0x21;
    pub const LIST_SNAPSHOTS: u8 = 0x22;
    pub const GET_SNAPSHOT: u8 = 0x23;
    pub const GET_PLAN: u8 = 0x24;
    pub const CHUNKS_STORED: u8 = 0xA0;
    pub const SNAPSHOT_STORED: u8 = 0xA1;
    pub const SNAPSHOTS: u8 = 0xA2;
    pub const SNAPSHOT: u8 = 0xA3;
    pub const PLAN: u8 = 0xA4;
    pub const ERROR: u8 = 0xFF;
}

/// Error codes carried by an `Error` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request frame could not be decoded.
    Malformed = 1,
    /// A frame exceeded the size limit.
    TooLarge = 2,
    /// The named layer or version does not exist.
    NotFound = 3,
    /// The peer's role may not make this request.
    Forbidden = 4,
    /// The server failed (storage, upstream); the client may try another source.
    Internal = 5,
    /// The server is overloaded or cannot reach upstream in time; try another source.
    Unavailable = 6,
    /// Unknown frame type.
    UnknownType = 7,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::NotFound,
            4 => ErrorCode::Forbidden,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::UnknownType,
            _ => ErrorCode::Internal,
        }
    }
}

/// A layer assigned to a site (or device), as listed by `Assignments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub version: String,
    /// Delivery window in the site's time zone, "HH:MM-HH:MM"; empty for "any time".
    pub window: String,
}

/// A layer known to a server, as listed by `ListLayers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    pub name: String,
    pub version: String,
    pub digest: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Ask for a layer's signed manifest; `version` None means the latest published.
    GetManifest {
        name: String,
        version: Option<String>,
    },
    /// Ask for chunks; the answer is one `Chunk` or `Missing` per id, in request order, then `End`.
    GetChunks {
        ids: Vec<ChunkId>,
    },
    /// `GetChunks` for prefetch (background traffic class): the same answers. A reflector asked
    /// by a sibling this way pulls what it lacks over the WAN in its own background class, so a
    /// site's prefetch keeps the policy's background limits whichever reflector pulls for it.
    GetChunksBackground {
        ids: Vec<ChunkId>,
    },
    /// Which of these ids does the server hold? Answer: `HaveReply`.
    Have {
        ids: Vec<ChunkId>,
    },
    /// List published layers. Answer: `Layers`.
    ListLayers,
    /// Layers assigned to the requesting node's site (read from its certificate). Answer:
    /// `Assignments`.
    GetAssignments,
    /// Ask which version of a layer is the newest published. Answer: `Latest`.
    GetLatest {
        name: String,
    },
    /// A signed statement of a layer's newest version (manifest::Latest, at most
    /// `MAX_LATEST_BYTES`), and a note from the server, empty when the statement comes
    /// straight from the seed (a reflector serving its cached copy says why here). The note is
    /// not signed: it explains, it proves nothing.
    Latest {
        statement: Bytes,
        note: String,
    },
    /// Ask for the revocation list the server holds, if its CRL number is above `known` (the
    /// number of the list the client holds; 0 for none). Answer: `Revocations`.
    GetRevocations {
        known: u64,
    },
    /// The CA-signed revocation list (DER X.509 CRL, at most `MAX_REVOCATION_LIST_BYTES`); empty
    /// when the server holds none above the number asked about. The client checks the
    /// signature; the server proves nothing.
    Revocations {
        crl: Bytes,
    },
    /// Renew a node certificate: the certificate (DER) and a PKCS#10 request (DER) for its
    /// key, signed with it. Answered by the seed, passed on towards it by reflectors. Answer:
    /// `Renewed`.
    Renew {
        cert: Bytes,
        csr: Bytes,
    },
    /// The renewed certificate (DER).
    Renewed {
        cert: Bytes,
    },
    /// Ask for the entitlement statement of `site` (None: the client's own), if its BLAKE3
    /// differs from `known` (the digest of the statement the client holds; zeros for none).
    /// Asked by reflectors; another site's statement is asked for by a reflector whose
    /// downstream, chained reflector belongs to that site. Answer: `Entitlements`.
    GetEntitlements {
        site: Option<String>,
        known: [u8; 32],
    },
    /// The site's entitlement statement (`entitlement::Entitlements`, at most
    /// `entitlement::MAX_ENTITLEMENTS_BYTES`) and the seed's seal on it; both empty when the
    /// statement's digest is the one asked about.
    Entitlements {
        statement: Bytes,
        seal: Bytes,
    },
    /// A signed manifest (see manifest::SignedManifest::to_bytes).
    Manifest {
        signed: Bytes,
    },
    Chunk(StoredChunk),
    Missing {
        id: ChunkId,
    },
    /// One bit per requested id, in order, least significant bit first in each byte.
    HaveReply {
        count: u32,
        bitmap: Bytes,
    },
    End,
    Layers {
        layers: Vec<LayerRef>,
    },
    Assignments {
        assignments: Vec<Assignment>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// A device describes itself (endpoints on connect; reflectors for themselves and, when
    /// forwarding to the seed, for their endpoints). Answer: `Registered`.
    Register {
        /// Boxed: it is by far the largest request and would bloat every `Frame`.
        device: Box<crate::wake::msg::DeviceInfo>,
    },
    Registered,
    /// The inventory of the requesting node's site. Answer: `Devices`.
    GetDevices,
    Devices {
        devices: Vec<crate::wake::msg::DeviceEntry>,
    },
    /// Send magic packets from this node. Answer: `WakeReport`, one result per target.
    Wake {
        targets: Vec<crate::wake::msg::WakeTarget>,
    },
    WakeReport {
        results: Vec<crate::wake::msg::WakeSent>,
    },
    /// Upload: `count` `Chunk` frames follow on the same stream, then its end. Answer:
    /// `ChunksStored`, or an `Error` at the first chunk refused (earlier ones stay stored).
    PutChunks {
        count: u32,
    },
    ChunksStored {
        received: u32,
        added: u32,
    },
    /// File a snapshot record whose chunks the server holds. Answer: `SnapshotStored`.
    PutSnapshot(crate::backup::PutSnapshot),
    SnapshotStored(crate::backup::SnapshotInfo),
    /// A device's snapshots, oldest first. Answer: `Snapshots`.
    ListSnapshots {
        device: String,
    },
    Snapshots {
        snapshots: Vec<crate::backup::SnapshotInfo>,
    },
    /// One snapshot (`id` None = the latest) and where its record is. Answer: `Snapshot`.
    GetSnapshot {
        device: String,
        id: Option<String>,
    },
    Snapshot {
        info: crate::backup::SnapshotInfo,
        record: crate::backup::RecordRef,
        /// The seed's seal on the record (`seal::Seal`, at most `MAX_SEAL_BYTES`).
        seal: Bytes,
    },
    /// The layers assigned to the requesting device. Answer: `Plan`.
    GetPlan,
    Plan {
        plan: crate::backup::DevicePlan,
        /// The seed's seal on the plan (`seal::Seal`, at most `MAX_SEAL_BYTES`).
        seal: Bytes,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what} frame: {problem}")]
    Malformed { what: &'static str, problem: String },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("empty frame (length 0)")]
    Empty,
}

pub(crate) fn malformed(what: &'static str, problem: impl Into<String>) -> WireError {
    WireError::Malformed { what, problem: problem.into() }
}

impl Frame {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error { code, message: message.into() }
    }

    pub fn type_byte(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::GetManifest { .. } => GET_MANIFEST,
            Frame::GetChunks { .. } => GET_CHUNKS,
            Frame::GetChunksBackground { .. } => GET_CHUNKS_BACKGROUND,
            Frame::Have { .. } => HAVE,
            Frame::ListLayers => LIST_LAYERS,
            Frame::GetAssignments => GET_ASSIGNMENTS,
            Frame::GetLatest { .. } => GET_LATEST,
            Frame::Latest { .. } => LATEST,
            Frame::GetRevocations { .. } => GET_REVOCATIONS,
            Frame::Revocations { .. } => REVOCATIONS,
            Frame::Renew { .. } => RENEW,
            Frame::Renewed { .. } => RENEWED,
            Frame::GetEntitlements { .. } => GET_ENTITLEMENTS,
            Frame::Entitlements { .. } => ENTITLEMENTS,
            Frame::Manifest { .. } => MANIFEST,
            Frame::Chunk(_) => CHUNK,
            Frame::Missing { .. } => MISSING,
            Frame::HaveReply { .. } => HAVE_REPLY,
            Frame::End => END,
            Frame::Layers { .. } => LAYERS,
            Frame::Assignments { .. } => ASSIGNMENTS,
            Frame::Error { .. } => ERROR,
            Frame::Register { .. } => REGISTER,
            Frame::Registered => REGISTERED,
            Frame::GetDevices => GET_DEVICES,
            Frame::Devices { .. } => DEVICES,
            Frame::Wake { .. } => WAKE,
            Frame::WakeReport { .. } => WAKE_REPORT,
            Frame::PutChunks { .. } => PUT_CHUNKS,
            Frame::ChunksStored { .. } => CHUNKS_STORED,
            Frame::PutSnapshot(_) => PUT_SNAPSHOT,
            Frame::SnapshotStored(_) => SNAPSHOT_STORED,
            Frame::ListSnapshots { .. } => LIST_SNAPSHOTS,
            Frame::Snapshots { .. } => SNAPSHOTS,
            Frame::GetSnapshot { .. } => GET_SNAPSHOT,
            Frame::Snapshot { .. } => SNAPSHOT,
            Frame::GetPlan => GET_PLAN,
            Frame::Plan { .. } => PLAN,
        }
    }

    /// Appends the whole frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        out.put_u8(self.type_byte());
        match self {
            Frame::GetManifest { name, version } => {
                put_str(out, name);
                put_str(out, version.as_deref().unwrap_or(""));
            }
            Frame::GetChunks { ids } | Frame::GetChunksBackground { ids } | Frame::Have { ids } => {
                out.put_u32(ids.len() as u32);
                for id in ids {
                    out.put_slice(id.as_bytes());
                }
            }
            Frame::ListLayers | Frame::GetAssignments | Frame::End => {}
            Frame::GetRevocations { known } => out.put_u64(*known),
            Frame::Manifest { signed } => out.put_slice(signed),
            Frame::Revocations { crl } => out.put_slice(crl),
            Frame::Renew { cert, csr } => {
                put_cert(out, cert);
                put_cert(out, csr);
            }
            Frame::Renewed { cert } => out.put_slice(cert),
            Frame::GetEntitlements { site, known } => {
                put_str(out, site.as_deref().unwrap_or(""));
                out.put_slice(known);
            }
            Frame::Entitlements { statement, seal } => {
                out.put_u32(statement.len() as u32);
                out.put_slice(statement);
                put_seal(out, seal);
            }
            Frame::GetLatest { name } => put_str(out, name),
            Frame::Latest { statement, note } => {
                out.put_u16(statement.len() as u16);
                out.put_slice(statement);
                put_long_str(out, truncated(note, MAX_NOTE_BYTES));
            }
            Frame::Chunk(c) => {
                out.put_slice(c.id.as_bytes());
                out.put_u8(c.encoding as u8);
                out.put_u32(c.plain_len);
                out.put_slice(&c.data);
            }
            Frame::Missing { id } => out.put_slice(id.as_bytes()),
            Frame::HaveReply { count, bitmap } => {
                out.put_u32(*count);
                out.put_slice(bitmap);
            }
            Frame::Layers { layers } => {
                out.put_u32(layers.len() as u32);
                for l in layers {
                    put_str(out, &l.name);
                    put_str(out, &l.version);
                    out.put_slice(&l.digest);
                }
            }
            Frame::Assignments { assignments } => {
                out.put_u32(assignments.len() as u32);
                for a in assignments {
                    put_str(out, &a.name);
                    put_str(out, &a.version);
                    put_str(out, &a.window);
                }
            }
            Frame::Error { code, message } => {
                out.put_u16(*code as u16);
                // Messages are advisory; truncate rather than fail on a long one.
                put_long_str(out, truncated(message, MAX_NOTE_BYTES));
            }
            Frame::Registered | Frame::GetDevices => {}
            Frame::Register { device } => device.encode(out),
            Frame::Devices { devices } => crate::wake::msg::encode_list(out, devices),
            Frame::Wake { targets } => crate::wake::msg::encode_list(out, targets),
            Frame::WakeReport { results } => crate::wake::msg::encode_list(out, results),
            Frame::PutChunks { count } => out.put_u32(*count),
            Frame::ChunksStored { received, added } => {
                out.put_u32(*received);
                out.put_u32(*added);
            }
            Frame::PutSnapshot(p) => crate::backup::encode_put_snapshot(p, out),
            Frame::SnapshotStored(i) => crate::backup::encode_info(i, out),
            Frame::ListSnapshots { device } => put_str(out, device),
            Frame::Snapshots { snapshots } => crate::backup::encode_infos(snapshots, out),
            Frame::GetSnapshot { device, id } => {
                put_str(out, device);
                put_str(out, id.as_deref().unwrap_or(""));
            }
            Frame::Snapshot { info, record, seal } => {
                crate::backup::encode_snapshot(info, record, out);
                put_seal(out, seal);
            }
            Frame::GetPlan => {}
            Frame::Plan { plan, seal } => {
                crate::backup::encode_plan(plan, out);
                put_seal(out, seal);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// The chunk header without its payload, so a server can send stored bytes without a copy.
    pub fn chunk_header(c: &StoredChunk) -> [u8; 42] {
        let mut h = [0u8; 42];
        let len = (1 + 32 + 1 + 4 + c.data.len()) as u32;
        h[0..4].copy_from_slice(&len.to_be_bytes());
        h[4] = frame_type::CHUNK;
        h[5..37].copy_from_slice(c.id.as_bytes());
        h[37] = c.encoding as u8;
        h[38..42].copy_from_slice(&c.plain_len.to_be_bytes());
        h
    }

    /// Decodes one frame body: `ty` is the type byte, `body` what follows it.
    pub fn decode(ty: u8, mut body: Bytes) -> Result<Frame, WireError> {
        use frame_type::*;
        let f = match ty {
            GET_MANIFEST => {
                let name = get_str(&mut body, "GetManifest")?;
                let version = get_str(&mut body, "GetManifest")?;
                if name.is_empty() {
                    return Err(malformed("GetManifest", "empty layer name"));
                }
                Frame::GetManifest { name, version: (!version.is_empty()).then_some(version) }
            }
            GET_CHUNKS => Frame::GetChunks { ids: get_ids(&mut body, "GetChunks")? },
            GET_CHUNKS_BACKGROUND => {
                Frame::GetChunksBackground { ids: get_ids(&mut body, "GetChunksBackground")? }
            }
            HAVE => Frame::Have { ids: get_ids(&mut body, "Have")? },
            LIST_LAYERS => Frame::ListLayers,
            GET_ASSIGNMENTS => Frame::GetAssignments,
            GET_LATEST => {
                let name = get_str(&mut body, "GetLatest")?;
                if name.is_empty() {
                    return Err(malformed("GetLatest", "empty layer name"));
                }
                Frame::GetLatest { name }
            }
            LATEST => {
                need(&body, 2, "Latest")?;
                let n = body.get_u16() as usize;
                if n > crate::manifest::latest::MAX_LATEST_BYTES {
                    return Err(malformed("Latest", format!("statement of {n} bytes over limit")));
                }
                need(&body, n, "Latest")?;
                let statement = body.split_to(n);
                need(&body, 2, "Latest")?;
                let m = body.get_u16() as usize;
                if m > MAX_NOTE_BYTES {
                    return Err(malformed("Latest", format!("note of {m} bytes over limit")));
                }
                need(&body, m, "Latest")?;
                let note = String::from_utf8(body.split_to(m).to_vec())
                    .map_err(|_| malformed("Latest", "note is not UTF-8"))?;
                Frame::Latest { statement, note }
            }
            MANIFEST => {
                let signed = body.split_to(body.len());
                Frame::Manifest { signed }
            }
            CHUNK => {
                need(&body, 37, "Chunk")?;
                let id = get_id(&mut body);
                let enc = body.get_u8();
                let encoding = Encoding::from_u8(enc)
                    .ok_or_else(|| malformed("Chunk", format!("unknown encoding {enc}")))?;
                let plain_len = body.get_u32();
                if plain_len as usize > MAX_CHUNK_BYTES {
                    return Err(malformed("Chunk", format!("plain length {plain_len} over limit")));
                }
                let data = body.split_to(body.len());
                Frame::Chunk(StoredChunk { id, encoding, plain_len, data })
            }
            MISSING => {
                need(&body, 32, "Missing")?;
                Frame::Missing { id: get_id(&mut body) }
            }
            HAVE_REPLY => {
                need(&body, 4, "HaveReply")?;
                let count = body.get_u32();
                let bitmap = body.split_to(body.len());
                if bitmap.len() != (count as usize).div_ceil(8) {
                    return Err(malformed("HaveReply", "bitmap length does not match count"));
                }
                Frame::HaveReply { count, bitmap }
            }
            END => Frame::End,
            LAYERS => {
                need(&body, 4, "Layers")?;
                let n = body.get_u32() as usize;
                // Each entry takes at least 36 bytes: refuse counts the body cannot hold.
                if n > body.len() / 36 {
                    return Err(malformed("Layers", "count exceeds body"));
                }
                let mut layers = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = get_str(&mut body, "Layers")?;
                    let version = get_str(&mut body, "Layers")?;
                    need(&body, 32, "Layers")?;
                    let mut digest = [0u8; 32];
                    body.copy_to_slice(&mut digest);
                    layers.push(LayerRef { name, version, digest });
                }
                Frame::Layers { layers }
            }
            ASSIGNMENTS => {
                need(&body, 4, "Assignments")?;
                let n = body.get_u32() as usize;
                // Each entry takes at least 3 bytes: refuse counts the body cannot hold.
                if n > body.len() / 3 {
                    return Err(malformed("Assignments", "count exceeds body"));
                }
                let mut assignments = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = get_str(&mut body, "Assignments")?;
                    let version = get_str(&mut body, "Assignments")?;
                    let window = get_str(&mut body, "Assignments")?;
                    assignments.push(Assignment { name, version, window });
                }
                Frame::Assignments { assignments }
            }
            ERROR => {
                need(&body, 4, "Error")?;
                let code = ErrorCode::from_u16(body.get_u16());
                let n = body.get_u16() as usize;
                need(&body, n, "Error")?;
                let message = String::from_utf8_lossy(&body.split_to(n)).into_owned();
                Frame::Error { code, message }
            }
            REGISTER => Frame::Register {
                device: Box::new(crate::wake::msg::DeviceInfo::decode(&mut body)?),
            },
            REGISTERED => Frame::Registered,
            GET_DEVICES => Frame::GetDevices,
            DEVICES => Frame::Devices { devices: crate::wake::msg::decode_list(&mut body)? },
            WAKE => Frame::Wake { targets: crate::wake::msg::decode_list(&mut body)? },
            WAKE_REPORT => Frame::WakeReport { results: crate::wake::msg::decode_list(&mut body)? },
            PUT_CHUNKS => {
                need(&body, 4, "PutChunks")?;
                let count = body.get_u32();
                if count == 0 || count > crate::backup::MAX_PUT_CHUNKS {
                    return Err(malformed(
                        "PutChunks",
                        format!("count {count} outside 1..={}", crate::backup::MAX_PUT_CHUNKS),
                    ));
                }
                Frame::PutChunks { count }
            }
            CHUNKS_STORED => {
                need(&body, 8, "ChunksStored")?;
                Frame::ChunksStored { received: body.get_u32(), added: body.get_u32() }
            }
            PUT_SNAPSHOT => Frame::PutSnapshot(crate::backup::decode_put_snapshot(&mut body)?),
            SNAPSHOT_STORED => {
                Frame::SnapshotStored(crate::backup::decode_info(&mut body, "SnapshotStored")?)
            }
            LIST_SNAPSHOTS => Frame::ListSnapshots { device: get_str(&mut body, "ListSnapshots")? },
            SNAPSHOTS => Frame::Snapshots { snapshots: crate::backup::decode_infos(&mut body)? },
            GET_SNAPSHOT => {
                let device = get_str(&mut body, "GetSnapshot")?;
                let id = get_str(&mut body, "GetSnapshot")?;
                Frame::GetSnapshot { device, id: (!id.is_empty()).then_some(id) }
            }
            SNAPSHOT => {
                let (info, record) = crate::backup::decode_snapshot(&mut body)?;
                Frame::Snapshot { info, record, seal: get_seal(&mut body, "Snapshot")? }
            }
            GET_PLAN => Frame::GetPlan,
            RENEW => {
                let cert = get_cert(&mut body, "Renew")?;
                Frame::Renew { cert, csr: get_cert(&mut body, "Renew")? }
            }
            RENEWED => {
                if body.is_empty() || body.len() > MAX_CERT_BYTES {
                    return Err(malformed(
                        "Renewed",
                        format!("certificate of {} bytes", body.len()),
                    ));
                }
                Frame::Renewed { cert: std::mem::take(&mut body) }
            }
            GET_ENTITLEMENTS => {
                let site = get_str(&mut body, "GetEntitlements")?;
                if body.len() != 32 {
                    return Err(malformed(
                        "GetEntitlements",
                        format!("{} bytes, not a 32-byte digest", body.len()),
                    ));
                }
                let mut known = [0u8; 32];
                body.copy_to_slice(&mut known);
                Frame::GetEntitlements { site: (!site.is_empty()).then_some(site), known }
            }
            ENTITLEMENTS => {
                need(&body, 4, "Entitlements")?;
                let n = body.get_u32() as usize;
                if n > crate::entitlement::MAX_ENTITLEMENTS_BYTES {
                    return Err(malformed("Entitlements", format!("statement of {n} bytes")));
                }
                need(&body, n, "Entitlements")?;
                let statement = body.split_to(n);
                Frame::Entitlements { statement, seal: get_seal(&mut body, "Entitlements")? }
            }
            GET_REVOCATIONS => {
                need(&body, 8, "GetRevocations")?;
                Frame::GetRevocations { known: body.get_u64() }
            }
            REVOCATIONS => {
                if body.len() > MAX_REVOCATION_LIST_BYTES {
                    return Err(malformed(
                        "Revocations",
                        format!("list of {} bytes over limit", body.len()),
                    ));
                }
                Frame::Revocations { crl: std::mem::take(&mut body) }
            }
            PLAN => {
                let plan = crate::backup::decode_plan(&mut body)?;
                Frame::Plan { plan, seal: get_seal(&mut body, "Plan")? }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        if !body.is_empty() {
            return Err(malformed("frame", format!("{} trailing bytes", body.len())));
        }
        Ok(f)
    }
}

/// Splits complete frames off the front of a byte buffer, enforcing `max` before buffering.
///
/// Returns Ok(None) when more bytes are needed.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_len(len, max)?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(len).freeze();
    let ty = body.get_u8();
    Frame::decode(ty, body).map(Some)
}

/// Validates a frame length read from the wire.
pub fn check_len(len: usize, max: usize) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(())
}

/// Packs one bit per flag, least significant bit first.
pub fn pack_bits(flags: &[bool]) -> Bytes {
    let mut out = vec![0u8; flags.len().div_ceil(8)];
    for (i, f) in flags.iter().enumerate() {
        if *f {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    Bytes::from(out)
}

pub fn unpack_bits(bitmap: &[u8], count: usize) -> Vec<bool> {
    (0..count).map(|i| bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)).collect()
}

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    debug_assert!(s.len() <= MAX_NAME_BYTES);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

fn put_seal(out: &mut BytesMut, seal: &[u8]) {
    out.put_u16(seal.len() as u16);
    out.put_slice(seal);
}

fn put_cert(out: &mut BytesMut, der: &[u8]) {
    out.put_u16(der.len() as u16);
    out.put_slice(der);
}

/// A `bytes16` of 1..=`MAX_CERT_BYTES`.
fn get_cert(body: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    need(body, 2, what)?;
    let n = body.get_u16() as usize;
    if n == 0 || n > MAX_CERT_BYTES {
        return Err(malformed(what, format!("certificate or request of {n} bytes")));
    }
    need(body, n, what)?;
    Ok(body.split_to(n))
}

fn get_seal(body: &mut Bytes, what: &'static str) -> Result<Bytes, WireError> {
    need(body, 2, what)?;
    let n = body.get_u16() as usize;
    if n > crate::seal::MAX_SEAL_BYTES {
        return Err(malformed(what, format!("seal of {n} bytes over limit")));
    }
    need(body, n, what)?;
    Ok(body.split_to(n))
}

/// Longest error message or note sent; longer ones are cut (at a character boundary).
pub const MAX_NOTE_BYTES: usize = MAX_NAME_BYTES * 4;

fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_long_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub(crate) fn need(body: &Bytes, n: usize, what: &'static str) -> Result<(), WireError> {
    if body.len() < n {
        return Err(malformed(
            what,
            format!("truncated: need {n} more bytes, have {}", body.len()),
        ));
    }
    Ok(())
}

pub(crate) fn get_str(body: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    need(body, 1, what)?;
    let n = body.get_u8() as usize;
    need(body, n, what)?;
    String::from_utf8(body.split_to(n).to_vec()).map_err(|_| malformed(what, "string is not UTF-8"))
}

fn get_id(body: &mut Bytes) -> ChunkId {
    let mut id = [0u8; 32];
    body.copy_to_slice(&mut id);
    ChunkId(id)
}

fn get_ids(body: &mut Bytes, what: &'static str) -> Result<Vec<ChunkId>, WireError> {
    need(body, 4, what)?;
    let n = body.get_u32() as usize;
    if n > MAX_IDS_PER_REQUEST {
        return Err(malformed(what, format!("{n} ids exceed the limit of {MAX_IDS_PER_REQUEST}")));
    }
    if body.len() != n * 32 {
        return Err(malformed(
            what,
            format!("{n} ids need {} bytes, body has {}", n * 32, body.len()),
        ));
    }
    Ok((0..n).map(|_| get_id(body)).collect())
}

#[cfg(test)]
mod tests;
