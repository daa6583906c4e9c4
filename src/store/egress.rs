//! The egress IP WeCom sees, per channel (SPEC §14): the last IP a WeCom answer
//! named, when it was first and last seen; and the release of a parked channel's
//! put-off outbox actions once WeCom accepts its IP again.
//!
//! Deliberately not here: deciding what an IP means (a change, a 60020): that is
//! the `egress` module at the top.

use super::{backend, Store, StoreError};
use crate::channels::ChannelName;

/// One channel's egress IP as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    pub channel: ChannelName,
    /// The IP as WeCom wrote it (`from ip: …`).
    pub ip: String,
    /// Unix seconds when this IP was first named for the channel.
    pub first_seen: i64,
    /// Unix seconds when it was last named.
    pub last_seen: i64,
}

impl Store {
    /// Every channel's kept egress IP.
    pub async fn egress_ips(&self) -> Result<Vec<EgressRecord>, StoreError> {
        backend!(self, b => b.egress_ips().await)
    }

    /// Keeps `record` as its channel's egress IP (replacing what was kept).
    pub async fn set_egress_ip(&self, record: EgressRecord) -> Result<(), StoreError> {
        backend!(self, b => b.set_egress_ip(record).await)
    }

    /// Makes the outbox actions `ids` due now, unless they are done or claimed:
    /// a parked channel's actions, put off while WeCom refused its IP (60020),
    /// go on at once when one of them got through.
    pub async fn release_actions(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        backend!(self, b => b.release_actions(ids).await)
    }
}
