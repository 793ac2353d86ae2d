//! `oasis-seed devices` and `oasis-seed wake` as an operator runs them: against a running seed
//! (through its admin socket) and offline, on the same persisted inventory.

use oasis_core::identity::NodeIdentity;
use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::wake::DeviceInfo;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn seed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oasis-seed")).args(args).output().expect("run oasis-seed")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn register(state: &Path, addr: std::net::SocketAddr, info: &DeviceInfo) {
    let id = NodeIdentity::load(state).unwrap();
    let ep = net::client_endpoint(&id, &TransportOptions::default()).unwrap();
    let c = Client::connect(&ep, addr).await.unwrap();
    c.register(info).await.unwrap();
    c.close();
}

#[tokio::test]
async fn devices_are_listed_online_and_offline_and_unroutable_wakes_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    let d = data.to_str().unwrap();
    assert!(seed(&["init", "--data", d, "--site", "dc"]).status.success());
    let ep_state = dir.path().join("pc-1");
    let o = seed(&[
        "enroll",
        "--data",
        d,
        "--role",
        "endpoint",
        "--name",
        "pc-1",
        "--site",
        "paris",
        "--out",
        ep_state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&seed(&["devices", "--data", d, "--json"])), Value::Array(vec![]));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_oasis-seed"))
        .args(["serve", "--data", d, "--listen", &listen])
        .spawn()
        .unwrap();
    let addr = listen.parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if data.join("admin.sock").exists() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "seed did not start");
    let info = DeviceInfo {
        name: "pc-1".into(),
        macs: vec![[0x02, 0, 0, 0, 0, 1]],
        addrs: vec!["10.1.2.7/24".parse().unwrap()],
        agent_version: "test".into(),
        ..Default::default()
    };
    register(&ep_state, addr, &info).await;

    // While serve holds the store: through the admin socket.
    let v = json(&seed(&["devices", "--data", d, "--json", "--pending"]));
    assert_eq!(v[0]["name"], "pc-1");
    assert_eq!(v[0]["site"], "paris", "site from the certificate");
    assert_eq!(v[0]["role"], "endpoint");
    assert_eq!(v[0]["macs"][0], "02:00:00:00:00:01");
    assert_eq!(v[0]["addrs"][0], "10.1.2.7/24");
    assert_eq!(v[0]["plan"], Value::Null);
    let text = String::from_utf8_lossy(&seed(&["devices", "--data", d]).stdout).to_string();
    assert!(text.contains("pc-1") && text.contains("(pending)"), "{text}");

    // No relay on its subnet, and an unknown device: clear failures, exit code 1.
    let o = seed(&["wake", "--data", d, "--json", "pc-1", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert!(v[0]["error"].as_str().unwrap().contains("no relay on the subnet"), "{v}");
    assert!(v[1]["error"].as_str().unwrap().contains("not in the inventory"), "{v}");

    serve.kill().unwrap();
    serve.wait().unwrap();
    // Offline: the same, persisted.
    let v = json(&seed(&["devices", "--data", d, "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "pc-1");
}
