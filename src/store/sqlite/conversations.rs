//! kf conversations in SQLite.

use rusqlite::{params, Connection, OptionalExtension};

use super::Sqlite;
use crate::store::conversations::{Change, Conversation, Customer, Verdict};
use crate::store::{now, StoreError};

fn select(db: &Connection, customer: &Customer) -> rusqlite::Result<Option<Conversation>> {
    db.prepare_cached(
        "SELECT last_customer_at, sent_since, human_since FROM kf_conversations
         WHERE channel = ?1 AND open_kfid = ?2 AND external_userid = ?3",
    )?
    .query_row(params![customer.channel, customer.open_kfid, customer.external_userid], |row| {
        Ok(Conversation { last_customer_at: row.get(0)?, sent_since: row.get(1)?, human_since: row.get(2)? })
    })
    .optional()
}

pub(super) fn upsert(db: &Connection, customer: &Customer, c: &Conversation) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO kf_conversations
         (channel, open_kfid, external_userid, last_customer_at, sent_since, human_since, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(channel, open_kfid, external_userid) DO UPDATE SET last_customer_at = excluded.last_customer_at,
         sent_since = excluded.sent_since, human_since = excluded.human_since, updated_at = excluded.updated_at",
    )?
    .execute(params![
        customer.channel,
        customer.open_kfid,
        customer.external_userid,
        c.last_customer_at,
        c.sent_since,
        c.human_since,
        now()
    ])
    .map(drop)
}

impl Sqlite {
    /// Applies `changes` in order, each to its row as read; the last one's verdict.
    pub(in crate::store) async fn change_kf_conversations(
        &self,
        changes: Vec<(Customer, Change)>,
    ) -> Result<Verdict, StoreError> {
        self.run_relaxed(move |db| {
            let mut verdict = Verdict::Allowed;
            for (customer, change) in &changes {
                let mut conversation = select(db, customer)?.unwrap_or_default();
                verdict = change.apply(&mut conversation);
                if verdict == Verdict::Allowed {
                    upsert(db, customer, &conversation)?;
                }
            }
            Ok(verdict)
        })
        .await
    }

    pub(in crate::store) async fn kf_conversation(
        &self,
        customer: Customer,
    ) -> Result<Option<Conversation>, StoreError> {
        self.run_relaxed(move |db| select(db, &customer)).await
    }
}
