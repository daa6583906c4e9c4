//! The store boundary: everything the service keeps — the journal, the outbox,
//! access tokens, kf cursors, alert state, names, facts about the installation —
//! as operations named by what the service needs, whichever engine holds them.
//!
//! Owns: the operations (one file per concern: [`journal`], [`outbox`], [`kf`], [`aibot`],
//! [`sends`], [`conversations`], [`tokens`], [`leases`], [`alerts`], [`names`],
//! [`meta`], [`retention`], [`egress`]), the types they
//! take and give, [`StoreError`], and what is the same for every engine (the
//! recent dedup keys in memory, and the decisions both engines apply within
//! their transactions: `conversations::Change`, `outbox::Finish`). Deliberately
//! not here: SQL. Each engine is a
//! backend module (`sqlite`: the embedded default, with group commit and two
//! durability classes) that implements every operation; [`Store`] hands each call
//! to its backend.

pub(crate) mod aibot;
pub(crate) mod alerts;
pub(crate) mod conversations;
pub(crate) mod egress;
pub(crate) mod journal;
pub(crate) mod kf;
pub(crate) mod leases;
pub(crate) mod meta;
pub(crate) mod names;
pub(crate) mod outbox;
mod postgres;
pub(crate) mod retention;
pub(crate) mod sends;
pub(crate) mod snapshot;
mod sqlite;
pub(crate) mod tokens;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The PostgreSQL schema version this build knows (tests compare with it
/// instead of writing the number, which each migration moves).
#[cfg(feature = "testing")]
pub const POSTGRES_SCHEMA_VERSION: i64 = postgres::SCHEMA_VERSION;

/// The file name inside `DATA_DIR`.
pub const DATABASE_FILE: &str = "wechat-api.sqlite3";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATA_DIR {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: the writer thread has stopped")]
    Closed,
    #[error("store: the commit failed, nothing was written")]
    CommitFailed,
    #[error("store: this database was written by a newer version (schema {found}, this build knows {known})")]
    TooNew { found: i64, known: i64 },
    /// A claim (an outbox action, a kf account, a lease) was taken over by another
    /// owner after it ran out; nothing was written.
    #[error("store: the claim was taken over after its lease ran out; nothing was written")]
    LeaseLost,
    /// An import into a store that already holds data.
    #[error("store: the target already holds data; migrate-store needs an empty database")]
    NotEmpty,
    /// PostgreSQL could not be reached, refused an operation, or a commit's outcome
    /// is unknown; never carries the password of `DATABASE_URL`.
    /// (Not the error's `source`: its text is in this one's, and a chain would say it twice.)
    #[error("store: PostgreSQL: {0}")]
    Postgres(postgres::PostgresError),
    /// A call on a request path got no answer within [`REQUEST_DEADLINE`]
    /// (a stalled database or disk): its outcome is unknown, so it is never
    /// acknowledged, and WeCom's retry is deduped if it did commit after all.
    #[error("store: no answer within {}s; the outcome is unknown", REQUEST_DEADLINE.as_secs())]
    TimedOut,
}

/// How long a store call on a request path may take, whatever the database
/// does (pool wait, a stalled server, a dead socket): WeCom gives up on an
/// answer after 5 s, and a quick 503 lets it retry, on another replica where
/// there is one (SPEC §15).
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

/// `call` (store operations of a request) within [`REQUEST_DEADLINE`], else
/// [`StoreError::TimedOut`]. Dropping the call on time out is safe: an
/// operation's commit either happened (a retry finds it) or did not.
/// Every store call of `routes/` goes through here (`tests/api/layout.rs`).
pub(crate) async fn bounded<T, E: From<StoreError>>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(REQUEST_DEADLINE, call).await.unwrap_or_else(|_| Err(StoreError::TimedOut.into()))
}

/// How long a claim holds by default (`LEASE_SECS`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The engine behind a [`Store`].
#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Runs `$body` with `$b` bound to the store's backend: how every operation of
/// the boundary reaches its engine.
macro_rules! backend {
    ($store:expr, $b:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($b) => $body,
            $crate::store::Backend::Postgres($b) => $body,
        }
    };
}
use backend;

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Dedup keys known to be committed, so a retry is answered without a store trip.
    recent: Arc<journal::RecentKeys>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("commits", &self.stats().commits.load(Ordering::Relaxed)).finish()
    }
}

