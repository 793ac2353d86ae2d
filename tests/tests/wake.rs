//! Wake-on-LAN: magic packets byte-checked on real UDP sockets (our sender and
//! Debian's `wakeonlan` as a reference), broadcast in a network namespace, the inventory,
//! relay choice across subnets, and a scheduled delivery to an endpoint that sleeps until its
//! magic packet arrives.

use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::wake::schedule::{self, MachineState, ScheduleConfig, WakeRun};
use oasis_core::wake::{self as wol, check_packet, DeviceInfo, Mac, Password, SendOptions};
use oasis_mesh::libp2p::Multiaddr;
use oasis_reflector::{ReflectorConfig, RunningReflector};
use oasis_seed::devices::Inventory;
use oasis_testkit::{loopback_mesh, mesh_addr, random_tree, snapshot, TestSeed, TreeSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::UdpSocket;

const MAC: Mac = Mac([0x02, 0x42, 0xac, 0x11, 0x00, 0x07]);

/// Receives `n` datagrams (each within 5 s).
async fn receive(sock: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("a magic packet within 5 s")
            .unwrap();
        out.push(buf[..len].to_vec());
    }
    out
}

/// The byte check every received packet must pass: exact layout, MAC, password.
fn assert_magic(p: &[u8], mac: Mac, password: &[u8]) {
    assert_eq!(p.len(), 102 + password.len(), "packet length");
    assert!(p[..6].iter().all(|b| *b == 0xff), "sync stream: {:02x?}", &p[..6]);
    for i in 0..16 {
        assert_eq!(&p[6 + 6 * i..12 + 6 * i], &mac.0, "MAC repeat {i}");
    }
    assert_eq!(&p[102..], password, "SecureOn password");
    assert_eq!(check_packet(p).unwrap(), (mac, password.to_vec()));
}

fn fast() -> SendOptions {
    SendOptions { repeats: 3, spacing: Duration::from_millis(20) }
}

#[tokio::test]
async fn packets_are_byte_exact_on_a_udp_listener() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = sock.local_addr().unwrap();
    for pw in [None, Some("0a0b0c0d"), Some("01:02:03:04:05:06")] {
        let password = pw.map(|p| p.parse::<Password>().unwrap());
        let (n, _) = wol::send(MAC, to, password.as_ref(), fast()).await.unwrap();
        assert_eq!(n, 3);
        let want = password.as_ref().map(|p| p.as_bytes().to_vec()).unwrap_or_default();
        for p in receive(&sock, 3).await {
            assert_magic(&p, MAC, &want);
        }
    }
    // The default path (plain packet, port 9) goes through wol-rs; port 9 needs root.
    match UdpSocket::bind("127.0.0.1:9").await {
        Ok(s9) => {
            let (_, sender) =
                wol::send(MAC, "127.0.0.1:9".parse().unwrap(), None, fast()).await.unwrap();
            assert_eq!(sender, wol::packet::Sender::WolRs);
            for p in receive(&s9, 3).await {
                assert_magic(&p, MAC, &[]);
            }
        }
        Err(e) => eprintln!("SKIPPED: wol-rs path to 127.0.0.1:9 (cannot bind port 9: {e})"),
    }
}

/// Port 7 (echo, the other common WoL port), as `oasis-reflector wake --to ADDR:7` sends it:
/// through the `wol` crate's builder, plain and with a SecureOn password.
#[tokio::test]
async fn port_7_is_reached_when_configured() {
    let sock = match UdpSocket::bind("127.0.0.1:7").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: port 7 test (cannot bind 127.0.0.1:7: {e}; needs root)");
            return;
        }
    };
    let (n, sender) = wol::send(MAC, "127.0.0.1:7".parse().unwrap(), None, fast()).await.unwrap();
    assert_eq!((n, sender), (3, wol::packet::Sender::Wol));
    for p in receive(&sock, 3).await {
        assert_magic(&p, MAC, &[]);
    }
    let state = tempfile::tempdir().unwrap();
    let mac = MAC.to_string();
    let sent = oasis_reflector::wake::wake_command(
        state.path(),
        Some("127.0.0.1:7"),
        Some("a1:b2:c3:d4:e5:f6"),
        std::slice::from_ref(&mac),
    )
    .await
    .unwrap();
    assert_eq!(sent[0].sent_to, "127.0.0.1:7");
    assert_eq!(sent[0].error, "");
    for p in receive(&sock, sent[0].packets as usize).await {
        assert_magic(&p, MAC, &[0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6]);
    }
    // Without a port, --to means port 9.
    assert_eq!(oasis_reflector::wake::parse_to("127.0.0.1").unwrap().port(), 9);
}

