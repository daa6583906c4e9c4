//! The SQLite backend: one file in `DATA_DIR`, WAL mode, `synchronous=FULL`.
//!
//! Owns: the schema and its migrations, and the one thread that talks to SQLite.
//! Every operation is a closure sent to that thread. The thread takes whatever is
//! queued, runs each closure in its own savepoint inside one transaction, commits
//! once (one fsync for the whole group) and only then answers the callers. Under
//! load that is group commit: durable journaling does not cost an fsync per request.
//! A failing operation rolls back its savepoint only; the rest of the group commits.
//!
//! Two kinds of durability. A **strict** operation (the default, and every journal
//! write: WeCom is told "received" only after it) is on disk when its caller hears
//! of it: the group's commit is fsync'd. A **relaxed** one is bookkeeping that can
//! safely be redone after a power loss (the dispatcher's watermark and the actions
//! it queues, the outbox's "done" marks, reads, pruning): a group of only relaxed
//! operations commits without an fsync (`synchronous=NORMAL`), and the next strict
//! commit's fsync of the WAL makes it durable too. A kill -9 loses neither: the
//! operating system has the WAL. Under load, relaxed operations ride in strict
//! groups anyway; at a few callbacks per second this saves one or two fsyncs per
//! message.
//!
//! Deliberately not here: what the operations mean to the service (the boundary
//! in `store/`, whose files name them) — each file below is the SQL of one.

mod aibot;
mod alerts;
mod conversations;
mod egress;
mod handoff;
mod journal;
mod kf;
mod leases;
mod meta;
mod names;
mod outbox;
pub(super) mod retention;
mod sends;
mod snapshot;
mod tokens;
mod types;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Row};
use tokio::sync::oneshot;

use super::{Stats, StoreError, StoreStage, DATABASE_FILE};

