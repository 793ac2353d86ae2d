//! Sample layer data for the demo and benchmarks: deterministic, with the mix of unique,
//! repeated and compressible content that real OS images have.

use std::path::Path;

/// SplitMix64: fast and deterministic, so a given seed always yields the same tree.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// `size` bytes in 4 KiB blocks: 40% random (incompressible), 30% copies of a few shared
/// blocks, 30% text from a small vocabulary (compressible).
pub fn mixed_bytes(size: usize, seed: u64) -> Vec<u8> {
    const BLOCK: usize = 4096;
    let mut rng = SplitMix(seed);
    let mut shared = vec![0u8; 8 * BLOCK];
    rng.fill(&mut shared);
    let words: Vec<Vec<u8>> = (0..400)
        .map(|_| {
            let n = 2 + (rng.next_u64() % 8) as usize;
            (0..n).map(|_| b"etaoinshrdlucmfwyp"[(rng.next_u64() % 18) as usize]).collect()
        })
        .collect();
    let mut data = vec![0u8; size];
    for block in data.chunks_mut(BLOCK) {
        match rng.next_u64() % 10 {
            0..=3 => rng.fill(block),
            4..=6 => {
                let i = (rng.next_u64() % 8) as usize * BLOCK;
                block.copy_from_slice(&shared[i..i + block.len()]);
            }
            _ => {
                let mut i = 0;
                while i < block.len() {
                    let w = &words[(rng.next_u64() % 400) as usize];
                    for &c in w.iter().chain(b" ") {
                        if i < block.len() {
                            block[i] = c;
                            i += 1;
                        }
                    }
                }
            }
        }
    }
    data
}

/// Writes a sample OS-like tree of about `total` bytes: a few large files and many small
/// ones, directories, symlinks and an empty file.
pub fn write_tree(root: &Path, total: usize, seed: u64) -> std::io::Result<u64> {
    let mut rng = SplitMix(seed ^ 0x5eed);
    for d in ["bin", "lib/modules", "etc/conf.d", "usr/share/doc", "var/lib"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let large = total * 3 / 4;
    let n_large = 8.max(large / (16 << 20));
    let mut written = 0u64;
    for i in 0..n_large {
        let data = mixed_bytes(large / n_large, seed.wrapping_add(i as u64));
        std::fs::write(root.join(format!("lib/modules/mod{i:03}.ko")), &data)?;
        written += data.len() as u64;
    }
    let small_total = total - large;
    let mut i = 0;
    while (written as usize) < large + small_total {
        let len = (rng.next_u64() % 48_000) as usize + 100;
        let data = mixed_bytes(len, seed.wrapping_add(1000 + i));
        let dir = ["bin", "etc/conf.d", "usr/share/doc", "var/lib"][i as usize % 4];
        std::fs::write(root.join(dir).join(format!("file{i:05}")), &data)?;
        written += data.len() as u64;
        i += 1;
    }
    std::fs::write(root.join("etc/machine-id"), b"")?;
    std::os::unix::fs::symlink("../lib/modules", root.join("bin/modules"))?;
    Ok(written)
}

/// A new version of the tree: a few files edited in place, one added, so only some chunks change.
pub fn change_tree(root: &Path, seed: u64) -> std::io::Result<()> {
    let mut rng = SplitMix(seed ^ 0xc4a9);
    let dir = root.join("lib/modules");
    let mut mods: Vec<_> =
        std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    mods.sort();
    for m in mods.iter().step_by(4) {
        let mut data = std::fs::read(m)?;
        let at = (rng.next_u64() as usize) % data.len().max(1);
        let patch = mixed_bytes(8192.min(data.len() - at), rng.next_u64());
        data[at..at + patch.len()].copy_from_slice(&patch);
        std::fs::write(m, data)?;
    }
    std::fs::write(root.join("etc/conf.d/release"), b"version 2\n")?;
    Ok(())
}
