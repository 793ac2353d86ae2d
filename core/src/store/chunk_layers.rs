//! Which layer each chunk belongs to: a sled tree keyed `chunk id | layer name`, every version
//! of a layer under its one name. The seed's and the reflectors' entitlement checks read it
//! (a chunk is readable by whoever may fetch one of its layers).

use crate::chunk::ChunkId;

#[derive(Clone)]
pub struct ChunkLayers(sled::Tree);

impl ChunkLayers {
    pub fn new(tree: sled::Tree) -> ChunkLayers {
        ChunkLayers(tree)
    }

    /// Records `ids` as chunks of layer `name`, in one batch.
    pub fn add<'a>(
        &self,
        name: &str,
        ids: impl IntoIterator<Item = &'a ChunkId>,
    ) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.insert([id.as_bytes().as_slice(), name.as_bytes()].concat(), &[]);
        }
        self.0.apply_batch(batch)
    }

    /// Whether chunk `id` belongs to a layer whose name `wanted` accepts.
    pub fn any_layer(
        &self,
        id: &ChunkId,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<bool, sled::Error> {
        for key in self.0.scan_prefix(id.as_bytes()).keys() {
            let key = key?;
            if wanted(&String::from_utf8_lossy(&key[id.as_bytes().len()..])) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_found_under_each_of_its_layers_only() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = ChunkLayers::new(db.open_tree("t").unwrap());
        let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
        index.add("base", [&a, &b]).unwrap();
        index.add("office", [&b]).unwrap();
        assert!(index.any_layer(&a, |n| n == "base").unwrap());
        assert!(!index.any_layer(&a, |n| n == "office").unwrap());
        assert!(index.any_layer(&b, |n| n == "office").unwrap());
        assert!(!index.any_layer(&c, |_| true).unwrap(), "a chunk of no layer");
        // A name that starts like another is not that other.
        index.add("base-x", [&c]).unwrap();
        assert!(!index.any_layer(&c, |n| n == "base").unwrap());
    }
}
