//! Device snapshots centralized at the seed: the record an endpoint uploads and the bodies of
//! the wire messages that carry it (`PutChunks`, `PutSnapshot`, `ListSnapshots`, `GetSnapshot`,
//! `GetPlan` and their answers, frame types 0x20-0x27 / 0xA0-0xA7). Pure: no I/O.
//!
//! A snapshot record lists every entry of a device (path, mode, file chunks) and says which
//! entries belong to an IT layer and which to the user, so a restore can rebuild the whole
//! device, only what the user owns, or only the user's profile. The record itself travels as
//! chunks (cut like any file): the record of an unchanged device dedups against the previous
//! one, and no frame has to hold a record of a million entries.

use crate::chunk::{ChunkId, ChunkParams};
use crate::manifest::{ChunkRef, Entry, LayerKind, LayerManifest, Node, MANIFEST_FORMAT};
use crate::wire::{get_str, malformed, need, put_str, WireError, MAX_NAME_BYTES};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Version of the record encoding. Bump on any change to the record types.
pub const RECORD_FORMAT: u16 = 1;
/// Largest record a seed accepts (about four million entries).
pub const MAX_RECORD_BYTES: u64 = 1 << 30;
/// Most chunks a record may be cut into (the list travels in one request frame).
pub const MAX_RECORD_CHUNKS: usize = 16_384;
/// Most chunk frames one `PutChunks` stream may carry.
pub const MAX_PUT_CHUNKS: u32 = 4_096;

/// An IT layer applied on the device when the snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLayer {
    pub name: String,
    pub version: String,
    pub kind: LayerKind,
    /// BLAKE3 of the layer's manifest body.
    pub digest: [u8; 32],
}

impl RecordLayer {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One entry of the device, and who owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub entry: Entry,
    /// Index into [`SnapshotRecord::layers`] of the IT layer the entry belongs to; `None` for
    /// what the user owns (data, profile, the user's own applications).
    pub layer: Option<u16>,
}

/// A whole device at one moment, as uploaded to the seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub format: u16,
    /// The device's node name (its certificate's CN).
    pub device: String,
    /// The snapshot's id on the device.
    pub id: String,
    /// Seconds since the Unix epoch when the device took the snapshot.
    pub created: u64,
    /// How the device cut its files (chunks are at most `chunking.max` bytes).
    pub chunking: ChunkParams,
    pub layers: Vec<RecordLayer>,
    /// Sorted by path, parents before children (as in a layer manifest).
    pub entries: Vec<RecordEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("snapshot record does not decode: {0}")]
    Decode(String),
    #[error(
        "snapshot record {id}: format {found} is not supported (this build reads {RECORD_FORMAT})"
    )]
    Format { id: String, found: u16 },
    #[error("snapshot record {id}: {problem}")]
    Invalid { id: String, problem: String },
}

