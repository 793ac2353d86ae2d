//! The run's content: layers as lists of pulls (synthetic, or from real chunks), which pulls
//! each layer shares with others or with its previous version.

use super::*;

/// A unit of WAN transfer: consecutive chunks of a layer.
#[derive(Clone, Debug)]
pub struct Pull {
    pub id: ChunkId,
    pub bytes: u64,
    pub chunks: u32,
}

#[derive(Clone, Debug)]
pub struct LayerData {
    pub name: String,
    pub pulls: Vec<u32>,
    /// Prefix sums of pull sizes (len = pulls + 1).
    pub cum: Vec<u64>,
    /// Pulls already cached at every reflector (shared with the previous version).
    pub prev: Vec<u32>,
    /// The previous version's other pulls (cached, unpinned: first to be evicted).
    pub filler: Vec<u32>,
    pub chunks: u64,
    /// Its first pulls that hold the manifest's body: a reflector learns the layer's chunk
    /// ids from them, so it asks for no other pull before they are in.
    pub body_pulls: u32,
}

impl LayerData {
    pub(super) fn bytes(&self) -> u64 {
        *self.cum.last().unwrap_or(&0)
    }

    /// Whether a site holds the whole manifest body (`held`: copies per pull at the site).
    pub(super) fn body_held(&self, held: &[u8]) -> bool {
        self.pulls[..self.body_pulls as usize].iter().all(|&p| held[p as usize] > 0)
    }
}

/// The synthetic content of a scenario.
pub struct Content {
    pub pulls: Vec<Pull>,
    pub layers: Vec<LayerData>,
    pub max_chunk: u64,
    pub index: HashMap<ChunkId, u32>,
}

pub(super) fn pull_id(seed: u64, tag: &str, a: usize, b: usize) -> ChunkId {
    let mut h = blake3::Hasher::new();
    h.update(b"oasis-sim pull");
    h.update(&seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(&(a as u64).to_le_bytes());
    h.update(&(b as u64).to_le_bytes());
    ChunkId(*h.finalize().as_bytes())
}

/// Selection sampling: exactly `k` of `n` indices, in order.
pub(super) fn choose(rng: &mut StdRng, n: usize, k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(k);
    let mut need = k.min(n);
    for i in 0..n {
        if need == 0 {
            break;
        }
        if rng.gen_range(0..(n - i)) < need {
            out.push(i);
            need -= 1;
        }
    }
    out
}

/// Builds deterministic synthetic layers: chunk sizes between avg/4 and 4·avg (exponential
/// spread, as content-defined chunking gives), grouped into pulls.
pub fn build_content(sc: &Scenario, seed: u64) -> Content {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f61_7369_735f_6c61);
    let avg = sc.model.chunk_avg as f64;
    let (min, max) = (avg / 4.0, avg * 4.0);
    let mut pulls: Vec<Pull> = Vec::new();
    let mut layers: Vec<LayerData> = Vec::new();
    let mut max_chunk = 0u64;
    for (li, spec) in sc.layers.iter().enumerate() {
        let shared_f = spec.shared_with.map_or(0.0, |(_, f)| f);
        let own_bytes = (spec.size as f64 * (1.0 - shared_f)).round() as u64;
        let mut own: Vec<u32> = Vec::new();
        let mut chunks_total = 0u64;
        let (mut acc, mut acc_chunks, mut left) = (0u64, 0u32, own_bytes);
        while left > 0 {
            let x = min + (-(1.0 - rng.gen::<f64>()).ln()) * (avg - min);
            let c = (x.clamp(min, max) as u64).max(1).min(left);
            max_chunk = max_chunk.max(c);
            left -= c;
            acc += c;
            acc_chunks += 1;
            chunks_total += 1;
            if acc >= sc.model.pull_bytes || left == 0 {
                let k = own.len();
                pulls.push(Pull {
                    id: pull_id(seed, "layer", li, k),
                    bytes: acc,
                    chunks: acc_chunks,
                });
                own.push((pulls.len() - 1) as u32);
                acc = 0;
                acc_chunks = 0;
            }
        }
        // Pulls identical to pulls of an earlier layer, spliced in at random positions.
        let mut list = own.clone();
        if let Some((j, f)) = spec.shared_with {
            let other = &layers[j];
            let other_avg = other.bytes() as f64 / other.pulls.len().max(1) as f64;
            let want = ((spec.size as f64 * f) / other_avg.max(1.0)).round() as usize;
            let picked: Vec<u32> = choose(&mut rng, other.pulls.len(), want)
                .into_iter()
                .map(|i| other.pulls[i])
                .collect();
            chunks_total +=
                picked.iter().map(|&p| u64::from(pulls[p as usize].chunks)).sum::<u64>();
            let n = own.len() + picked.len();
            let positions = choose(&mut rng, n, picked.len());
            list = Vec::with_capacity(n);
            let (mut oi, mut si, mut pi) = (0, 0, 0);
            for i in 0..n {
                if pi < positions.len() && positions[pi] == i {
                    list.push(picked[si]);
                    si += 1;
                    pi += 1;
                } else {
                    list.push(own[oi]);
                    oi += 1;
                }
            }
        }
        // Shared with the previous version: already at every reflector.
        let n_prev = (spec.shared_with_previous * list.len() as f64).round() as usize;
        let prev: Vec<u32> =
            choose(&mut rng, list.len(), n_prev).into_iter().map(|i| list[i]).collect();
        let mut filler = Vec::new();
        if spec.shared_with_previous > 0.0 {
            let mut left = (spec.size as f64 * (1.0 - spec.shared_with_previous)) as u64;
            let mut k = 0;
            while left > 0 {
                let b = left.min(sc.model.pull_bytes.max(1));
                left -= b;
                pulls.push(Pull { id: pull_id(seed, "previous", li, k), bytes: b, chunks: 0 });
                filler.push((pulls.len() - 1) as u32);
                k += 1;
            }
        }
        let mut cum = Vec::with_capacity(list.len() + 1);
        cum.push(0);
        for &p in &list {
            cum.push(cum.last().copied().unwrap_or(0) + pulls[p as usize].bytes);
        }
        layers.push(LayerData {
            name: spec.name.clone(),
            pulls: list,
            cum,
            prev,
            filler,
            chunks: chunks_total,
            body_pulls: 0,
        });
    }
    let index = pulls.iter().enumerate().map(|(i, p)| (p.id, i as u32)).collect();
    Content { pulls, layers, max_chunk, index }
}

