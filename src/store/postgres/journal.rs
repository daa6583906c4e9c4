//! The journal in PostgreSQL: group commit of inserts, and claims instead of a
//! watermark.
//!
//! Group commit: `journal()` queues its entry for a few writer tasks; a writer
//! takes everything queued (up to [`MAX_GROUP`]) and journals it with ONE
//! statement, `INSERT … SELECT FROM unnest(…) ON CONFLICT (dedup_key) DO NOTHING
//! RETURNING dedup_key, id`, outside any explicit transaction: the statement is
//! its own transaction, so a group costs one round trip and one commit. The rows
//! go in sorted by dedup key, so two replicas inserting overlapping groups take
//! the key locks in the same order and cannot deadlock; a duplicate racing
//! another replica's uncommitted insert waits for that outcome (a duplicate if it
//! commits, inserted if it rolls back). If the server refuses the group's
//! statement (one entry it cannot store), nothing of it was written and each entry
//! is tried alone, so one bad entry fails only its own caller; if the connection
//! breaks, the outcome is unknown and every caller in the group gets an error.
//!
//! Deliberately not here: a handled watermark (see the backend's documentation).

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::outbox::insert_actions;
use super::owned::Owned;
use super::{named, record_commit, Postgres, PostgresError, EPOCH};
use crate::channels::ChannelName;
use crate::log_limit::SharedLogLimiter;
use crate::store::journal::{EntryKind, NewEntry, PendingEntry, Recorded};
use crate::store::outbox::NewAction;
use crate::store::{Stats, StoreError, StoreStage};

/// Makes a transaction's commit return before its WAL record is flushed: for
/// bookkeeping that may be redone after the server's crash. The next durable
/// commit's flush (any journal group's) covers it, as SQLite's next fsync does.
const RELAXED: &str = "SET LOCAL synchronous_commit = off";

/// At most this many entries share one statement.
const MAX_GROUP: usize = 256;

/// At most this many groups are in flight at once (each holds one connection).
/// Two measured best here: 64 callers made groups of ~20 rows at ~2.4k commits/s
/// (4 writers: ~10 rows, ~4k commits/s, and fewer rows/s).
const MAX_WRITERS: usize = 2;

/// Inserts entries (given sorted by dedup key, each key once) and their rows in
/// `journal_pending`, those flagged in `$6` already claimed for `$7` seconds
/// (`owned`): the keys, ids and times of the new entries. One statement, so an
/// entry and its pending row are committed (and seen) together.
fn insert_sql() -> String {
    format!(
        "WITH new AS (
             INSERT INTO journal (dedup_key, channel, kind, sender, received_at, payload)
             SELECT k, c, t, s, {EPOCH}, p
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS e(k, c, t, s, p)
             ON CONFLICT (dedup_key) DO NOTHING
             RETURNING dedup_key, id, received_at
         ), pending AS (
             INSERT INTO journal_pending (id, claimed_until)
             SELECT new.id, CASE WHEN o.cl THEN now() + make_interval(secs => $7::bigint) END
               FROM new JOIN unnest($1::text[], $6::bool[]) AS o(k, cl) ON o.k = new.dedup_key
         )
         SELECT dedup_key, id, received_at FROM new"
    )
}

/// One caller's entry and where its answer goes.
struct Write {
    entry: NewEntry,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
    /// When it was queued ([`StoreStage::Queue`]).
    queued: std::time::Instant,
    /// How long its claim holds, when it is inserted claimed (`owned`).
    lease_secs: i64,
}

/// The queue of the journal's writer tasks. The tasks end when every handle is
/// gone (the queue closes), after answering what was queued.
#[derive(Clone)]
pub(super) struct Writers(mpsc::UnboundedSender<Write>);

