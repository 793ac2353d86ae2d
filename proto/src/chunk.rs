//! Content-defined chunking (FastCDC v2020) and chunk identities (BLAKE3 of the plain bytes).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The BLAKE3 hash of a chunk's plain (uncompressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// True when `data` hashes to this id.
    pub fn verify(&self, data: &[u8]) -> bool {
        ChunkId::of(data) == *self
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("chunk id {0:?} is not 64 hex digits")]
pub struct BadChunkId(String);

impl FromStr for ChunkId {
    type Err = BadChunkId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadChunkId(s.to_string()))?;
        Ok(ChunkId(out))
    }
}

/// FastCDC v2020 parameters, in bytes. Recorded in every manifest so anyone can re-chunk
/// local data the same way and find reusable chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("chunk sizes min {min} / avg {avg} / max {max}: {problem}")]
pub struct BadChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub problem: &'static str,
}

impl ChunkParams {
    /// Checks the bounds FastCDC v2020 accepts and the protocol's largest chunk.
    pub fn validate(&self) -> Result<(), BadChunkParams> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let bad =
            |problem| Err(BadChunkParams { min: self.min, avg: self.avg, max: self.max, problem });
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&(self.min as usize)) {
            return bad("min must be between 64 B and 1 MiB");
        }
        if !(AVERAGE_MIN..=AVERAGE_MAX).contains(&(self.avg as usize)) {
            return bad("avg must be between 256 B and 4 MiB");
        }
        if self.max as usize > crate::wire::MAX_CHUNK_BYTES || self.max < 1024 {
            return bad("max must be between 1 KiB and 4 MiB");
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return bad("sizes must satisfy min <= avg <= max");
        }
        Ok(())
    }

    /// Parses "16K/64K/256K" style triples (K, M suffixes; plain numbers are bytes).
    pub fn parse(s: &str) -> Result<ChunkParams, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 3 {
            return Err(format!("chunk sizes {s:?}: expected MIN/AVG/MAX, e.g. 16K/64K/256K"));
        }
        let num = |p: &str| -> Result<u32, String> {
            let p = p.trim();
            let (digits, mul) = match p.as_bytes().last() {
                Some(b'K' | b'k') => (&p[..p.len() - 1], 1024),
                Some(b'M' | b'm') => (&p[..p.len() - 1], 1024 * 1024),
                _ => (p, 1),
            };
            digits
                .parse::<u32>()
                .ok()
                .and_then(|n| n.checked_mul(mul))
                .ok_or_else(|| format!("chunk sizes {s:?}: {p:?} is not a size"))
        };
        let cp = ChunkParams { min: num(parts[0])?, avg: num(parts[1])?, max: num(parts[2])? };
        cp.validate().map_err(|e| e.to_string())?;
        Ok(cp)
    }
}

/// A chunk's place in a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub offset: u64,
    pub len: u32,
}

/// Cut points of `data` (in memory). Concatenating the spans gives back `data`.
pub fn cut(data: &[u8], p: &ChunkParams) -> Vec<ChunkSpan> {
    fastcdc::v2020::FastCDC::new(data, p.min as usize, p.avg as usize, p.max as usize)
        .map(|c| ChunkSpan { offset: c.offset as u64, len: c.length as u32 })
        .collect()
}

/// Bytes read from a stream at a time when chunking it.
const READ_WINDOW: usize = 4 << 20;

/// A stream is first read into a buffer of this size that each thread keeps. One that ends
/// within it (most files of an OS image) is cut in memory from there, with no read window to
/// allocate: a fresh 4 MiB window per file cost more than chunking a small file.
const SMALL_STREAM: usize = 1 << 20;

