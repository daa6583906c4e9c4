//! Export and import of a [`Snapshot`] in SQLite.

use rusqlite::{params, Connection};

use super::alerts::{read_firing, FIRING};
use super::journal::{insert, named};
use super::{rows, Sqlite};
use crate::channels::ChannelName;
use crate::store::conversations::{Conversation, Customer};
use crate::store::journal::{EntryKind, NewEntry};
use crate::store::kf::KfAccount;
use crate::store::names::CachedName;
use crate::store::names::{NameKey, NamedId};
use crate::store::snapshot::{OwedAction, Snapshot, UnhandledEntry};
use crate::store::StoreError;

/// Facts that are this engine's own bookkeeping, not the installation's.
const ENGINE_FACTS: [&str; 2] = ["journal_handled_through", "probe"];

fn export(db: &Connection) -> rusqlite::Result<Snapshot> {
    let facts = rows(db, "SELECT key, value FROM meta ORDER BY key", |r| Ok((r.get(0)?, r.get(1)?)))?
        .into_iter()
        .filter(|(key, _): &(String, String)| !ENGINE_FACTS.contains(&key.as_str()))
        .collect();
    let kf_cursors = rows(db, "SELECT channel, open_kfid, cursor FROM kf_cursors ORDER BY channel, open_kfid", |r| {
        let channel = named(0, r.get(0)?, |name| ChannelName::parse(name).ok())?;
        Ok((KfAccount { channel, open_kfid: r.get(1)? }, r.get(2)?))
    })?;
    let unhandled = rows(
        db,
        "SELECT dedup_key, channel, kind, sender, payload, received_at FROM journal
         WHERE id > (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')
         ORDER BY id",
        |r| {
            let channel: String = r.get(1)?;
            let kind: String = r.get(2)?;
            Ok((r.get(0)?, channel, kind, r.get(3)?, r.get(4)?, r.get(5)?))
        },
    )?
    .into_iter()
    .map(|(dedup_key, channel, kind, sender, payload, received_at)| {
        let unknown = |what: &str, value: &str| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("{what} {value:?}").into(),
            )
        };
        Ok(UnhandledEntry {
            entry: NewEntry {
                dedup_key,
                channel: ChannelName::parse(&channel).ok().ok_or_else(|| unknown("unknown channel", &channel))?,
                kind: EntryKind::parse(&kind).ok_or_else(|| unknown("unknown entry kind", &kind))?,
                sender,
                payload,
                parsed: None,
            },
            received_at,
        })
    })
    .collect::<rusqlite::Result<_>>()?;
    let owed = rows(
        db,
        "SELECT action_key, kind, payload, attempts, next_attempt_at, created_at FROM outbox
         WHERE done_at IS NULL ORDER BY id",
        |r| {
            Ok(OwedAction {
                key: r.get(0)?,
                kind: r.get(1)?,
                payload: r.get(2)?,
                attempts: r.get(3)?,
                next_attempt_at: r.get(4)?,
                created_at: r.get(5)?,
            })
        },
    )?;
    let firing = rows(db, FIRING, read_firing)?;
    let names = rows(db, "SELECT channel, id_type, id, name, source FROM names ORDER BY channel, id_type, id", |r| {
        let channel = named(0, r.get(0)?, |name| ChannelName::parse(name).ok())?;
        Ok(NamedId {
            key: NameKey { channel, id_type: r.get(1)?, id: r.get(2)? },
            name: CachedName { name: r.get(3)?, source: r.get(4)? },
        })
    })?;
    let conversations = rows(
        db,
        "SELECT channel, open_kfid, external_userid, last_customer_at, sent_since, human_since FROM kf_conversations
         ORDER BY channel, open_kfid, external_userid",
        |r| {
            let channel = named(0, r.get(0)?, |name| ChannelName::parse(name).ok())?;
            let customer = Customer { channel, open_kfid: r.get(1)?, external_userid: r.get(2)? };
            Ok((customer, Conversation { last_customer_at: r.get(3)?, sent_since: r.get(4)?, human_since: r.get(5)? }))
        },
    )?;
    Ok(Snapshot { facts, kf_cursors, unhandled, owed, firing, names, conversations })
}

/// Whether the store holds anything an import could collide with.
fn is_empty(db: &Connection) -> rusqlite::Result<bool> {
    db.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM journal) AND NOT EXISTS (SELECT 1 FROM outbox)
            AND NOT EXISTS (SELECT 1 FROM kf_cursors) AND NOT EXISTS (SELECT 1 FROM kf_conversations)
            AND NOT EXISTS (SELECT 1 FROM meta WHERE key NOT IN ('probe'))",
        [],
        |r| r.get(0),
    )
}

fn import(db: &Connection, snapshot: &Snapshot) -> rusqlite::Result<()> {
    for (key, value) in &snapshot.facts {
        db.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
    }
    for (account, cursor) in &snapshot.kf_cursors {
        db.execute(
            "INSERT INTO kf_cursors (channel, open_kfid, cursor, updated_at) VALUES (?1, ?2, ?3, ?4)",
            params![account.channel.as_str(), account.open_kfid, cursor, crate::store::now()],
        )?;
    }
    for unhandled in &snapshot.unhandled {
        insert(db, &unhandled.entry)?;
        db.execute(
            "UPDATE journal SET received_at = ?1 WHERE dedup_key = ?2",
            params![unhandled.received_at, unhandled.entry.dedup_key],
        )?;
    }
    for action in &snapshot.owed {
        db.execute(
            "INSERT INTO outbox (action_key, kind, payload, attempts, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                action.key,
                action.kind,
                action.payload,
                action.attempts,
                action.next_attempt_at,
                action.created_at
            ],
        )?;
    }
    for firing in &snapshot.firing {
        db.execute(
            "INSERT INTO alert_state (check_name, firing_since, last_notified_at) VALUES (?1, ?2, ?3)",
            params![firing.check, firing.since, firing.last_notified_at],
        )?;
    }
    for named in &snapshot.names {
        super::names::upsert(db, named)?;
    }
    for (customer, conversation) in &snapshot.conversations {
        super::conversations::upsert(db, customer, conversation)?;
    }
    Ok(())
}