impl Writers {
    /// Starts the writer tasks: half the pool (so other operations still get
    /// connections), at least one, at most [`MAX_WRITERS`].
    pub(super) fn start(pool: Pool, stats: Arc<Stats>, owned: Arc<Owned>, pool_size: usize) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let log = Arc::new(SharedLogLimiter::default());
        for _ in 0..(pool_size / 2).clamp(1, MAX_WRITERS) {
            let parts = Parts {
                pool: pool.clone(),
                stats: Arc::clone(&stats),
                owned: Arc::clone(&owned),
                log: Arc::clone(&log),
            };
            tokio::spawn(write_groups(parts, Arc::clone(&receiver)));
        }
        Self(sender)
    }
}

/// What a writer works with.
struct Parts {
    pool: Pool,
    stats: Arc<Stats>,
    owned: Arc<Owned>,
    log: Arc<SharedLogLimiter>,
}

/// One writer: takes whatever is queued, journals it, answers, again.
async fn write_groups(parts: Parts, queue: Arc<Mutex<mpsc::UnboundedReceiver<Write>>>) {
    loop {
        let group = {
            // One writer gathers at a time; the others are committing meanwhile.
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        // A caller that gave up (its request passed the deadline while the
        // database stalled) was answered 503: writing its entry now would only
        // turn WeCom's retry into a duplicate. Skipped, it stays unwritten.
        let group: Vec<Write> = group.into_iter().filter(|write| !write.reply.is_closed()).collect();
        if group.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        for write in &group {
            parts.stats.observe(StoreStage::Queue, started.saturating_duration_since(write.queued));
        }
        write_group(&parts, group).await;
    }
}

/// Journals a group and answers each caller. What fits in `owned` is inserted
/// claimed for this replica and queued there before its caller hears of it.
async fn write_group(parts: &Parts, group: Vec<Write>) {
    let Parts { pool, stats, owned, log } = parts;
    let rows: Vec<Row<'_>> = group
        .iter()
        .map(|write| Row {
            entry: &write.entry,
            lease_secs: owned.reserve(write.entry.payload.len()).then_some(write.lease_secs),
        })
        .collect();
    let started = std::time::Instant::now();
    let outcome = insert_group(pool, &rows).await;
    stats.observe(StoreStage::Commit, started.elapsed());
    let answers: Vec<Result<Inserted, StoreError>> = match outcome {
        Ok(inserted) => {
            record_commit(stats, group.len() as u64);
            inserted.into_iter().map(Ok).collect()
        }
        // The server refused the statement, so nothing of it was written: alone,
        // each entry's own fate.
        Err(StoreError::Postgres(PostgresError::Database(error)))
            if error.as_db_error().is_some() && group.len() > 1 =>
        {
            tracing::warn!("store: a journal group was refused ({error}); journaling its entries one by one");
            let mut answers = Vec::with_capacity(group.len());
            for row in &rows {
                let answer = insert_group(pool, std::slice::from_ref(row)).await.map(|mut inserted| inserted.remove(0));
                if answer.is_ok() {
                    record_commit(stats, 1);
                }
                answers.push(answer);
            }
            answers
        }
        Err(error) => {
            // Unknown outcome or no connection: no caller may answer 2xx.
            let reason = error.to_string();
            if let Some(more) = log.admit("journal_group_failed") {
                tracing::warn!(entries = group.len(), "store: journal group failed: {reason}{more}");
            }
            group.iter().map(|_| Err(StoreError::Postgres(PostgresError::Unavailable(reason.clone())))).collect()
        }
    };
    let claimed: Vec<bool> = rows.iter().map(|row| row.lease_secs.is_some()).collect();
    for ((write, answer), claimed) in group.into_iter().zip(answers).zip(claimed) {
        let bytes = write.entry.payload.len();
        let recorded = answer.map(|inserted| match inserted {
            Some((id, received_at)) if claimed => {
                let NewEntry { dedup_key, channel, kind, payload, parsed, sender: _ } = write.entry;
                owned.push(PendingEntry { id, dedup_key, channel, kind, received_at, payload, parsed });
                Recorded::New(id)
            }
            Some((id, _)) => Recorded::New(id),
            None => Recorded::Duplicate,
        });
        if claimed && !matches!(recorded, Ok(Recorded::New(_))) {
            owned.release(bytes);
        }
        // The caller may have given up (a cancelled request); nothing to do then.
        let _ = write.reply.send(recorded);
    }
}

/// An entry to insert, and how long its claim holds if it is inserted claimed.
#[derive(Clone, Copy)]
struct Row<'a> {
    entry: &'a NewEntry,
    lease_secs: Option<i64>,
}