thread_local! {
    static SMALL_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Streams the chunks of a reader (a file), up to `batch` chunks at a time as `(offset,
/// bytes)`, so callers can hash and compress each batch on all cores while memory stays
/// bounded (one read window, and the thread's small-stream buffer). The chunks are exactly
/// those [`cut`] finds in the whole stream.
pub fn for_each_batch<R: std::io::Read>(
    mut reader: R,
    p: &ChunkParams,
    batch: usize,
    mut f: impl FnMut(&[(u64, &[u8])]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // Taken, not borrowed: `f` may chunk another stream on this thread (a thread pool's work
    // stealing), which then allocates its own buffer.
    let mut buf = SMALL_BUF.with(|b| b.take());
    if buf.len() < SMALL_STREAM {
        buf.resize(SMALL_STREAM, 0);
    }
    let (mut len, mut eof) = (0usize, false);
    let read = loop {
        if len == buf.len() {
            break Ok(());
        }
        match reader.read(&mut buf[len..]) {
            Ok(0) => {
                eof = true;
                break Ok(());
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let out = read.and_then(|()| {
        if eof {
            let spans = cut(&buf[..len], p);
            let mut items: Vec<(u64, &[u8])> = Vec::with_capacity(batch.max(1).min(spans.len()));
            for group in spans.chunks(batch.max(1)) {
                items.clear();
                items.extend(group.iter().map(|s| {
                    (s.offset, &buf[s.offset as usize..(s.offset + s.len as u64) as usize])
                }));
                f(&items)?;
            }
            Ok(())
        } else {
            // A longer stream: what was read goes first, the rest streams through windows.
            let head = std::io::Read::chain(&buf[..len], reader);
            chunk_windows(head, p, batch, READ_WINDOW.max(2 * p.max as usize), f)
        }
    });
    SMALL_BUF.with(|b| b.set(buf));
    out
}

/// [`for_each_batch`] with a read window of `window` bytes (at least `2 × max`).
///
/// Why windows: FastCDC's `StreamCDC` keeps a buffer of one maximum chunk, copies every chunk
/// out and shifts the rest of its buffer down after each one (about three copies of every
/// byte). Here a window is cut in place with the in-memory cutter and the chunks are lent as
/// slices. A FastCDC cut depends only on the bytes from the chunk's start up to the cut (at
/// most `max` of them), so a chunk is final when the stream has ended, when it ends before the
/// window's end, or when the window holds `max` bytes from its start; the rest (less than
/// `max`) moves to the front of the window and is cut again with the next read.
fn chunk_windows<R: std::io::Read>(
    mut reader: R,
    p: &ChunkParams,
    batch: usize,
    window: usize,
    mut f: impl FnMut(&[(u64, &[u8])]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
    let mut buf = vec![0u8; window.max(2 * max)];
    let (mut len, mut base, mut eof) = (0usize, 0u64, false);
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let batch = batch.max(1);
    loop {
        while !eof && len < buf.len() {
            match reader.read(&mut buf[len..]) {
                Ok(0) => eof = true,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        spans.clear();
        let mut start = 0;
        {
            let cdc = fastcdc::v2020::FastCDC::new(&buf[..len], min, avg, max);
            while start < len {
                let (_, end) = cdc.cut(start, len - start);
                if !(eof || end < len || start + max <= len) {
                    break;
                }
                spans.push((start, end));
                start = end;
            }
            let mut items: Vec<(u64, &[u8])> = Vec::with_capacity(batch);
            for group in spans.chunks(batch) {
                items.clear();
                items.extend(group.iter().map(|&(s, e)| (base + s as u64, &buf[s..e])));
                f(&items)?;
            }
        }
        if eof {
            return Ok(());
        }
        buf.copy_within(start..len, 0);
        base += start as u64;
        len -= start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkParams {
        ChunkParams { min: 256, avg: 1024, max: 4096 }
    }

    /// A reader that hands out at most `step` bytes per read (short reads, as pipes give).
    struct Trickle<'a> {
        data: &'a [u8],
        at: usize,
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(self.step).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn default_params_are_valid_and_parse() {
        ChunkParams::default().validate().unwrap();
        assert_eq!(ChunkParams::parse("16K/64K/256K").unwrap(), ChunkParams::default());
        assert!(ChunkParams::parse("64K/16K/256K").is_err());
        assert!(ChunkParams::parse("16K/64K/64M").is_err());
        assert!(ChunkParams::parse("abc").is_err());
    }

    #[test]
    fn id_hex_roundtrip() {
        let id = ChunkId::of(b"oasis");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("zz".parse::<ChunkId>().is_err());
    }

    proptest! {
        #[test]
        fn spans_cover_data_within_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000)) {
            let p = small();
            let spans = cut(&data, &p);
            let mut off = 0u64;
            for (i, s) in spans.iter().enumerate() {
                prop_assert_eq!(s.offset, off);
                prop_assert!(s.len <= p.max);
                if i + 1 < spans.len() { prop_assert!(s.len >= p.min); }
                off += s.len as u64;
            }
            prop_assert_eq!(off, data.len() as u64);
        }

        #[test]
        fn stream_and_memory_chunking_agree(data in proptest::collection::vec(any::<u8>(), 0..30_000)) {
            let p = small();
            let mut streamed = Vec::new();
            for_each_batch(&data[..], &p, 3, |b| {
                streamed.extend(b.iter().map(|(o, d)| ChunkSpan { offset: *o, len: d.len() as u32 }));
                Ok(())
            }).unwrap();
            prop_assert_eq!(streamed, cut(&data, &p));
        }

        /// Windows of any size (from the smallest allowed), reads of any size: the same chunks
        /// as cutting the whole stream in memory, and as FastCDC's own `StreamCDC`.
        #[test]
        fn windowed_chunking_matches_whole_stream_cutting(
            data in proptest::collection::vec(any::<u8>(), 0..40_000),
            window in 0usize..20_000,
            read in 1usize..5_000,
        ) {
            let p = small();
            let mut got = Vec::new();
            let mut bytes_match = true;
            let reader = Trickle { data: &data[..], at: 0, step: read };
            chunk_windows(reader, &p, 2, window, |b| {
                for (o, d) in b {
                    bytes_match &= data.get(*o as usize..*o as usize + d.len()) == Some(*d);
                    got.push(ChunkSpan { offset: *o, len: d.len() as u32 });
                }
                Ok(())
            }).unwrap();
            prop_assert!(bytes_match, "a chunk's bytes are not the stream's at its offset");
            prop_assert_eq!(&got, &cut(&data, &p));
            let streamed: Vec<ChunkSpan> = fastcdc::v2020::StreamCDC::new(&data[..], 256, 1024, 4096)
                .map(|c| c.unwrap())
                .map(|c| ChunkSpan { offset: c.offset, len: c.length as u32 })
                .collect();
            prop_assert_eq!(got, streamed);
        }

        #[test]
        fn an_edit_leaves_distant_chunks_alone(seed in any::<u64>(), at in 0usize..30_000) {
            // Content-defined chunking: one inserted byte changes only nearby chunks, where
            // fixed-size blocks would change every block after it (about 56 chunks here). What
            // FastCDC guarantees exactly: cutting runs left to right, so every chunk that ends
            // before the edit (and before the byte at its cut, which is hashed too) is unchanged. After it, a moved or vanished cut point shifts the
            // next chunk's start and the cuts resynchronise within a few chunks; a bound of 8
            // was once exceeded (11 of 56, seed 12215015224444431868 at 16298), so 20 it is.
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let data: Vec<u8> = (0..64_000).map(|_| rng.gen()).collect();
            let mut edited = data.clone();
            edited.insert(at, 0x5a);
            let p = small();
            let ids = |d: &[u8]| -> std::collections::HashSet<ChunkId> {
                cut(d, &p).iter().map(|s| ChunkId::of(&d[s.offset as usize..(s.offset + s.len as u64) as usize])).collect()
            };
            let (a, b) = (ids(&data), ids(&edited));
            // Strictly before: FastCDC hashes the byte at the cut too, so a chunk ending right
            // at the edit may move.
            for s in cut(&data, &p).iter().filter(|s| s.offset + (s.len as u64) < at as u64) {
                let id = ChunkId::of(&data[s.offset as usize..(s.offset + s.len as u64) as usize]);
                prop_assert!(b.contains(&id), "chunk at {} ends before the edit at {at} but changed", s.offset);
            }
            let changed = a.difference(&b).count();
            prop_assert!(changed <= 20, "{changed} of {} chunks changed for one inserted byte", a.len());
        }
    }
}
