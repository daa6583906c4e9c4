//! Export and import of a [`Snapshot`] in PostgreSQL: `migrate-store`'s target.

use super::alerts::{read_firing, FIRING};
use super::{named, Postgres};
use crate::channels::ChannelName;
use crate::store::conversations::{Conversation, Customer};
use crate::store::journal::{EntryKind, NewEntry};
use crate::store::kf::KfAccount;
use crate::store::names::CachedName;
use crate::store::names::{NameKey, NamedId};
use crate::store::snapshot::{OwedAction, Snapshot, UnhandledEntry};
use crate::store::StoreError;

impl Postgres {
    pub(in crate::store) async fn export(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = client.build_transaction().read_only(true).start().await?;
        let facts = tx
            .query("SELECT key, value FROM meta WHERE key <> 'probe' ORDER BY key", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut kf_cursors = Vec::new();
        for r in tx.query("SELECT channel, open_kfid, cursor FROM kf_cursors ORDER BY channel, open_kfid", &[]).await? {
            let channel = named(r.get(0), |name| ChannelName::parse(name).ok())?;
            kf_cursors.push((KfAccount { channel, open_kfid: r.get(1) }, r.get(2)));
        }
        let mut unhandled = Vec::new();
        for r in tx
            .query(
                "SELECT dedup_key, channel, kind, sender, payload, received_at FROM journal
                 WHERE id IN (SELECT id FROM journal_pending) ORDER BY id",
                &[],
            )
            .await?
        {
            let (channel, kind): (String, String) = (r.get(1), r.get(2));
            unhandled.push(UnhandledEntry {
                entry: NewEntry {
                    dedup_key: r.get(0),
                    channel: named(&channel, |name| ChannelName::parse(name).ok())?,
                    kind: named(&kind, EntryKind::parse)?,
                    sender: r.get(3),
                    payload: r.get(4),
                    parsed: None,
                },
                received_at: r.get(5),
            });
        }
        let owed = tx
            .query(
                "SELECT action_key, kind, payload, attempts,
                        floor(extract(epoch from next_attempt_at))::bigint, created_at
                 FROM outbox WHERE done_at IS NULL ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| OwedAction {
                key: r.get(0),
                kind: r.get(1),
                payload: r.get(2),
                attempts: r.get(3),
                next_attempt_at: r.get(4),
                created_at: r.get(5),
            })
            .collect();
        let firing = tx.query(FIRING, &[]).await?.iter().map(read_firing).collect();
        let mut names = Vec::new();
        for r in
            tx.query("SELECT channel, id_type, id, name, source FROM names ORDER BY channel, id_type, id", &[]).await?
        {
            let channel = named(r.get(0), |name| ChannelName::parse(name).ok())?;
            names.push(NamedId {
                key: NameKey { channel, id_type: r.get(1), id: r.get(2) },
                name: CachedName { name: r.get(3), source: r.get(4) },
            });
        }
        let mut conversations = Vec::new();
        for r in tx
            .query(
                "SELECT channel, open_kfid, external_userid, last_customer_at, sent_since, human_since
                 FROM kf_conversations ORDER BY channel, open_kfid, external_userid",
                &[],
            )
            .await?
        {
            let channel = named(r.get(0), |name| ChannelName::parse(name).ok())?;
            let customer = Customer { channel, open_kfid: r.get(1), external_userid: r.get(2) };
            conversations.push((
                customer,
                Conversation { last_customer_at: r.get(3), sent_since: r.get(4), human_since: r.get(5) },
            ));
        }
        tx.commit().await?;
        Ok(Snapshot { facts, kf_cursors, unhandled, owed, firing, names, conversations })
    }

    pub(in crate::store) async fn import(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Two migrations at once must not both find the database empty.
        tx.batch_execute("LOCK TABLE journal, outbox, kf_cursors, kf_conversations, meta IN EXCLUSIVE MODE").await?;
        let empty: bool = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM journal) AND NOT EXISTS (SELECT 1 FROM outbox)
                    AND NOT EXISTS (SELECT 1 FROM kf_cursors) AND NOT EXISTS (SELECT 1 FROM kf_conversations)
                    AND NOT EXISTS (SELECT 1 FROM meta WHERE key <> 'probe')",
                &[],
            )
            .await?
            .get(0);
        if !empty {
            return Err(StoreError::NotEmpty);
        }
        for (key, value) in &snapshot.facts {
            tx.execute("INSERT INTO meta (key, value) VALUES ($1, $2)", &[key, value]).await?;
        }
        for (account, cursor) in &snapshot.kf_cursors {
            tx.execute(
                "INSERT INTO kf_cursors (channel, open_kfid, cursor, updated_at)
                 VALUES ($1, $2, $3, floor(extract(epoch from now()))::bigint)",
                &[&account.channel.as_str(), &account.open_kfid, cursor],
            )
            .await?;
        }
        for UnhandledEntry { entry, received_at } in &snapshot.unhandled {
            tx.execute(
                "WITH new AS (INSERT INTO journal (dedup_key, channel, kind, sender, received_at, payload)
                              VALUES ($1, $2, $3, $4, $5, $6) RETURNING id)
                 INSERT INTO journal_pending (id) SELECT id FROM new",
                &[
                    &entry.dedup_key,
                    &entry.channel.as_str(),
                    &entry.kind.as_str(),
                    &entry.sender,
                    received_at,
                    &entry.payload,
                ],
            )
            .await?;
        }
        for action in &snapshot.owed {
            tx.execute(
                "INSERT INTO outbox (action_key, kind, payload, attempts, next_attempt_at, created_at)
                 VALUES ($1, $2, $3, $4, to_timestamp($5), $6)",
                &[
                    &action.key,
                    &action.kind,
                    &action.payload,
                    &action.attempts,
                    &(action.next_attempt_at as f64),
                    &action.created_at,
                ],
            )
            .await?;
        }
        for firing in &snapshot.firing {
            tx.execute(
                "INSERT INTO alert_state (check_name, firing_since, last_notified_at) VALUES ($1, $2, $3)",
                &[&firing.check, &firing.since, &firing.last_notified_at],
            )
            .await?;
        }
        for named in &snapshot.names {
            super::names::upsert(&tx, named).await?;
        }
        for (customer, conversation) in &snapshot.conversations {
            super::conversations::upsert(&tx, customer, conversation).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