/// Versioned schema. Entry `n` upgrades `user_version` n to n+1; append only, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: the journal, the outbox, access tokens, kf cursors, facts about this install.
    // The journal is handled in id order; `meta.journal_handled_through` is the
    // watermark. An id is never reused, so a new entry can never land below the
    // watermark (AUTOINCREMENT here; see migration 2 for how that holds without it).
    // `kind`: `callback` (decrypted XML as received) or `kf_message` (one message
    // of a kf/sync_msg page, JSON). `sender`: userid or external_userid, for names;
    // deliberately not indexed: an index is a second B-tree write on every callback,
    // for an admin query that may scan.
    "CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dedup_key TEXT NOT NULL UNIQUE,
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        sender TEXT,
        received_at INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        action_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL,
        done_at INTEGER
    );
    CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE done_at IS NULL;
    CREATE TABLE access_tokens (
        cache_key TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        obtained_at INTEGER NOT NULL
    );
    CREATE TABLE kf_cursors (
        open_kfid TEXT PRIMARY KEY,
        cursor TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE names (
        id_type TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (id_type, id)
    );
    CREATE TABLE alert_state (
        check_name TEXT PRIMARY KEY,
        firing_since INTEGER NOT NULL,
        last_notified_at INTEGER NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
    // 2: the journal without AUTOINCREMENT, whose `sqlite_sequence` update cost a
    // third B-tree write per callback (~3 µs). Ids still never go back: SQLite
    // gives a new row MAX(id) + 1, and retention never deletes the newest row.
    "CREATE TABLE journal_v2 (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        sender TEXT,
        received_at INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    INSERT INTO journal_v2 (id, dedup_key, channel, kind, sender, received_at, payload)
        SELECT id, dedup_key, channel, kind, sender, received_at, payload FROM journal ORDER BY id;
    DROP TABLE journal;
    ALTER TABLE journal_v2 RENAME TO journal;",
    // 3: claims. An outbox action is claimed (`claim` + 1) for a lease; only that
    // claim may finish it, and it is due again to anyone once `claimed_until` has
    // passed. `leases`: named leases (a kf account's sync, a token refresh,
    // housekeeping), each with a claim counter that only goes up.
    "ALTER TABLE outbox ADD COLUMN claim INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        claim INTEGER NOT NULL,
        until INTEGER NOT NULL
    );",
    // 4: replies (SPEC §10). `sends`: every text sent, with its status;
    // `send_msgids`: each kf part's own msgid, for `msg_send_fail`;
    // `kf_conversations`: what the kf rules need per account and customer.
    "CREATE TABLE sends (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL,
        open_kfid TEXT,
        idempotency_key TEXT UNIQUE,
        status TEXT NOT NULL,
        parts INTEGER NOT NULL,
        parts_sent INTEGER NOT NULL DEFAULT 0,
        errcode INTEGER,
        reason TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX sends_updated ON sends(updated_at);
    CREATE TABLE send_msgids (
        msgid TEXT PRIMARY KEY,
        send_id TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE kf_conversations (
        open_kfid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        last_customer_at INTEGER,
        sent_since INTEGER NOT NULL DEFAULT 0,
        human_since INTEGER,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (open_kfid, external_userid)
    );",
    // 5: SEND_QUEUE_MAX (SPEC §15) counts each channel's queued sends on every
    // send API request: a partial index holds only those, so the count reads a
    // few rows however many finished sends retention keeps.
    "CREATE INDEX sends_queued ON sends(channel) WHERE status = 'queued';",
    // 6: the send API's request fingerprint (SHA-256 hex of the canonical
    // request), so the same idempotency key with another body is a 409 (SPEC
    // §15). Sends queued before it have none and count as the same request.
    "ALTER TABLE sends ADD COLUMN request_sha256 TEXT;",
    // 7: channels (SPEC §12). kf cursors are keyed by the channel's name and the
    // `open_kfid`, so each kf channel resumes its own accounts; the cursors of
    // before belong to the built-in `kf`. Nothing else is rewritten: the old
    // journal's dedup keys, the sends' `channel` and the records in owed actions
    // already say `app` or `kf`, the built-in channels' names, and tokens were
    // cached per corp id and Secret already.
    "CREATE TABLE kf_cursors_v7 (
        channel TEXT NOT NULL,
        open_kfid TEXT NOT NULL,
        cursor TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (channel, open_kfid)
    );
    INSERT INTO kf_cursors_v7 (channel, open_kfid, cursor, updated_at)
        SELECT 'kf', open_kfid, cursor, updated_at FROM kf_cursors;
    DROP TABLE kf_cursors;
    ALTER TABLE kf_cursors_v7 RENAME TO kf_cursors;",
    // 8: the egress IP WeCom names per channel
    // (SPEC §14), with when it was first and last seen.
    "CREATE TABLE egress_ips (
        channel TEXT PRIMARY KEY,
        ip TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );",
    // 9: AI bot streams (SPEC §13), one row per user message that opens one, so
    // any replica answers a refresh. A refresh reads the row; the one that closes
    // it sets `delivered_refresh` (and, closing it unfinished at the deadline,
    // `late_refresh` and `shown`, the snapshot it showed). The index serves the check's last hour and retention.
    "CREATE TABLE aibot_streams (
        stream_id TEXT PRIMARY KEY,
        record_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        userid TEXT NOT NULL DEFAULT '',
        chatid TEXT,
        response_url TEXT,
        created_at INTEGER NOT NULL,
        content TEXT NOT NULL DEFAULT '',
        finished INTEGER NOT NULL DEFAULT 0,
        shown TEXT,
        late_refresh INTEGER,
        delivered_refresh INTEGER,
        response_used_at INTEGER,
        rest_sent_at INTEGER,
        failed_reason TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX aibot_streams_created ON aibot_streams(created_at);",
    // 10: the channel's name in the last keys that lacked it (SPEC §12): cached
    // names (a user id is per corp: `zhangsan` of two corps is two people), kf
    // conversations and kf msgids. Names of before belong to the channel whose
    // API answered (`kf/customer/batchget`: `kf`, else `app`); a conversation to
    // the kf channel whose cursor has its account (else `kf`); a msgid to its
    // send's channel.
    "CREATE TABLE names_v10 (
        channel TEXT NOT NULL,
        id_type TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (channel, id_type, id)
    );
    INSERT INTO names_v10 (channel, id_type, id, name, source, updated_at)
        SELECT CASE source WHEN 'kf/customer/batchget' THEN 'kf' ELSE 'app' END, id_type, id, name, source, updated_at
        FROM names;
    DROP TABLE names;
    ALTER TABLE names_v10 RENAME TO names;
    CREATE TABLE kf_conversations_v10 (
        channel TEXT NOT NULL,
        open_kfid TEXT NOT NULL,
        external_userid TEXT NOT NULL,
        last_customer_at INTEGER,
        sent_since INTEGER NOT NULL DEFAULT 0,
        human_since INTEGER,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (channel, open_kfid, external_userid)
    );
    INSERT INTO kf_conversations_v10
        (channel, open_kfid, external_userid, last_customer_at, sent_since, human_since, updated_at)
        SELECT COALESCE((SELECT MIN(c.channel) FROM kf_cursors c WHERE c.open_kfid = k.open_kfid), 'kf'),
            open_kfid, external_userid, last_customer_at, sent_since, human_since, updated_at
        FROM kf_conversations k;
    DROP TABLE kf_conversations;
    ALTER TABLE kf_conversations_v10 RENAME TO kf_conversations;
    CREATE TABLE send_msgids_v10 (
        channel TEXT NOT NULL,
        msgid TEXT NOT NULL,
        send_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (channel, msgid)
    );
    INSERT INTO send_msgids_v10 (channel, msgid, send_id, created_at)
        SELECT COALESCE((SELECT s.channel FROM sends s WHERE s.id = m.send_id), 'kf'), msgid, send_id, created_at
        FROM send_msgids m;
    DROP TABLE send_msgids;
    ALTER TABLE send_msgids_v10 RENAME TO send_msgids;",
    // 11: AI bot streams answered over the long connection (SPEC §13): the
    // `req_id` of the message's first delivery, which every frame of its answer
    // carries, and when the holder of the connection was done with the stream
    // (its last frame and any rest sent, or the answer failed), so that whichever
    // replica holds the connection next picks up the streams still owed (the
    // partial index: only those).
    "ALTER TABLE aibot_streams ADD COLUMN req_id TEXT;
    ALTER TABLE aibot_streams ADD COLUMN pushed_at INTEGER;
    CREATE INDEX aibot_streams_pushing ON aibot_streams(channel) WHERE req_id IS NOT NULL AND pushed_at IS NULL;",
    // 12: the send API's idempotency keys of AI bot answers (SPEC §10, §13):
    // one row per update that came with a key, so the same key again takes
    // nothing more (or, for another request, is a 409). The sends keep theirs.
    "CREATE TABLE aibot_answer_keys (
        idempotency_key TEXT PRIMARY KEY,
        stream_id TEXT NOT NULL,
        answer_id TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX aibot_answer_keys_created ON aibot_answer_keys(created_at);",
];