#[tokio::test]
async fn wakeonlan_reference_packets_pass_the_same_validator() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new("wakeonlan")
        .args(["-i", "127.0.0.1", "-p", &port, "02:42:ac:11:00:07"])
        .output();
    match out {
        Err(e) => {
            eprintln!(
                "SKIPPED: Debian's `wakeonlan` is not installed ({e}); apt-get install wakeonlan"
            );
        }
        Ok(o) => {
            assert!(o.status.success(), "wakeonlan failed: {}", String::from_utf8_lossy(&o.stderr));
            let p = receive(&sock, 1).await.remove(0);
            assert_magic(&p, MAC, &[]);
            // And what we send is what the reference sends.
            assert_eq!(p, wol::packet::magic_packet(MAC, None));
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let o = std::process::Command::new(cmd).args(args).output().map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr)))
    }
}

/// Run inside the namespace by `broadcast_in_a_network_namespace` (re-executing this binary):
/// sends a wake with no destination, so the relay code picks its subnet's broadcast address.
#[tokio::test]
#[ignore = "helper: run by broadcast_in_a_network_namespace inside a netns"]
async fn netns_sender_helper() {
    let Ok(mac) = std::env::var("OASIS_WAKE_NETNS_MAC") else { return };
    let mac: Mac = mac.parse().unwrap();
    let sent = wol::relay::send_all(
        vec![wol::WakeTarget { device: "x".into(), mac: mac.0, to: None, password: vec![] }],
        fast(),
    )
    .await;
    println!("SENT {}", sent[0].sent_to);
    assert!(sent[0].error.is_empty(), "{}", sent[0].error);
}

#[tokio::test]
async fn broadcast_in_a_network_namespace() {
    let ns = format!("oasis-wake-{}", std::process::id());
    let (host_if, ns_if) = (
        format!("ow{}a", std::process::id() % 100000),
        format!("ow{}b", std::process::id() % 100000),
    );
    if let Err(e) = run("ip", &["netns", "add", &ns]) {
        eprintln!("SKIPPED: netns broadcast test needs root and iproute2 ({e})");
        return;
    }
    let cleanup = |ns: &str, host_if: &str| {
        let _ = run("ip", &["link", "del", host_if]);
        let _ = run("ip", &["netns", "del", ns]);
    };
    let setup = (|| {
        run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        run("ip", &["link", "set", &ns_if, "netns", &ns])?;
        run("ip", &["addr", "add", "10.77.0.1/24", "broadcast", "10.77.0.255", "dev", &host_if])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                "10.77.0.2/24",
                "broadcast",
                "10.77.0.255",
                "dev",
                &ns_if,
            ],
        )?;
        run("ip", &["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"])?;
        run("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
    })();
    if let Err(e) = setup {
        cleanup(&ns, &host_if);
        eprintln!("SKIPPED: cannot set up the veth pair ({e})");
        return;
    }
    // The listener sits on the host side of the veth; the sender, in the namespace, knows only
    // 10.77.0.2/24, so its default destination is 10.77.0.255:9 (the wol-rs path).
    let sock = match UdpSocket::bind("0.0.0.0:9").await {
        Ok(s) => s,
        Err(e) => {
            cleanup(&ns, &host_if);
            eprintln!("SKIPPED: cannot bind UDP port 9 on the host ({e})");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&exe)
        .args(["--ignored", "--exact", "netns_sender_helper", "--nocapture"])
        .env("OASIS_WAKE_NETNS_MAC", MAC.to_string())
        .output();
    let (out, packets) = tokio::join!(child, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 3 {
            match tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => got.push((buf[..n].to_vec(), from)),
                _ => break,
            }
        }
        got
    });
    cleanup(&ns, &host_if);
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SENT 10.77.0.255:9"), "helper output: {stdout}");
    assert_eq!(packets.len(), 3, "three repeats reach the host side");
    for (p, from) in packets {
        assert_eq!(from.ip().to_string(), "10.77.0.2", "sent from inside the namespace");
        assert_magic(&p, MAC, &[]);
    }
}

