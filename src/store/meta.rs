//! Facts about this installation, e.g. when it first started.

use super::{backend, Store, StoreError};

impl Store {
    /// Unix seconds of the very first start of this data directory (set on first call).
    pub async fn first_started_at(&self) -> Result<i64, StoreError> {
        backend!(self, b => b.first_started_at().await)
    }
}