/// At most this many operations share one transaction.
const MAX_GROUP: usize = 512;

/// Work for the writer thread: it says whether it succeeded and how to answer its
/// caller once the commit's fate is known.
struct Operation {
    /// Whether it needs a savepoint of its own: any operation of more than one
    /// statement does. A single statement is atomic in SQLite by itself.
    savepoint: bool,
    /// Whether its commit may skip the fsync (see the module documentation).
    relaxed: bool,
    /// When it was sent to the writer ([`StoreStage::Queue`]).
    queued: Instant,
    job: Job,
}

type Job = Box<dyn FnOnce(&Connection) -> (bool, Delivery) + Send>;

/// Answers one caller; `true` when the group committed.
type Delivery = Box<dyn FnOnce(bool) + Send>;

/// The SQLite backend's handle; cheap to clone.
#[derive(Clone)]
pub(super) struct Sqlite {
    sender: mpsc::Sender<Operation>,
    stats: Arc<Stats>,
    /// What the writer committed, for the dispatcher (`handoff`).
    handoff: Arc<handoff::Handoff>,
    /// How long a claim holds (`Store::with_lease`).
    pub(super) lease_secs: i64,
}

/// `DATA_DIR` 0700 and the database 0600, whatever the umask: the store holds
/// access tokens and every journaled message. An existing directory or file with
/// looser modes (from an earlier version) is tightened. The file is created here,
/// before SQLite opens it, because SQLite creates its `-wal` and `-shm` files with
/// the mode of the database file.
fn owner_only(dir: &Path, database: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(database)?;
    let tighten = |path: &Path, mode: u32| match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o777 != mode => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    tighten(dir, 0o700)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        tighten(Path::new(&name), 0o600)?;
    }
    Ok(())
}

/// Every row `sql` selects on `db`, each through `read`.
fn rows<T>(db: &Connection, sql: &str, read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>) -> rusqlite::Result<Vec<T>> {
    db.prepare_cached(sql)?.query_map([], read)?.collect()
}

