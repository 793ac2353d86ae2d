//! Tests for the policy's I/O shells: reading a policy file, and the WAN limiter on tokio's
//! paused clock.

use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../../config/bandwidth-policy.example.toml");
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Unix seconds of an RFC 3339 instant, e.g. `"2025-06-02T08:00:00+02:00"`.
fn ts(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_second()
}

fn parse(text: &str) -> BandwidthPolicy {
    BandwidthPolicy::from_toml_str(text, "policy.toml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bandwidth.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(load(&path).unwrap().windows().len(), 2);
    std::fs::write(&path, "[wan]\nrate = \"2 parsecs\"\n").unwrap();
    let msg = load(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{} line 2: wan.rate", path.display())), "{msg}");
    let missing = dir.path().join("nope.toml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, PolicyError::Io { .. }));
    assert!(e.to_string().contains("nope.toml"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// WanLimiter on tokio's paused clock
// ---------------------------------------------------------------------------------------------

fn flat(rate: u64, burst: u64) -> BandwidthPolicy {
    BandwidthPolicy::flat(rate).with_burst(burst)
}

#[tokio::test(start_paused = true)]
async fn limiter_paces_to_the_rate() {
    let lim = WanLimiter::new(flat(1_000_000, 1_000_000));
    let start = tokio::time::Instant::now();
    for _ in 0..11 {
        lim.acquire(TrafficClass::Foreground, 1_000_000).await;
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(10) && took < Duration::from_millis(10_050), "{took:?}");
    assert_eq!(lim.admitted_bytes(TrafficClass::Foreground), 11_000_000);
    assert_eq!(lim.rate_now(), Some(1_000_000));
}

#[tokio::test(start_paused = true)]
async fn limiter_serves_foreground_while_prefetch_saturates() {
    let lim = WanLimiter::new(flat(2_000_000, 1_000_000));
    let mut prefetchers = Vec::new();
    for _ in 0..4 {
        let lim = lim.clone();
        prefetchers.push(tokio::spawn(async move {
            for _ in 0..200 {
                lim.acquire(TrafficClass::Background, 256 * KIB).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..5 {
        let t = tokio::time::Instant::now();
        lim.acquire(TrafficClass::Foreground, 256 * KIB).await;
        assert!(t.elapsed() <= Duration::from_millis(1), "foreground waited {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Several foreground chunks at once: they drain the reserve, then get the link first.
    let t = tokio::time::Instant::now();
    let fgs: Vec<_> = (0..8)
        .map(|_| {
            let lim = lim.clone();
            tokio::spawn(async move { lim.acquire(TrafficClass::Foreground, 256 * KIB).await })
        })
        .collect();
    let bg_before = lim.admitted_bytes(TrafficClass::Background);
    for f in fgs {
        f.await.unwrap();
    }
    let bg_during = lim.admitted_bytes(TrafficClass::Background) - bg_before;
    // 2 MiB of foreground at 2 MB/s, less the reserve (half the bucket) that was ready: about
    // 0.8 s, with at most one prefetch chunk slipping in before the first waiter registered.
    let ideal = (8.0 * 256.0 * KIB as f64 - 500_000.0) / 2e6;
    assert!(t.elapsed().as_secs_f64() < ideal + 0.1, "{:?}, ideal {ideal}", t.elapsed());
    assert!(bg_during <= 256 * KIB, "prefetch took {bg_during} bytes while foreground waited");
    for p in prefetchers {
        p.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn limiter_reload_takes_effect_quickly() {
    let lim = WanLimiter::new(flat(1000, 64 * KIB));
    lim.acquire(TrafficClass::Foreground, 64 * KIB).await;
    let waiter = {
        let lim = lim.clone();
        tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            lim.acquire(TrafficClass::Foreground, 64 * KIB).await; // 65 s at 1000 B/s
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    lim.reload(BandwidthPolicy::unlimited());
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_millis(1_150), "{waited:?}");
    assert_eq!(lim.rate_now(), None);
    lim.set_share(0.5);
    lim.reload(flat(10_000_000, MIB));
    assert_eq!(lim.rate_now(), Some(5_000_000));
}

#[tokio::test(start_paused = true)]
async fn limiter_cancelled_foreground_unregisters() {
    let lim = WanLimiter::new(flat(1000, 64 * KIB));
    lim.acquire(TrafficClass::Foreground, 64 * KIB).await;
    // A foreground wait that is given up on (timeout) must not block prefetch forever.
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        lim.acquire(TrafficClass::Foreground, 64 * KIB),
    )
    .await;
    assert!(r.is_err());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let bg =
        tokio::time::timeout(Duration::from_secs(5), lim.acquire(TrafficClass::Background, 1000));
    assert!(bg.await.is_ok(), "prefetch still yields to a foreground request that is gone");
}

#[tokio::test(start_paused = true)]
async fn limiter_follows_the_schedule_on_an_anchored_clock() {
    let start = ts("2025-06-02T07:59:50+02:00");
    let lim = WanLimiter::with_unix_anchor(parse(EXAMPLE), start);
    assert_eq!(lim.rate_now(), Some(10_000_000));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(lim.rate_now(), Some(2_000_000));
    // From 07:59:50: 4 MiB of burst and 10 s at 10 MB/s, then business hours at 2 MB/s.
    let lim = WanLimiter::with_unix_anchor(parse(EXAMPLE), start);
    let t = tokio::time::Instant::now();
    let target = 124_000_000u64;
    let mut sent = 0;
    while sent < target {
        lim.acquire(TrafficClass::Foreground, 200_000).await;
        sent += 200_000;
    }
    let ideal = 10.0 + (target as f64 - 4.0 * MIB as f64 - 100e6) / 2e6;
    let took = t.elapsed().as_secs_f64();
    // Never faster than the schedule allows; the drop to 2 MB/s may count from up to 1 s early
    // (unix time is in whole seconds), which costs at most 8 MB, i.e. 4 s at 2 MB/s.
    assert!(took >= ideal - 0.1 && took <= ideal + 4.1, "took {took} s, ideal {ideal} s");
}
