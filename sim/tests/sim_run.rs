//! `oasis-sim run` behaviour on small scenarios (fast in debug builds).

use std::path::Path;

use oasis_core::wake::schedule::MachineResult;
use oasis_sim::scenario::Scenario;
use oasis_sim::simcmd::run_scenario;
use serde_json::Value;

/// A small scenario: `sites` branches, one 64 MiB layer in 1 MiB pulls, 10 MB/s policy.
fn base(extra_site: &str, extra: &str) -> String {
    format!(
        r#"
name = "test"
start = "2025-06-02T12:00:00Z"
duration = "3d"
timezone = "UTC"
seed_egress = "1Gbit/s"

[policy]
[policy.wan]
rate = "10MB/s"
burst = "1MiB"

[model]
pull_bytes = "1MiB"
bin = "10s"

[[layers]]
name = "base"
size = "64MiB"
shared_with_previous = 0.25

[[sites]]
name = "branch"
count = 3
endpoints = 20
wan_rate = "100Mbit/s"
lan_rate = "1Gbit/s"
asleep = 0.1
wake_delay = "40s"
wake_jitter = "20s"
{extra_site}

{extra}
"#
    )
}

fn parse(text: &str) -> Scenario {
    Scenario::from_toml_str(text, "test.toml", None).unwrap_or_else(|e| panic!("{e}"))
}

fn run(text: &str, seed: u64) -> Value {
    run_scenario(parse(text), seed).json()
}

fn total(v: &Value) -> &Value {
    &v["total"]
}

fn f(v: &Value, k: &str) -> f64 {
    v["total"][k].as_f64().unwrap_or_else(|| panic!("total.{k} missing in {v}"))
}

const ASSIGN_ALL: &str = "[[assignments]]\nlayer = \"base\"\n";

#[test]
fn same_seed_same_results() {
    let text = base("", ASSIGN_ALL);
    let strip = |mut v: Value| {
        let t = v["total"].as_object_mut().unwrap();
        t.remove("wall_seconds");
        t.remove("peak_rss_mib");
        v
    };
    let a = strip(run(&text, 42));
    let b = strip(run(&text, 42));
    assert_eq!(a, b);
    for k in [
        "wan_bytes",
        "unique_bytes",
        "completion_p50_s",
        "completion_p95_s",
        "completion_max_s",
        "peak_wan_ratio",
        "bytes_outside_windows",
        "failed_endpoints",
        "sim_seconds",
    ] {
        assert!(a["total"].get(k).is_some(), "total.{k} missing");
    }
    assert_eq!(f(&a, "failed_endpoints"), 0.0);
    // One WAN pull per piece per site: WAN bytes = what was not cached.
    assert_eq!(total(&a)["wan_bytes"], total(&a)["needed_bytes"]);
    // The policy holds: 10 s bins within burst + rate.
    assert!(f(&a, "peak_wan_ratio") <= 1.0 + 1.1 / 10.0, "{a}");
}

#[test]
fn window_is_never_exceeded() {
    // 22:00-06:00 UTC; the run starts at 12:00 UTC, so nothing may move before t = 10 h.
    // A slow link (2 MB/s for 64 MiB x 5 sites sharing nothing) still finishes the same night.
    let text = base("", "[[assignments]]\nlayer = \"base\"\nwindow = \"22:00-06:00\"\n");
    let v = run(&text, 1);
    assert_eq!(f(&v, "bytes_outside_windows"), 0.0, "{v}");
    assert_eq!(f(&v, "failed_endpoints"), 0.0, "{v}");
    let ten_h = 10.0 * 3600.0;
    assert!(f(&v, "completion_p50_s") > ten_h, "{v}");
    assert!(f(&v, "completion_max_s") < ten_h + 8.0 * 3600.0, "{v}");

    // A window too short for the layer (30 min at 20 KB/s = 36 MB a night for ~49 MB): the
    // transfer spans two nights, never outside.
    let slow = base("", "[[assignments]]\nlayer = \"base\"\nwindow = \"22:00-22:30\"\n")
        .replace("rate = \"10MB/s\"", "rate = \"20KB/s\"");
    let v = run(&slow, 1);
    assert_eq!(f(&v, "bytes_outside_windows"), 0.0, "{v}");
    assert_eq!(f(&v, "failed_endpoints"), 0.0, "{v}");
    assert!(f(&v, "completion_max_s") > 24.0 * 3600.0, "needs several nights: {v}");
}