/// Content of real layers: `chunks[i]` holds the unique chunks (id, size as sent) of the
/// scenario's layer `i` in manifest order, the first `body[i]` of them the manifest's body
/// chunks (a reflector fetches those first: they name the rest), grouped in that order into
/// pulls of about
/// `model.pull_bytes` (a pull of one chunk carries the chunk's id). The run then moves exactly
/// the bytes a live run of the same layers moves (`oasis-sim fidelity`). Sharing with a
/// previous version or between layers comes from the chunks themselves, not from the
/// scenario's `shared_*` keys.
pub fn content_from_chunks(
    sc: &Scenario,
    chunks: &[Vec<(ChunkId, u64)>],
    body: &[usize],
) -> Content {
    let mut pulls: Vec<Pull> = Vec::new();
    let mut index: HashMap<ChunkId, u32> = HashMap::new();
    let mut layers = Vec::new();
    let mut max_chunk = 0;
    for (li, list) in chunks.iter().enumerate() {
        let mut own: Vec<u32> = Vec::new();
        let mut group: Vec<(ChunkId, u64)> = Vec::new();
        let mut acc = 0;
        let body_chunks = body.get(li).copied().unwrap_or(0);
        let mut body_pulls = 0;
        for (i, &(id, len)) in list.iter().enumerate() {
            max_chunk = max_chunk.max(len);
            group.push((id, len));
            acc += len;
            // A pull ends at the body's end too: the body's pulls are exactly its chunks.
            if acc < sc.model.pull_bytes && i + 1 < list.len() && i + 1 != body_chunks {
                continue;
            }
            if i < body_chunks {
                body_pulls += 1;
            }
            let pid = if group.len() == 1 {
                group[0].0
            } else {
                let mut h = blake3::Hasher::new();
                h.update(b"oasis-sim pull of chunks");
                for (id, _) in &group {
                    h.update(&id.0);
                }
                ChunkId(*h.finalize().as_bytes())
            };
            let p = *index.entry(pid).or_insert_with(|| {
                pulls.push(Pull { id: pid, bytes: acc, chunks: group.len() as u32 });
                (pulls.len() - 1) as u32
            });
            own.push(p);
            group.clear();
            acc = 0;
        }
        let mut cum = Vec::with_capacity(own.len() + 1);
        cum.push(0);
        for &p in &own {
            cum.push(cum.last().copied().unwrap_or(0) + pulls[p as usize].bytes);
        }
        layers.push(LayerData {
            name: sc.layers.get(li).map_or_else(|| format!("layer{li}"), |l| l.name.clone()),
            pulls: own,
            cum,
            prev: Vec::new(),
            filler: Vec::new(),
            chunks: list.len() as u64,
            body_pulls,
        });
    }
    Content { pulls, layers, max_chunk, index }
}
