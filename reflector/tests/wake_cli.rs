//! `oasis-reflector wake` as an operator runs it: packets byte-checked on a UDP listener, names
//! resolved from the inventory file, bad input refused with a clear message.

use oasis_core::wake::{check_packet, DeviceEntry, DeviceInfo, Mac};
use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

fn wake(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oasis-reflector"))
        .arg("wake")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run oasis-reflector")
}

#[test]
fn wake_sends_to_macs_and_names_and_refuses_bad_input() {
    let state = tempfile::tempdir().unwrap();
    let nic = UdpSocket::bind("127.0.0.1:0").unwrap();
    nic.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = nic.local_addr().unwrap().to_string();
    // pc-9 is known to this reflector's inventory, with its own wake address.
    std::fs::create_dir_all(state.path().join("wake")).unwrap();
    let entry = DeviceEntry {
        info: DeviceInfo {
            name: "pc-9".into(),
            macs: vec![[2, 0, 0, 0, 0, 9]],
            addrs: vec!["10.9.0.9/24".parse().unwrap()],
            wake_to: Some(nic.local_addr().unwrap()),
            ..Default::default()
        },
        last_seen: 1,
        reported_by: "pc-9".into(),
    };
    std::fs::write(
        state.path().join("wake/devices.json"),
        serde_json::to_vec(&vec![entry]).unwrap(),
    )
    .unwrap();

    let o =
        wake(state.path(), &["--to", &to, "--password", "0a0b0c0d", "--json", "02:00:00:00:00:01"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["sent_to"][0], to.as_str());
    assert_eq!(v[0]["packets"], 3);
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        let n = nic.recv(&mut buf).unwrap();
        assert_eq!(
            check_packet(&buf[..n]).unwrap(),
            (Mac([2, 0, 0, 0, 0, 1]), vec![10, 11, 12, 13])
        );
    }
    let o = wake(state.path(), &["--json", "pc-9"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = nic.recv(&mut buf).unwrap();
    assert_eq!(check_packet(&buf[..n]).unwrap().0, Mac([2, 0, 0, 0, 0, 9]));

    for (args, want) in [
        (vec!["00:11:22:33:44"], "not a MAC address"),
        (vec!["ghost"], "not a device in this reflector's inventory"),
        (vec!["--password", "abc", "02:00:00:00:00:01"], "SecureOn password"),
        (vec!["--to", "nowhere", "02:00:00:00:00:01"], "expected ADDR or ADDR:PORT"),
    ] {
        let o = wake(state.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn wake_pacing_comes_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.toml");
    let base = "state = \"st\"\nlisten = \"127.0.0.1:7443\"\nupstream = \"seed:7443\"\n";
    std::fs::write(&file, format!("{base}wake_rate = 120\nwake_online_timeout = \"2m\"\n"))
        .unwrap();
    let args = oasis_reflector::ConfigArgs { config: Some(file.clone()), ..Default::default() };
    let cfg = args.resolve().unwrap();
    let s = cfg.wake.schedule;
    assert_eq!(s.batch_size as u64 * 60 / s.batch_interval.as_secs(), 120, "{s:?}");
    assert_eq!(s.online_timeout, Duration::from_secs(120));
    std::fs::write(&file, format!("{base}wake_rate = 0\n")).unwrap();
    let err = args.resolve().unwrap_err();
    assert!(err.contains("wake_rate"), "{err}");
}