#[test]
fn dead_reflector_endpoints_finish_from_sibling() {
    let kill = |text: &str, r: u32| {
        format!(
            "{text}\n[[failures]]\nkind = \"reflector_down\"\nsites = \"branch\"\nreflector = {r}\nat = \"3s\"\n"
        )
    };
    // Either way of sharing, whichever reflector dies: every endpoint finishes from the
    // survivor, later or not at all later, and the WAN carries again only what was on the way
    // to the dead one: at most `fetch_concurrency` (4) pulls of 1 MiB in flight per reflector,
    // both reflectors counted (the survivor kept a copy of everything it relayed).
    let mut text = String::new();
    for sharing in ["wan_sharing = \"spread\"\n", ""] {
        text = base(sharing, ASSIGN_ALL)
            .replace("count = 3\n", "count = 1\nreflectors = 2\n")
            .replace("asleep = 0.1", "asleep = 0.0");
        let healthy = run(&text, 3);
        let mut slower = 0;
        for r in [0, 1] {
            let v = run(&kill(&text, r), 3);
            let what = format!("{sharing:?} reflector {r} down");
            assert_eq!(f(&v, "failed_endpoints"), 0.0, "{what}: {v}");
            assert_eq!(total(&v)["completed_endpoints"], 20, "{what}");
            let extra = f(&v, "wan_bytes") - f(&healthy, "wan_bytes");
            eprintln!("{what}: {extra} B more over the WAN");
            assert!((0.0..=8.0 * 1048576.0).contains(&extra), "{what}: {extra} B more: {v}");
            assert!(f(&v, "completion_max_s") >= f(&healthy, "completion_max_s"), "{what}");
            if f(&v, "completion_max_s") > f(&healthy, "completion_max_s") {
                slower += 1;
            }
        }
        assert!(slower >= 1, "{sharing:?}: losing a reflector mid-transfer must show");
    }

    // With no sibling, its endpoints fail, and the report says why.
    let alone = text.replace("reflectors = 2\n", "reflectors = 1\n");
    let alone = format!(
        "{alone}\n[[failures]]\nkind = \"reflector_down\"\nsites = \"branch\"\nat = \"3s\"\n"
    );
    let v = run(&alone, 3);
    assert_eq!(f(&v, "failed_endpoints"), 20.0, "{v}");
    assert_eq!(total(&v)["failures"]["no reflector alive at the site"], 20);
}

#[test]
fn wan_outage_delays_but_delivers() {
    let text = base("", ASSIGN_ALL).replace("asleep = 0.1", "asleep = 0.0");
    let healthy = run(&text, 5);
    let outage = format!(
        "{text}\n[[failures]]\nkind = \"wan_down\"\nsites = \"all\"\nfrom = \"2s\"\nto = \"5m\"\n"
    );
    let v = run(&outage, 5);
    assert_eq!(f(&v, "failed_endpoints"), 0.0, "{v}");
    assert_eq!(total(&v)["completed_endpoints"], 60);
    assert!(f(&v, "completion_max_s") > 300.0, "{v}");
    assert!(f(&v, "completion_max_s") > f(&healthy, "completion_max_s"));
    // Everything needed arrived; bytes in flight when the link dropped are counted as wasted.
    assert_eq!(f(&v, "wan_bytes") - f(&v, "wasted_wan_bytes"), f(&v, "needed_bytes"), "{v}");
}

