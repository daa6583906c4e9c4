//! Named leases: who may do a piece of cluster-wide work right now (sync a kf
//! account, refresh a Secret's token, prune). A lease is a row with a claim
//! counter that only goes up and an expiry taken from the store's own clock, so
//! the clocks of replicas never matter; work done under a lease is fenced by its
//! claim, so an owner whose lease was taken over cannot write.
//!
//! Deliberately not here: waiting for a lease. A caller that gets `None` leaves
//! the work to the owner or tries again later.

use super::{backend, Store, StoreError};

/// A lease this process holds until it releases it or the store's lease ([`Store::with_lease`]) passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    /// Fences work done under the lease.
    pub claim: i64,
}

impl Store {
    /// Takes the lease `name` unless another owner holds it and its time has not run out.
    pub async fn claim_lease(&self, name: String) -> Result<Option<Lease>, StoreError> {
        backend!(self, b => b.claim_lease(name).await)
    }

    /// Extends a lease this process holds by another `LEASE_SECS`; `false`
    /// when another owner has taken it over (the holder must stop).
    pub async fn renew_lease(&self, lease: Lease) -> Result<bool, StoreError> {
        backend!(self, b => b.renew_lease(lease).await)
    }

    /// Gives the lease up at once, so another owner need not wait for it to run out.
    pub async fn release_lease(&self, lease: Lease) -> Result<(), StoreError> {
        backend!(self, b => b.release_lease(lease).await)
    }
}
