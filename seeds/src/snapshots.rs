//! Device snapshots uploaded by endpoints (`oasis-endpoint upload`), kept per device.
//!
//! File chunks and the record's own chunks live in the seed's chunk store beside layer chunks
//! (a file that is also in a published layer is stored once). The filing of each snapshot is
//! kept in the store's sled database, tree `device_snapshots`, key `device\0id`, value JSON
//! [`Filed`]. A snapshot is filed only once its record and every chunk it names are stored and
//! verified, so a filed snapshot is always restorable.

use oasis_core::backup::{PutSnapshot, RecordRef, SnapshotInfo, SnapshotRecord, MAX_RECORD_BYTES};
use oasis_core::chunk::ChunkId;
use oasis_core::store::{ChunkStore, StoreError};
use oasis_core::wire::MAX_IDS_PER_REQUEST;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The upload is not acceptable (bad record, wrong device, inconsistent sizes).
    #[error("{0}")]
    Invalid(String),
    /// Chunks the snapshot needs are not stored (yet): upload them first.
    #[error("{0}")]
    Incomplete(String),
    #[error("{0}")]
    NotFound(String),
    #[error("device snapshots: {0}")]
    Store(#[from] StoreError),
    #[error("device snapshots index: {0}")]
    Index(#[from] sled::Error),
    #[error("device snapshots: entry {key} is unreadable")]
    Corrupt { key: String },
}

/// What the seed keeps per filed snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filed {
    pub info: SnapshotInfo,
    pub record: RecordRef,
    /// BLAKE3 of the record, to recognise a repeated upload of the same snapshot.
    pub record_digest: [u8; 32],
}

pub struct Snapshots<'a> {
    store: &'a ChunkStore,
    tree: sled::Tree,
}