#[test]
fn a_scheduled_window_wakes_the_right_machines_in_batches_at_the_right_time() {
    // Site in Paris, window 02:00-05:00 local = 01:00-04:00 UTC on 2026-01-15 (winter).
    let tz = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    let mut now: jiff::Timestamp = "2026-01-15T00:50:00Z".parse().unwrap();
    let (start, end) = schedule::window_at("02:00-05:00", &tz, now).unwrap();
    let machines: Vec<String> = (0..7).map(|i| format!("pc-{i}")).collect();
    let cfg = ScheduleConfig {
        batch_size: 3,
        batch_interval: Duration::from_secs(60),
        online_timeout: Duration::from_secs(600),
        rewakes: 0,
        deliver_timeout: Duration::from_secs(3600),
    };
    let mut run = WakeRun::new(
        machines.clone(),
        schedule::since_epoch(start),
        Some(schedule::since_epoch(end)),
        cfg,
    );
    // A controllable clock: step 10 s at a time and record when each wake went out.
    let mut woken: Vec<(String, String)> = Vec::new();
    while now < "2026-01-15T01:10:00Z".parse().unwrap() {
        for name in run.poll(schedule::since_epoch(now)) {
            woken.push((name, now.to_zoned(tz.clone()).strftime("%H:%M:%S").to_string()));
        }
        now = now.checked_add(jiff::SignedDuration::from_secs(10)).unwrap();
    }
    let at = |t: &str| -> Vec<&str> {
        woken.iter().filter(|(_, w)| w == t).map(|(n, _)| n.as_str()).collect()
    };
    assert_eq!(
        at("02:00:00"),
        ["pc-0", "pc-1", "pc-2"],
        "first batch at the window start, local time"
    );
    assert_eq!(at("02:01:00"), ["pc-3", "pc-4", "pc-5"]);
    assert_eq!(at("02:02:00"), ["pc-6"]);
    assert_eq!(woken.len(), 7, "each machine woken once: {woken:?}");
}

async fn reflector(
    seed: &TestSeed,
    name: &str,
    tweak: impl FnOnce(&mut ReflectorConfig),
) -> anyhow::Result<RunningReflector> {
    let state = seed.base().join(format!("node-{name}"));
    if !state.join("node.key").exists() {
        seed.enroll_in_site(Role::Reflector, name, "branch")?;
    }
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, seed.seed.addr.to_string());
    cfg.wake.sync_every = Duration::from_millis(200);
    cfg.wake.tick = Duration::from_millis(100);
    cfg.wake.send = fast();
    tweak(&mut cfg);
    RunningReflector::start(cfg).await
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Registers `info` as the endpoint enrolled in `state`, with `to` (a reflector or the seed).
async fn register_as(state: &Path, to: SocketAddr, info: &DeviceInfo) -> anyhow::Result<()> {
    let id = NodeIdentity::load(state)?;
    let ep = net::client_endpoint(&id, &TransportOptions::default())?;
    let c = Client::connect(&ep, to, oasis_core::net::accept::ANY).await?;
    let r = c.register(info).await;
    c.close();
    Ok(r?)
}

