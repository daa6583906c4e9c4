//! `loadgen wait`: start-up to live. Polls a URL, a new connection each millisecond,
//! until it answers 2xx, and prints the milliseconds since a given instant.
//!
//! Deliberately not here: the HTTP client itself (`client`), and any retry policy
//! beyond "again in a millisecond": the point is to see the first 2xx as it comes.

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::json;

use crate::client::{Exchange, Target};
use crate::unix_nanos;

/// Waits until `url` answers 2xx, then prints the milliseconds since `since_ns`
/// (Unix time in nanoseconds); an error after `timeout`.
pub(crate) async fn wait(url: &str, since_ns: u128, timeout: Duration, json: bool) -> anyhow::Result<()> {
    let target = Target::parse(url, None)?;
    let give_up = Instant::now() + timeout;
    loop {
        let attempt = async { target.connect().await?.exchange(&target.request(&target.path, None)).await };
        if let Ok(Ok(Exchange::Answered { status, .. })) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            if (200..300).contains(&status) {
                break;
            }
        }
        ensure!(Instant::now() < give_up, "{url} did not answer 2xx within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ms = unix_nanos().saturating_sub(since_ns) as f64 / 1e6;
    if json {
        println!("{}", json!({"url": url, "live_ms": ms}));
    } else {
        println!("{ms:.1}");
    }
    Ok(())
}
