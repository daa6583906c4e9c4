//! Facts about this installation, e.g. when it first started, and the other
//! `meta` values (the last restart note, the certificate step); the
//! `store:writable` probe, which writes a `meta` row.

use super::{backend, Store, StoreError};

impl Store {
    /// Unix seconds of the very first start of this data directory (set on first call).
    pub async fn first_started_at(&self) -> Result<i64, StoreError> {
        backend!(self, b => b.first_started_at().await)
    }

    /// A value in `meta`, e.g. the last restart note or certificate step.
    pub async fn meta_value(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        backend!(self, b => b.meta_value(key).await)
    }

    pub async fn set_meta_value(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        backend!(self, b => b.set_meta_value(key, value).await)
    }

    /// Writes and deletes a probe row: the `store:writable` check.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        backend!(self, b => b.probe_write().await)
    }
}