impl Sqlite {
    pub(in crate::store) async fn export(&self) -> Result<Snapshot, StoreError> {
        self.run_relaxed(export).await
    }

    pub(in crate::store) async fn import(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let empty = self.run_relaxed(is_empty).await?;
        if !empty {
            return Err(StoreError::NotEmpty);
        }
        self.run(move |db| import(db, &snapshot)).await
    }
}

#[cfg(test)]
mod tests {
    use crate::channels::ChannelName;
    use crate::store::conversations::{Customer, Observation, Refusal, Verdict};
    use crate::store::journal::{EntryKind, NewEntry, Recorded};
    use crate::store::kf::KfAccount;
    use crate::store::outbox::NewAction;
    use crate::store::{Store, StoreError};

    fn account(open_kfid: &str) -> KfAccount {
        KfAccount { channel: ChannelName::kf(), open_kfid: open_kfid.into() }
    }

    fn entry(key: &str) -> NewEntry {
        NewEntry {
            dedup_key: key.into(),
            channel: ChannelName::kf(),
            kind: EntryKind::KfMessage,
            sender: Some("wm".into()),
            payload: "{}".into(),
            parsed: None,
        }
    }

    #[tokio::test]
    async fn an_installation_moves_with_what_it_still_owes_and_only_into_an_empty_store() {
        let (from_dir, to_dir) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let from = Store::open(from_dir.path()).expect("opens");
        let first_start = from.first_started_at().await.expect("first start");
        let Recorded::New(handled) = from.journal(entry("kf:msg:handled")).await.expect("journal") else {
            panic!("new")
        };
        let owed = NewAction { key: "forward:kf:msg:handled".into(), kind: "forward".into(), payload: "{}".into() };
        from.complete_entries(vec![(handled, vec![owed])]).await.expect("complete");
        from.journal(entry("kf:msg:unhandled")).await.expect("journal");
        let mut claim = from.claim_kf_account(account("wkA")).await.expect("claim").expect("free");
        from.kf_store_page(&mut claim, Vec::new(), "CURSOR-1".into()).await.expect("page");

        let snapshot = from.export().await.expect("export");
        assert_eq!(snapshot.unhandled.len(), 1, "only the unhandled entry: {}", snapshot.summary());
        assert_eq!(snapshot.owed.len(), 1);
        assert_eq!(snapshot.kf_cursors, vec![(account("wkA"), "CURSOR-1".to_owned())]);

        let to = Store::open(to_dir.path()).expect("opens");
        to.import(snapshot.clone()).await.expect("import");
        assert_eq!(to.first_started_at().await.expect("first start"), first_start, "the first start moved");
        assert_eq!(to.unhandled().await.expect("count"), 1);
        assert_eq!(to.outbox_backlog().await.expect("backlog"), 1);
        let claim = to.claim_kf_account(account("wkA")).await.expect("claim").expect("free");
        assert_eq!(claim.cursor.as_deref(), Some("CURSOR-1"));
        assert!(matches!(to.import(snapshot).await, Err(StoreError::NotEmpty)), "a second import is refused");
    }

    #[tokio::test]
    async fn kf_conversations_move_so_an_owed_reply_is_not_refused_and_a_human_session_is_kept() {
        let (from_dir, to_dir) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let from = Store::open(from_dir.path()).expect("opens");
        let customer =
            |who: &str| Customer { channel: ChannelName::kf(), open_kfid: "wkA".into(), external_userid: who.into() };
        let now = crate::store::now();
        from.observe_kf(vec![
            (customer("wmBOT"), Observation::Wrote { at: now - 60 }),
            (customer("wmHUMAN"), Observation::Wrote { at: now - 60 }),
            (customer("wmHUMAN"), Observation::Human { at: now - 30 }),
        ])
        .await
        .expect("observe");
        assert_eq!(from.reserve_kf_sends(customer("wmBOT"), 2, now, false).await.expect("reserve"), Verdict::Allowed);

        let snapshot = from.export().await.expect("export");
        assert_eq!(snapshot.conversations.len(), 2, "{}", snapshot.summary());
        let to = Store::open(to_dir.path()).expect("opens");
        to.import(snapshot).await.expect("import");
        for who in ["wmBOT", "wmHUMAN"] {
            let moved = to.kf_conversation(customer(who)).await.expect("read");
            assert_eq!(moved, from.kf_conversation(customer(who)).await.expect("read"), "{who}");
        }
        // The rules hold across the move: 3 of the 5 left, the human's session kept.
        let bot = to.reserve_kf_sends(customer("wmBOT"), 4, now, false).await.expect("reserve");
        assert_eq!(bot, Verdict::Refused(Refusal::Quota { parts: 4, remaining: 3 }));
        assert_eq!(to.reserve_kf_sends(customer("wmBOT"), 3, now, false).await.expect("reserve"), Verdict::Allowed);
        let human = to.reserve_kf_sends(customer("wmHUMAN"), 1, now, false).await.expect("reserve");
        assert_eq!(human, Verdict::Refused(Refusal::Human { since: now - 30 }));
    }
}
