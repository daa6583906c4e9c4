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
//!
//! Deliberately not here: when to prune (the `housekeeping` task).

use super::{backend, Store, StoreError};

/// What one prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub journal: u64,
    pub outbox: u64,
}

impl Store {
    /// Deletes finished sends (with their msgids) and kf conversations that have
    /// not changed since `cutoff`: their 48 hours are long past, and a customer
    /// who writes again starts a new one; and AI bot streams opened before it
    /// (their `response_url` died an hour after). Small tables: one statement each.
    pub async fn prune_replies(&self, cutoff: i64) -> Result<u64, StoreError> {
        backend!(self, b => b.prune_replies(cutoff).await)
    }

    /// Deletes handled journal entries and done outbox actions older than `cutoff`
    /// (Unix seconds), batch by batch.
    pub async fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        backend!(self, b => b.prune(cutoff).await)
    }
}