impl Sqlite {
    /// Opens (creating if needed) the database in `dir`, migrates it, and starts
    /// the writer thread.
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open { path: dir.to_owned(), reason };
        let path = dir.join(DATABASE_FILE);
        owner_only(dir, &path).map_err(|e| open_error(format!("cannot make it private: {e}")))?;
        let connection =
            Connection::open(&path).map_err(|e| open_error(format!("cannot open {DATABASE_FILE}: {e}")))?;
        configure(&connection).map_err(|e| open_error(format!("cannot configure SQLite: {e}")))?;
        migrate(&connection)?;
        // One process owns this file: claims of an earlier run died with it, and
        // waiting out their leases would only delay the work after a restart.
        connection
            .execute_batch(
                "UPDATE outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL; UPDATE leases SET until = 0;",
            )
            .map_err(|e| open_error(format!("cannot release the claims of an earlier run: {e}")))?;
        let (sender, receiver) = mpsc::channel::<Operation>();
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("wechat-api-store".into())
            .spawn(move || writer_loop(connection, receiver, &thread_stats))
            .map_err(|e| open_error(format!("cannot start the store thread: {e}")))?;
        Ok(Self { sender, stats, handoff: Arc::default(), lease_secs: 0 })
    }

    /// Runs `operation` on the writer thread inside a transaction that is durably
    /// committed before this returns.
    pub(super) async fn run<R, F>(&self, operation: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit(true, false, operation).await
    }

    /// Like [`Store::run`] for bookkeeping that may be redone after a power loss:
    /// committed (and visible, and safe from a kill -9) when this returns, on disk
    /// with the next strict commit.
    pub(super) async fn run_relaxed<R, F>(&self, operation: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit(true, true, operation).await
    }

    /// Every row `sql` selects, each through `read`: a small table read whole
    /// (alert state, egress IPs, kf accounts), relaxed as a read needs no more.
    pub(super) async fn read_all<T: Send + 'static>(
        &self,
        sql: &'static str,
        read: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.run_relaxed(move |db| rows(db, sql, read)).await
    }

    /// Like [`Store::run`] for an operation that executes exactly one statement,
    /// which needs no savepoint (the hot path: one journal insert per callback).
    pub(super) async fn run_statement<R, F>(&self, operation: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit(false, false, operation).await
    }

    async fn submit<R, F>(&self, savepoint: bool, relaxed: bool, operation: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit_then(savepoint, relaxed, operation, |value| value).await
    }

    /// [`Sqlite::submit`] whose result goes through `on_commit` on the writer
    /// thread once its group committed: what the caller hears is what it returns.
    async fn submit_then<R, T, F, C>(
        &self,
        savepoint: bool,
        relaxed: bool,
        operation: F,
        on_commit: C,
    ) -> Result<T, StoreError>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        C: FnOnce(R) -> T + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(move |connection: &Connection| {
            let result = operation(connection);
            let succeeded = result.is_ok();
            let delivery: Delivery = Box::new(move |committed| {
                let answer = match result {
                    Ok(_) if !committed => Err(StoreError::CommitFailed),
                    Ok(value) => Ok(on_commit(value)),
                    Err(error) => Err(StoreError::from(error)),
                };
                // The caller may have given up (a cancelled request); nothing to do then.
                let _ = reply.send(answer);
            });
            (succeeded, delivery)
        });
        let queued = Instant::now();
        self.sender.send(Operation { savepoint, relaxed, queued, job }).map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Writer-thread counters.
    pub(super) fn stats(&self) -> &Stats {
        &self.stats
    }
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before any caller is told it happened.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // After a checkpoint the WAL file is truncated to this, so it stays bounded too.
    connection.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = connection.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    if found < known {
        tracing::info!("store migrated from schema {found} to {known}");
    }
    Ok(())
}

/// The writer checkpoints the WAL itself once a commit leaves it this long
/// (pages), after answering that commit's callers. SQLite's own autocheckpoint
/// (1,000 pages) ran inside the commit that crossed it: one commit in ~140 took
/// ~5.5 ms more, and the callbacks queued behind it waited too — the durable
/// path's p99. After answering, at 500 pages (~3.7 ms each), wrk's p99 was
/// lower in each of three interleaved rounds (BENCHMARKS.md); 250 cost more in
/// all (~2.7 ms each, twice as many) for no better tail.
const CHECKPOINT_PAGES: i32 = 500;

