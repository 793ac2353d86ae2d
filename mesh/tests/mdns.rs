//! mDNS discovery needs a multicast-capable interface, which loopback is not. As root, this test
//! builds two network namespaces joined by a veth pair and runs one mesh node in each, with no
//! bootstrap address. Without root or network namespaces it prints a loud SKIPPED line.

mod common;

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use oasis_mesh::MeshConfig;

const SKIP: &str = "SKIPPED: mDNS test needs root + network namespaces";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn setup(tag: &str) -> Result<Namespaces, String> {
    let a = format!("oasis-mdns-a-{tag}");
    let b = format!("oasis-mdns-b-{tag}");
    let (va, vb) = (format!("oma{tag}"), format!("omb{tag}"));
    ip(&["netns", "add", &a])?;
    let mut guard = Namespaces(vec![a.clone()]);
    ip(&["netns", "add", &b])?;
    guard.0.push(b.clone());
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
    ip(&["link", "set", &va, "netns", &a])?;
    ip(&["link", "set", &vb, "netns", &b])?;
    for (ns, dev, addr) in [(&a, &va, "10.77.0.1/24"), (&b, &vb, "10.77.0.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "multicast", "on"])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev])?;
    }
    Ok(guard)
}

#[test]
fn mdns_finds_a_sibling_with_zero_configuration() {
    if unsafe { libc::geteuid() } != 0 {
        println!("{SKIP} (not root)");
        eprintln!("{SKIP} (not root)");
        return;
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let guard = match setup(&tag) {
        Ok(g) => g,
        Err(e) => {
            println!("{SKIP} ({e})");
            eprintln!("{SKIP} ({e})");
            return;
        }
    };
    let net = Net::new();
    let mut threads = Vec::new();
    for (i, ns) in guard.0.iter().enumerate() {
        let (id, state) = net.enroll(&format!("m{i}"), "lyon");
        let ns_path = format!("/run/netns/{ns}");
        threads.push(std::thread::spawn(move || -> Result<Duration, String> {
            let f = std::fs::File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let config = MeshConfig {
                    listen: vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()],
                    mdns: true,
                    ..MeshConfig::default()
                };
                let (h, task) = start(&id, &state, config).await;

                let h2 = h.clone();
                let found = wait_for(Duration::from_secs(15), || {
                    let h = h2.clone();
                    async move { !h.view().await.unwrap().is_empty() }
                })
                .await;
                // Stay up a little so the sibling finds us too.
                tokio::time::sleep(Duration::from_secs(2)).await;
                h.shutdown();
                let _ = task.await;
                found.ok_or_else(|| "no sibling found via mDNS".to_string())
            })
        }));
    }
    for t in threads {
        let took = t.join().unwrap().expect("mDNS discovery");
        println!("mDNS: sibling discovered and verified in {took:?}");
    }
    drop(guard);
}
