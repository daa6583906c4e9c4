//! The PostgreSQL backend: the store shared by replicas (`DATABASE_URL`).
//!
//! Owns: the schema and its migrations (run once for the cluster, under a
//! transaction-scoped advisory lock, which also works behind pgbouncer's
//! transaction pooling), the pool of connections (`connection`), and the SQL of
//! every operation (one file per concern, named as in `store/`).
//!
//! How it differs from SQLite, and why:
//! - **Acknowledged means committed**: every connection runs with
//!   `synchronous_commit` on; an operation answers only after its commit, and a
//!   commit whose outcome is unknown (the connection broke) is an error. Two
//!   operations are relaxed, as on SQLite: the dispatcher's claim and its
//!   completion commit with `SET LOCAL synchronous_commit = off` (lost with the
//!   server's crash, the entries are claimed and handled again, queueing the same
//!   idempotency keys), so they do not wait for a WAL flush of their own.
//! - **Group commit** for the journal: concurrent callbacks are gathered by a few
//!   writer tasks into one multi-row `INSERT … ON CONFLICT DO NOTHING` each (one
//!   commit per group), as the SQLite writer thread does (see `journal`).
//! - **No watermark**: identity ids are handed out at insert, not at commit, so a
//!   reader may see id 2 before id 1 commits. An unhandled entry has a row in
//!   `journal_pending`, claimed for a lease with `FOR UPDATE SKIP LOCKED` (so
//!   replicas never take the same ones) and deleted once it is handled: the
//!   journal's own rows are written once.
//! - **Every time from the database's clock** (`now()`): replica clocks never
//!   decide a lease. Unix seconds that leave the store come from
//!   `floor(extract(epoch from now()))`.
//!
//! Deliberately not here: what the operations mean to the service (the boundary
//! in `store/`), `LISTEN/NOTIFY` (a `pg_notify` in the journal transaction
//! serialises commits; replicas poll), session advisory locks (they break behind
//! pgbouncer).

mod aibot;
mod alerts;
mod connection;
mod conversations;
mod egress;
mod journal;
mod kf;
mod leases;
mod meta;
mod names;
mod outbox;
mod owned;
mod retention;
mod sends;
mod snapshot;
mod tokens;
mod types;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use deadpool_postgres::{Object, Pool, PoolError};
use tokio_postgres::Row;

use super::{Stats, StoreError};