#[test]
fn slower_policy_takes_longer() {
    let text = base("", ASSIGN_ALL).replace("asleep = 0.1", "asleep = 0.0");
    let fast = run(&text, 1);
    let slow = run(&text.replace("rate = \"10MB/s\"", "rate = \"1MB/s\""), 1);
    assert!(f(&slow, "completion_p50_s") > 3.0 * f(&fast, "completion_p50_s"), "{slow}");
    // Within burst + rate over each 10 s bin: 1 MiB / (1 MB/s x 10 s) above 1.
    assert!(f(&slow, "peak_wan_ratio") <= 1.0 + 1.05 / 10.0 + 0.01, "{slow}");
}

fn err(text: &str) -> String {
    match Scenario::from_toml_str(text, "branch-50.toml", None) {
        Ok(_) => panic!("accepted a bad scenario"),
        Err(e) => e.to_string(),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle") + 1
}

#[test]
fn malformed_scenarios_name_key_and_line() {
    let good = base("", ASSIGN_ALL);
    let t = good.replace("wan_rate = \"100Mbit/s\"", "wan_rate = \"fast\"");
    let e = err(&t);
    let want = format!(
        "branch-50.toml line {}: sites[0].wan_rate \"fast\" is not a rate",
        line_of(&t, "\"fast\"")
    );
    assert!(e.starts_with(&want), "{e}\nwanted: {want}");

    let t = good.replace("endpoints = 20", "endpoints = 20\nendpionts = 3");
    let e = err(&t);
    assert!(
        e.starts_with(&format!(
            "branch-50.toml line {}: sites[0].endpionts is not a known key",
            line_of(&t, "endpionts")
        )),
        "{e}"
    );

    let t = good.replace("size = \"64MiB\"", "size = \"64Mb\"");
    let e = err(&t);
    assert!(e.contains(&format!("line {}: layers[0].size \"64Mb\"", line_of(&t, "64Mb"))), "{e}");

    // Inline policy: the policy parser's error, mapped back to the scenario's line.
    let t = good.replace("burst = \"1MiB\"", "burst = \"1MiB\"\n[[policy.wan.window]]\ndays = \"all\"\nstart = \"25:00\"\nend = \"06:00\"\nrate = \"1MB/s\"");
    let e = err(&t);
    assert!(
        e.starts_with(&format!(
            "branch-50.toml line {}: policy.wan.window[0].start \"25:00\" is not a time",
            line_of(&t, "25:00")
        )),
        "{e}"
    );

    let t = good.replace("[[assignments]]\nlayer = \"base\"", "[[assignments]]\nlayer = \"bsae\"");
    let e = err(&t);
    assert!(
        e.contains(&format!(
            "line {}: assignments[0].layer \"bsae\" is not a layer",
            line_of(&t, "bsae")
        )),
        "{e}"
    );

    let t = good.replace(
        "[[assignments]]\nlayer = \"base\"",
        "[[assignments]]\nlayer = \"base\"\nwindow = \"22:00-6pm\"",
    );
    let e = err(&t);
    assert!(e.contains(&format!("line {}: assignments[0].window", line_of(&t, "6pm"))), "{e}");

    let t = good.replace("wake_delay = \"40s\"", "wake_delay = \"soon\"");
    let e = err(&t);
    assert!(
        e.contains(&format!(
            "line {}: sites[0].wake_delay \"soon\" is not a duration",
            line_of(&t, "soon")
        )),
        "{e}"
    );

    let t = good.replace("asleep = 0.1", "asleep = 0.1\nwake_rate = 0");
    let e = err(&t);
    assert!(
        e.contains(&format!(
            "line {}: sites[0].wake_rate 0 must be a whole number of at least 1",
            line_of(&t, "wake_rate")
        )),
        "{e}"
    );
    let t = good.replace("asleep = 0.1", "asleep = 0.1\nnever_wakes = 2");
    let e = err(&t);
    assert!(
        e.contains(&format!("line {}: sites[0].never_wakes", line_of(&t, "never_wakes"))),
        "{e}"
    );

    let e = err("name = \"x\"\n[[layers]]\nname = \"a\"\nsize = 5\n");
    assert!(e.contains("policy is missing"), "{e}");

    let e = err("name = \"x\"\nnot toml at all\n");
    assert!(e.starts_with("branch-50.toml line 2, column 5: not valid TOML"), "{e}");
}

#[test]
fn shipped_scenarios_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sim");
    for name in ["branch-50.toml", "fleet-1000.toml", "night-window.toml", "fidelity.toml"] {
        let sc = Scenario::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(sc.total_sites() >= 1, "{name}");
    }
    let fleet = Scenario::load(&dir.join("fleet-1000.toml")).unwrap();
    assert_eq!(fleet.total_sites(), 1000);
    assert!(fleet.groups.iter().all(|g| g.endpoints == 50));
}