impl SnapshotRecord {
    /// Canonical encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("record types always serialize")
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, RecordError> {
        let r: SnapshotRecord =
            postcard::from_bytes(bytes).map_err(|e| RecordError::Decode(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// Checks what a receiver relies on: a supported format, safe sorted paths (the rules of
    /// layer manifests), sizes that add up, owners that exist.
    pub fn validate(&self) -> Result<(), RecordError> {
        let invalid = |problem: String| RecordError::Invalid { id: self.id.clone(), problem };
        if self.format != RECORD_FORMAT {
            return Err(RecordError::Format { id: self.id.clone(), found: self.format });
        }
        crate::manifest::validate_label("snapshot id", &self.id).map_err(invalid)?;
        crate::names::validate_node_name("device", &self.device)
            .map_err(|e| invalid(e.to_string()))?;
        for l in &self.layers {
            crate::manifest::validate_label("layer name", &l.name).map_err(invalid)?;
            crate::manifest::validate_label("layer version", &l.version).map_err(invalid)?;
        }
        if let Some(e) =
            self.entries.iter().find(|e| e.layer.is_some_and(|i| i as usize >= self.layers.len()))
        {
            return Err(invalid(format!(
                "entry {:?} names a layer that is not listed",
                e.entry.path
            )));
        }
        self.to_manifest(|_| true).validate().map_err(|e| invalid(e.to_string()))
    }

    /// The entries `keep` accepts, as a layer manifest a tree writer can write. Parent
    /// directories of kept entries are kept too, so the result is always a valid tree.
    pub fn to_manifest(&self, keep: impl Fn(&RecordEntry) -> bool) -> LayerManifest {
        let mut wanted = vec![false; self.entries.len()];
        let mut needed_dirs = std::collections::HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            if keep(e) {
                wanted[i] = true;
                let mut p = e.entry.path.as_str();
                while let Some((parent, _)) = p.rsplit_once('/') {
                    if !needed_dirs.insert(parent.to_string()) {
                        break;
                    }
                    p = parent;
                }
            }
        }
        let entries = self
            .entries
            .iter()
            .zip(wanted)
            .filter(|(e, w)| *w || needed_dirs.contains(&e.entry.path))
            .map(|(e, _)| e.entry.clone())
            .collect::<Vec<_>>();
        let mut entries = entries;
        // A kept hard link whose file was left out becomes a file of its own.
        crate::manifest::detach_hardlinks(&mut entries, |p| {
            self.entries
                .binary_search_by(|e| e.entry.path.as_str().cmp(p))
                .ok()
                .map(|i| self.entries[i].entry.clone())
        });
        LayerManifest {
            format: MANIFEST_FORMAT,
            name: self.device.clone(),
            version: self.id.clone(),
            kind: LayerKind::User,
            chunking: self.chunking,
            created: self.created,
            entries,
        }
    }

    /// Distinct file chunks, in first-use order.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter_map(|e| match &e.entry.node {
                Node::File { chunks, .. } => Some(chunks.iter()),
                _ => None,
            })
            .flatten()
            .filter(|c| seen.insert(c.id))
            .copied()
            .collect()
    }

    /// (files, plain bytes of all files).
    pub fn totals(&self) -> (u64, u64) {
        self.entries.iter().fold((0, 0), |(n, b), e| match &e.entry.node {
            Node::File { size, .. } => (n + 1, b + size),
            _ => (n, b),
        })
    }

    /// "base@2 office@1".
    pub fn layers_label(&self) -> String {
        self.layers.iter().map(RecordLayer::label).collect::<Vec<_>>().join(" ")
    }
}

/// Where a record's bytes are: its length, BLAKE3 digest and chunks, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub len: u64,
    pub digest: [u8; 32],
    pub chunks: Vec<ChunkRef>,
}

impl RecordRef {
    /// Cuts encoded record bytes into chunks; returns the reference and the chunks' plain bytes.
    pub fn cut(bytes: &[u8]) -> (RecordRef, Vec<(ChunkRef, Bytes)>) {
        let params = ChunkParams::default();
        let pieces: Vec<(ChunkRef, Bytes)> = crate::chunk::cut(bytes, &params)
            .into_iter()
            .map(|s| {
                let (o, l) = (s.offset as usize, s.len as usize);
                let data = Bytes::copy_from_slice(&bytes[o..o + l]);
                (ChunkRef { id: ChunkId::of(&data), len: s.len }, data)
            })
            .collect();
        let r = RecordRef {
            len: bytes.len() as u64,
            digest: *blake3::hash(bytes).as_bytes(),
            chunks: pieces.iter().map(|(c, _)| *c).collect(),
        };
        (r, pieces)
    }