/// Versioned schema: entry `n` upgrades version n to n+1. Append only, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store holds at its schema 3. Unix seconds are
    // `bigint` where they leave the store; claim expiries are `timestamptz` and
    // only ever compared with `now()`.
    // journal: `handled_at` set once handled; `claimed_until`: a replica claimed it
    // for handling. The partial index holds only the unhandled entries, so the
    // claim walks a few rows whatever the journal's size.
    // outbox: the partial index on due, undone actions keeps claims fast under
    // load (without it they fall from thousands to under a hundred per second).
    "CREATE TABLE journal (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        dedup_key text NOT NULL UNIQUE,
        channel text NOT NULL,
        kind text NOT NULL,
        sender text,
        received_at bigint NOT NULL,
        payload text NOT NULL,
        handled_at bigint,
        claimed_until timestamptz
    );
    CREATE INDEX journal_unhandled ON journal (id) WHERE handled_at IS NULL;
    CREATE TABLE outbox (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        action_key text NOT NULL UNIQUE,
        kind text NOT NULL,
        payload text NOT NULL,
        attempts bigint NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        last_error text,
        created_at bigint NOT NULL,
        done_at bigint,
        claim bigint NOT NULL DEFAULT 0,
        claimed_until timestamptz
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE done_at IS NULL;
    CREATE TABLE access_tokens (
        cache_key text PRIMARY KEY,
        token text NOT NULL,
        expires_at bigint NOT NULL,
        obtained_at bigint NOT NULL
    );
    CREATE TABLE kf_cursors (
        open_kfid text PRIMARY KEY,
        cursor text NOT NULL,
        updated_at bigint NOT NULL
    );
    CREATE TABLE names (
        id_type text NOT NULL,
        id text NOT NULL,
        name text NOT NULL,
        source text NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (id_type, id)
    );
    CREATE TABLE alert_state (
        check_name text PRIMARY KEY,
        firing_since bigint NOT NULL,
        last_notified_at bigint NOT NULL
    );
    CREATE TABLE meta (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    CREATE TABLE leases (
        name text PRIMARY KEY,
        claim bigint NOT NULL,
        until timestamptz NOT NULL
    );",
    // 2: replies (SPEC §10), as SQLite's schema 4: sends with their status, each
    // kf part's msgid, and what the kf rules need per conversation.
    "CREATE TABLE sends (
        id text PRIMARY KEY,
        channel text NOT NULL,
        recipient text NOT NULL,
        open_kfid text,
        idempotency_key text UNIQUE,
        status text NOT NULL,
        parts bigint NOT NULL,
        parts_sent bigint NOT NULL DEFAULT 0,
        errcode bigint,
        reason text,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    );
    CREATE INDEX sends_updated ON sends (updated_at);
    CREATE TABLE send_msgids (
        msgid text PRIMARY KEY,
        send_id text NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE TABLE kf_conversations (
        open_kfid text NOT NULL,
        external_userid text NOT NULL,
        last_customer_at bigint,
        sent_since bigint NOT NULL DEFAULT 0,
        human_since bigint,
        updated_at bigint NOT NULL,
        PRIMARY KEY (open_kfid, external_userid)
    );",
    // 3: as SQLite's schema 5: each channel's queued sends for SEND_QUEUE_MAX.
    "CREATE INDEX sends_queued ON sends (channel) WHERE status = 'queued';",
    // 4: the send API's request fingerprint, as SQLite's schema 6.
    "ALTER TABLE sends ADD COLUMN request_sha256 text;",
    // 5: channels, as SQLite's schema 7: kf cursors keyed by channel name and
    // `open_kfid`; the cursors of before belong to the built-in `kf`.
    "ALTER TABLE kf_cursors ADD COLUMN channel text NOT NULL DEFAULT 'kf';
    ALTER TABLE kf_cursors ALTER COLUMN channel DROP DEFAULT;
    ALTER TABLE kf_cursors DROP CONSTRAINT kf_cursors_pkey;
    ALTER TABLE kf_cursors ADD PRIMARY KEY (channel, open_kfid);",
    // 6: the egress IPs, as SQLite's schema 8.
    "CREATE TABLE egress_ips (
        channel text PRIMARY KEY,
        ip text NOT NULL,
        first_seen bigint NOT NULL,
        last_seen bigint NOT NULL
    );",
    // 7: AI bot streams, as SQLite's schema 9.
    "CREATE TABLE aibot_streams (
        stream_id text PRIMARY KEY,
        record_id text NOT NULL,
        channel text NOT NULL,
        userid text NOT NULL DEFAULT '',
        chatid text,
        response_url text,
        created_at bigint NOT NULL,
        content text NOT NULL DEFAULT '',
        finished boolean NOT NULL DEFAULT false,
        shown text,
        late_refresh bigint,
        delivered_refresh bigint,
        response_used_at bigint,
        rest_sent_at bigint,
        failed_reason text,
        updated_at bigint NOT NULL
    );
    CREATE INDEX aibot_streams_created ON aibot_streams (created_at);",
    // 8: the channel's name in cached names, kf conversations and kf msgids, as
    // SQLite's schema 10, the rows of before attributed the same way.
    "ALTER TABLE names ADD COLUMN channel text;
    UPDATE names SET channel = CASE source WHEN 'kf/customer/batchget' THEN 'kf' ELSE 'app' END;
    ALTER TABLE names ALTER COLUMN channel SET NOT NULL;
    ALTER TABLE names DROP CONSTRAINT names_pkey;
    ALTER TABLE names ADD PRIMARY KEY (channel, id_type, id);
    ALTER TABLE kf_conversations ADD COLUMN channel text;
    UPDATE kf_conversations k SET channel =
        COALESCE((SELECT MIN(c.channel) FROM kf_cursors c WHERE c.open_kfid = k.open_kfid), 'kf');
    ALTER TABLE kf_conversations ALTER COLUMN channel SET NOT NULL;
    ALTER TABLE kf_conversations DROP CONSTRAINT kf_conversations_pkey;
    ALTER TABLE kf_conversations ADD PRIMARY KEY (channel, open_kfid, external_userid);
    ALTER TABLE send_msgids ADD COLUMN channel text;
    UPDATE send_msgids m SET channel = COALESCE((SELECT s.channel FROM sends s WHERE s.id = m.send_id), 'kf');
    ALTER TABLE send_msgids ALTER COLUMN channel SET NOT NULL;
    ALTER TABLE send_msgids DROP CONSTRAINT send_msgids_pkey;
    ALTER TABLE send_msgids ADD PRIMARY KEY (channel, msgid);",
    // 9: what is not handled yet, in a narrow table of its own: an entry is
    // handled once its row here is gone. Handling an entry deletes ~40 bytes
    // instead of rewriting the journal's ~1 KB row (an `UPDATE` of `handled_at`,
    // never HOT: the partial index's predicate names it), and a claim rewrites
    // the narrow row only. The columns dropped make a replica of before fail
    // loudly rather than take every handled entry for unhandled.
    "CREATE TABLE journal_pending (
        id bigint PRIMARY KEY,
        claimed_until timestamptz
    );
    INSERT INTO journal_pending (id, claimed_until)
        SELECT id, claimed_until FROM journal WHERE handled_at IS NULL;
    DROP INDEX journal_unhandled;
    ALTER TABLE journal DROP COLUMN handled_at, DROP COLUMN claimed_until;",
    // 10: the long connection's `req_id` of each AI bot stream and when its
    // holder was done with it, as SQLite's schema 11.
    "ALTER TABLE aibot_streams ADD COLUMN req_id text;
    ALTER TABLE aibot_streams ADD COLUMN pushed_at bigint;
    CREATE INDEX aibot_streams_pushing ON aibot_streams (channel) WHERE req_id IS NOT NULL AND pushed_at IS NULL;",
    // 11: the send API's idempotency keys of AI bot answers, as SQLite's schema 12.
    "CREATE TABLE aibot_answer_keys (
        idempotency_key text PRIMARY KEY,
        stream_id text NOT NULL,
        answer_id text NOT NULL,
        request_sha256 text NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE INDEX aibot_answer_keys_created ON aibot_answer_keys (created_at);",
];

