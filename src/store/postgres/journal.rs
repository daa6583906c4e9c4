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

/// Inserts entries (given sorted by dedup key): the keys and ids of the new rows.
fn insert_sql() -> String {
    format!(
        "INSERT INTO journal (dedup_key, channel, kind, sender, received_at, payload)
         SELECT k, c, t, s, {EPOCH}, p
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS e(k, c, t, s, p)
         ON CONFLICT (dedup_key) DO NOTHING
         RETURNING dedup_key, id"
    )
}

/// One caller's entry and where its answer goes.
struct Write {
    entry: NewEntry,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
    /// When it was queued ([`StoreStage::Queue`]).
    queued: std::time::Instant,
}

/// The queue of the journal's writer tasks. The tasks end when every handle is
/// gone (the queue closes), after answering what was queued.
#[derive(Clone)]
pub(super) struct Writers(mpsc::UnboundedSender<Write>);

impl Writers {
    /// Starts the writer tasks: half the pool (so other operations still get
    /// connections), at least one, at most [`MAX_WRITERS`].
    pub(super) fn start(pool: Pool, stats: Arc<Stats>, pool_size: usize) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let log = Arc::new(SharedLogLimiter::default());
        for _ in 0..(pool_size / 2).clamp(1, MAX_WRITERS) {
            tokio::spawn(write_groups(pool.clone(), Arc::clone(&stats), Arc::clone(&log), Arc::clone(&receiver)));
        }
        Self(sender)
    }
}

/// One writer: takes whatever is queued, journals it, answers, again.
async fn write_groups(
    pool: Pool,
    stats: Arc<Stats>,
    log: Arc<SharedLogLimiter>,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Write>>>,
) {
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
            stats.observe(StoreStage::Queue, started.saturating_duration_since(write.queued));
        }
        write_group(&pool, &stats, &log, group).await;
    }
}

/// Journals a group and answers each caller.
async fn write_group(pool: &Pool, stats: &Stats, log: &SharedLogLimiter, group: Vec<Write>) {
    let entries: Vec<&NewEntry> = group.iter().map(|write| &write.entry).collect();
    let started = std::time::Instant::now();
    let outcome = insert_group(pool, &entries).await;
    stats.observe(StoreStage::Commit, started.elapsed());
    let answers: Vec<Result<Recorded, StoreError>> = match outcome {
        Ok(recorded) => {
            record_commit(stats, group.len() as u64);
            recorded.into_iter().map(Ok).collect()
        }
        // The server refused the statement, so nothing of it was written: alone,
        // each entry's own fate.
        Err(StoreError::Postgres(PostgresError::Database(error)))
            if error.as_db_error().is_some() && group.len() > 1 =>
        {
            tracing::warn!("store: a journal group was refused ({error}); journaling its entries one by one");
            let mut answers = Vec::with_capacity(group.len());
            for entry in &entries {
                let answer = insert_group(pool, &[entry]).await.map(|mut recorded| recorded.remove(0));
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
    for (write, answer) in group.into_iter().zip(answers) {
        // The caller may have given up (a cancelled request); nothing to do then.
        let _ = write.reply.send(answer);
    }
}

/// Inserts `entries` with one statement (its own transaction): for each, in the
/// order given, whether it was new. A key given twice is new once, the first time.
async fn insert_group(pool: &Pool, entries: &[&NewEntry]) -> Result<Vec<Recorded>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(&insert_sql()).await?;
    let columns = Columns::sorted(entries);
    let rows = client
        .query(&statement, &[&columns.keys, &columns.channels, &columns.kinds, &columns.senders, &columns.payloads])
        .await?;
    let mut ids: HashMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    Ok(entries.iter().map(|entry| ids.remove(&entry.dedup_key).map_or(Recorded::Duplicate, Recorded::New)).collect())
}

/// Entries as the columns of an `unnest`, sorted by dedup key.
struct Columns<'a> {
    keys: Vec<&'a str>,
    channels: Vec<&'a str>,
    kinds: Vec<&'static str>,
    senders: Vec<Option<&'a str>>,
    payloads: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn sorted(entries: &[&'a NewEntry]) -> Self {
        let mut sorted = entries.to_vec();
        sorted.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        Self {
            keys: sorted.iter().map(|e| e.dedup_key.as_str()).collect(),
            channels: sorted.iter().map(|e| e.channel.as_str()).collect(),
            kinds: sorted.iter().map(|e| e.kind.as_str()).collect(),
            senders: sorted.iter().map(|e| e.sender.as_deref()).collect(),
            payloads: sorted.iter().map(|e| e.payload.as_str()).collect(),
        }
    }
}

/// Inserts `entries` inside `tx` (a kf page): how many were new.
pub(super) async fn insert_in(tx: &Transaction<'_>, entries: &[NewEntry]) -> Result<usize, StoreError> {
    let refs: Vec<&NewEntry> = entries.iter().collect();
    let columns = Columns::sorted(&refs);
    let statement = tx.prepare_cached(&insert_sql()).await?;
    let rows = tx
        .query(&statement, &[&columns.keys, &columns.channels, &columns.kinds, &columns.senders, &columns.payloads])
        .await?;
    Ok(rows.len())
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
    })
}

impl Postgres {
    /// Journals `entry` unless its dedup key is known; committed when this returns.
    pub(in crate::store) async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Postgres(PostgresError::Unavailable("the journal writers have stopped".into()));
        self.journal.0.send(Write { entry, reply, queued: std::time::Instant::now() }).map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Claims the oldest unhandled entries not claimed by a live lease, for the
    /// store's lease: no other replica gets them until it runs out.
    ///
    /// Relaxed (`synchronous_commit = off`, see the backend's documentation): a
    /// claim lost with the server's crash only lets the entries be claimed again.
    pub(in crate::store) async fn pending(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(RELAXED).await?;
        let statement = tx
            .prepare_cached(
                "UPDATE journal SET claimed_until = now() + make_interval(secs => $2::bigint)
                 WHERE id IN (SELECT id FROM journal
                              WHERE handled_at IS NULL AND (claimed_until IS NULL OR claimed_until <= now())
                              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, dedup_key, channel, kind, received_at, payload",
            )
            .await?;
        let rows = tx.query(&statement, &[&super::bigint(limit), &self.lease_secs]).await?;
        tx.commit().await?;
        self.committed(1);
        let mut entries = rows.iter().map(read_entry).collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING keeps no order: arrival order, as claimed.
        entries.sort_by_key(|entry| entry.id);
        Ok(entries)
    }

    /// Marks entries handled and queues their actions, in one transaction.
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
        let statement = tx
            .prepare_cached(&format!(
                "UPDATE journal SET handled_at = {EPOCH}, claimed_until = NULL
                 WHERE id = ANY($1) AND handled_at IS NULL"
            ))
            .await?;
        tx.execute(&statement, &[&ids]).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(())
    }

    /// Entries not handled yet (claimed or not).
    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn unhandled(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT count(*) FROM journal WHERE handled_at IS NULL").await?;
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
