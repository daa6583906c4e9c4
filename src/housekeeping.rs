//! Housekeeping: the pruning task. Once at start-up and then every tenth of
//! `RETENTION_SECS`, whichever replica holds the `housekeeping` lease prunes for the
//! cluster (`Store::prune`), and the counts go to `wechat_api_store_pruned_total`.
//!
//! Deliberately not here: what pruning deletes and keeps (`store::retention`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::retention::Pruned;
use crate::store::{now, Store};
use crate::telemetry::Metrics;

/// The lease under which one owner prunes for the whole cluster.
const HOUSEKEEPING: &str = "housekeeping";

/// How often to prune: a tenth of the retention, between 10 s and 10 min.
fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(600))
}

/// The pruning task: once at start-up, then every [`period`], until `shutdown`.
pub(crate) async fn run(store: Store, retention: Duration, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let journal = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "journal".into())]);
    let outbox = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "outbox".into())]);
    let replies = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "sends".into())]);
    let mut tick = tokio::time::interval(period(retention));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Housekeeping once for the cluster: whoever holds the lease prunes.
        let lease = match store.claim_lease(HOUSEKEEPING.to_owned()).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!("store: cannot claim housekeeping, will retry: {error}");
                continue;
            }
        };
        let cutoff = now().saturating_sub(retention.as_secs().try_into().unwrap_or(i64::MAX));
        let pruned = store.prune(cutoff).await;
        match store.prune_replies(cutoff).await {
            Ok(deleted) => replies.increment(deleted),
            Err(error) => tracing::warn!("store: pruning sends failed, will retry: {error}"),
        }
        if let Err(error) = store.release_lease(lease).await {
            tracing::debug!("store: housekeeping lease not released (it runs out by itself): {error}");
        }
        match pruned {
            Ok(pruned) => {
                journal.increment(pruned.journal);
                outbox.increment(pruned.outbox);
                if pruned != Pruned::default() {
                    tracing::info!(
                        journal = pruned.journal,
                        outbox = pruned.outbox,
                        "store: pruned entries past retention"
                    );
                }
            }
            Err(error) => tracing::warn!("store: pruning failed, will retry: {error}"),
        }
    }
}
