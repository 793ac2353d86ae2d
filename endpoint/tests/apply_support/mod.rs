//! Shared by the device tests: a real seed publishing base and app layers, and the real
//! `oasis-endpoint` binary driven as a user would.
#![allow(dead_code)]

use oasis_core::manifest::LayerKind;
use oasis_core::pki::Role;
use oasis_testkit::TestSeed;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_oasis-endpoint");

pub struct Device {
    pub seed: TestSeed,
    pub state: PathBuf,
    pub root: PathBuf,
}

impl Device {
    pub async fn new() -> Device {
        let seed = TestSeed::start().await.expect("seed starts");
        let state = seed.enroll(Role::Endpoint, "pc-1").expect("enroll");
        let root = seed.base().join("device-root");
        std::fs::create_dir_all(&root).unwrap();
        Device { seed, state, root }
    }

    pub fn tmp(&self, name: &str) -> PathBuf {
        self.seed.base().join(name)
    }

    pub fn publish(&self, name: &str, version: &str, kind: LayerKind, src: &Path) {
        self.seed.publish_as(name, version, kind, src).expect("publish");
    }

    pub fn apply_cmd(&self, base: &str, apps: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("apply")
            .arg("--state")
            .arg(&self.state)
            .arg("--from")
            .arg(self.seed.seed.addr.to_string())
            .arg("--root")
            .arg(&self.root)
            .arg("--base")
            .arg(base)
            .arg("--json");
        for a in apps {
            c.arg("--app").arg(a);
        }
        c
    }

    /// Runs apply; panics with stderr on failure; returns the JSON report.
    pub fn apply(&self, base: &str, apps: &[&str]) -> serde_json::Value {
        let out = self.apply_cmd(base, apps).output().unwrap();
        json_ok(out, "apply")
    }

    /// Runs `oasis-endpoint <args> --state STATE`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).arg("--state").arg(&self.state).output().unwrap()
    }

    pub fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        json_ok(self.run(&a), &args.join(" "))
    }
}

pub fn json_ok(out: Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{what}: stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// The tree a stack of layer sources should produce: base, then each app on top.
pub fn expected_it(srcs: &[&Path]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in srcs {
        out.extend(oasis_testkit::snapshot(s));
    }
    out
}

/// Part of `tree` whose paths are (not) in `keys`.
pub fn split(
    tree: &BTreeMap<String, String>,
    keys: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut inside = BTreeMap::new();
    let mut outside = BTreeMap::new();
    for (k, v) in tree {
        if keys.contains_key(k) {
            inside.insert(k.clone(), v.clone());
        } else {
            outside.insert(k.clone(), v.clone());
        }
    }
    (inside, outside)
}

/// Modification times of every file (symlinks and dirs left out), for exact-revert checks.
pub fn mtimes(root: &Path) -> BTreeMap<String, std::time::SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d).unwrap() {
            let p = de.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    md.modified().unwrap(),
                );
            }
        }
    }
    out
}
