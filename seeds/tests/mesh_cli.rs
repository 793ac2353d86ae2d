//! `oasis-seed id` and the mesh flags of `oasis-seed serve`, as an operator runs them.

use std::process::{Command, Output};

fn seed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oasis-seed")).args(args).output().expect("run oasis-seed")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn id_prints_a_stable_peer_id_of_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    let d = data.to_str().unwrap();
    let o = seed(&["id", "--data", d]);
    assert!(!o.status.success(), "id before init must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a seed data directory") && err.contains("oasis-seed init"), "{err}");

    stdout(&seed(&["init", "--data", d]));
    let first = stdout(&seed(&["id", "--data", d]));
    assert!(first.starts_with("12D3KooW"), "an ed25519 libp2p peer id: {first}");
    assert_eq!(stdout(&seed(&["id", "--data", d])), first, "the same id every time");
    assert_eq!(oasis_mesh::peer_id_of_state(&data).unwrap().to_string(), first);
}

#[test]
fn bad_mesh_flags_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    let d = data.to_str().unwrap();
    stdout(&seed(&["init", "--data", d]));
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--data", d, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        seed(&args)
    };
    let o = serve(&["--p2p-listen", "/ip4/127.0.0.1/udp/0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--p2p-listen") && err.contains("not a TCP or QUIC address"), "{err}");
    let o = serve(&["--bootstrap", "not-a-multiaddr"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--bootstrap") && err.contains("is not a multiaddr"), "{err}");
    let o = serve(&["--no-mdns"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("give --p2p-listen"));
}