    /// Checks reassembled bytes against the reference.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 != self.len {
            return Err(format!("record is {} bytes, expected {}", bytes.len(), self.len));
        }
        if *blake3::hash(bytes).as_bytes() != self.digest {
            return Err("record bytes do not match the record digest".into());
        }
        Ok(())
    }

    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.len);
        out.put_slice(&self.digest);
        out.put_u32(self.chunks.len() as u32);
        for c in &self.chunks {
            out.put_slice(c.id.as_bytes());
            out.put_u32(c.len);
        }
    }

    fn decode(body: &mut Bytes, what: &'static str) -> Result<RecordRef, WireError> {
        need(body, 44, what)?;
        let len = body.get_u64();
        let mut digest = [0u8; 32];
        body.copy_to_slice(&mut digest);
        let n = body.get_u32() as usize;
        if n > MAX_RECORD_CHUNKS {
            return Err(malformed(what, format!("{n} record chunks exceed {MAX_RECORD_CHUNKS}")));
        }
        need(body, n * 36, what)?;
        let chunks = (0..n)
            .map(|_| {
                let mut id = [0u8; 32];
                body.copy_to_slice(&mut id);
                ChunkRef { id: ChunkId(id), len: body.get_u32() }
            })
            .collect();
        if len > MAX_RECORD_BYTES {
            return Err(malformed(
                what,
                format!("record of {len} bytes exceeds {MAX_RECORD_BYTES}"),
            ));
        }
        Ok(RecordRef { len, digest, chunks })
    }
}

/// `PutSnapshot`: file the record (whose chunks the seed already holds) as `device`'s snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutSnapshot {
    pub device: String,
    pub id: String,
    pub record: RecordRef,
}

/// One snapshot as the seed lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub device: String,
    pub id: String,
    /// When the device took it (Unix seconds).
    pub created: u64,
    /// When the seed filed it (Unix seconds).
    pub uploaded: u64,
    pub files: u64,
    /// Plain bytes of all files.
    pub bytes: u64,
    /// Distinct file chunks.
    pub chunks: u64,
    /// IT layers applied at the time, "base@2 office@1".
    pub layers: String,
}

impl SnapshotInfo {
    fn encode(&self, out: &mut BytesMut) {
        put_str(out, &self.device);
        put_str(out, &self.id);
        for v in [self.created, self.uploaded, self.files, self.bytes, self.chunks] {
            out.put_u64(v);
        }
        put_long(out, &self.layers);
    }

    fn decode(body: &mut Bytes, what: &'static str) -> Result<SnapshotInfo, WireError> {
        let device = get_str(body, what)?;
        let id = get_str(body, what)?;
        need(body, 40, what)?;
        let (created, uploaded, files, bytes, chunks) =
            (body.get_u64(), body.get_u64(), body.get_u64(), body.get_u64(), body.get_u64());
        let layers = get_long(body, what)?;
        Ok(SnapshotInfo { device, id, created, uploaded, files, bytes, chunks, layers })
    }
}

/// The layers an administrator assigned to a device (`oasis-seed provision`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// `(name, version)` of the base layer; `None` while the device is pending.
    pub base: Option<(String, String)>,
    pub apps: Vec<(String, String)>,
}

fn put_long(out: &mut BytesMut, s: &str) {
    // Long strings (layer lists) are capped; a label never needs more.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn get_long(body: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    need(body, 2, what)?;
    let n = body.get_u16() as usize;
    need(body, n, what)?;
    String::from_utf8(body.split_to(n).to_vec()).map_err(|_| malformed(what, "string is not UTF-8"))
}

fn check_name(s: &str, what: &'static str) -> Result<(), WireError> {
    if s.len() > MAX_NAME_BYTES {
        return Err(malformed(what, "name too long"));
    }
    Ok(())
}

pub(crate) fn encode_put_snapshot(p: &PutSnapshot, out: &mut BytesMut) {
    put_str(out, &p.device);
    put_str(out, &p.id);
    p.record.encode(out);
}

pub(crate) fn decode_put_snapshot(body: &mut Bytes) -> Result<PutSnapshot, WireError> {
    let device = get_str(body, "PutSnapshot")?;
    let id = get_str(body, "PutSnapshot")?;
    if device.is_empty() || id.is_empty() {
        return Err(malformed("PutSnapshot", "empty device or snapshot id"));
    }
    let record = RecordRef::decode(body, "PutSnapshot")?;
    Ok(PutSnapshot { device, id, record })
}

