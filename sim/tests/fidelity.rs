//! `oasis-sim fidelity` on a small layer: the simulator and a live loopback run (real seed,
//! a site of two meshed reflectors and a site of one, endpoints over QUIC, each site's WAN an
//! emulated link) move exactly the same WAN bytes. (Completion times are compared by the command, not here: no timed
//! assertions in tests; see docs/benchmarks.md.)

use oasis_sim::fidelity::{run_with, FidelityArgs};
use oasis_sim::scenario::Scenario;

const SCENARIO: &str = r#"
name = "fidelity-small"
start = "2025-06-02T12:00:00Z"
duration = "1h"
seed_egress = "unlimited"

[policy]
[policy.wan]
rate = "8MB/s"
burst = "1MiB"

[[layers]]
name = "base"
size = "6MiB"

[[sites]]
name = "site-a"
endpoints = 3
reflectors = 2
wan_rate = "1Gbit/s"
wan_latency = "0s"
lan_rate = "10Gbit/s"

[[sites]]
name = "site-b"
endpoints = 3
wan_rate = "1Gbit/s"
wan_latency = "0s"
lan_rate = "10Gbit/s"

[[assignments]]
layer = "base"
prefetch = false
"#;

/// Runs scenario `text` both ways; returns the comparison's JSON and its stored bytes.
async fn fidelity(text: &str, name: &str) -> anyhow::Result<(serde_json::Value, u64)> {
    let dir = tempfile::tempdir()?;
    let sc = Scenario::from_toml_str(text, name, None)?;
    let args = FidelityArgs {
        scenario: name.into(),
        json: true,
        seed: 1,
        dir: Some(dir.path().to_path_buf()),
    };
    let (out, table) = run_with(&args, sc).await?;
    eprintln!("{table}");
    let stored = out["stored_bytes"].as_u64().expect("stored_bytes");
    Ok((out, stored))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_and_live_wan_bytes_agree_exactly() -> anyhow::Result<()> {
    let (out, stored) = fidelity(SCENARIO, "fidelity-small.toml").await?;
    assert!(stored > 0);
    // One WAN pull per chunk per site, in both worlds: a site of two reflectors included.
    for site in out["sites"].as_array().expect("sites") {
        assert_eq!(site["wan_bytes_live"].as_u64(), Some(stored), "{site}");
        assert_eq!(site["wan_bytes_sim"].as_u64(), Some(stored), "{site}");
        assert_eq!(site["failed_sim"].as_u64(), Some(0), "{site}");
    }
    assert_eq!(out["wan_bytes_equal"], true, "{out}");
    assert_eq!(out["seed_served_bytes_live"].as_u64(), Some(2 * stored));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_lossy_long_links_wan_bytes_still_agree_and_the_link_carries_little_more(
) -> anyhow::Result<()> {
    // Both sites behind 80 ms, 1% loss in each direction, 50 Mbit/s: retransmissions cross
    // the emulated link but are never counted as WAN bytes twice.
    let text = SCENARIO
        .replace("wan_rate = \"1Gbit/s\"", "wan_rate = \"50Mbit/s\"\nwan_loss = 0.01")
        .replace("wan_latency = \"0s\"", "wan_latency = \"40ms\"");
    let (out, stored) = fidelity(&text, "fidelity-lossy.toml").await?;
    for site in out["sites"].as_array().expect("sites") {
        assert_eq!(site["link"], "80ms,1%,50Mbit", "{site}");
        assert_eq!(site["wan_bytes_live"].as_u64(), Some(stored), "{site}");
        assert_eq!(site["wan_bytes_sim"].as_u64(), Some(stored), "{site}");
        let carried = site["link_carried_bytes_down"].as_u64().expect("carried");
        // Chunk data, QUIC's own bytes and the 1% sent again.
        assert!(
            carried >= stored && carried as f64 <= stored as f64 * 1.10 + 65536.0,
            "the link carried {carried} bytes for {stored}: {site}"
        );
        let sim = site["completion_max_s"]["sim"].as_f64().expect("sim time");
        // The simulator knows a round trip per pull, the manifest's root and slow start.
        assert!(sim > 0.5, "{site}");
    }
    assert_eq!(out["wan_bytes_equal"], true, "{out}");
    Ok(())
}

#[test]
fn scenarios_that_cannot_run_live_are_refused_with_the_reason() {
    let with_failure = format!(
        "{SCENARIO}\n[[failures]]\nkind = \"wan_down\"\nsites = \"all\"\nfrom = \"1s\"\nto = \"2s\"\n"
    );
    let sc = Scenario::from_toml_str(&with_failure, "f.toml", None).expect("valid scenario");
    let args = FidelityArgs { scenario: "f.toml".into(), json: true, seed: 1, dir: None };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt.block_on(run_with(&args, sc)).expect_err("refused").to_string();
    assert!(err.contains("cannot run live") && err.contains("failures"), "{err}");
}