#[test]
fn real_chunks_move_exactly_their_bytes_once_per_site() {
    use oasis_core::ChunkId;
    use oasis_sim::engine::{content_from_chunks, simulate_content};
    // Two sites, one of two reflectors; a layer given as chunks (as `fidelity` does).
    let text = base("", ASSIGN_ALL)
        .replace("count = 3\n", "count = 2\nreflectors = 2\n")
        .replace("asleep = 0.1", "asleep = 0.0")
        .replace("shared_with_previous = 0.25", "");
    let mut sc = parse(&text);
    sc.model.pull_bytes = 1;
    let chunks: Vec<(ChunkId, u64)> = (0u64..500)
        .map(|i| {
            (ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes()), 20_000 + (i * 7919) % 90_000)
        })
        .collect();
    let total: u64 = chunks.iter().map(|c| c.1).sum();
    let content = content_from_chunks(&sc, std::slice::from_ref(&chunks), &[0]);
    assert_eq!(content.pulls.len(), 500, "one pull per chunk");
    let o = simulate_content(&sc, 1, content);
    assert_eq!(o.sites.len(), 2);
    for s in &o.sites {
        assert_eq!(s.stats.wan_bytes, total, "{}", s.name);
        assert_eq!(s.stats.completions.len(), 20, "{}", s.name);
    }
}

/// One site of 20 endpoints; `site` keys replace the base's sleep keys.
fn wake_scenario(site: &str, assign: &str) -> String {
    base("", assign)
        .replace("count = 3\n", "count = 1\n")
        .replace("asleep = 0.1\nwake_delay = \"40s\"\nwake_jitter = \"20s\"", site)
}

#[test]
fn sleepers_are_woken_in_batches_when_the_window_opens() {
    // Everyone asleep; 12 machines a minute = batches of 2 every 10 s (the reflector's
    // `wake_rate` pacing); each boots 30 s after its first packet. The window opens at 22:00
    // UTC, 10 h after the start.
    let text = wake_scenario(
        "asleep = 1.0\nwake_delay = \"30s\"\nwake_rate = 12",
        "[[assignments]]\nlayer = \"base\"\nwindow = \"22:00-06:00\"\n",
    );
    let run = run_scenario(parse(&text), 7);
    let site = &run.outcome.sites[0];
    let open = 10.0 * 3600.0;
    assert_eq!(site.wake_machines.len(), 20);
    for m in &site.wake_machines {
        let i: f64 = m.name.parse().unwrap();
        let batch = (i / 2.0).floor();
        assert_eq!(m.woken_at, Some(open + 10.0 * batch), "{m:?}");
        assert_eq!(m.wakes, 1, "came online within the timeout: {m:?}");
        assert_eq!(m.online_at, Some(open + 10.0 * batch + 30.0), "{m:?}");
        assert!(m.delivered_at.unwrap() > m.online_at.unwrap(), "{m:?}");
    }
    let v = run.json();
    let w = &v["total"]["wake"];
    assert_eq!(w["machines"], 20, "{v}");
    assert_eq!(w["woken"], 20, "{v}");
    assert_eq!(w["online"], 20, "{v}");
    assert_eq!(w["delivered"], 20, "{v}");
    assert_eq!(w["failed"], 0, "{v}");
    assert_eq!(f(&v, "failed_endpoints"), 0.0, "{v}");
    // Nobody fetches before it is online: the last batch (t + 90 s) boots at t + 120 s.
    assert!(f(&v, "completion_max_s") > open + 120.0, "{v}");
    assert_eq!(f(&v, "bytes_outside_windows"), 0.0, "{v}");
}

