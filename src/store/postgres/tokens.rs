//! Access tokens in PostgreSQL, shared by the replicas.

use super::{Postgres, EPOCH};
use crate::store::tokens::{AccessToken, StoredToken};
use crate::store::StoreError;

impl Postgres {
    pub(in crate::store) async fn load_token(&self, cache_key: String) -> Result<Option<StoredToken>, StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT token, expires_at FROM access_tokens WHERE cache_key = $1").await?;
        let row = client.query_opt(&statement, &[&cache_key]).await?;
        Ok(row.map(|row| StoredToken { token: AccessToken::new(row.get::<_, String>(0)), expires_at: row.get(1) }))
    }

    pub(in crate::store) async fn save_token(&self, cache_key: String, token: StoredToken) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "INSERT INTO access_tokens (cache_key, token, expires_at, obtained_at) VALUES ($1, $2, $3, {EPOCH})
                 ON CONFLICT (cache_key) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at,
                 obtained_at = excluded.obtained_at"
            ))
            .await?;
        client.execute(&statement, &[&cache_key, &token.token.expose(), &token.expires_at]).await?;
        self.committed(1);
        Ok(())
    }

    /// Deletes the token of `cache_key` only if it is still `stale`.
    pub(in crate::store) async fn drop_token(&self, cache_key: String, stale: AccessToken) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("DELETE FROM access_tokens WHERE cache_key = $1 AND token = $2").await?;
        client.execute(&statement, &[&cache_key, &stale.expose()]).await?;
        self.committed(1);
        Ok(())
    }
}
