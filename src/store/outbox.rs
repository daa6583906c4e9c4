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

/// An action whose time has come, claimed for the store's lease ([`Store::with_lease`]): no one else
/// attempts it until the lease runs out, and only this claim may finish it.
#[derive(Debug, Clone)]
pub struct DueAction {
    pub id: i64,
    pub key: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
    /// Fences the finish: a claim taken over after its lease ran out is refused.
    pub claim: i64,
}

/// How an attempt of a claimed action ends: what the engines write in one
/// update fenced by the claim (one path per engine for all four).
#[derive(Debug)]
pub(super) enum Finish {
    /// Done; the follow-ups are queued in the same transaction.
    Succeeded(Vec<NewAction>),
    /// Given up: done, with the error kept for diagnosis.
    Abandoned(String),
    /// An attempt failed: counted, its error kept, due again in `retry_in_secs`.
    Failed { retry_in_secs: i64, error: String },
    /// Put off for `after_secs`: no attempt counted, no error kept.
    Deferred { after_secs: i64 },
}

/// What the outbox still owes (`outbox:backlog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    /// Actions not done: waiting, deferred by pacing, or retried after errors.
    pub actions: i64,
    /// When the oldest of them was queued (Unix seconds, the engine's clock);
    /// `None` when nothing is owed.
    pub oldest_since: Option<i64>,
}

impl Store {
    /// Claims up to `limit` unfinished actions that are due and not claimed by a
    /// live lease, oldest first.
    pub async fn claim_actions(&self, limit: usize) -> Result<Vec<DueAction>, StoreError> {
        backend!(self, b => b.claim_actions(limit).await)
    }

    /// Marks a claimed action done and queues what it led to, in one transaction;
    /// [`StoreError::LeaseLost`] (and nothing written) if the claim was taken over.
    pub async fn action_succeeded(&self, action: &DueAction, follow_ups: Vec<NewAction>) -> Result<(), StoreError> {
        self.finish(action, Finish::Succeeded(follow_ups)).await
    }

    /// Gives up on an action that cannot succeed; it stays, with its error, for diagnosis.
    pub async fn action_abandoned(&self, action: &DueAction, error: String) -> Result<(), StoreError> {
        self.finish(action, Finish::Abandoned(error)).await
    }

    /// Records a failed attempt and when to try again; releases the claim.
    pub async fn action_failed(&self, action: &DueAction, retry_in_secs: i64, error: String) -> Result<(), StoreError> {
        self.finish(action, Finish::Failed { retry_in_secs, error }).await
    }

    /// Puts a claimed action off for `after_secs` without counting an attempt or
    /// an error (pacing: WeCom's frequency limit, not a failure); releases the claim.
    pub async fn action_deferred(&self, action: &DueAction, after_secs: i64) -> Result<(), StoreError> {
        self.finish(action, Finish::Deferred { after_secs }).await
    }

    /// Ends the attempt of a claimed action, fenced by its claim.
    async fn finish(&self, action: &DueAction, finish: Finish) -> Result<(), StoreError> {
        backend!(self, b => b.finish_action(action.id, action.claim, finish).await)
    }

    /// How many actions are owed and since when the oldest is.
    pub async fn outbox_owed(&self) -> Result<Owed, StoreError> {
        backend!(self, b => b.outbox_owed().await)
    }

    /// Unfinished actions, for tests (health and metrics read `outbox_owed`).
    #[cfg(any(test, feature = "testing"))]
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        backend!(self, b => b.outbox_backlog().await)
    }
}
