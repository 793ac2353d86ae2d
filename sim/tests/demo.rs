//! `oasis-sim demo` end to end on a small layer: real seed, two sites of reflectors under a
//! policy file, endpoints over QUIC on 127.0.0.1.

use oasis_sim::demo::{run_demo, DemoArgs, SITES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_site_pulls_each_new_chunk_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args = DemoArgs {
        size_mib: 6,
        endpoints: 3,
        wan_rate: "40MB/s".into(),
        wan: None,
        dir: Some(dir.path().to_path_buf()),
        json: true,
    };
    let out = run_demo(&args).await?;
    assert_eq!(out.endpoints.len(), SITES.len() * 3 * 2, "every endpoint fetched both versions");
    assert_eq!(out.sites.len(), SITES.len() * 2);
    for s in &out.sites {
        // What crossed the site's WAN: exactly the chunks the version added, once.
        assert_eq!(s.wan_bytes, s.new_stored_bytes, "{s:?}");
        assert_eq!(s.wan_cap_bytes_per_s, 40_000_000);
        let eps: Vec<_> =
            out.endpoints.iter().filter(|e| e.site == s.site && e.version == s.version).collect();
        assert_eq!(eps.len(), 3);
        assert_eq!(s.delivered_bytes, eps.iter().map(|e| e.fetch.bytes).sum::<u64>());
        assert!(s.delivered_bytes >= 3 * (6 << 20) * 95 / 100, "{s:?}");
        if s.version == "1" {
            assert_eq!(s.lan_bytes, 3 * s.wan_bytes, "every endpoint got the layer over the LAN");
        } else {
            assert!(s.wan_bytes * 20 < s.delivered_bytes, "version 2 moved only changes: {s:?}");
        }
    }
    let wan: u64 = out.sites.iter().map(|s| s.wan_bytes).sum();
    assert_eq!(out.seed_served_bytes, wan, "the seed served only the reflectors' WAN pulls");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_emulated_wan_each_site_still_pulls_each_chunk_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args = DemoArgs {
        size_mib: 4,
        endpoints: 2,
        wan_rate: "40MB/s".into(),
        wan: Some("20ms,1%,100Mbit,jitter=2ms".parse()?),
        dir: Some(dir.path().to_path_buf()),
        json: true,
    };
    let out = run_demo(&args).await?;
    assert_eq!(out.endpoints.len(), SITES.len() * 2 * 2, "every endpoint fetched both versions");
    for site in SITES {
        let rows: Vec<_> = out.sites.iter().filter(|s| s.site == site).collect();
        for s in &rows {
            assert_eq!(s.wan_bytes, s.new_stored_bytes, "{s:?}");
        }
        // The link carried what the site's reflectors counted, and the protocol's overhead.
        let counted: u64 = rows.iter().map(|s| s.wan_bytes).sum();
        let carried = rows.iter().filter_map(|s| s.link_bytes_total).max().expect("--wan given");
        assert!(
            carried >= counted && carried <= counted + counted / 5 + (512 << 10),
            "site {site}: the link carried {carried} B for {counted} B counted"
        );
    }
    Ok(())
}
