//! The outbox: side effects (forward a record, send a reply) waiting to be done,
//! retried with back-off until they succeed. Each has an idempotency key, so
//! queueing the same action twice keeps one. Its bookkeeping has relaxed
//! durability: a "done" lost to a power loss means the action is done again, which
//! at-least-once delivery allows (receivers dedup by `X-Message-Id`).

use super::{backend, Store, StoreError};

/// An action to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    /// Idempotency key: the same key is queued once.
    pub key: String,
    pub kind: String,
    /// JSON, interpreted by the executor of `kind`.
    pub payload: String,
}

/// An action whose time has come.
#[derive(Debug, Clone)]
pub struct DueAction {
    pub id: i64,
    pub key: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
}

impl Store {
    /// Unfinished actions due by now, oldest first.
    pub async fn due_actions(&self, limit: usize) -> Result<Vec<DueAction>, StoreError> {
        backend!(self, b => b.due_actions(limit).await)
    }

    /// Marks an action done and queues what it led to, in one transaction.
    pub async fn action_succeeded(&self, id: i64, follow_ups: Vec<NewAction>) -> Result<(), StoreError> {
        backend!(self, b => b.action_succeeded(id, follow_ups).await)
    }

    /// Gives up on an action that cannot succeed; it stays, with its error, for diagnosis.
    pub async fn action_abandoned(&self, id: i64, error: String) -> Result<(), StoreError> {
        backend!(self, b => b.action_abandoned(id, error).await)
    }

    /// Records a failed attempt and when to try again.
    pub async fn action_failed(&self, id: i64, retry_in_secs: i64, error: String) -> Result<(), StoreError> {
        backend!(self, b => b.action_failed(id, retry_in_secs, error).await)
    }

    /// Unfinished actions, for health and metrics.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        backend!(self, b => b.outbox_backlog().await)
    }
}