/// What inserting an entry found: its id and `received_at` when it was new.
type Inserted = Option<(i64, i64)>;

/// Inserts `rows` with one statement (its own transaction): for each, in the
/// order given, its id and time if it was new. A key given twice is new once, the first time.
async fn insert_group(pool: &Pool, rows: &[Row<'_>]) -> Result<Vec<Inserted>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(&insert_sql()).await?;
    let columns = Columns::sorted(rows);
    let returned = client.query(&statement, &columns.params()).await?;
    let mut new: HashMap<String, (i64, i64)> =
        returned.iter().map(|row| (row.get(0), (row.get(1), row.get(2)))).collect();
    Ok(rows.iter().map(|row| new.remove(&row.entry.dedup_key)).collect())
}

/// Entries as the columns of an `unnest`, sorted by dedup key, and the one lease.
struct Columns<'a> {
    keys: Vec<&'a str>,
    channels: Vec<&'a str>,
    kinds: Vec<&'static str>,
    senders: Vec<Option<&'a str>>,
    payloads: Vec<&'a str>,
    claimed: Vec<bool>,
    lease_secs: i64,
}

impl<'a> Columns<'a> {
    /// The rows sorted by dedup key, a key given twice kept the first time only
    /// (the stable sort keeps it first): its pending row is made once, with
    /// that row's claim.
    fn sorted(rows: &[Row<'a>]) -> Self {
        let mut sorted = rows.to_vec();
        sorted.sort_by(|a, b| a.entry.dedup_key.cmp(&b.entry.dedup_key));
        sorted.dedup_by(|later, first| later.entry.dedup_key == first.entry.dedup_key);
        Self {
            keys: sorted.iter().map(|r| r.entry.dedup_key.as_str()).collect(),
            channels: sorted.iter().map(|r| r.entry.channel.as_str()).collect(),
            kinds: sorted.iter().map(|r| r.entry.kind.as_str()).collect(),
            senders: sorted.iter().map(|r| r.entry.sender.as_deref()).collect(),
            payloads: sorted.iter().map(|r| r.entry.payload.as_str()).collect(),
            claimed: sorted.iter().map(|r| r.lease_secs.is_some()).collect(),
            lease_secs: sorted.iter().filter_map(|r| r.lease_secs).max().unwrap_or(0),
        }
    }

    /// The statement's parameters, `$1` to `$7`.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [&self.keys, &self.channels, &self.kinds, &self.senders, &self.payloads, &self.claimed, &self.lease_secs]
    }
}

/// Inserts `entries` inside `tx` (a kf page), unclaimed: how many were new.
pub(super) async fn insert_in(tx: &Transaction<'_>, entries: &[NewEntry]) -> Result<usize, StoreError> {
    let rows: Vec<Row<'_>> = entries.iter().map(|entry| Row { entry, lease_secs: None }).collect();
    let columns = Columns::sorted(&rows);
    let statement = tx.prepare_cached(&insert_sql()).await?;
    Ok(tx.query(&statement, &columns.params()).await?.len())
}

/// An entry from a row of `id, dedup_key, channel, kind, received_at, payload`.
fn read_entry(row: &tokio_postgres::Row) -> Result<PendingEntry, StoreError> {
    Ok(PendingEntry {
        id: row.get(0),
        dedup_key: row.get(1),
        channel: named(row.get(2), |name| ChannelName::parse(name).ok())?,
        kind: named(row.get(3), EntryKind::parse)?,
        received_at: row.get(4),
        payload: row.get(5),
        parsed: None,
    })
}

