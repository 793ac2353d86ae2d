//! `oasis-seed devices` and `oasis-seed wake` as an operator runs them: against a running seed
//! (through its admin socket) and offline, on the same persisted inventory.

use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::NodeIdentity;
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
    let c = Client::connect(&ep, addr, oasis_core::net::accept::ANY).await.unwrap();
    c.register(info).await.unwrap();
    c.close();
}

fn enroll(d: &str, name: &str, out: &Path) {
    let o = seed(&[
        "enroll",
        "--data",
        d,
        "--role",
        "endpoint",
        "--name",
        name,
        "--site",
        "paris",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

// Multi-threaded: the relay below is served by this runtime while the test waits on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_online_and_offline_and_unroutable_wakes_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    let d = data.to_str().unwrap();
    assert!(seed(&["init", "--data", d, "--site", "dc"]).status.success());
    let ep_state = dir.path().join("pc-1");
    enroll(d, "pc-1", &ep_state);
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

    // A relay endpoint on pc-2's subnet: `wake --json` says which relay sent, where, how many.
    let relay_state = dir.path().join("relay-1");
    enroll(d, "relay-1", &relay_state);
    let relay_id = NodeIdentity::load(&relay_state).unwrap();
    let relay_ep =
        net::server_endpoint("127.0.0.1:0".parse().unwrap(), &relay_id, &Default::default())
            .unwrap();
    let relay_addr = relay_ep.local_addr().unwrap();
    let relay = std::sync::Arc::new(oasis_core::wake::relay::RelayService::new(
        relay_id.info().clone(),
        oasis_core::wake::SendOptions { repeats: 2, spacing: Duration::from_millis(10) },
    ));
    let serving = tokio::spawn(net::serve(
        relay_ep.clone(),
        net::Router::new(std::sync::Arc::new(net::Refuse)).inventory(relay.clone()),
        std::sync::Arc::new(oasis_core::metrics::NodeMetrics::new()),
    ));
    let relay_info = DeviceInfo {
        name: "relay-1".into(),
        addrs: vec!["10.1.3.9/24".parse().unwrap()],
        relay: Some(relay_addr),
        ..Default::default()
    };
    register(&relay_state, addr, &relay_info).await;
    let nic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    nic.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pc2_state = dir.path().join("pc-2");
    enroll(d, "pc-2", &pc2_state);
    let pc2 = DeviceInfo {
        name: "pc-2".into(),
        macs: vec![[0x02, 0, 0, 0, 0, 2]],
        addrs: vec!["10.1.3.7/24".parse().unwrap()],
        wake_to: Some(nic.local_addr().unwrap()),
        ..Default::default()
    };
    register(&pc2_state, addr, &pc2).await;
    let o = seed(&["wake", "--data", d, "--json", "pc-2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert_eq!(v[0]["device"], "pc-2");
    assert_eq!(v[0]["mac"], "02:00:00:00:00:02");
    assert_eq!(v[0]["relay"], "relay-1");
    assert_eq!(v[0]["sent_to"], serde_json::json!([nic.local_addr().unwrap().to_string()]));
    assert_eq!(v[0]["packets"], 2);
    assert_eq!(v[0]["error"], Value::Null);
    assert_eq!(v[0]["skipped"], serde_json::json!([]));
    let mut buf = [0u8; 256];
    for _ in 0..2 {
        let n = nic.recv(&mut buf).unwrap();
        let (mac, pw) = oasis_core::wake::check_packet(&buf[..n]).unwrap();
        assert_eq!((mac.0, pw.len()), ([0x02, 0, 0, 0, 0, 2], 0));
    }
    assert_eq!(relay.packets_sent(), 2, "the relay sent them, not the seed");
    // The text form says the same.
    let text = String::from_utf8_lossy(&seed(&["wake", "--data", d, "pc-2"]).stdout).to_string();
    assert!(text.contains("woke pc-2") && text.contains("through relay-1"), "{text}");
    relay_ep.close(0u32.into(), b"done");
    serving.abort();

    // A delivery window that cannot parse is refused, naming the expected form.
    for bad in ["25:00-05:00", "02:00", "2:00-05:00", "02:00-02:00"] {
        let o = seed(&["assign", "--data", d, "--site", "paris", "base@1", "--window", bad]);
        assert!(!o.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("window") && err.contains(bad), "{bad}: {err}");
    }

    serve.kill().unwrap();
    serve.wait().unwrap();
    // Offline: the same, persisted.
    let v = json(&seed(&["devices", "--data", d, "--json"]));
    let names: Vec<&str> =
        v.as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["pc-1", "pc-2", "relay-1"]);
    assert_eq!(v[2]["relay"], relay_addr.to_string());
}
