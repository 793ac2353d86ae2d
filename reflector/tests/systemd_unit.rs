//! The shipped unit, `config/systemd/oasis-reflector.service`, as a branch box runs it. This
//! machine's systemd is not PID 1, so neither the unit nor `systemd-run` can start a service
//! here; the test applies the unit's process restrictions to the real `oasis-reflector serve`
//! itself, read from the unit file:
//! - `RestrictAddressFamilies=`: a seccomp filter that answers `socket()` of any other family
//!   with EAFNOSUPPORT, as systemd's does;
//! - `MemoryDenyWriteExecute=yes`: a seccomp filter refusing writable-and-executable mappings
//!   and `mprotect` to executable, as systemd's does;
//! - `SystemCallFilter=` with `SystemCallErrorNumber=`: an allowlist of the system calls of the
//!   groups it names, expanded by `systemd-analyze syscall-filter` (numbers from the kernel's
//!   `asm/unistd_64.h`); any other call fails with that error, as under systemd;
//! - `NoNewPrivileges=yes` (which seccomp needs anyway);
//! - an unprivileged user (nobody) when the test runs as root, as `User=` gives.
//!
//! The reflector must then start with its mesh and mDNS, read its interfaces (what it registers
//! for wake relays), and serve a manifest to an endpoint.

mod common;

use common::{layer, World};
use oasis_core::pki::Role;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("../../config/systemd/oasis-reflector.service");

/// The value of `key=` in the unit's `[Service]` section.
fn setting<'a>(key: &str) -> Option<&'a str> {
    UNIT.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::trim)
}

fn family(name: &str) -> i32 {
    match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        other => panic!("the unit names {other}, which this test does not know"),
    }
}

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

/// `RestrictAddressFamilies=`: socket() and socketpair() of another family fail with
/// EAFNOSUPPORT.
fn families_filter(allowed: &[i32]) -> BpfProgram {
    let not_allowed = || {
        let c = allowed
            .iter()
            .map(|&f| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, f as u64)
                    .expect("condition")
            })
            .collect();
        vec![SeccompRule::new(c).expect("rule")]
    };
    let rules =
        BTreeMap::from([(libc::SYS_socket, not_allowed()), (libc::SYS_socketpair, not_allowed())]);
    let action = SeccompAction::Errno(libc::EAFNOSUPPORT as u32);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()).expect("filter");
    filter.try_into().expect("bpf")
}

/// `MemoryDenyWriteExecute=yes`: no mapping both writable and executable, no mprotect to
/// executable.
fn wx_filter() -> BpfProgram {
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let x = libc::PROT_EXEC as u64;
    let prot = |mask, value| {
        let c =
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(mask), value)
                .expect("condition");
        vec![SeccompRule::new(vec![c]).expect("rule")]
    };
    let rules = BTreeMap::from([
        (libc::SYS_mmap, prot(wx, wx)),
        (libc::SYS_mprotect, prot(x, x)),
        (libc::SYS_pkey_mprotect, prot(x, x)),
    ]);
    let action = SeccompAction::Errno(libc::EPERM as u32);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()).expect("filter");
    filter.try_into().expect("bpf")
}

/// The system calls of systemd group `group` (`@system-service`), expanded recursively by
/// `systemd-analyze syscall-filter`; `None` where that tool is not installed.
fn group_calls(group: &str, out: &mut std::collections::BTreeSet<String>) -> Option<()> {
    let listed = Command::new("systemd-analyze").args(["syscall-filter", group]).output().ok()?;
    if !listed.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    for line in text.lines().skip(1).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            group_calls(line, out)?;
        } else {
            out.insert(line.to_string());
        }
    }
    Some(())
}