pub(crate) fn encode_info(i: &SnapshotInfo, out: &mut BytesMut) {
    i.encode(out)
}

pub(crate) fn decode_info(body: &mut Bytes, what: &'static str) -> Result<SnapshotInfo, WireError> {
    SnapshotInfo::decode(body, what)
}

pub(crate) fn encode_infos(list: &[SnapshotInfo], out: &mut BytesMut) {
    out.put_u32(list.len() as u32);
    for i in list {
        i.encode(out);
    }
}

pub(crate) fn decode_infos(body: &mut Bytes) -> Result<Vec<SnapshotInfo>, WireError> {
    need(body, 4, "Snapshots")?;
    let n = body.get_u32() as usize;
    // Each entry takes at least 44 bytes: refuse counts the body cannot hold.
    if n > body.len() / 44 {
        return Err(malformed("Snapshots", "count exceeds body"));
    }
    (0..n).map(|_| SnapshotInfo::decode(body, "Snapshots")).collect()
}

pub(crate) fn encode_snapshot(info: &SnapshotInfo, record: &RecordRef, out: &mut BytesMut) {
    info.encode(out);
    record.encode(out);
}

pub(crate) fn decode_snapshot(body: &mut Bytes) -> Result<(SnapshotInfo, RecordRef), WireError> {
    let info = SnapshotInfo::decode(body, "Snapshot")?;
    let record = RecordRef::decode(body, "Snapshot")?;
    Ok((info, record))
}

pub(crate) fn encode_plan(p: &DevicePlan, out: &mut BytesMut) {
    match &p.base {
        Some((n, v)) => {
            out.put_u8(1);
            put_str(out, n);
            put_str(out, v);
        }
        None => out.put_u8(0),
    }
    out.put_u32(p.apps.len() as u32);
    for (n, v) in &p.apps {
        put_str(out, n);
        put_str(out, v);
    }
}

pub(crate) fn decode_plan(body: &mut Bytes) -> Result<DevicePlan, WireError> {
    need(body, 1, "Plan")?;
    let base = match body.get_u8() {
        0 => None,
        1 => Some((get_str(body, "Plan")?, get_str(body, "Plan")?)),
        b => return Err(malformed("Plan", format!("base flag {b}"))),
    };
    need(body, 4, "Plan")?;
    let n = body.get_u32() as usize;
    if n > body.len() / 2 {
        return Err(malformed("Plan", "count exceeds body"));
    }
    let apps = (0..n)
        .map(|_| Ok((get_str(body, "Plan")?, get_str(body, "Plan")?)))
        .collect::<Result<_, WireError>>()?;
    Ok(DevicePlan { base, apps })
}

