//! Device snapshots uploaded by endpoints (`oasis-endpoint upload`), kept per device.
//!
//! File chunks and the record's own chunks live in the seed's chunk store beside layer chunks
//! (a file that is also in a published layer is stored once). The filing of each snapshot is
//! kept in the store's sled database, tree `device_snapshots`, key `device\0id`, value JSON
//! [`Filed`]. A snapshot is filed only once its record and every chunk it names are stored and
//! verified, so a filed snapshot is always restorable.

use oasis_core::backup::{PutSnapshot, RecordRef, SnapshotInfo, SnapshotRecord, MAX_RECORD_BYTES};
use oasis_core::chunk::{ChunkId, ChunkParams};
use oasis_core::store::{ChunkStore, StoreError};
use oasis_core::wire::MAX_IDS_PER_REQUEST;
use serde::{Deserialize, Serialize};

/// Default bytes of snapshot records the seed assembles in memory at once, over every upload
/// (`oasis-seed serve --max-record-assembly-bytes`). A record is checked and decoded whole, so
/// each one in assembly holds its size in memory; this caps what uploads can make the seed hold
/// (a record may be up to [`MAX_RECORD_BYTES`], so one of the largest at a time). An upload over
/// the budget is answered `Unavailable` and retried by the endpoint; a record larger than the
/// whole budget is refused for good.
pub const RECORD_ASSEMBLY_BYTES: u64 = MAX_RECORD_BYTES;
/// The smallest budget `--max-record-assembly-bytes` takes: a few thousand entries' record.
pub const MIN_RECORD_ASSEMBLY_BYTES: u64 = 1 << 20;
/// The largest budget it takes.
pub const MAX_RECORD_ASSEMBLY_BYTES: u64 = 64 << 30;

/// Record bytes in assembly, against a limit, and the devices assembling one: each device
/// assembles one record at a time, so one endpoint cannot take the budget with parallel
/// uploads.
pub struct RecordBudget {
    limit: u64,
    held: std::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    bytes: u64,
    devices: std::collections::HashSet<String>,
    /// Devices whose last record turned out invalid, and until when their next one waits.
    penalized: std::collections::HashMap<String, std::time::Instant>,
}

/// How long a device whose record did not check waits before the seed assembles another of
/// its records: reading and hashing a record up to the budget costs the seed a second of CPU
/// per GiB, and a device that sends bad ones back to back would keep a core busy.
pub const INVALID_RECORD_BACKOFF: std::time::Duration = std::time::Duration::from_secs(10);

/// The seed process's budget: [`configure_record_budget`] sets it before serving.
static ASSEMBLY: std::sync::OnceLock<RecordBudget> = std::sync::OnceLock::new();

fn seed_budget() -> &'static RecordBudget {
    ASSEMBLY.get_or_init(|| RecordBudget::new(RECORD_ASSEMBLY_BYTES))
}

/// Sets the seed process's record assembly budget (once, before any upload is served).
pub fn configure_record_budget(limit: u64) -> Result<(), String> {
    if !(MIN_RECORD_ASSEMBLY_BYTES..=MAX_RECORD_ASSEMBLY_BYTES).contains(&limit) {
        return Err(format!(
            "max_record_assembly_bytes must be between 1 MiB and 64 GiB (is {limit} bytes)"
        ));
    }
    ASSEMBLY
        .set(RecordBudget::new(limit))
        .map_err(|_| "the record assembly budget is set already".to_string())
}

/// Why a record cannot be assembled now.
enum Refusal {
    /// Over what is free: later.
    Full,
    /// The device assembles another record now.
    DeviceBusy,
    /// The device's last record was invalid: it waits this much longer.
    Penalized(std::time::Duration),
}

impl RecordBudget {
    pub fn new(limit: u64) -> RecordBudget {
        RecordBudget { limit, held: std::sync::Mutex::new(Held::default()) }
    }

    fn reserve(&self, device: &str, bytes: u64) -> Result<Assembly<'_>, Refusal> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.devices.contains(device) {
            return Err(Refusal::DeviceBusy);
        }
        let now = std::time::Instant::now();
        held.penalized.retain(|_, until| *until > now);
        if let Some(until) = held.penalized.get(device) {
            return Err(Refusal::Penalized(*until - now));
        }
        if held.bytes + bytes > self.limit {
            return Err(Refusal::Full);
        }
        held.bytes += bytes;
        held.devices.insert(device.to_string());
        Ok(Assembly { budget: self, bytes, device: device.to_string() })
    }

    /// `device` sent a record that did not check: its next one waits [`INVALID_RECORD_BACKOFF`].
    fn penalize(&self, device: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let until = std::time::Instant::now() + INVALID_RECORD_BACKOFF;
        held.penalized.insert(device.to_string(), until);
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        self.held.lock().unwrap().bytes
    }
}

