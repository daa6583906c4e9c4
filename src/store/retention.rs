//! Retention: handled journal entries and finished outbox actions are deleted once
//! they are older than `RETENTION_SECS` (default 7 days). Deleting a journal entry
//! forgets its dedup key, so the retention is also the dedup window (at least: the
//! last 16,384 keys are also remembered in memory): a WeCom retry, seconds to
//! minutes later, is always inside it.
//!
//! Never deleted, whatever their age: a journal entry above the handled watermark
//! (not yet handled), the newest journal entry (SQLite numbers a new row after the
//! highest id present: keeping it means an id is never given out twice, so a new
//! entry never lands below the watermark) and an outbox action not yet done.
//!
//! Both tables are walked oldest first by rowid, in small batches, one transaction
//! each, so pruning never holds the writer thread for long and needs no index on a
//! time column (an index would be another B-tree write on every callback). Rows are
//! inserted in time order, so the walk stops at the first row that is too young.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{backend, now, Store, StoreError};
use crate::telemetry::Metrics;

/// The lease under which one owner prunes for the whole cluster.
const HOUSEKEEPING: &str = "housekeeping";

/// What one prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub journal: u64,
    pub outbox: u64,
}

impl Store {
    /// Deletes handled journal entries and done outbox actions older than `cutoff`
    /// (Unix seconds), batch by batch.
    pub async fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        backend!(self, b => b.prune(cutoff).await)
    }
}

/// How often to prune: a tenth of the retention, between 10 s and 10 min.
pub(crate) fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(600))
}

/// The pruning task: once at start-up, then every [`period`], until `shutdown`.
pub(crate) async fn run(store: Store, retention: Duration, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let journal = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "journal".into())]);
    let outbox = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "outbox".into())]);
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