/// `SystemCallFilter=LIST` (an allowlist) with `SystemCallErrorNumber=`: `None` (and why) when
/// this machine cannot expand the groups or number the calls.
fn calls_filter(list: &str, errno: i32) -> Result<BpfProgram, String> {
    let mut names = std::collections::BTreeSet::new();
    for item in list.split_whitespace() {
        if item.starts_with('@') {
            group_calls(item, &mut names).ok_or("systemd-analyze cannot list the groups")?;
        } else {
            names.insert(item.to_string());
        }
    }
    let header = ["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .ok_or("no asm/unistd_64.h to number the system calls")?;
    let numbers: BTreeMap<&str, i64> = header
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("#define __NR_")?.split_whitespace();
            Some((w.next()?, w.next()?.parse().ok()?))
        })
        .collect();
    // Names of other architectures in the groups (arm_fadvise64_64, ...) have no number here.
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        names.iter().filter_map(|n| numbers.get(n.as_str())).map(|&nr| (nr, vec![])).collect();
    if rules.len() < 100 {
        return Err(format!("only {} system calls numbered", rules.len()));
    }
    let filter =
        SeccompFilter::new(rules, SeccompAction::Errno(errno as u32), SeccompAction::Allow, arch())
            .map_err(|e| e.to_string())?;
    filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The reflector process; killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            chown_tree(&p, uid, gid);
        } else {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reflector_runs_under_the_units_restrictions() -> anyhow::Result<()> {
    let allowed: Vec<i32> = setting("RestrictAddressFamilies")
        .expect("the unit restricts address families")
        .split_whitespace()
        .map(family)
        .collect();
    assert_eq!(setting("NoNewPrivileges"), Some("yes"));
    assert_eq!(setting("MemoryDenyWriteExecute"), Some("yes"));
    let mut programs = vec![families_filter(&allowed), wx_filter()];
    if let Some(list) = setting("SystemCallFilter") {
        let errno = match setting("SystemCallErrorNumber") {
            Some("EPERM") => libc::EPERM,
            other => panic!("SystemCallErrorNumber={other:?}: this test knows EPERM"),
        };
        match calls_filter(list, errno) {
            Ok(p) => programs.push(p),
            Err(why) => {
                println!("SKIPPED: SystemCallFilter= not applied ({why})");
                eprintln!("SKIPPED: SystemCallFilter= not applied ({why})");
            }
        }
    }

    let w = World::start().await?;
    let (m, data) = layer("base", "1", 20, 100);
    w.publish(&m, data)?;
    let state = w.enroll(Role::Reflector, "refl")?;
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let log = w.dir.path().join("reflector.log");
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        // `User=`: not root. nobody owns its state, as the unit's StateDirectory= arranges.
        chown_tree(&state, 65534, 65534);
    } else {
        println!("not root: the reflector runs as this user (the unit's User= is not tried)");
    }
    let mut bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_oasis-reflector"));
    if as_root {
        // nobody may not reach the build directory (a checkout under /root): run a copy from
        // the test's own directory, which it can.
        let copy = w.dir.path().join("oasis-reflector");
        std::fs::copy(&bin, &copy)?;
        bin = copy;
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg("--state")
        .arg(&state)
        .args(["--listen", &listen.to_string()])
        .args(["--upstream", &w.addr.to_string()])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    if as_root {
        cmd.uid(65534).gid(65534).env("HOME", "/nonexistent");
    }
    // SAFETY: the closure runs in the child between fork and exec. It only calls
    // `seccompiler::apply_filter`, which on its success path makes two system calls (prctl and
    // seccomp) on a program compiled before the fork, so it neither allocates nor takes a lock
    // that another thread of the parent could have held at the fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &programs {
                seccompiler::apply_filter(p).map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            Ok(())
        });
    }
    let _served = Served(cmd.spawn()?);

    let key = w.manifest_key();
    let t0 = Instant::now();
    let manifest = loop {
        match w.endpoint_client("ep", listen).await {
            Ok(c) => break c.open_manifest("base", Some("1"), &key, |_| None).await?,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the reflector never served under the unit's restrictions: {e}\n{out}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(manifest.manifest.manifest, m, "an endpoint is served");
    // Give the mesh and the wake registration their first second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = std::fs::read_to_string(&log)?;
    println!("{out}");
    assert!(out.contains("mesh started"), "the mesh starts");
    for broken in
        ["cannot list network interfaces", "mDNS disabled", "Address family not supported"]
    {
        assert!(!out.contains(broken), "under the unit: {broken:?}");
    }
    Ok(())
}
