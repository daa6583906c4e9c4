//! Connections per client address (SPEC §15, `CONNECTIONS_PER_ADDRESS`): the
//! table every accepted TCP connection passes before anything else is done
//! with it, so one address cannot hold the listener's capacity or memory.
//!
//! Owns: the count of open connections (TLS handshakes included) per address,
//! admission against the cap, the exemption of trusted networks and proxies (a
//! load balancer is one address), which addresses count as one, and the names
//! of the reasons a connection is refused before HTTP.
//!
//! Pure: no actix, no I/O, no clock; the deadlines are named here and kept by
//! `startup`, which owns the listeners. Deliberately not here: accepting,
//! waiting, metrics and log lines (`startup`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::networks::Networks;

/// A new connection must send something (a ClientHello, a request line) this
/// soon after it was accepted, or it is closed.
pub(crate) const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(2);
/// A TLS handshake must have finished this soon after the connection was accepted.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Why a connection was closed before any HTTP was read from it; the label of
/// `wechat_api_connections_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its address already held `CONNECTIONS_PER_ADDRESS` connections.
    PerAddress,
    /// It sent nothing within the first-bytes deadline.
    Silent,
    /// Its TLS handshake did not finish within the handshake deadline.
    HandshakeTimeout,
}

impl Refusal {
    /// Every reason, for declaring the metric's series at zero.
    pub(crate) const ALL: [Refusal; 3] = [Refusal::PerAddress, Refusal::Silent, Refusal::HandshakeTimeout];

    /// The metric label and the log limiter's key.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::Silent => "silent",
            Refusal::HandshakeTimeout => "handshake_timeout",
        }
    }
}

impl std::fmt::Display for Refusal {
    /// What the log line says, naming the setting to look at where there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerAddress => f.write_str("the address already holds CONNECTIONS_PER_ADDRESS connections"),
            Refusal::Silent => write!(f, "nothing was sent within {} s of connecting", FIRST_BYTES_DEADLINE.as_secs()),
            Refusal::HandshakeTimeout => {
                write!(f, "the TLS handshake did not finish within {} s of connecting", HANDSHAKE_DEADLINE.as_secs())
            }
        }
    }
}

/// What one address's connections count as. An IPv6 client counts by its /64:
/// that is what one host (one customer line, one VM) is usually given, and
/// counting single addresses out of it would make the cap free to evade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AddressKey(IpAddr);

impl AddressKey {
    fn of(peer: IpAddr) -> Self {
        match peer.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                AddressKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => AddressKey(v4),
        }
    }
}

/// Below this many slots the map is never shrunk: its memory is negligible.
const SHRINK_ABOVE: usize = 1024;

/// The open connections per address, and the cap.
///
/// Memory is bounded by the connections actually open: an address has an entry
/// only while it holds one, and the map gives its room back once a crowd of
/// addresses has gone.
#[derive(Debug)]
pub(crate) struct ConnectionTable {
    per_address: u32,
    exempt: Networks,
    open: Mutex<HashMap<AddressKey, u32>>,
}

impl ConnectionTable {
    /// A table allowing `per_address` connections to each address outside `exempt`.
    pub(crate) fn new(per_address: u32, exempt: Networks) -> Arc<Self> {
        Arc::new(Self { per_address, exempt, open: Mutex::new(HashMap::new()) })
    }

    /// Counts a new connection from `peer`, or refuses it when the address
    /// already holds its share. The connection counts until the slot is dropped.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, Refusal> {
        if self.exempt.contains(peer) {
            return Ok(ConnectionSlot { table: Arc::clone(self), key: None });
        }
        let key = AddressKey::of(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.per_address {
            return Err(Refusal::PerAddress);
        }
        *count += 1;
        Ok(ConnectionSlot { table: Arc::clone(self), key: Some(key) })
    }

    fn release(&self, key: AddressKey) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&key);
            }
        }
        if open.capacity() > SHRINK_ABOVE && open.len() < open.capacity() / 4 {
            let keep = (open.len() * 2).max(SHRINK_ABOVE);
            open.shrink_to(keep);
        }
    }

    /// How many connections `peer`'s address holds (exempt ones are not counted).
    #[cfg(test)]
    fn open(&self, peer: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&AddressKey::of(peer)).copied().unwrap_or(0)
    }
}

/// One admitted connection; dropping it (when the connection ends, however it
/// ends) gives its address's slot back.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    table: Arc<ConnectionTable>,
    /// `None` for an exempt address, which is not counted.
    key: Option<AddressKey>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.table.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn table(per_address: u32, exempt: &str) -> Arc<ConnectionTable> {
        ConnectionTable::new(per_address, Networks::parse(exempt).expect("test networks"))
    }

    #[test]
    fn an_address_holds_its_share_and_the_next_connection_is_refused() {
        let table = table(3, "");
        let held: Vec<ConnectionSlot> =
            (0..3).map(|_| table.admit(ip("203.0.113.9")).expect("within the share")).collect();
        assert_eq!(table.admit(ip("203.0.113.9")).map(drop), Err(Refusal::PerAddress));
        assert!(table.admit(ip("203.0.113.10")).is_ok(), "another address is not affected");
        assert_eq!(table.open(ip("203.0.113.9")), 3, "a refusal takes no slot");
        drop(held);
        assert_eq!(table.open(ip("203.0.113.9")), 0);
        assert!(table.admit(ip("203.0.113.9")).is_ok(), "closed connections give their slots back");
    }

    #[test]
    fn trusted_networks_and_proxies_are_not_counted() {
        let table = table(1, "10.0.0.0/8,192.0.2.7/32");
        let held: Vec<ConnectionSlot> =
            (0..1_000).map(|_| table.admit(ip("10.1.2.3")).expect("a load balancer is one address")).collect();
        assert_eq!(table.open(ip("10.1.2.3")), 0);
        assert!(table.admit(ip("::ffff:192.0.2.7")).is_ok(), "an IPv4-mapped peer is its IPv4 self");
        assert!(table.admit(ip("::ffff:192.0.2.7")).is_ok());
        drop(held);
        assert!(table.open.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_ipv4_mapped_peer_and_its_ipv4_address_share_one_count() {
        let table = table(1, "");
        let _slot = table.admit(ip("198.51.100.4")).expect("first");
        assert_eq!(table.admit(ip("::ffff:198.51.100.4")).map(drop), Err(Refusal::PerAddress));
    }

    #[test]
    fn an_ipv6_client_counts_by_its_slash_64() {
        let table = table(2, "");
        let _a = table.admit(ip("2001:db8:1:2::1")).expect("first");
        let _b = table.admit(ip("2001:db8:1:2:ffff::9")).expect("second, same /64");
        assert_eq!(table.admit(ip("2001:db8:1:2::77")).map(drop), Err(Refusal::PerAddress));
        assert!(table.admit(ip("2001:db8:1:3::1")).is_ok(), "the next /64 is another client");
    }

    #[test]
    fn memory_follows_the_connections_open_not_the_addresses_ever_seen() {
        let table = table(4, "");
        let crowd: Vec<ConnectionSlot> = (0..50_000u32)
            .map(|n| table.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))).expect("one each"))
            .collect();
        assert_eq!(table.open.lock().expect("lock").len(), 50_000);
        drop(crowd);
        let open = table.open.lock().expect("lock");
        assert!(open.is_empty());
        assert!(open.capacity() <= 4 * SHRINK_ABOVE, "the room is given back: {}", open.capacity());
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