thread_local! {
    /// The WAL's length in pages after this thread's last commit (`note_wal`).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// SQLite's hook after each commit: notes the WAL's length. Installing it
/// turns SQLite's autocheckpoint off; the writer checkpoints instead.
fn note_wal(_: &rusqlite::hooks::Wal, pages: std::os::raw::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|wal| wal.set(pages));
    Ok(())
}

fn writer_loop(connection: Connection, receiver: mpsc::Receiver<Operation>, stats: &Stats) {
    // `configure` left the connection at synchronous=FULL.
    let mut synchronous_full = true;
    connection.wal_hook(Some(note_wal));
    let log = crate::log_limit::SharedLogLimiter::default();
    // Blocks until there is work; ends when every `Store` handle is gone.
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        for operation in &group {
            stats.observe(StoreStage::Queue, started.saturating_duration_since(operation.queued));
        }
        let strict = group.iter().any(|operation| !operation.relaxed);
        if strict != synchronous_full {
            let (level, pragma) =
                if strict { ("FULL", "PRAGMA synchronous = FULL") } else { ("NORMAL", "PRAGMA synchronous = NORMAL") };
            match execute_cached(&connection, pragma) {
                Ok(()) => synchronous_full = strict,
                Err(error) => tracing::error!("store: cannot set synchronous={level}: {error}"),
            }
        }
        // A strict group never commits without its fsync: if FULL could not be set, it fails.
        if strict && !synchronous_full {
            tracing::error!(operations = group.len(), "store: no fsync possible; the group is refused");
            continue;
        }
        run_group(&connection, group, synchronous_full, stats);
        if WAL_PAGES.with(std::cell::Cell::get) >= CHECKPOINT_PAGES {
            checkpoint(&connection, stats, &log);
        }
    }
}

/// Copies the WAL into the database (PASSIVE: this connection is the only one,
/// so it copies everything and the next commit starts the WAL over). With
/// synchronous=FULL or NORMAL, SQLite fsyncs the WAL before and the database
/// after, so nothing committed depends on it.
fn checkpoint(connection: &Connection, stats: &Stats, log: &crate::log_limit::SharedLogLimiter) {
    let started = Instant::now();
    match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => WAL_PAGES.with(|wal| wal.set(0)),
        // The WAL grows until the next try; SQLite's files stay consistent.
        Err(error) => {
            if let Some(more) = log.admit("store_checkpoint") {
                tracing::error!("store checkpoint failed: {error}{more}");
            }
        }
    }
    stats.observe(StoreStage::Checkpoint, started.elapsed());
}

/// Runs and commits one group; `synced`: at synchronous=FULL.
fn run_group(connection: &Connection, group: Vec<Operation>, synced: bool, stats: &Stats) {
    let count = group.len() as u64;
    let mut deliveries = Vec::with_capacity(group.len());
    // Cached statements: parsing BEGIN and COMMIT anew cost ~6% of the writer at low rates.
    let began = execute_cached(connection, "BEGIN IMMEDIATE").is_ok();
    if !began {
        // Nothing runs outside a transaction; dropping the jobs answers their callers
        // with an error (no 2xx for a callback that is not stored).
        tracing::error!(operations = count, "store: cannot begin a transaction; the group is refused");
        return;
    }
    let began_at = Instant::now();
    for operation in group {
        // A savepoint per operation: a failing one rolls back alone.
        let savepoint = operation.savepoint && execute_cached(connection, "SAVEPOINT op").is_ok();
        let (succeeded, delivery) = (operation.job)(connection);
        if savepoint {
            let end = if succeeded {
                execute_cached(connection, "RELEASE op")
            } else {
                connection.execute_batch("ROLLBACK TO op; RELEASE op")
            };
            if let Err(error) = end {
                tracing::error!("store savepoint: {error}");
            }
        }
        deliveries.push(delivery);
    }
    let commit_at = Instant::now();
    stats.observe(StoreStage::Execute, commit_at - began_at);
    let committed = match execute_cached(connection, "COMMIT") {
        Ok(()) => true,
        Err(error) => {
            tracing::error!("store commit failed: {error}");
            let _ = connection.execute_batch("ROLLBACK");
            false
        }
    };
    stats.observe(StoreStage::Commit, commit_at.elapsed());
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.operations.fetch_add(count, Ordering::Relaxed);
    if synced {
        stats.synced_commits.fetch_add(1, Ordering::Relaxed);
    }
    for delivery in deliveries {
        delivery(committed);
    }
}

