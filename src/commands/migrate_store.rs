//! `wechat-api migrate-store --to <DATABASE_URL>`: moves a single VM's SQLite store
//! (`DATA_DIR`) into an empty PostgreSQL database, for replicas (SPEC §9).
//!
//! Deliberately not here: what is carried (`store::snapshot` decides) and the SQL
//! of either engine. Run it with the service stopped: an entry journaled after
//! the export would stay behind.

use anyhow::Context;

use super::{runtime, CommandError, Threads};
use crate::config::{self, ConfigErrors, Sources};
use crate::store::{Store, DEFAULT_LEASE};

/// Connections the migration needs.
const POOL_SIZE: usize = 2;

pub(crate) fn run(sources: &Sources, to: &str) -> Result<(), CommandError> {
    // A target that is no PostgreSQL URL is a usage error (exit 64), said without the URL.
    if let Err(reason) = crate::store::check_database_url(to) {
        let hint = "postgres://user:password@host:port/dbname?sslmode=disable|prefer|require|verify-full";
        return Err(ConfigErrors(vec![format!("--to: {reason} ({hint})")]).into());
    }
    let (config, _) = config::load(sources)?;
    let runtime = runtime(Threads::One).context("cannot start the async runtime")?;
    runtime.block_on(async {
        let from = Store::open(&config.store.data_dir)
            .with_context(|| format!("cannot open the SQLite store in {}", config.store.data_dir.display()))?;
        // The URL is never echoed: it carries the password.
        let target = Store::connect(to, POOL_SIZE, DEFAULT_LEASE).await.context("cannot use the target database")?;
        let snapshot = from.export().await.context("cannot read the SQLite store")?;
        let summary = snapshot.summary();
        target.import(snapshot).await.context("cannot write the target database")?;
        println!("migrated {summary} from {} into PostgreSQL", config.store.data_dir.display());
        println!("next: set DATABASE_URL on every replica (see README, \"Replicas\")");
        Ok(())
    })
}
