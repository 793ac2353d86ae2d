//! Waiting for a condition in a test, without a timed assertion: the limit is a ceiling on
//! how long a test waits before it fails, not a figure it checks.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds or `limit` passes; whether it held.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
