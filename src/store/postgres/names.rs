//! Cached display names in PostgreSQL.

use deadpool_postgres::GenericClient;

use super::{bigint, Postgres, EPOCH};
use crate::channels::ChannelName;
use crate::store::names::{CachedName, NameKey, NamedId, SeenSenders};
use crate::store::StoreError;

/// Stores `named`, replacing what was cached for its id.
pub(super) async fn upsert(client: &impl GenericClient, named: &NamedId) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO names (channel, id_type, id, name, source, updated_at) VALUES ($1, $2, $3, $4, $5, {EPOCH})
             ON CONFLICT (channel, id_type, id) DO UPDATE SET name = excluded.name, source = excluded.source,
             updated_at = excluded.updated_at"
        ))
        .await?;
    let (key, name) = (&named.key, &named.name);
    client.execute(&statement, &[&key.channel, &key.id_type, &key.id, &name.name, &name.source]).await?;
    Ok(())
}

impl Postgres {
    pub(in crate::store) async fn cached_name(&self, key: NameKey) -> Result<Option<CachedName>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT name, source FROM names WHERE channel = $1 AND id_type = $2 AND id = $3")
            .await?;
        let row = client.query_opt(&statement, &[&key.channel, &key.id_type, &key.id]).await?;
        Ok(row.map(|row| CachedName { name: row.get(0), source: row.get(1) }))
    }

    pub(in crate::store) async fn cache_name(&self, named: NamedId) -> Result<(), StoreError> {
        upsert(&self.client().await?, &named).await?;
        self.committed(1);
        Ok(())
    }

    /// Senders seen on a channel, optionally only those without a cached name.
    pub(in crate::store) async fn seen_senders(&self, query: SeenSenders) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT DISTINCT sender FROM journal WHERE channel = $1 AND sender IS NOT NULL
                 AND ($2::text[] IS NULL OR sender NOT IN (SELECT id FROM names WHERE id_type = $3
                      AND channel = ANY($2::text[])))
                 ORDER BY sender LIMIT $4",
            )
            .await?;
        let SeenSenders { channel, id_type, only_unmapped, limit } = query;
        let named_on: Option<Vec<&str>> =
            only_unmapped.as_ref().map(|channels| channels.iter().map(ChannelName::as_str).collect());
        let rows = client.query(&statement, &[&channel, &named_on, &id_type, &bigint(limit)]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}