/// Validates the strings a request names before it is encoded (a client-side check).
pub fn check_request_names(names: &[&str]) -> Result<(), WireError> {
    for n in names {
        check_name(n, "request")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SnapshotRecord {
        let data = b"hello".to_vec();
        let c = ChunkRef { id: ChunkId::of(&data), len: 5 };
        let e = |path: &str, node: Node, layer| RecordEntry {
            entry: Entry::new(path, 0o755, node),
            layer,
        };
        SnapshotRecord {
            format: RECORD_FORMAT,
            device: "laptop-1".into(),
            id: "s1".into(),
            created: 1,
            chunking: ChunkParams::default(),
            layers: vec![RecordLayer {
                name: "base".into(),
                version: "1".into(),
                kind: LayerKind::Base,
                digest: [1; 32],
            }],
            entries: vec![
                e("etc", Node::Dir, Some(0)),
                e("etc/os", Node::File { size: 5, chunks: vec![c] }, Some(0)),
                e("home", Node::Dir, None),
                e("home/u", Node::Dir, None),
                e("home/u/doc", Node::File { size: 5, chunks: vec![c] }, None),
            ],
        }
    }

    #[test]
    fn record_roundtrips_and_filters_keep_parents() {
        let r = record();
        let bytes = r.encode();
        assert_eq!(SnapshotRecord::decode(&bytes).unwrap(), r);
        let m = r.to_manifest(|e| e.entry.path == "home/u/doc");
        let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["home", "home/u", "home/u/doc"]);
        m.validate().unwrap();
        assert_eq!(r.unique_chunks().len(), 1);
        assert_eq!(r.totals(), (2, 10));
    }

    #[test]
    fn bad_records_are_refused() {
        let mut r = record();
        r.entries[1].layer = Some(7);
        assert!(matches!(r.validate(), Err(RecordError::Invalid { .. })));
        let mut r = record();
        r.entries.swap(0, 1);
        assert!(r.validate().is_err());
        let mut r = record();
        r.entries[1].entry.path = "../x".into();
        assert!(r.validate().is_err());
        assert!(SnapshotRecord::decode(b"\x01\x02").is_err());
    }

    #[test]
    fn record_ref_cut_and_check() {
        let bytes: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (r, pieces) = RecordRef::cut(&bytes);
        assert!(pieces.len() > 1);
        let joined: Vec<u8> = pieces.iter().flat_map(|(_, b)| b.to_vec()).collect();
        r.check(&joined).unwrap();
        assert!(r.check(&joined[1..]).is_err());
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;
    use crate::wire::{split_frame, Frame, MAX_FRAME_BYTES};

    fn roundtrip(f: Frame) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        assert_eq!(split_frame(&mut buf, MAX_FRAME_BYTES).unwrap().unwrap(), f);
        assert!(buf.is_empty());
    }

    #[test]
    fn snapshot_frames_roundtrip() {
        let info = SnapshotInfo {
            device: "laptop-1".into(),
            id: "3".into(),
            created: 10,
            uploaded: 11,
            files: 2,
            bytes: 3,
            chunks: 4,
            layers: "base@1 office@2".into(),
        };
        let record = RecordRef {
            len: 99,
            digest: [7; 32],
            chunks: vec![ChunkRef { id: ChunkId::of(b"r"), len: 99 }],
        };
        roundtrip(Frame::PutChunks { count: 3 });
        roundtrip(Frame::ChunksStored { received: 3, added: 1 });
        roundtrip(Frame::PutSnapshot(PutSnapshot {
            device: "laptop-1".into(),
            id: "3".into(),
            record: record.clone(),
        }));
        roundtrip(Frame::SnapshotStored(info.clone()));
        roundtrip(Frame::ListSnapshots { device: "laptop-1".into() });
        roundtrip(Frame::Snapshots { snapshots: vec![info.clone(), info.clone()] });
        roundtrip(Frame::GetSnapshot { device: "laptop-1".into(), id: None });
        roundtrip(Frame::GetSnapshot { device: "laptop-1".into(), id: Some("3".into()) });
        roundtrip(Frame::Snapshot { info, record, seal: Bytes::from_static(b"OSL1seal") });
        roundtrip(Frame::GetPlan);
        roundtrip(Frame::Plan { plan: DevicePlan::default(), seal: Bytes::new() });
        roundtrip(Frame::Plan {
            plan: DevicePlan {
                base: Some(("base".into(), "2".into())),
                apps: vec![("office".into(), "1".into())],
            },
            seal: Bytes::from_static(b"OSL1seal"),
        });
    }

    #[test]
    fn bad_counts_are_malformed() {
        use crate::wire::frame_type;
        for body in [&[0u8, 0, 0, 0][..], &[0xff, 0xff, 0xff, 0xff][..], &[0, 0][..]] {
            assert!(Frame::decode(frame_type::PUT_CHUNKS, Bytes::copy_from_slice(body)).is_err());
        }
        let mut b = BytesMut::new();
        b.put_u32(1_000_000);
        assert!(Frame::decode(frame_type::SNAPSHOTS, b.freeze()).is_err());
    }
}
