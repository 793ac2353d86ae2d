//! Where each chunk of the layers a reflector has learned sits: the layer and the chunk's
//! index in it, as the mesh's bitmaps number them.

use oasis_core::gossip::LayerDigest;
use oasis_core::manifest::ChunkRef;
use oasis_core::ChunkId;
use std::collections::HashMap;

/// Marks a packed place that is an index into [`ChunkIndex::many`].
const MANY: u64 = 1 << 63;

/// Where each chunk sits in the layers learned: (layer, index in its `unique_chunks()`). Kept
/// compact, since it holds every chunk of every layer known (a million for a large layer): a
/// chunk in one layer costs its key and one packed place (about 40 bytes with the table's
/// slack); chunks shared by several layers (versions) keep their places in a side table.
#[derive(Default)]
pub(super) struct ChunkIndex {
    /// Layer digests by number, in the order learned.
    layers: Vec<LayerDigest>,
    /// One place packed as `layer number << 32 | index`, or `MANY | slot in many`.
    places: HashMap<ChunkId, u64>,
    many: Vec<Box<[u64]>>,
}

impl ChunkIndex {
    /// Indexes a layer's distinct chunks in order. False when too many layers were learned to
    /// number this one: its chunks are then not indexed.
    pub(super) fn add_chunks_of(&mut self, digest: LayerDigest, chunks: &[ChunkRef]) -> bool {
        let Some(layer) = self.add_layer(digest) else { return false };
        // Room for the largest layer at once, rather than doubling (and holding old and new
        // tables) on the way; later versions mostly share its chunks.
        let room = self.places.capacity();
        self.places.reserve(chunks.len().saturating_sub(room));
        for (i, c) in chunks.iter().enumerate() {
            self.add(c.id, layer, i as u32);
        }
        true
    }

    /// Numbers a new layer; `None` once numbers would reach the [`MANY`] bit.
    pub(super) fn add_layer(&mut self, digest: LayerDigest) -> Option<u32> {
        let n = u32::try_from(self.layers.len()).ok().filter(|n| *n < 1 << 31)?;
        self.layers.push(digest);
        Some(n)
    }

    /// Records chunk `id` at `index` in layer number `layer` (once per layer).
    pub(super) fn add(&mut self, id: ChunkId, layer: u32, index: u32) {
        let place = (u64::from(layer) << 32) | u64::from(index);
        let same_layer = |p: &u64| *p >> 32 == u64::from(layer);
        match self.places.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(place);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let cur = *o.get();
                if cur & MANY == 0 {
                    if !same_layer(&cur) {
                        self.many.push(Box::new([cur, place]));
                        *o.get_mut() = MANY | (self.many.len() - 1) as u64;
                    }
                } else {
                    let slot = &mut self.many[(cur & !MANY) as usize];
                    if !slot.iter().any(same_layer) {
                        let mut v = std::mem::take(slot).into_vec();
                        v.push(place);
                        *slot = v.into_boxed_slice();
                    }
                }
            }
        }
    }

    pub(super) fn places(&self, id: &ChunkId) -> Vec<(LayerDigest, u32)> {
        let unpack = |p: u64| (self.layers[(p >> 32) as usize], p as u32);
        match self.places.get(id) {
            None => Vec::new(),
            Some(&p) if p & MANY == 0 => vec![unpack(p)],
            Some(&p) => self.many[(p & !MANY) as usize].iter().map(|&p| unpack(p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_every_place_of_a_chunk_once_per_layer() {
        let mut x = ChunkIndex::default();
        let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
        let (l1, l2, l3) = ([10u8; 32], [20u8; 32], [30u8; 32]);
        let n1 = x.add_layer(l1).unwrap();
        x.add(a, n1, 0);
        x.add(b, n1, 1);
        x.add(a, n1, 5);
        assert_eq!(x.places(&a), vec![(l1, 0)], "one place per layer: the first");
        let n2 = x.add_layer(l2).unwrap();
        x.add(b, n2, 0);
        x.add(c, n2, 1);
        let n3 = x.add_layer(l3).unwrap();
        x.add(b, n3, 7);
        x.add(b, n3, 8);
        assert_eq!(x.places(&b), vec![(l1, 1), (l2, 0), (l3, 7)]);
        assert_eq!(x.places(&c), vec![(l2, 1)]);
        assert_eq!(x.places(&ChunkId([9; 32])), vec![]);
        assert_eq!(x.many.len(), 1, "only the shared chunk has a side entry");
    }
}