#[test]
fn a_machine_that_never_wakes_is_failed_with_the_reason() {
    // A quarter asleep (5 of 20), all of them dead to Wake-on-LAN; no window: the run starts
    // at the assignment. Each is woken, woken again after 2 min, then failed.
    let text = wake_scenario(
        "asleep = 0.25\nwake_delay = \"30s\"\nnever_wakes = 1.0\nwake_online_timeout = \"2m\"",
        ASSIGN_ALL,
    );
    let run = run_scenario(parse(&text), 11);
    let v = run.json();
    let reason = "did not come online within 120 s of 2 wake(s)";
    assert_eq!(f(&v, "failed_endpoints"), 5.0, "{v}");
    assert_eq!(total(&v)["failures"][format!("wake failed: {reason}")], 5, "{v}");
    let w = &v["total"]["wake"];
    assert_eq!(w["failed"], 5, "{v}");
    assert_eq!(w["failures"][reason], 5, "{v}");
    // The awake ones answer their batch's packet at once and are delivered; those delivered
    // (in ~8 s) before their batch came (the second, at 30 s) get no packet at all.
    assert_eq!(w["online"], 15, "{v}");
    assert_eq!(w["delivered"], 15, "{v}");
    let machines = &run.outcome.sites[0].wake_machines;
    let batch = |m: &MachineResult| m.name.parse::<usize>().unwrap() / 10;
    let failed: Vec<_> = machines.iter().filter(|m| m.reason.as_deref() == Some(reason)).collect();
    let want_woken = machines.iter().filter(|m| batch(m) == 0 || m.online_at.is_none()).count();
    assert!(want_woken < 20, "some awake machine of the second batch was done before it");
    assert_eq!(w["woken"], want_woken, "{v}");
    for m in machines.iter().filter(|m| batch(m) == 1 && m.online_at.is_some()) {
        assert_eq!(m.wakes, 0, "{m:?}");
        assert!(m.delivered_at.unwrap() < 30.0, "{m:?}");
    }
    assert_eq!(failed.len(), 5);
    for m in failed {
        assert_eq!((m.wakes, m.online_at), (2, None), "{m:?}");
        // Default pacing: batches of 10 every 30 s.
        assert_eq!(m.woken_at, Some(30.0 * batch(m) as f64), "{m:?}");
    }
    // The run ends with them: the simulation does not wait for the horizon (3 days).
    assert!(f(&v, "sim_seconds") < 3600.0, "{v}");

    // Deterministic for a seed, down to which machines never woke.
    let again = run_scenario(parse(&text), 11);
    assert_eq!(again.outcome.sites[0].wake_machines, run.outcome.sites[0].wake_machines);
    let strip = |mut v: Value| {
        let t = v["total"].as_object_mut().unwrap();
        t.remove("wall_seconds");
        t.remove("peak_rss_mib");
        v
    };
    assert_eq!(strip(again.json()), strip(v));
}

#[test]
fn reflectors_of_a_site_share_its_wan_and_pull_each_piece_once() {
    // Three reflectors, both ways of sharing: the site's leader (default) or rendezvous hashing
    // gives each piece one WAN fetcher, and the shares never let the site run above its policy
    // (burst + rate over each 10 s bin), so the site pulls what it needs once.
    for sharing in ["", "wan_sharing = \"leader\"\n", "wan_sharing = \"spread\"\n"] {
        let text = base("", ASSIGN_ALL)
            .replace("count = 3\n", &format!("count = 1\nreflectors = 3\n{sharing}"))
            .replace("asleep = 0.1", "asleep = 0.0");
        let v = run(&text, 2);
        assert_eq!(f(&v, "failed_endpoints"), 0.0, "{sharing}: {v}");
        assert_eq!(total(&v)["wan_bytes"], total(&v)["needed_bytes"], "{sharing}: {v}");
        assert!(f(&v, "peak_wan_ratio") <= 1.0 + 1.1 / 10.0, "{sharing}: {v}");
        // Shares summing to at most one cannot beat the site's rate: needed bytes less one
        // burst at 10 MB/s is a floor on the completion time.
        let needed = f(&v, "needed_bytes");
        let floor = needed / 10e6 - 1.1 * 1024.0 * 1024.0 / 10e6;
        assert!(f(&v, "completion_max_s") >= floor, "{sharing}: {v}");
    }
}

