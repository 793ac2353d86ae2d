//! `oasis-sim bench --only apply,snapshot`: the device benchmarks, each against a
//! reference measured in the same run on the same disk.
//!
//! - apply: `oasis-endpoint apply` of a layer whose chunks are already in the endpoint's chunk
//!   store onto an empty root, vs `cp -a` of the layer's source tree (and vs `cp -a` + `sync`,
//!   since apply makes its result durable before it returns). Floor: apply <= 2x `cp -a`.
//! - snapshot: a snapshot of an unchanged device of 10,000 files, vs a plain `lstat` walk of
//!   the same tree and vs `--full-verify` (rehash everything). Floor: < 2 s.

use anyhow::Context;
use oasis_core::chunk::ChunkParams;
use oasis_core::manifest::LayerKind;
use oasis_core::pki::{Role, SeedAuthority};
use oasis_endpoint::apply::{apply, ApplyOptions};
use oasis_endpoint::session::Session;
use oasis_seed::{publish, PublishOptions, RunningSeed};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed_cmd(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(st.success(), "{cmd:?} failed");
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the parts of `only` that are device benchmarks; returns their JSON.
pub async fn run(
    only: &[String],
    runs: usize,
    src: &Path,
    tmp: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    if only.iter().any(|s| s == "apply") {
        out.insert("apply".into(), bench_apply(runs, src, tmp, json).await?);
    }
    if only.iter().any(|s| s == "snapshot") {
        let t = tmp.to_path_buf();
        let r = tokio::task::spawn_blocking(move || bench_snapshot(runs, &t, json)).await??;
        out.insert("snapshot".into(), r);
    }
    Ok(serde_json::Value::Object(out))
}

async fn bench_apply(
    runs: usize,
    src: &Path,
    tmp: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let seed_dir = tmp.join("device-seed");
    let auth = SeedAuthority::init(&seed_dir)?;
    let seed = RunningSeed::start(&seed_dir, "127.0.0.1:0".parse()?, None).await?;
    let opts = PublishOptions {
        name: "bench-base".into(),
        version: "1".into(),
        kind: LayerKind::Base,
        chunking: ChunkParams::default(),
        progress: false,
    };
    let (_, pubr) = publish(&seed.store, auth.signing_key(), src, &opts)?;
    oasis_seed::catalog::Catalog::open(&seed.store)?.make_available("bench", "bench-base", "1")?;
    let state = tmp.join("device-endpoint");
    auth.enroll(Role::Endpoint, "bench-device", Some("bench"), &state, true)?;
    let root = tmp.join("device-root");
    let apply_opts = ApplyOptions {
        state_dir: state.clone(),
        sources: vec![seed.addr],
        root: root.clone(),
        base: ("bench-base".into(), "1".into()),
        apps: vec![],
        streams: 8,
        progress: false,
        allow_downgrade: false,
    };
    // Warm-up: the first apply fetches every chunk into the store.
    apply(&apply_opts).await?;
    let store_bytes = dir_bytes(&state.join("cache").join("packs"))?;
    let reset = || -> anyhow::Result<()> {
        // A fresh device with the same (warm) chunk store: no layers, no snapshots, empty root.
        for d in [state.join("device"), state.join("snapshots"), root.clone()] {
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
        }
        Ok(())
    };
    let copy = tmp.join("device-cp");
    let (mut ours, mut cp, mut cp_sync) = (Vec::new(), Vec::new(), Vec::new());
    let (mut stage, mut commit, mut pre) = (Vec::new(), Vec::new(), Vec::new());
    let (mut synced, mut before) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Alternate the order so page-cache and writeback state favour no one.
        let cp_run = |with_sync: bool| -> anyhow::Result<f64> {
            if copy.exists() {
                std::fs::remove_dir_all(&copy)?;
            }
            timed_cmd(&mut Command::new("sync"))?;
            let script =
                if with_sync { "cp -a \"$0\" \"$1\" && sync" } else { "cp -a \"$0\" \"$1\"" };
            let s = timed_cmd(Command::new("sh").arg("-c").arg(script).arg(src).arg(&copy))?;
            std::fs::remove_dir_all(&copy)?;
            Ok(s)
        };
        if run % 2 == 0 {
            cp.push(cp_run(false)?);
            cp_sync.push(cp_run(true)?);
        }
        reset()?;
        timed_cmd(&mut Command::new("sync"))?;
        let t = Instant::now();
        let r = apply(&apply_opts).await?;
        let total = t.elapsed().as_secs_f64();
        ours.push(total);
        synced.push(r.changes.seconds_sync_staged);
        // Opening the device, getting the manifest, checking the store has every chunk.
        before
            .push(total - r.snapshot_seconds - r.changes.seconds_stage - r.changes.seconds_commit);
        anyhow::ensure!(r.fetch.chunks_fetched == 0, "the chunk store was not warm");
        anyhow::ensure!(r.changes.bytes_written == pubr.bytes, "apply wrote a partial tree");
        stage.push(r.changes.seconds_stage);
        commit.push(r.changes.seconds_commit);
        pre.push(r.snapshot_seconds);
        if run % 2 == 1 {
            cp_sync.push(cp_run(true)?);
            cp.push(cp_run(false)?);
        }
    }
    seed.shutdown();
    let all = serde_json::json!({ "apply_s": ours, "cp_a_s": cp, "cp_a_sync_s": cp_sync });
    let (o, c, cs) = (median(ours.clone()), median(cp.clone()), median(cp_sync.clone()));
    let ratio = o / c;
    if !json {
        println!(
            "apply: {} MiB layer ({} files), chunks in the local store, onto an empty root: {o:.2} s \
             (staging {:.2} s); cp -a of the same tree: {c:.2} s, cp -a + sync: {cs:.2} s; \
             apply/cp -a = {ratio:.2}x (floor 2x), apply/(cp -a + sync) = {:.2}x",
            pubr.bytes >> 20,
            pubr.files,
            median(stage.clone()),
            o / cs
        );
        println!(
            "  apply phases (median): open, manifest, store check {:.3} s; pre-apply snapshot \
             {:.3} s; staging (read store, verify, write) {:.3} s; commit (syncfs, journal, \
             renames, syncfs) {:.3} s, of which waiting for the staged data {:.3} s",
            median(before.clone()),
            median(pre.clone()),
            median(stage.clone()),
            median(commit.clone()),
            median(synced.clone())
        );
        println!(
            "  endpoint chunk store: {} MiB on disk for the {} MiB layer",
            store_bytes >> 20,
            pubr.bytes >> 20
        );
        println!("  every run: apply {ours:.2?} s, cp -a {cp:.2?} s, cp -a + sync {cp_sync:.2?} s");
    }
    Ok(serde_json::json!({
        "layer_bytes": pubr.bytes, "files": pubr.files, "apply_s": o, "cp_a_s": c,
        "cp_a_sync_s": cs, "ratio_vs_cp_a": ratio, "ratio_vs_cp_a_sync": o / cs,
        "floor": 2.0, "pass": ratio <= 2.0, "runs": all,
        "stage_s": median(stage), "commit_s": median(commit), "pre_snapshot_s": median(pre),
        "sync_staged_s": median(synced), "before_snapshot_s": median(before),
        "store_bytes": store_bytes,
    }))
}

