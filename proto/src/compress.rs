//! How chunk bytes are kept at rest and sent on the wire: zstd when that makes them smaller,
//! raw otherwise (already-compressed data would only grow and cost CPU to unpack).

use crate::chunk::ChunkId;
use bytes::Bytes;

/// zstd level for chunks; level 1 keeps ingest near the hash+chunk rate (zstd dominates cost).
pub const ZSTD_LEVEL: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    Raw = 0,
    Zstd = 1,
}

impl Encoding {
    pub fn from_u8(v: u8) -> Option<Encoding> {
        match v {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// A chunk as stored and as sent: possibly compressed, with its id and plain length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    pub id: ChunkId,
    pub encoding: Encoding,
    pub plain_len: u32,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkDataError {
    #[error("chunk {id}: zstd data does not decode: {source}")]
    Decode {
        id: ChunkId,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk {id}: expected {expected} plain bytes, got {got}")]
    Length { id: ChunkId, expected: u32, got: usize },
    #[error("chunk {id}: bytes hash to {actual}, not to the chunk id")]
    Hash { id: ChunkId, actual: ChunkId },
}

thread_local! {
    // One compression context per thread: creating one per chunk showed up at ~3% of publish.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    // Likewise for decompression: a fresh context per chunk showed up at ~4% of a fetch.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses a zstd chunk whose plain length is known, reusing this thread's context.
pub fn decompress_zstd(data: &[u8], plain_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("set above").decompress(data, plain_len)
    })
}

fn compress_zstd(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        c.as_mut().expect("set above").compress(plain)
    })
}

/// The zstd form of `plain` when it is worth storing and sending instead: when it saves at
/// least 1/32 (smaller gains cost more decompression CPU on every read than they save on disk
/// and wire). `None`: keep the plain bytes (the encoding is then [`Encoding::Raw`]).
pub fn compress_if_it_pays(plain: &[u8]) -> Option<Vec<u8>> {
    let z = compress_zstd(plain).ok()?;
    (z.len() + plain.len() / 32 < plain.len()).then_some(z)
}

impl StoredChunk {
    /// Compress `plain` when that saves bytes; the id is computed here.
    pub fn encode(plain: &[u8]) -> StoredChunk {
        Self::encode_with_id(ChunkId::of(plain), plain)
    }

    pub fn encode_with_id(id: ChunkId, plain: &[u8]) -> StoredChunk {
        let plain_len = plain.len() as u32;
        match compress_if_it_pays(plain) {
            Some(z) => {
                StoredChunk { id, encoding: Encoding::Zstd, plain_len, data: Bytes::from(z) }
            }
            None => StoredChunk {
                id,
                encoding: Encoding::Raw,
                plain_len,
                data: Bytes::copy_from_slice(plain),
            },
        }
    }

    /// The plain bytes, checked against the id. Nothing unverified leaves this function.
    pub fn decode_verified(&self) -> Result<Bytes, ChunkDataError> {
        let plain = match self.encoding {
            Encoding::Raw => self.data.clone(),
            Encoding::Zstd => {
                let v = decompress_zstd(&self.data, self.plain_len as usize)
                    .map_err(|source| ChunkDataError::Decode { id: self.id, source })?;
                Bytes::from(v)
            }
        };
        if plain.len() != self.plain_len as usize {
            return Err(ChunkDataError::Length {
                id: self.id,
                expected: self.plain_len,
                got: plain.len(),
            });
        }
        let actual = ChunkId::of(&plain);
        if actual != self.id {
            return Err(ChunkDataError::Hash { id: self.id, actual });
        }
        Ok(plain)
    }
}