#[test]
fn a_wan_sharing_mode_that_does_not_exist_is_refused_by_name() {
    let text = base("wan_sharing = \"fair\"\n", ASSIGN_ALL);
    let e = Scenario::from_toml_str(&text, "test.toml", None).unwrap_err().to_string();
    assert!(e.contains("wan_sharing") && e.contains("\"fair\" is not a WAN sharing mode"), "{e}");
}

#[test]
fn a_long_lossy_link_costs_time_and_never_beats_the_link() {
    // No policy limit: the link is the limit. Same link rate, 20 ms vs 150 ms RTT with 1% loss.
    let text = |latency: &str, loss: &str| {
        base("", ASSIGN_ALL)
            .replace("rate = \"10MB/s\"", "rate = \"unlimited\"")
            .replace("asleep = 0.1", "asleep = 0.0")
            .replace(
                "wan_rate = \"100Mbit/s\"\n",
                &format!(
                    "wan_rate = \"100Mbit/s\"\nwan_latency = \"{latency}\"\nwan_loss = {loss}\n"
                ),
            )
    };
    let short = run(&text("10ms", "0.0"), 1);
    let long = run(&text("75ms", "0.01"), 1);
    let (a, b) = (f(&short, "completion_p50_s"), f(&long, "completion_p50_s"));
    // 64 MiB less the 25% shared with the previous version, at most 12.5 MB/s.
    let floor = 48.0 * 1048576.0 / 12.5e6;
    assert!(a > floor && b > floor, "{a} s, {b} s: faster than the link ({floor} s)");
    assert!(b > a + 0.5, "slow start and round trips on the long link: {a} s vs {b} s");
}

#[test]
fn a_reflectors_first_request_waits_for_its_connection_and_statement() {
    // A link of no bandwidth limit and a 2 s round trip: only round trips take time. The
    // reflector connects (a round trip), fetches its site's entitlement statement (one more),
    // asks for the manifest's root (one more) and then for the pull (one more).
    let text = r#"
name = "round-trips"
start = "2025-06-02T12:00:00Z"
duration = "1h"
seed_egress = "unlimited"

[policy]
[policy.wan]
rate = "unlimited"

[[layers]]
name = "base"
size = "64KiB"

[[sites]]
name = "far"
endpoints = 1
wan_rate = "unlimited"
wan_latency = "1s"
lan_rate = "10Gbit/s"

[[assignments]]
layer = "base"
prefetch = false
"#;
    let v = run(text, 1);
    let done = f(&v, "completion_max_s");
    assert!((8.0..8.5).contains(&done), "four round trips of 2 s: {done} s\n{v}");

    let outage = |from: &str| {
        let failure =
            format!("kind = \"wan_down\"\nsites = \"all\"\nfrom = \"{from}\"\nto = \"60s\"");
        run(&format!("{text}\n[[failures]]\n{failure}\n"), 1)
    };
    // Down before the statement came: after the link comes back, all four again.
    let v = outage("0s");
    let done = f(&v, "completion_max_s");
    assert!((68.0..68.5).contains(&done), "back at 60 s, then four round trips: {done} s\n{v}");
    // Down at 5 s, with the statement held (since 4 s) and the root on its way (asked at 4 s):
    // the handshake, the root again, then the pull.
    let v = outage("5s");
    let done = f(&v, "completion_max_s");
    assert!((66.0..66.5).contains(&done), "back at 60 s, then three round trips: {done} s\n{v}");
}
