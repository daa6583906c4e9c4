//! The store boundary: everything the service keeps — the journal, the outbox,
//! access tokens, kf cursors, alert state, names, facts about the installation —
//! as operations named by what the service needs, whichever engine holds them.
//!
//! Owns: the operations (one file per concern: [`journal`], [`outbox`], [`kf`], [`aibot`],
//! [`sends`], [`conversations`], [`tokens`], [`leases`], [`alerts`], [`names`],
//! [`meta`], [`retention`]), the types they
//! take and give, [`StoreError`], and what is the same for every engine (the
//! recent dedup keys in memory). Deliberately not here: SQL. Each engine is a
//! backend module (`sqlite`: the embedded default, with group commit and two
//! durability classes) that implements every operation; [`Store`] hands each call
//! to its backend.

pub(crate) mod aibot;
pub(crate) mod alerts;
pub(crate) mod conversations;
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
    #[error("store: PostgreSQL: {0}")]
    Postgres(#[from] postgres::PostgresError),
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
    /// How long a claim holds before another owner may take it over.
    lease: Duration,
    /// Dedup keys known to be committed, so a retry is answered without a store trip.
    recent: Arc<journal::RecentKeys>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("commits", &self.stats().commits.load(Ordering::Relaxed)).finish()
    }
}

/// Counters of the engine's commits, for metrics and the group-commit measurement.
#[derive(Debug, Default)]
pub struct Stats {
    pub commits: AtomicU64,
    pub operations: AtomicU64,
    /// Commits that were fsync'd (a group with a strict operation in it).
    pub synced_commits: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `dir` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self { backend: Backend::Sqlite(sqlite::Sqlite::open(dir)?), lease: DEFAULT_LEASE, recent: Arc::default() })
    }

    /// Connects to the PostgreSQL database of `url` (`DATABASE_URL`, with its
    /// `sslmode`) through a pool of `pool_size` connections and migrates it; claims
    /// hold for `lease` (`LEASE_SECS`). Errors never show the password.
    pub async fn connect(url: &str, pool_size: usize, lease: Duration) -> Result<Self, StoreError> {
        let postgres = postgres::Postgres::connect(url, pool_size).await?;
        Ok(Self { backend: Backend::Postgres(postgres), lease, recent: Arc::default() })
    }

    /// The same store with claims that hold for `lease` (`LEASE_SECS`).
    pub fn with_lease(self, lease: Duration) -> Self {
        Self { lease, ..self }
    }

    fn lease_secs(&self) -> i64 {
        i64::try_from(self.lease.as_secs()).unwrap_or(i64::MAX)
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