/// A share of a [`RecordBudget`], given back when dropped.
struct Assembly<'a> {
    budget: &'a RecordBudget,
    bytes: u64,
    device: String,
}

impl Drop for Assembly<'_> {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
        held.bytes = held.bytes.saturating_sub(self.bytes);
        held.devices.remove(&self.device);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Too much is being assembled at once: try again shortly.
    #[error("{0}")]
    Busy(String),
    /// The upload is not acceptable (bad record, wrong device, inconsistent sizes).
    #[error("{0}")]
    Invalid(String),
    /// The record is larger than this seed ever assembles.
    #[error("{0}")]
    TooLarge(String),
    /// Chunks the snapshot needs are not stored (yet): upload them first.
    #[error("{0}")]
    Incomplete(String),
    #[error("{0}")]
    NotFound(String),
    #[error("device snapshots: {0}")]
    Store(#[from] StoreError),
    #[error("device snapshots index: {0}")]
    Index(#[from] sled::Error),
    #[error("device snapshots: {0}")]
    Entitlements(#[from] crate::entitlements::EntitlementError),
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
    readers: crate::readers::Readers,
    budget: &'a RecordBudget,
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
        Snapshots::with_budget(store, seed_budget())
    }

    /// [`Snapshots::open`] assembling records under `budget` rather than the seed's.
    pub fn with_budget(
        store: &'a ChunkStore,
        budget: &'a RecordBudget,
    ) -> Result<Snapshots<'a>, SnapshotError> {
        let readers = crate::readers::Readers::open(store)?;
        Ok(Snapshots { tree: store.db().open_tree("device_snapshots")?, readers, store, budget })
    }

    /// How many of `ids` the store lacks, or `device` may not read (another device's chunk,
    /// named by its id without its bytes ever sent): to the device, both are chunks to upload.
    fn missing(
        &self,
        device: &str,
        ids: impl Iterator<Item = ChunkId>,
    ) -> Result<usize, SnapshotError> {
        let ids: Vec<ChunkId> = ids.collect();
        let names = crate::entitlements::layers_of_device(self.store, device)?;
        let mut missing = 0;
        for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
            for (id, stored) in batch.iter().zip(self.store.have(batch)?) {
                let readable =
                    self.readers.in_layers(id, &names)? || self.readers.uploaded_by(device, id)?;
                if !stored || !readable {
                    missing += 1;
                }
            }
        }
        Ok(missing)
    }

    /// Every filing, of every device.
    pub fn all(&self) -> Result<Vec<(String, Filed)>, SnapshotError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let corrupt =
                || SnapshotError::Corrupt { key: String::from_utf8_lossy(&k).replace('\0', "@") };
            let device = k.split(|b| *b == 0).next().ok_or_else(corrupt)?;
            let device = String::from_utf8(device.to_vec()).map_err(|_| corrupt())?;
            let filed: Filed = serde_json::from_slice(&v).map_err(|_| corrupt())?;
            out.push((device, filed));
        }
        Ok(out)
    }

    /// The record of a filed snapshot.
    pub fn read_filed(&self, f: &Filed) -> Result<SnapshotRecord, SnapshotError> {
        self.assemble(&f.record)
    }

    /// Reads and checks an uploaded record: its chunks must be stored and add up to its digest.
    pub fn read_record(
        &self,
        device: &str,
        r: &RecordRef,
    ) -> Result<SnapshotRecord, SnapshotError> {
        if r.len > MAX_RECORD_BYTES {
            return Err(SnapshotError::Invalid(format!(
                "record of {} bytes exceeds the limit of {MAX_RECORD_BYTES}",
                r.len
            )));
        }
        // Records are cut like files (`RecordRef::cut`): no chunk of one is longer than that.
        let max = ChunkParams::default().max;
        if let Some(c) = r.chunks.iter().find(|c| c.len == 0 || c.len > max) {
            return Err(SnapshotError::Invalid(format!(
                "record chunk {} of {} bytes: record chunks are 1 to {max} bytes",
                c.id, c.len
            )));
        }
        let sum: u64 = r.chunks.iter().map(|c| c.len as u64).sum();
        if sum != r.len {
            return Err(SnapshotError::Invalid(format!(
                "record chunks add up to {sum} bytes, the record is {}",
                r.len
            )));
        }
        // Nothing is read, let alone allocated, before every chunk is known to be here.
        let missing = self.missing(device, r.chunks.iter().map(|c| c.id))?;
        if missing > 0 {
            return Err(SnapshotError::Incomplete(format!(
                "{missing} of the record's {} chunks are not stored: upload them first",
                r.chunks.len()
            )));
        }
        if r.len > self.budget.limit {
            return Err(SnapshotError::TooLarge(format!(
                "the snapshot record of {} bytes is larger than this seed assembles ({} bytes, \
                 oasis-seed serve --max-record-assembly-bytes)",
                r.len, self.budget.limit
            )));
        }
        let _budget = self.budget.reserve(device, r.len).map_err(|why| {
            SnapshotError::Busy(match why {
                Refusal::Full => format!(
                    "the seed is assembling as many snapshot records as it holds at once ({} \
                     bytes); this record of {} bytes waits its turn (try again)",
                    self.budget.limit, r.len
                ),
                Refusal::DeviceBusy => format!(
                    "the seed is assembling another snapshot record of {device}; one at a time \
                     (try again)"
                ),
                Refusal::Penalized(left) => format!(
                    "the last snapshot record of {device} did not check; the seed takes the next \
                     one in {} s",
                    left.as_secs() + 1
                ),
            })
        })?;
        let checked = self.assemble(r);
        if matches!(checked, Err(SnapshotError::Invalid(_))) {
            self.budget.penalize(device);
        }
        checked
    }

    /// Reads a record whose chunks are all stored: first only hashing them, so that a record
    /// whose digest does not match costs no memory, then into one buffer to decode.
    fn assemble(&self, r: &RecordRef) -> Result<SnapshotRecord, SnapshotError> {
        let mut hasher = blake3::Hasher::new();
        for c in &r.chunks {
            hasher.update(&self.record_chunk(c)?);
        }
        if *hasher.finalize().as_bytes() != r.digest {
            return Err(SnapshotError::Invalid(
                "record bytes do not match the record digest".into(),
            ));
        }
        let mut bytes = Vec::with_capacity(r.len as usize);
        for c in &r.chunks {
            bytes.extend_from_slice(&self.record_chunk(c)?);
        }
        r.check(&bytes).map_err(SnapshotError::Invalid)?;
        SnapshotRecord::decode(&bytes).map_err(|e| SnapshotError::Invalid(e.to_string()))
    }

    /// One chunk of a record, of the length the record says.
    fn record_chunk(
        &self,
        c: &oasis_core::manifest::ChunkRef,
    ) -> Result<bytes::Bytes, SnapshotError> {
        match self.store.get_plain(&c.id)? {
            Some(b) if b.len() == c.len as usize => Ok(b),
            Some(_) => Err(SnapshotError::Invalid(format!(
                "record chunk {} is not {} bytes long",
                c.id, c.len
            ))),
            // Dropped as corrupt since the check above.
            None => Err(SnapshotError::Incomplete(format!(
                "record chunk {} is no longer stored: upload it again",
                c.id
            ))),
        }
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
        let record = self.read_record(device, &req.record)?;
        if record.device != device || record.id != req.id {
            return Err(SnapshotError::Invalid(format!(
                "the record is snapshot {} of device {}, not {} of {device}",
                record.id, record.device, req.id
            )));
        }
        let chunks = record.unique_chunks();
        let missing = self.missing(device, chunks.iter().map(|c| c.id))?;
        if missing > 0 {
            return Err(SnapshotError::Incomplete(format!(
                "{missing} of the {} chunks snapshot {} names are not stored: upload them first",
                chunks.len(),
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

    /// Stores `bytes` as `device` sent them (`PutChunk`).
    fn uploaded(store: &ChunkStore, device: &str, bytes: &[u8]) {
        let chunk = StoredChunk::encode(bytes);
        store.put(&chunk).unwrap();
        let _ =
            crate::readers::Readers::open(store).unwrap().add_upload(device, &chunk.id).unwrap();
    }

    fn upload_record(store: &ChunkStore, r: &SnapshotRecord) -> PutSnapshot {
        let (rref, pieces) = RecordRef::cut(&r.encode());
        for (_, b) in pieces {
            uploaded(store, &r.device, &b);
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
        // Stored, but sent by another device: naming it does not make it laptop's.
        uploaded(&store, "desk", b"user data");
        assert!(matches!(snaps.put("laptop", &req), Err(SnapshotError::Incomplete(_))));
        uploaded(&store, "laptop", b"user data");
        let info = snaps.put("laptop", &req).unwrap();
        assert_eq!((info.files, info.bytes, info.id.as_str()), (1, 9, "1"));
        assert_eq!(snaps.put("laptop", &req).unwrap(), info, "same record: same filing");
        // A reset device reusing id 1 for other content gets 1+2.
        let r2 = record("laptop", "1", b"user data 2");
        uploaded(&store, "laptop", b"user data 2");
        let req2 = upload_record(&store, &r2);
        assert_eq!(snaps.put("laptop", &req2).unwrap().id, "1+2");
        assert_eq!(snaps.list("laptop").unwrap().len(), 2);
        assert_eq!(snaps.get("laptop", None).unwrap().record.digest, req2.record.digest);
        assert!(matches!(snaps.get("desk", None), Err(SnapshotError::NotFound(_))));
        // A record sent under another device's name is refused.
        assert!(matches!(snaps.put("desk", &req), Err(SnapshotError::Invalid(_))));
        assert_eq!(snaps.devices().unwrap().len(), 1);
    }

    /// A store holding one uploaded record of "laptop" (its request) and a 1 MiB record
    /// budget of its own.
    fn one_record_and_a_budget(
    ) -> (tempfile::TempDir, ChunkStore, PutSnapshot, &'static RecordBudget) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let r = record("laptop", "1", b"user data");
        uploaded(&store, "laptop", b"user data");
        let req = upload_record(&store, &r);
        let budget: &'static RecordBudget = Box::leak(Box::new(RecordBudget::new(1 << 20)));
        (dir, store, req, budget)
    }

    #[test]
    fn records_in_assembly_stay_within_the_budget_and_a_claim_alone_allocates_nothing() {
        let (_dir, store, req, budget) = one_record_and_a_budget();
        let snaps = Snapshots::with_budget(&store, budget).unwrap();

        // One stored chunk listed over and over, claiming more than the whole budget: refused
        // for good (TooLarge), nothing read or allocated.
        let piece = req.record.chunks[0];
        let mut huge = req.record.clone();
        huge.chunks = vec![piece; 16_384];
        huge.len = u64::from(piece.len) * 16_384;
        assert!(huge.len > 1 << 20, "{}", huge.len);
        let e = snaps.read_record("laptop", &huge).unwrap_err();
        assert!(matches!(e, SnapshotError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("--max-record-assembly-bytes"), "{e}");
        assert!(matches!(
            crate::provision::snapshot_error(e),
            oasis_core::net::SourceError::Rejected(oasis_core::wire::ErrorCode::TooLarge, _)
        ));
        // Chunks not stored: refused before any is read.
        let mut absent = req.record.clone();
        absent.chunks[0].id = ChunkId::of(b"never uploaded");
        let e = snaps.read_record("laptop", &absent).unwrap_err();
        assert!(matches!(e, SnapshotError::Incomplete(_)), "{e}");

        // While the budget is taken, a record waits its turn (Unavailable: the endpoint
        // retries); once it is free the same record files.
        let held = budget.reserve("desk", 1 << 20).ok().unwrap();
        let e = snaps.put("laptop", &req).unwrap_err();
        assert!(matches!(e, SnapshotError::Busy(_)), "{e}");
        assert!(matches!(
            crate::provision::snapshot_error(e),
            oasis_core::net::SourceError::Unavailable(_)
        ));
        drop(held);
        // A device assembles one record at a time, whatever room is left.
        let held = budget.reserve("laptop", 1).ok().unwrap();
        let e = snaps.put("laptop", &req).unwrap_err();
        assert!(e.to_string().contains("another snapshot record of laptop"), "{e}");
        drop(held);
        assert_eq!(snaps.put("laptop", &req).unwrap().id, "1");
        assert_eq!(budget.used(), 0, "every share given back");
    }

    #[test]
    fn a_device_sending_a_record_that_does_not_check_waits_before_the_next() {
        let (_dir, store, req, budget) = one_record_and_a_budget();
        let snaps = Snapshots::with_budget(&store, budget).unwrap();

        // A chunk longer than records are cut into is refused before anything is read.
        let mut long = req.record.clone();
        long.chunks[0].len = (256 << 10) + 1;
        long.len = u64::from(long.chunks.iter().map(|c| c.len).sum::<u32>());
        let e = snaps.read_record("laptop", &long).unwrap_err();
        assert!(e.to_string().contains("record chunks are 1 to 262144 bytes"), "{e}");

        // A digest that does not match: refused, and the device's next record waits.
        let mut wrong = req.clone();
        wrong.record.digest = [7; 32];
        let e = snaps.put("laptop", &wrong).unwrap_err();
        assert!(e.to_string().contains("do not match the record digest"), "{e}");
        let e = snaps.put("laptop", &req).unwrap_err();
        assert!(matches!(e, SnapshotError::Busy(_)), "{e}");
        assert!(e.to_string().contains("the last snapshot record of laptop did not check"), "{e}");
        assert_eq!(budget.used(), 0);
        // Other devices are not held up.
        let d = record("desk", "1", b"user data");
        uploaded(&store, "desk", b"user data");
        assert_eq!(snaps.put("desk", &upload_record(&store, &d)).unwrap().id, "1");
    }
}