impl Postgres {
    /// Journals `entry` unless its dedup key is known; committed when this returns.
    pub(in crate::store) async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Postgres(PostgresError::Unavailable("the journal writers have stopped".into()));
        let write = Write { entry, reply, queued: std::time::Instant::now(), lease_secs: self.lease_secs };
        self.journal.0.send(write).map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    /// This replica's own entries (inserted claimed for it, `owned`), and the
    /// oldest unhandled entries not claimed by a live lease, claimed for the
    /// store's lease: no other replica gets them until it runs out. The journal
    /// is asked when there are none of its own, and once a second besides.
    pub(in crate::store) async fn pending(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        let mut entries = self.owned.take(limit);
        if self.owned.read_journal(entries.len(), limit, std::time::Instant::now()) {
            match self.claim_from_journal(limit - entries.len()).await {
                Ok(claimed) => entries.extend(claimed),
                Err(error) => {
                    self.owned.restore(entries);
                    return Err(error);
                }
            }
        }
        // Arrival order, as claimed.
        entries.sort_by_key(|entry| entry.id);
        Ok(entries)
    }

    /// Claims up to `limit` unhandled entries no live lease holds.
    ///
    /// Relaxed (`synchronous_commit = off`, see the backend's documentation): a
    /// claim lost with the server's crash only lets the entries be claimed again.
    async fn claim_from_journal(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(RELAXED).await?;
        let statement = tx
            .prepare_cached(
                "WITH claimed AS (
                     UPDATE journal_pending SET claimed_until = now() + make_interval(secs => $2::bigint)
                     WHERE id IN (SELECT id FROM journal_pending
                                  WHERE claimed_until IS NULL OR claimed_until <= now()
                                  ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                     RETURNING id)
                 SELECT j.id, j.dedup_key, j.channel, j.kind, j.received_at, j.payload
                   FROM journal j JOIN claimed USING (id) ORDER BY j.id",
            )
            .await?;
        let rows = tx.query(&statement, &[&super::bigint(limit), &self.lease_secs]).await?;
        tx.commit().await?;
        self.committed(1);
        rows.iter().map(read_entry).collect()
    }

    /// Marks entries handled (deletes their pending rows: the journal's own rows
    /// are never rewritten) and queues their actions, in one transaction.
    ///
    /// Relaxed: lost with the server's crash, the entries are handled again,
    /// which queues the same idempotency keys (as on SQLite).
    pub(in crate::store) async fn complete(&self, completions: Vec<(i64, Vec<NewAction>)>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(RELAXED).await?;
        let actions: Vec<&NewAction> = completions.iter().flat_map(|(_, actions)| actions).collect();
        insert_actions(&tx, &actions).await?;
        // In id order, as other completions of overlapping entries lock them.
        let mut ids: Vec<i64> = completions.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let statement = tx.prepare_cached("DELETE FROM journal_pending WHERE id = ANY($1)").await?;
        tx.execute(&statement, &[&ids]).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(())
    }

    /// Entries not handled yet (claimed or not).
    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn unhandled(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT count(*) FROM journal_pending").await?;
        Ok(client.query_one(&statement, &[]).await?.get(0))
    }

    /// Whether `dedup_key` was journaled.
    pub(in crate::store) async fn find_entry(&self, dedup_key: String) -> Result<Option<PendingEntry>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, dedup_key, channel, kind, received_at, payload FROM journal WHERE dedup_key = $1",
            )
            .await?;
        client.query_opt(&statement, &[&dedup_key]).await?.as_ref().map(read_entry).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::tests::entry;

    #[test]
    fn a_key_given_twice_in_a_group_is_inserted_once_with_its_first_claim() {
        let (b, a, b_again) = (entry("b"), entry("a"), entry("b"));
        let rows = [
            Row { entry: &b, lease_secs: None },
            Row { entry: &a, lease_secs: Some(60) },
            Row { entry: &b_again, lease_secs: Some(60) },
        ];
        let columns = Columns::sorted(&rows);
        assert_eq!(columns.keys, ["a", "b"]);
        assert_eq!(columns.claimed, [true, false], "b keeps the first row's (unclaimed)");
        assert_eq!(columns.lease_secs, 60);
    }
}