fn key(device: &str, id: &str) -> Vec<u8> {
    [device.as_bytes(), b"\0", id.as_bytes()].concat()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<'a> Snapshots<'a> {
    pub fn open(store: &'a ChunkStore) -> Result<Snapshots<'a>, SnapshotError> {
        Ok(Snapshots { tree: store.db().open_tree("device_snapshots")?, store })
    }

    /// Reads and checks an uploaded record: its chunks must be stored and add up to its digest.
    pub fn read_record(&self, r: &RecordRef) -> Result<SnapshotRecord, SnapshotError> {
        if r.len > MAX_RECORD_BYTES {
            return Err(SnapshotError::Invalid(format!(
                "record of {} bytes exceeds the limit of {MAX_RECORD_BYTES}",
                r.len
            )));
        }
        let sum: u64 = r.chunks.iter().map(|c| c.len as u64).sum();
        if sum != r.len {
            return Err(SnapshotError::Invalid(format!(
                "record chunks add up to {sum} bytes, the record is {}",
                r.len
            )));
        }
        let mut bytes = Vec::with_capacity(r.len as usize);
        let mut missing = 0;
        for c in &r.chunks {
            match self.store.get_plain(&c.id)? {
                Some(b) if b.len() == c.len as usize => bytes.extend_from_slice(&b),
                Some(_) => {
                    return Err(SnapshotError::Invalid(format!(
                        "record chunk {} is not {} bytes long",
                        c.id, c.len
                    )))
                }
                None => missing += 1,
            }
        }
        if missing > 0 {
            return Err(SnapshotError::Incomplete(format!(
                "{missing} of the record's {} chunks are not stored: upload them first",
                r.chunks.len()
            )));
        }
        r.check(&bytes).map_err(SnapshotError::Invalid)?;
        SnapshotRecord::decode(&bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))
    }

    /// Files `req` as a snapshot of `device` (the caller checked the requester may). Filing the
    /// same record again returns the existing filing; a different record under a taken id (a
    /// device whose state was reset counts from 1 again) is filed as `ID+2`, `ID+3`...
    pub fn put(&self, device: &str, req: &PutSnapshot) -> Result<SnapshotInfo, SnapshotError> {
        if req.device != device {
            return Err(SnapshotError::Invalid(format!(
                "snapshot for device {} sent as {device}",
                req.device
            )));
        }
        let record = self.read_record(&req.record)?;
        if record.device != device || record.id != req.id {
            return Err(SnapshotError::Invalid(format!(
                "the record is snapshot {} of device {}, not {} of {device}",
                record.id, record.device, req.id
            )));
        }
        let chunks = record.unique_chunks();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        let mut missing = 0usize;
        for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
            missing += self.store.have(batch)?.iter().filter(|h| !**h).count();
        }
        if missing > 0 {
            return Err(SnapshotError::Incomplete(format!(
                "{missing} of the {} chunks snapshot {} names are not stored: upload them first",
                ids.len(),
                req.id
            )));
        }
        let (files, bytes) = record.totals();
        let mut id = req.id.clone();
        let mut n = 1;
        loop {
            match self.get_filed(device, &id)? {
                Some(f) if f.record_digest == req.record.digest => return Ok(f.info),
                Some(_) => {
                    n += 1;
                    id = format!("{}+{n}", req.id);
                }
                None => break,
            }
        }
        let info = SnapshotInfo {
            device: device.to_string(),
            id: id.clone(),
            created: record.created,
            uploaded: unix_now(),
            files,
            bytes,
            chunks: chunks.len() as u64,
            layers: record.layers_label(),
        };
        let filed = Filed {
            info: info.clone(),
            record: req.record.clone(),
            record_digest: req.record.digest,
        };
        let v = serde_json::to_vec(&filed).expect("filings serialize");
        self.store.sync()?;
        self.tree.insert(key(device, &id), v)?;
        self.tree.flush()?;
        tracing::info!(%device, snapshot = %id, files, bytes, "device snapshot filed");
        Ok(info)
    }

    fn get_filed(&self, device: &str, id: &str) -> Result<Option<Filed>, SnapshotError> {
        match self.tree.get(key(device, id))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| SnapshotError::Corrupt { key: format!("{device}@{id}") }),
            None => Ok(None),
        }
    }

    /// A device's snapshots, oldest first (by creation on the device, then upload).
    pub fn list(&self, device: &str) -> Result<Vec<Filed>, SnapshotError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([device.as_bytes(), b"\0"].concat()) {
            let (k, v) = kv?;
            out.push(serde_json::from_slice::<Filed>(&v).map_err(|_| SnapshotError::Corrupt {
                key: String::from_utf8_lossy(&k).replace('\0', "@"),
            })?);
        }
        out.sort_by(|a, b| {
            (a.info.created, a.info.uploaded, &a.info.id).cmp(&(
                b.info.created,
                b.info.uploaded,
                &b.info.id,
            ))
        });
        Ok(out)
    }

    /// One snapshot (`id` None = the latest); NotFound names what is missing.
    pub fn get(&self, device: &str, id: Option<&str>) -> Result<Filed, SnapshotError> {
        let found = match id {
            Some(id) => self.get_filed(device, id)?,
            None => self.list(device)?.pop(),
        };
        found.ok_or_else(|| {
            SnapshotError::NotFound(match id {
                Some(id) => format!("device {device} has no snapshot {id} at this seed"),
                None => format!("device {device} has no snapshots at this seed"),
            })
        })
    }

    /// Every device with snapshots: (device, count, latest).
    pub fn devices(&self) -> Result<Vec<(String, usize, SnapshotInfo)>, SnapshotError> {
        let mut names: Vec<String> = Vec::new();
        for kv in self.tree.iter() {
            let (k, _) = kv?;
            let d =
                String::from_utf8_lossy(k.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
            if names.last() != Some(&d) {
                names.push(d);
            }
        }
        let mut out = Vec::new();
        for d in names {
            let list = self.list(&d)?;
            if let Some(last) = list.last() {
                out.push((d, list.len(), last.info.clone()));
            }
        }
        Ok(out)
    }

    /// Forgets a filing (its chunks stay in the store).
    pub fn remove(&self, device: &str, id: &str) -> Result<SnapshotInfo, SnapshotError> {
        let f = self.get(device, Some(id))?;
        self.tree.remove(key(device, id))?;
        self.tree.flush()?;
        Ok(f.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_core::backup::{RecordEntry, RECORD_FORMAT};
    use oasis_core::compress::StoredChunk;
    use oasis_core::manifest::{ChunkRef, Entry, Node};

    fn record(device: &str, id: &str, data: &[u8]) -> SnapshotRecord {
        SnapshotRecord {
            format: RECORD_FORMAT,
            device: device.into(),
            id: id.into(),
            created: 5,
            chunking: Default::default(),
            layers: vec![],
            entries: vec![RecordEntry {
                entry: Entry::new(
                    "doc",
                    0o644,
                    Node::File {
                        size: data.len() as u64,
                        chunks: vec![ChunkRef { id: ChunkId::of(data), len: data.len() as u32 }],
                    },
                ),
                layer: None,
            }],
        }
    }

    fn upload_record(store: &ChunkStore, r: &SnapshotRecord) -> PutSnapshot {
        let (rref, pieces) = RecordRef::cut(&r.encode());
        for (_, b) in pieces {
            store.put(&StoredChunk::encode(&b)).unwrap();
        }
        PutSnapshot { device: r.device.clone(), id: r.id.clone(), record: rref }
    }

    #[test]
    fn filing_needs_every_chunk_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let snaps = Snapshots::open(&store).unwrap();
        let r = record("laptop", "1", b"user data");
        let req = upload_record(&store, &r);
        assert!(matches!(snaps.put("laptop", &req), Err(SnapshotError::Incomplete(_))));
        assert!(snaps.list("laptop").unwrap().is_empty(), "nothing filed on refusal");
        store.put(&StoredChunk::encode(b"user data")).unwrap();
        let info = snaps.put("laptop", &req).unwrap();
        assert_eq!((info.files, info.bytes, info.id.as_str()), (1, 9, "1"));
        assert_eq!(snaps.put("laptop", &req).unwrap(), info, "same record: same filing");
        // A reset device reusing id 1 for other content gets 1+2.
        let r2 = record("laptop", "1", b"user data 2");
        store.put(&StoredChunk::encode(b"user data 2")).unwrap();
        let req2 = upload_record(&store, &r2);
        assert_eq!(snaps.put("laptop", &req2).unwrap().id, "1+2");
        assert_eq!(snaps.list("laptop").unwrap().len(), 2);
        assert_eq!(snaps.get("laptop", None).unwrap().record.digest, req2.record.digest);
        assert!(matches!(snaps.get("desk", None), Err(SnapshotError::NotFound(_))));
        // A record sent under another device's name is refused.
        assert!(matches!(snaps.put("desk", &req), Err(SnapshotError::Invalid(_))));
        assert_eq!(snaps.devices().unwrap().len(), 1);
    }
}