/// Counters of the engine's commits, for metrics and the group-commit measurement,
/// and where the engine's time goes ([`StoreStage`]), for whoever observes it.
#[derive(Default)]
pub struct Stats {
    pub commits: AtomicU64,
    pub operations: AtomicU64,
    /// Commits that were fsync'd (a group with a strict operation in it).
    pub synced_commits: AtomicU64,
    observer: std::sync::OnceLock<StageObserver>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("commits", &self.commits)
            .field("operations", &self.operations)
            .field("synced_commits", &self.synced_commits)
            .field("observed", &self.observer.get().is_some())
            .finish()
    }
}

/// Told how long each stage took, from the engine's own threads: it must be cheap
/// and never block (a histogram's `record`).
pub(crate) type StageObserver = Box<dyn Fn(StoreStage, Duration) + Send + Sync>;

impl Stats {
    /// Sets who is told of the stages' durations; the first call wins.
    pub(crate) fn observe_stages(&self, observer: StageObserver) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer, if there is one, that `stage` took `took`.
    pub(crate) fn observe(&self, stage: StoreStage, took: Duration) {
        if let Some(observer) = self.observer.get() {
            observer(stage, took);
        }
    }
}

/// Where the store's time goes on the durable path, for
/// `wechat_api_store_stage_seconds{stage}`: what names the tail of a callback's
/// latency when many share one group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreStage {
    /// An operation waiting for its engine: from its submission until its group
    /// starts (SQLite's writer thread; a journal writer on PostgreSQL).
    Queue,
    /// A group's statements, before its commit.
    Execute,
    /// A group's commit: the log write and its fsync (on PostgreSQL, the one
    /// statement of a journal group, which is its own transaction).
    Commit,
    /// SQLite's WAL copied into the database by the writer, after the commit
    /// that made it long enough was answered (none on PostgreSQL).
    Checkpoint,
}

impl StoreStage {
    pub(crate) const ALL: [Self; 4] = [Self::Queue, Self::Execute, Self::Commit, Self::Checkpoint];

    /// The `stage` label's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Execute => "execute",
            Self::Commit => "commit",
            Self::Checkpoint => "checkpoint",
        }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `dir` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let store = Self { backend: Backend::Sqlite(sqlite::Sqlite::open(dir)?), recent: Arc::default() };
        Ok(store.with_lease(DEFAULT_LEASE))
    }

    /// Connects to the PostgreSQL database of `url` (`DATABASE_URL`, with its
    /// `sslmode`) through a pool of `pool_size` connections and migrates it; claims
    /// hold for `lease` (`LEASE_SECS`). Errors never show the password.
    pub async fn connect(url: &str, pool_size: usize, lease: Duration) -> Result<Self, StoreError> {
        let postgres = postgres::Postgres::connect(url, pool_size).await?;
        Ok(Self { backend: Backend::Postgres(postgres), recent: Arc::default() }.with_lease(lease))
    }

    /// The same store with claims that hold for `lease` (`LEASE_SECS`): the
    /// engine takes every claim (outbox actions, journal entries, kf accounts,
    /// named leases) for that long.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        let secs = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
        match &mut self.backend {
            Backend::Sqlite(b) => b.lease_secs = secs,
            Backend::Postgres(b) => b.lease_secs = secs,
        }
        self
    }

    /// The engine's name: `sqlite` or `postgres` (`wechat_api_build_info{backend}`).
    pub(crate) fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The engine's commit counters.
    pub fn stats(&self) -> &Stats {
        backend!(self, b => b.stats())
    }
}

/// Whether `url` is a `DATABASE_URL` the PostgreSQL engine can use; the reason
/// (never repeating the URL, which carries the password) when not.
pub(crate) fn check_database_url(url: &str) -> Result<(), String> {
    postgres::check_url(url)
}

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
impl Store {
    /// The SQLite backend, for the tests of its internals.
    fn sqlite(&self) -> &sqlite::Sqlite {
        match &self.backend {
            Backend::Sqlite(b) => b,
            Backend::Postgres(_) => panic!("the tests of SQLite internals open SQLite stores"),
        }
    }
}