/// The schema this build brings a database to (the number of [`MIGRATIONS`]).
#[cfg(feature = "testing")]
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Whether `url` parses as a `DATABASE_URL`; what is wrong with it when not.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    match connection::Target::parse(url) {
        Ok(_) => Ok(()),
        Err(PostgresError::Url(reason)) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

/// The key of the transaction-scoped advisory lock that serialises migrations
/// ("wechat" in ASCII).
const MIGRATION_LOCK: i64 = 0x7765_6368_6174;

/// Unix seconds now, by the database's clock.
const EPOCH: &str = "floor(extract(epoch from now()))::bigint";

/// Why the PostgreSQL backend failed. No variant carries `DATABASE_URL` or its
/// password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// `DATABASE_URL` cannot be used: what is wrong with it.
    #[error("DATABASE_URL: {0}")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// The server refused an operation or the connection broke (its outcome
    /// unknown). Shown with its causes: the driver's own text is only the kind
    /// ("db error"), the server's message is the cause.
    #[error("{}", with_causes(.0))]
    Database(tokio_postgres::Error),
    /// No connection could be had (the database is unreachable, the pool timed out),
    /// or a group commit failed for everyone in it.
    #[error("{0}")]
    Unavailable(String),
    /// A row holds a value this build never writes.
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
}

impl From<PostgresError> for StoreError {
    fn from(error: PostgresError) -> Self {
        Self::Postgres(error)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(PostgresError::Database(error))
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(error)) => error.into(),
            other => Self::Postgres(PostgresError::Unavailable(format!("no connection: {other}"))),
        }
    }
}

/// The PostgreSQL backend's handle; cheap to clone.
#[derive(Clone)]
pub(super) struct Postgres {
    pool: Pool,
    stats: Arc<Stats>,
    /// The journal's group-commit writers.
    journal: journal::Writers,
    /// What they inserted claimed for this replica, for its dispatcher.
    owned: Arc<owned::Owned>,
    /// How long a claim holds (`Store::with_lease`).
    pub(super) lease_secs: i64,
}

impl Postgres {
    /// Connects, migrates, and starts the journal writers.
    pub(super) async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let pool = connection::Target::parse(url)?.pool(pool_size)?;
        migrate(&pool).await?;
        let stats = Arc::new(Stats::default());
        let owned = Arc::<owned::Owned>::default();
        let journal = journal::Writers::start(pool.clone(), Arc::clone(&stats), Arc::clone(&owned), pool_size);
        Ok(Self { pool, stats, journal, owned, lease_secs: 0 })
    }

    /// A connection of the pool.
    async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Every row `sql` selects, each through `read`: a small table read whole
    /// (alert state, egress IPs, kf accounts).
    async fn read_all<T>(&self, sql: &str, read: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        client.query(&statement, &[]).await?.iter().map(read).collect()
    }

    /// Counts one committed transaction of `operations` operations.
    fn committed(&self, operations: u64) {
        record_commit(&self.stats, operations);
    }

    /// Commit counters.
    pub(super) fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Counts one committed transaction; every commit is synchronous.
fn record_commit(stats: &Stats, operations: u64) {
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.synced_commits.fetch_add(1, Ordering::Relaxed);
    stats.operations.fetch_add(operations, Ordering::Relaxed);
}

/// Brings the schema to [`MIGRATIONS`], once for the cluster: replicas starting
/// together queue on a transaction-scoped advisory lock, and each finds the work
/// done by the first.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // A migration may rightly take longer than the session's limits, and may wait
    // for another replica's.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version bigint NOT NULL)").await?;
    let found: i64 = tx.query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[]).await?.get(0);
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for sql in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(usize::MAX)) {
        tx.batch_execute(sql).await?;
    }
    if found < known {
        tx.execute("DELETE FROM schema_version", &[]).await?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&known]).await?;
    }
    tx.commit().await?;
    if found < known {
        tracing::info!("store migrated (PostgreSQL) from schema {found} to {known}");
    }
    Ok(())
}

/// `error` and each of its causes, `: `-separated.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// The text of a column that names an enum value, parsed.
fn named<T>(value: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| StoreError::Postgres(PostgresError::Corrupt(format!("unknown name {value:?}"))))
}

/// A count or limit as PostgreSQL's `bigint`.
fn bigint(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_show_no_password() {
        let error = StoreError::from(connection_error());
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    fn connection_error() -> PostgresError {
        match connection::Target::parse("postgres://app:s3cret@db/x?sslmode=bogus") {
            Err(error) => error,
            Ok(_) => panic!("a bad sslmode is refused"),
        }
    }
}