fn wake_packets(r: &RunningReflector) -> f64 {
    oasis_core::metrics::sample_value(&r.metrics.render(), "oasis_wake_packets_total")
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_wake_goes_out_from_the_relay_on_the_targets_subnet_never_the_seed() {
    let seed = TestSeed::start().await.unwrap();
    let net = |s: &str| Some(vec![s.parse().unwrap()]);
    let ra = reflector(&seed, "refl-a", |c| c.wake.addrs = net("10.1.0.2/24")).await.unwrap();
    let rb = reflector(&seed, "refl-b", |c| c.wake.addrs = net("10.2.0.2/24")).await.unwrap();
    let rc = reflector(&seed, "refl-c", |c| c.wake.addrs = net("10.3.0.2/24")).await.unwrap();
    // Machine pc-b sits on 10.2.0.0/24; its "NIC" is a UDP listener here.
    let nic = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut infos = Vec::new();
    for (name, addr, wake_to) in [
        ("pc-b", "10.2.0.5/24", Some(nic.local_addr().unwrap())),
        ("pc-c", "10.3.0.5/24", None),
        ("pc-z", "10.9.0.5/24", None),
    ] {
        let state = seed.enroll_in_site(Role::Endpoint, name, "branch").unwrap();
        let info = DeviceInfo {
            name: name.into(),
            macs: vec![MAC.0],
            addrs: vec![addr.parse().unwrap()],
            wake_to,
            ..Default::default()
        };
        // pc-b registers through its reflector (forwarded to the seed), the others directly.
        let to = if name == "pc-b" { rb.addr } else { seed.seed.addr };
        register_as(&state, to, &info).await.unwrap();
        infos.push(info);
    }
    let inv = Inventory::open(&seed.seed.store).unwrap();
    wait_for("reflectors and pc-b in the seed's inventory", || {
        let l = inv.list(false).unwrap();
        ["refl-a", "refl-b", "refl-c", "pc-b"].iter().all(|n| l.iter().any(|r| &r.name == n))
    })
    .await;
    let pcb = inv.get("pc-b").unwrap().unwrap();
    assert_eq!(pcb.reported_by, "refl-b", "forwarded by its reflector");
    assert_eq!((pcb.site.as_deref(), pcb.role.as_str()), (Some("branch"), "endpoint"));
    assert!(inv.get("pc-c").unwrap().unwrap().is_pending());
    // refl-c goes to sleep: its relay address stops answering.
    rc.stop().await;

    let seed_id = NodeIdentity::load(&seed.data()).unwrap();
    let ep = net::client_endpoint(&seed_id, &TransportOptions::default()).unwrap();
    let list = inv.list(false).unwrap();
    let names: Vec<String> =
        ["pc-b", "pc-c", "pc-z", "nope"].iter().map(|s| s.to_string()).collect();
    let out = oasis_seed::devices::wake_devices(&ep, &list, &names).await;

    assert_eq!(out[0].relay.as_deref(), Some("refl-b"), "{:?}", out[0]);
    assert_eq!(out[0].error, None);
    assert_eq!(out[0].sent_to, [nic.local_addr().unwrap().to_string()]);
    for p in receive(&nic, 3).await {
        assert_magic(&p, MAC, &[]);
    }
    assert_eq!(wake_packets(&rb), 3.0, "refl-b sent the packets");
    assert_eq!(wake_packets(&ra), 0.0, "refl-a, on another subnet, sent none");
    let e = out[1].error.as_deref().unwrap();
    assert!(e.contains("refl-c") && e.contains("asleep or unreachable"), "{e}");
    assert!(out[2].error.as_deref().unwrap().contains("no relay on the subnet"), "{:?}", out[2]);
    assert!(out[3].error.as_deref().unwrap().contains("not in the inventory"), "{:?}", out[3]);

    // An endpoint may register only itself.
    let state = seed.base().join("node-pc-b");
    let mut other = infos[1].clone();
    other.name = "pc-c".into();
    let err = register_as(&state, seed.seed.addr, &other).await.unwrap_err();
    assert!(err.to_string().contains("may register only itself"), "{err}");
    drop((ra, rb));
}

#[tokio::test]
async fn a_sleeping_endpoint_is_woken_for_its_delivery_window_or_at_once_and_fetches() {
    // A window open now (UTC: the reflector has no policy file, so its site time zone is UTC).
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let from = now.checked_sub(jiff::SignedDuration::from_secs(60)).unwrap();
    let to = now.checked_add(jiff::SignedDuration::from_secs(1800)).unwrap();
    let window = format!("{}-{}", from.strftime("%H:%M"), to.strftime("%H:%M"));
    sleeping_endpoint_is_woken_and_fetches(Some(&window)).await;
    // An assignment without a window: as soon as possible. In the same test, one after the
    // other: a process holds one sleeping endpoint's announcement at a time.
    sleeping_endpoint_is_woken_and_fetches(None).await;
}

/// A sleeping endpoint of a site assigned "base" (in `window`, or as soon as possible) is woken
/// by the site's reflector, fetches the layer, and the reflector records it delivered.
async fn sleeping_endpoint_is_woken_and_fetches(window: Option<&str>) {
    let seed = TestSeed::start().await.unwrap();
    let src = seed.base().join("src");
    random_tree(
        &src,
        5,
        TreeSpec { small_files: 12, large_files: 1, large_size: 200 << 10, depth: 3 },
    )
    .unwrap();
    seed.publish("base", "1", &src).unwrap();
    oasis_seed::catalog::Catalog::open(&seed.seed.store)
        .unwrap()
        .assign("branch", "base", "1", window)
        .unwrap();
    let state = seed.enroll_in_site(Role::Endpoint, "pc-sleepy", "branch").unwrap();
    let into = seed.base().join("root");
    let refl_state = seed.base().join("node-refl");
    // Batches of one, a short online timeout so a lost machine fails within the test.
    let r = reflector(&seed, "refl", |c| {
        c.wake.schedule.batch_size = 1;
        c.wake.schedule.online_timeout = Duration::from_secs(20);
        c.assignments_poll = Duration::from_millis(300);
    })
    .await
    .unwrap();
    let opts = oasis_endpoint::sleep::SleepOptions {
        state_dir: state,
        sources: vec![r.addr],
        listen: "127.0.0.1:0".parse().unwrap(),
        mac: Some(MAC.0),
        password: None,
        layers: vec![],
        into: into.clone(),
        streams: 4,
    };
    let report = tokio::time::timeout(Duration::from_secs(60), oasis_endpoint::sleep::sleep(&opts))
        .await
        .expect("woken and delivered within 60 s")
        .unwrap();
    assert_eq!(report.mac, MAC.to_string());
    assert_eq!(report.fetched.len(), 1);
    assert_eq!(snapshot(&into.join("base")), snapshot(&src));
    // The reflector recorded it: woken, online, delivered.
    let mut last = Vec::new();
    for _ in 0..100 {
        last = oasis_reflector::wake::read_runs(&refl_state).unwrap();
        let m = last.iter().flat_map(|r| r.machines.iter()).find(|m| m["name"] == "pc-sleepy");
        if m.is_some_and(|m| m["state"] == "delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = last.iter().find(|r| r.layer == "base@1").expect("a run for base@1");
    assert_eq!(run.window, window.unwrap_or_default());
    assert_eq!(run.end.is_none(), window.is_none(), "a run without a window has no end");
    let m = run.machines.iter().find(|m| m["name"] == "pc-sleepy").expect("pc-sleepy in the run");
    assert_eq!(m["state"], "delivered", "{run:?}");
    assert!(m["wakes"].as_u64().unwrap() >= 1);
    assert!(m["woken_at"].as_f64().unwrap() <= m["online_at"].as_f64().unwrap());
    let text = r.metrics.render();
    let v = |n: &str| oasis_core::metrics::sample_value(&text, n).unwrap_or(-1.0);
    assert_eq!(v("oasis_wake_machines_delivered_total"), 1.0, "{text}");
    assert_eq!(v("oasis_wake_machines_failed_total"), 0.0);
    let _ = MachineState::Delivered;
}

const MESH_HEARTBEAT: Duration = Duration::from_millis(500);

/// The mesh on 127.0.0.1 (loopback has no multicast: siblings meet through `bootstrap`).
/// Waits until `r` sees each of `peers` (reflector, site) as a verified live mesh peer.
async fn wait_meshed(r: &RunningReflector, peers: &[(&RunningReflector, &str)]) {
    let mesh = r.mesh().expect("mesh on");
    for _ in 0..400 {
        let view = mesh.view().await.unwrap();
        let ok = peers.iter().all(|(p, site)| {
            let id = oasis_mesh::peer_ref(&p.mesh().expect("mesh on").peer_id());
            view.live_peers(site).contains(&id)
        });
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mesh did not settle in 20 s");
}

/// The inventory a reflector exports to STATE/wake/devices.json.
fn inventory_of(state: &Path) -> Vec<wol::DeviceEntry> {
    std::fs::read(oasis_reflector::wake::devices_file(state))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// An endpoint of branch on subnet `net` whose "NIC" is a UDP listener on 127.0.0.1 (its
/// `wake_to`), registered with `via`.
async fn machine(
    seed: &TestSeed,
    name: &str,
    net: &str,
    via: SocketAddr,
) -> (UdpSocket, DeviceInfo) {
    let nic = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let state = seed.enroll_in_site(Role::Endpoint, name, "branch").unwrap();
    let info = DeviceInfo {
        name: name.into(),
        macs: vec![MAC.0],
        addrs: vec![net.parse().unwrap()],
        wake_to: Some(nic.local_addr().unwrap()),
        ..Default::default()
    };
    register_as(&state, via, &info).await.unwrap();
    (nic, info)
}

fn gossip_count(r: &RunningReflector, direction: &'static str) -> u64 {
    let m = r.mesh().expect("mesh on").metrics();
    m.messages.get_or_create(&vec![("kind", "inventory"), ("direction", direction)]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflectors_of_a_site_share_the_inventory_over_the_mesh_even_without_the_seed() {
    let seed = TestSeed::start().await.unwrap();
    let mesh = |boot: Vec<Multiaddr>| {
        move |c: &mut ReflectorConfig| c.mesh = Some(loopback_mesh(MESH_HEARTBEAT, boot))
    };
    let a = reflector(&seed, "inv-a", mesh(vec![])).await.unwrap();
    let boot = mesh_addr(&a, false).await.unwrap();
    let b = reflector(&seed, "inv-b", mesh(vec![boot.clone()])).await.unwrap();
    // A reflector of another site on the same mesh.
    seed.enroll_in_site(Role::Reflector, "inv-other", "elsewhere").unwrap();
    let c = reflector(&seed, "inv-other", mesh(vec![boot])).await.unwrap();
    wait_meshed(&a, &[(&b, "branch"), (&c, "elsewhere")]).await;
    wait_meshed(&b, &[(&a, "branch")]).await;
    wait_meshed(&c, &[(&a, "branch")]).await;

    // The seed goes away: whatever B learns from now on did not come through it.
    seed.seed.shutdown();
    let (nic, info) = machine(&seed, "pc-gossip", "10.4.0.7/24", a.addr).await;

    let b_state = seed.base().join("node-inv-b");
    wait_for("inv-b to learn pc-gossip by gossip", || {
        inventory_of(&b_state).iter().any(|d| d.info.name == "pc-gossip")
    })
    .await;
    let learnt = inventory_of(&b_state).into_iter().find(|d| d.info.name == "pc-gossip").unwrap();
    assert_eq!(learnt.reported_by, "inv-a", "registered at A, learnt from A");
    assert_eq!(learnt.info.site, "branch");
    assert_eq!(learnt.info.role, "endpoint");
    assert_eq!(learnt.info.macs, vec![MAC.0]);
    assert_eq!(learnt.info.addrs, info.addrs);
    assert_eq!(learnt.info.wake_to, info.wake_to);
    let v =
        oasis_core::metrics::sample_value(&b.metrics.render(), "oasis_device_gossip_learned_total");
    assert!(v.unwrap_or(0.0) >= 1.0, "counted as learnt from a sibling: {v:?}");

    // B wakes it by NAME (what `oasis-reflector wake --state B pc-gossip` runs).
    let sent =
        oasis_reflector::wake::wake_command(&b_state, None, None, &["pc-gossip".into()]).await;
    let sent = sent.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].error, "", "{:?}", sent[0]);
    assert_eq!(sent[0].device, "pc-gossip");
    assert_eq!(sent[0].sent_to, nic.local_addr().unwrap().to_string());
    assert_eq!(u32::from(sent[0].packets), wol::packet::DEFAULT_REPEATS);
    for p in receive(&nic, sent[0].packets as usize).await {
        assert_magic(&p, MAC, &[]);
    }

    // The reflector of the other site never hears of it, however often A re-announces.
    let out0 = gossip_count(&a, "out");
    wait_for("A to re-announce the site inventory three more times", || {
        gossip_count(&a, "out") >= out0 + 3
    })
    .await;
    let c_state = seed.base().join("node-inv-other");
    assert!(
        !inventory_of(&c_state).iter().any(|d| d.info.name == "pc-gossip"),
        "a reflector of another site learnt a device of branch"
    );
    assert_eq!(gossip_count(&c, "in"), 0, "no inventory of branch reached the other site");
    assert!(gossip_count(&b, "in") >= 1);
    for r in [a, b, c] {
        r.stop().await;
    }
}

type GossipSwarm = oasis_mesh::libp2p::Swarm<oasis_mesh::libp2p::gossipsub::Behaviour>;

/// A bare gossipsub node with the p2p key of an enrolled node (it can prove that enrolment).
fn impostor(keypair: oasis_mesh::libp2p::identity::Keypair) -> GossipSwarm {
    use oasis_mesh::libp2p::{gossipsub, noise, tcp, yamux};
    oasis_mesh::libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .build()
                .unwrap();
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), cfg)
                .unwrap()
        })
        .unwrap()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_gossip_from_outside_the_site_is_dropped_and_counted() {
    use futures::StreamExt;
    use oasis_core::gossip::{Body, GossipMsg, InventoryRecord};
    use oasis_mesh::libp2p::gossipsub::{Event, IdentTopic};
    use oasis_mesh::libp2p::swarm::SwarmEvent;
    let seed = TestSeed::start().await.unwrap();
    let a =
        reflector(&seed, "inv-target", |c| c.mesh = Some(loopback_mesh(MESH_HEARTBEAT, vec![])))
            .await
            .unwrap();
    let addr = mesh_addr(&a, true).await.unwrap();
    let a_state = seed.base().join("node-inv-target");
    let metrics = a.mesh().expect("mesh on").metrics().clone();

    // Two enrolled nodes that are not reflectors of branch: a reflector of another site and an
    // endpoint of branch, each proving its enrolment as a real mesh node would.
    let outsider = seed.enroll_in_site(Role::Reflector, "refl-elsewhere", "elsewhere").unwrap();
    let endpoint = seed.enroll_in_site(Role::Endpoint, "pc-forger", "branch").unwrap();
    // And a real reflector of branch whose records are out of bounds.
    let liar = seed.enroll_in_site(Role::Reflector, "refl-liar", "branch").unwrap();
    let record = |name: &str, site: &str| InventoryRecord {
        name: name.into(),
        role: "endpoint".into(),
        site: site.into(),
        agent_version: String::new(),
        macs: vec![MAC.0],
        addrs: vec!["10.4.0.66/24".into()],
        wake_to: Some("127.0.0.1:9".into()),
        relay: None,
        held: vec![],
        last_seen: 4_000_000_000,
        reported_by: "inv-target".into(),
    };
    let now = jiff::Timestamp::now().as_second() as u64;
    let fresh = |name: &str, site: &str| InventoryRecord { last_seen: now, ..record(name, site) };
    // (node, records, reason A counts)
    let cases = [
        (&outsider, vec![fresh("pc-forged-1", "branch")], "wrong_sender"),
        // An endpoint cannot even prove a mesh identity (its hello is `bad_binding`).
        (&endpoint, vec![fresh("pc-forged-2", "branch")], "unverified"),
        (&liar, vec![record("pc-forged-3", "branch")], "invalid"),
        (&liar, vec![fresh("pc-ok", "branch"), fresh("pc-forged-4", "elsewhere")], "wrong_site"),
    ];
    for (state, records, reason) in cases {
        let before = metrics.dropped(reason);
        let id = NodeIdentity::load(state).unwrap();
        let keypair = oasis_mesh::binding::load_or_create_keypair(state).unwrap();
        let peer = keypair.public().to_peer_id();
        let hello = oasis_mesh::binding::sign_binding(&id, &peer).unwrap();
        let mut swarm = impostor(keypair);
        let main = IdentTopic::new(oasis_mesh::TOPIC);
        let inv = IdentTopic::new(oasis_mesh::inventory_topic("branch"));
        swarm.behaviour_mut().subscribe(&main).unwrap();
        swarm.behaviour_mut().subscribe(&inv).unwrap();
        swarm.dial(addr.clone()).unwrap();
        let mut seq = 1u64 << 50;
        let mut publish = |swarm: &mut GossipSwarm, topic: &IdentTopic, body| {
            seq += 1;
            let _ = swarm.behaviour_mut().publish(topic.clone(), GossipMsg { seq, body }.encode());
        };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut subscribed = (false, false);
        while metrics.dropped(reason) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reason} never counted (subscribed {subscribed:?}; dropped: unverified {}, \
                 bad_binding {}, invalid {}; hellos in {})",
                metrics.dropped("unverified"),
                metrics.dropped("bad_binding"),
                metrics.dropped("invalid"),
                metrics.received("hello"),
            );
            tokio::select! {
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(Event::Subscribed { topic, .. }) = ev {
                        subscribed.0 |= topic == main.hash();
                        subscribed.1 |= topic == inv.hash();
                    }
                }
                _ = tick.tick(), if subscribed.0 && subscribed.1 => {
                    publish(&mut swarm, &main, Body::Hello(hello.clone()));
                    publish(&mut swarm, &inv, Body::Inventory(records.clone()));
                }
            }
        }
    }
    // No forged device got in, nor the valid record sent in one message with a foreign one.
    let names: Vec<String> = inventory_of(&a_state).into_iter().map(|d| d.info.name).collect();
    assert!(!names.iter().any(|n| n.starts_with("pc-forged") || n == "pc-ok"), "{names:?}");
    a.stop().await;
}

