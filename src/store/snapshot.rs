//! Moving an installation to another store (`wechat-api migrate-store`): what a
//! single VM's store holds that the service still needs — facts such as the first
//! start, kf cursors, unhandled journal entries, owed outbox actions, alert state,
//! names and kf conversations — taken out of one store and put into an empty one.
//! The conversations move because the kf rules read them (SPEC §10, §15): without
//! its row a customer counts as never heard from, so an owed reply to them would be
//! refused, and a session with a human would be forgotten.
//!
//! Deliberately not carried: handled journal entries and done actions (history the
//! new store need not hold; their dedup keys matter only for seconds after the
//! service stops), access tokens (fetched again), claims and leases, the SQLite
//! watermark (an engine's own bookkeeping), and the replies' bookkeeping: sends'
//! statuses (an owed text action records its send again when it runs; the send
//! API's idempotency keys of the old store are forgotten), AI bot streams (an answer still streaming when the service stopped is past its
//! refresh window by the time the new store serves; the bot's message itself, if
//! unhandled, is carried) and egress IPs (learned again from WeCom's next answer
//! or probe; a change of IP across the move is not mailed).

use super::alerts::FiringRecord;
use super::conversations::{Conversation, Customer};
use super::journal::NewEntry;
use super::kf::KfAccount;
use super::names::NamedId;
use super::{backend, Store, StoreError};

/// A journal entry not yet handled, with when it arrived.
#[derive(Debug, Clone)]
pub(crate) struct UnhandledEntry {
    pub entry: NewEntry,
    pub received_at: i64,
}

/// An outbox action not yet done, with its retry state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwedAction {
    pub key: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

/// Everything [`Store::export`] carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Facts about the installation (`first_started_at`, alert bookkeeping).
    pub facts: Vec<(String, String)>,
    /// A kf account (channel and `open_kfid`) → its stored `next_cursor`.
    pub kf_cursors: Vec<(KfAccount, String)>,
    pub unhandled: Vec<UnhandledEntry>,
    pub owed: Vec<OwedAction>,
    pub firing: Vec<FiringRecord>,
    pub names: Vec<NamedId>,
    /// What the kf rules know of each customer (their last message, the messages
    /// sent since, a human's session).
    pub conversations: Vec<(Customer, Conversation)>,
}

impl Snapshot {
    /// One line for the operator: how much was carried.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} facts, {} kf cursors, {} unhandled entries, {} owed actions, {} firing checks, {} names, {} kf conversations",
            self.facts.len(),
            self.kf_cursors.len(),
            self.unhandled.len(),
            self.owed.len(),
            self.firing.len(),
            self.names.len(),
            self.conversations.len()
        )
    }
}

impl Store {
    /// Everything the service still needs, read in one transaction.
    pub(crate) async fn export(&self) -> Result<Snapshot, StoreError> {
        backend!(self, b => b.export().await)
    }

    /// Puts `snapshot` into this store, in one transaction; refused with
    /// [`StoreError::NotEmpty`] when the store already holds a journal entry, an
    /// action, a kf cursor or a fact.
    pub(crate) async fn import(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        backend!(self, b => b.import(snapshot).await)
    }
}