/// Bytes of the regular files below `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d)? {
            let de = de?;
            let md = de.metadata()?;
            if md.is_dir() {
                stack.push(de.path());
            } else {
                n += md.len();
            }
        }
    }
    Ok(n)
}

/// 10,000 files in 100 directories, 1 to 16 KiB each.
fn device_tree(root: &Path) -> anyhow::Result<u64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(10_000);
    let mut bytes = 0;
    for d in 0..100 {
        let dir = root.join(format!("home/user/dir{d:03}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..100 {
            let len = rng.gen_range(1024..16384);
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            std::fs::write(dir.join(format!("file{f:03}.dat")), data)?;
            bytes += len as u64;
        }
    }
    Ok(bytes)
}

fn lstat_walk(root: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d)? {
            let p = de?.path();
            let md = std::fs::symlink_metadata(&p)?;
            n += 1;
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(n)
}

fn bench_snapshot(runs: usize, tmp: &Path, json: bool) -> anyhow::Result<serde_json::Value> {
    let seed_dir = tmp.join("snap-seed");
    let auth = SeedAuthority::init(&seed_dir)?;
    let state = tmp.join("snap-endpoint");
    auth.enroll(Role::Endpoint, "bench-snap", None, &state, true)?;
    let root = tmp.join("snap-root");
    let bytes = device_tree(&root)?;
    let session = Session::open(&state, Some(&root), false)?;
    let (_, first) = session.snapshot("bench: first", false, false)?;
    anyhow::ensure!(first.files == 10_000, "expected 10,000 files, saw {}", first.files);
    let (mut unchanged, mut walk, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        lstat_walk(&root)?;
        walk.push(t.elapsed().as_secs_f64());
        let (_, r) = session.snapshot("bench: unchanged", false, false)?;
        anyhow::ensure!(r.files_hashed == 0, "an unchanged device was rehashed");
        unchanged.push(r.seconds);
        let (_, r) = session.snapshot("bench: full verify", true, false)?;
        full.push(r.seconds);
    }
    let (u, w, f) = (median(unchanged), median(walk), median(full));
    if !json {
        println!(
            "snapshot: unchanged device of 10,000 files ({} MiB): {u:.3} s (floor 2 s); lstat walk \
             of the same tree: {w:.3} s ({:.1}x); --full-verify: {f:.3} s; first snapshot {:.3} s",
            bytes >> 20,
            u / w,
            first.seconds
        );
    }
    Ok(serde_json::json!({
        "files": 10_000, "bytes": bytes, "unchanged_s": u, "lstat_walk_s": w,
        "ratio_vs_lstat_walk": u / w, "full_verify_s": f, "first_s": first.seconds,
        "floor_s": 2.0, "pass": u < 2.0,
    }))
}