/// Starts `oasis-endpoint relay` for `name` (enrolled in branch) on subnet `net`, registering
/// with the seed, and waits until the seed's inventory shows it as a relay.
async fn endpoint_relay(
    seed: &TestSeed,
    name: &str,
    net: &str,
) -> oasis_endpoint::relay::RelayListener {
    let state = seed.enroll_in_site(Role::Endpoint, name, "branch").unwrap();
    let relay = oasis_endpoint::relay::RelayListener::start(oasis_endpoint::relay::RelayOptions {
        state,
        listen: "127.0.0.1:0".parse().unwrap(),
        sources: vec![seed.seed.addr],
        every: Duration::from_secs(3600),
        addrs: Some(vec![net.parse().unwrap()]),
        send: fast(),
    })
    .await
    .unwrap();
    let inv = Inventory::open(&seed.seed.store).unwrap();
    let addr = relay.addr;
    wait_for("the relay's registration", || {
        inv.get(name).unwrap().is_some_and(|r| r.relay == Some(addr))
    })
    .await;
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awake_endpoint_relays_wakes_where_no_reflector_is_and_a_sleeping_one_is_skipped() {
    let seed = TestSeed::start().await.unwrap();
    // Subnet 10.5.0.0/24 has no reflector; two endpoints on it can relay. The sleepy one
    // registered last, so it is the first candidate (most recently seen first; by name on a tie).
    let awake = endpoint_relay(&seed, "relay-awake", "10.5.0.21/24").await;
    let sleepy = endpoint_relay(&seed, "relay-asleep", "10.5.0.22/24").await;
    let (nic, _) = machine(&seed, "pc-relayed", "10.5.0.7/24", seed.seed.addr).await;
    let inv = Inventory::open(&seed.seed.store).unwrap();
    let seed_id = NodeIdentity::load(&seed.data()).unwrap();
    let ep = net::client_endpoint(&seed_id, &TransportOptions::default()).unwrap();
    let wake = |names: &[&str]| {
        let list = inv.list(false).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ep = ep.clone();
        async move { oasis_seed::devices::wake_devices(&ep, &list, &names).await }
    };
    let route = wol::route::route(
        "pc-relayed",
        &inv.list(false).unwrap().iter().map(|r| r.to_entry()).collect::<Vec<_>>(),
    )
    .unwrap();
    let order: Vec<&str> = route.relays.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(order, ["relay-asleep", "relay-awake"], "both on the subnet, the sleepy one first");

    // Both awake: the first candidate sends.
    let out = wake(&["pc-relayed"]).await;
    assert_eq!(out[0].error, None, "{:?}", out[0]);
    assert_eq!(out[0].relay.as_deref(), Some("relay-asleep"));
    for p in receive(&nic, 3).await {
        assert_magic(&p, MAC, &[]);
    }
    assert_eq!((sleepy.packets_sent(), awake.packets_sent()), (3, 0));

    // relay-asleep goes to sleep: it no longer answers. It is skipped, with the reason
    // recorded, and the awake relay sends.
    sleepy.shutdown();
    let out = wake(&["pc-relayed"]).await;
    assert_eq!(out[0].error, None, "{:?}", out[0]);
    assert_eq!(out[0].relay.as_deref(), Some("relay-awake"));
    assert_eq!(out[0].sent_to, [nic.local_addr().unwrap().to_string()]);
    assert_eq!(out[0].packets, 3);
    assert_eq!(out[0].skipped.len(), 1, "{:?}", out[0]);
    assert!(
        out[0].skipped[0].contains("relay-asleep") && out[0].skipped[0].contains("asleep"),
        "{:?}",
        out[0].skipped
    );
    for p in receive(&nic, 3).await {
        assert_magic(&p, MAC, &[]);
    }
    assert_eq!(awake.packets_sent(), 3, "sent by the awake relay, not by the seed");
    // What `oasis-seed wake --json` prints for it: relay, where, how many, who was skipped.
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json[0]["relay"], "relay-awake");
    assert_eq!(json[0]["sent_to"][0], nic.local_addr().unwrap().to_string());
    assert_eq!(json[0]["packets"], 3);
    assert_eq!(json[0]["mac"], MAC.to_string());
    assert!(json[0]["skipped"][0].as_str().unwrap().contains("relay-asleep"));

    // Both asleep: a recorded failure naming each relay and why, nothing sent.
    awake.shutdown();
    let out = wake(&["pc-relayed"]).await;
    let e = out[0].error.as_deref().expect("a failure, not a silent drop");
    for relay in ["relay-asleep", "relay-awake"] {
        assert!(e.contains(relay) && e.contains("is asleep or unreachable"), "{e}");
    }
    assert_eq!(out[0].relay, None);
    assert_eq!(out[0].packets, 0);
    let mut buf = [0u8; 256];
    let quiet = tokio::time::timeout(Duration::from_millis(300), nic.recv_from(&mut buf)).await;
    assert!(quiet.is_err(), "no packet without an awake relay");
}