fn execute_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::{NewEntry, Recorded};
    use crate::store::outbox::NewAction;
    use crate::store::Store;

    pub(super) use crate::store::journal::tests::entry;

    #[tokio::test]
    async fn a_second_delivery_is_a_duplicate_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        assert!(matches!(store.journal(entry("a")).await.expect("journal"), Recorded::New(_)));
        assert_eq!(store.journal(entry("a")).await.expect("journal"), Recorded::Duplicate);
        drop(store);
        let store = Store::open(dir.path()).expect("reopens");
        assert_eq!(store.journal(entry("a")).await.expect("journal"), Recorded::Duplicate);
        assert_eq!(store.claim_entries(10).await.expect("pending").len(), 1);
    }

    /// Journals `count` entries of 8 KiB each, one commit each: ~2 WAL pages apiece.
    async fn journal_pages(store: &Store, count: usize) {
        for i in 0..count {
            let key = format!("big{i}");
            let entry = NewEntry { payload: format!("<xml>{}</xml>", "x".repeat(8 * 1024)), ..entry(&key) };
            store.journal(entry).await.expect("journal");
        }
    }

    /// The stages `wechat_api_store_stage_seconds` shows: queue, execute,
    /// commit, and the writer's own checkpoint once the WAL is long enough.
    #[tokio::test]
    async fn every_stage_of_the_writer_is_observed() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let seen: Arc<std::sync::Mutex<Vec<StoreStage>>> = Arc::default();
        let record = Arc::clone(&seen);
        store.stats().observe_stages(Box::new(move |stage, _| record.lock().expect("lock").push(stage)));
        journal_pages(&store, 5).await;
        let checkpoints = |seen: &[StoreStage]| seen.iter().filter(|s| **s == StoreStage::Checkpoint).count();
        assert_eq!(checkpoints(&seen.lock().expect("lock")), 0, "the WAL is short");
        journal_pages(&store, CHECKPOINT_PAGES as usize).await;
        let seen = seen.lock().expect("lock").clone();
        for stage in StoreStage::ALL {
            assert!(seen.contains(&stage), "{stage:?} not observed in {seen:?}");
        }
    }

    /// The writer's checkpoints keep the WAL short: ~7 MB journaled, one commit
    /// at a time, leaves a WAL of about `CHECKPOINT_PAGES` (~2 MB; SQLite's own
    /// autocheckpoint would leave ~4 MB, none ~7 MB).
    #[tokio::test]
    async fn the_writer_checkpoints_the_wal_short() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        journal_pages(&store, 600).await;
        let wal = std::fs::metadata(dir.path().join(format!("{DATABASE_FILE}-wal"))).expect("a WAL").len();
        assert!(wal < 3 * 1024 * 1024, "the WAL is {wal} bytes");
        assert_eq!(store.unhandled().await.expect("count"), 600, "everything journaled is there");
    }

    #[tokio::test]
    async fn completing_an_entry_queues_its_actions_once() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let Recorded::New(id) = store.journal(entry("m1")).await.expect("journal") else { panic!("new") };
        let action = NewAction { key: "forward:m1".into(), kind: "forward".into(), payload: "{}".into() };
        store.complete_entries(vec![(id, vec![action.clone()])]).await.expect("complete");
        // Handling again (after a crash) queues nothing new.
        store.complete_entries(vec![(id, vec![action])]).await.expect("complete again");
        assert!(store.claim_entries(10).await.expect("pending").is_empty());
        let due = store.claim_actions(10).await.expect("due");
        assert_eq!(due.len(), 1);
        store.action_failed(&due[0], 60, "HTTP 500".into()).await.expect("failed");
        assert!(store.claim_actions(10).await.expect("due").is_empty(), "not due before its back-off");
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 1);
        store.action_succeeded(&due[0], Vec::new()).await.expect("done");
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let writes = (0..400).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.journal(entry(&format!("k{i}"))).await })
        });
        for write in futures_util::future::join_all(writes).await {
            assert!(matches!(write.expect("task").expect("journal"), Recorded::New(_)));
        }
        let commits = store.stats().commits.load(Ordering::Relaxed);
        assert!(commits < 400, "400 writes took {commits} commits: no grouping");
        assert_eq!(store.claim_entries(1000).await.expect("pending").len(), 400);
    }

    #[tokio::test]
    async fn only_groups_with_a_strict_operation_are_fsynced() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let synced = || store.stats().synced_commits.load(Ordering::Relaxed);
        let before = synced();
        store
            .sqlite()
            .run_relaxed(|db| db.execute("INSERT INTO meta (key, value) VALUES ('relaxed', '1')", []))
            .await
            .expect("relaxed write");
        assert_eq!(synced(), before, "a relaxed group commits without an fsync");
        assert!(matches!(store.journal(entry("strict")).await.expect("journal"), Recorded::New(_)));
        assert_eq!(synced(), before + 1, "a journal write is fsync'd");
        drop(store);
        // Both survive a reopen (a process exit; the fsync also covered the relaxed one).
        let store = Store::open(dir.path()).expect("reopens");
        let relaxed: String = store
            .sqlite()
            .run(|db| db.query_row("SELECT value FROM meta WHERE key = 'relaxed'", [], |row| row.get(0)))
            .await
            .expect("kept");
        assert_eq!(relaxed, "1");
        assert_eq!(store.journal(entry("strict")).await.expect("journal"), Recorded::Duplicate);
        // SQLite's own setting follows the group.
        let level = |db: &Connection| db.pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0));
        assert_eq!(store.sqlite().run_relaxed(level).await.expect("level"), 1, "NORMAL");
        assert_eq!(store.sqlite().run(level).await.expect("level"), 2, "FULL");
    }

    #[tokio::test]
    async fn a_failing_operation_does_not_undo_its_neighbours() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let bad = store.sqlite().run(|db| {
            db.execute("INSERT INTO journal (dedup_key, channel, kind, received_at, payload) VALUES ('x', 'app', 'callback', 0, 'p')", [])?;
            db.execute("INSERT INTO no_such_table VALUES (1)", [])
        });
        let good = store.journal(entry("y"));
        let (bad, good) = tokio::join!(bad, good);
        assert!(bad.is_err());
        assert!(matches!(good.expect("good write"), Recorded::New(_)));
        assert!(!store.contains("x".into()).await.expect("query"), "the failed operation rolled back");
    }

    #[tokio::test]
    async fn tokens_and_first_start_persist() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let first = store.first_started_at().await.expect("first start");
        let token = crate::store::tokens::StoredToken { token: "t".into(), expires_at: 42 };
        store.save_token("k".into(), token.clone()).await.expect("save");
        drop(store);
        let store = Store::open(dir.path()).expect("reopens");
        assert_eq!(store.load_token("k".into()).await.expect("load"), Some(token));
        assert_eq!(store.first_started_at().await.expect("first start"), first);
    }

    #[tokio::test]
    async fn a_version_1_journal_keeps_its_entries_ids_and_watermark() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        db.execute_batch(MIGRATIONS[0]).expect("schema 1");
        db.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO journal (id, dedup_key, channel, kind, received_at, payload) VALUES
                 (7, 'handled', 'app', 'callback', 1, '<xml/>'), (9, 'pending', 'app', 'callback', 2, '<xml/>');
             INSERT INTO meta (key, value) VALUES ('journal_handled_through', '7');",
        )
        .expect("rows");
        drop(db);

        let store = Store::open(dir.path()).expect("migrates");

        let pending = store.claim_entries(10).await.expect("pending");
        assert_eq!(pending.iter().map(|e| (e.id, e.dedup_key.as_str())).collect::<Vec<_>>(), vec![(9, "pending")]);
        assert_eq!(store.journal(entry("handled")).await.expect("journal"), Recorded::Duplicate);
        assert_eq!(store.journal(entry("new")).await.expect("journal"), Recorded::New(10));
        let version: i64 = store
            .sqlite()
            .run(|db| db.pragma_query_value(None, "user_version", |row| row.get(0)))
            .await
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        db.pragma_update(None, "user_version", 99).expect("set");
        drop(db);
        assert!(matches!(Store::open(dir.path()), Err(StoreError::TooNew { found: 99, .. })));
    }
}
