//! Networks and client addresses (SPEC §11): which addresses are "ours"
//! (`TRUSTED_NETWORKS`), which reverse proxies may speak for a client
//! (`TRUSTED_PROXIES`), and who a request really comes from.
//!
//! Pure decisions: no actix, no I/O. [`Networks::parse`] turns a comma-separated
//! list of CIDRs into a type (validation names the bad entry), and
//! [`client_address`] decides the client of a request from its TCP peer and its
//! `X-Forwarded-For`, believing the header only as far as trusted proxies wrote it.
//!
//! Deliberately not here: what a trusted client may see (`routes`) and the bearer
//! decisions (`access`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network: an address and a prefix length, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    /// The address with the host bits cleared.
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `address/prefix`, or a bare address (a single host: /32 or /128).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr =
            address.parse().map_err(|_| format!("{text:?} is not a CIDR such as 10.0.0.0/8 or fc00::/7"))?;
        let bits = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{text:?} has a prefix length that is not 0-{bits}")),
            },
        };
        Ok(Self { network: mask(address, prefix), prefix })
    }

    /// Whether `address` lies in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`, what a dual-stack socket reports) counts as its IPv4 self.
    pub(crate) fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(address, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `address` with all but its first `prefix` bits cleared.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = if prefix == 0 { 0 } else { bits & (u32::MAX << (32 - u32::from(prefix))) };
            IpAddr::V4(Ipv4Addr::from(kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = if prefix == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(prefix))) };
            IpAddr::V6(Ipv6Addr::from(kept))
        }
    }
}

/// A set of networks; empty contains nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Networks(Vec<Cidr>);

impl Networks {
    /// A comma-separated list of CIDRs (empty entries are skipped); the error
    /// names the first entry that is not one.
    pub(crate) fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether any of the networks holds `address`.
    pub(crate) fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(address))
    }

    /// The networks of both sets.
    pub(crate) fn and(&self, other: &Networks) -> Networks {
        Networks(self.0.iter().chain(&other.0).copied().collect())
    }

    /// Whether the set is empty (nothing is trusted).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cidr}")?;
        }
        Ok(())
    }
}

/// Stands for a client whose address a trusted proxy did not state legibly: it
/// lies in no sensible trusted network, so such a request is treated as a stranger's.
const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The client a request comes from: its TCP `peer`, unless the peer is one of the
/// trusted `proxies`; then `X-Forwarded-For` (`forwarded_for`, every header value
/// in order) is read from the right, each hop a trusted proxy added, until the
/// first address no trusted proxy stands for: that one is the client. Entries to
/// its left were written by the client itself and are never believed.
///
/// A trusted proxy that sent no header is the client itself; a hop that is not
/// an address (`unknown`, garbage) ends the walk as an unknown client.
pub(crate) fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    proxies: &Networks,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !proxies.contains(peer) {
        return peer;
    }
    let hops: Vec<&str> =
        forwarded_for.into_iter().flat_map(|value| value.split(',')).map(str::trim).filter(|h| !h.is_empty()).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(address) = hop_address(hop) else {
            return UNKNOWN_CLIENT;
        };
        client = address;
        if !proxies.contains(address) {
            break;
        }
    }
    client
}

/// The address of one `X-Forwarded-For` hop: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]` or `[::1]:5678`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    hop.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).and_then(|a| a.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn nets(list: &str) -> Networks {
        Networks::parse(list).expect("test networks")
    }

    #[test]
    fn a_cidr_holds_exactly_its_addresses() {
        let ten = Cidr::parse("10.0.0.0/8").expect("valid");
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(!ten.contains(ip("11.0.0.0")));
        assert!(!ten.contains(ip("::1")), "no IPv6 address is in an IPv4 network");
        let host = Cidr::parse("127.0.0.1").expect("a bare address is one host");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let ula = Cidr::parse("fc00::/7").expect("valid");
        assert!(ula.contains(ip("fd12:3456::1")) && !ula.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0").expect("valid").contains(ip("203.0.113.9")));
        assert!(Cidr::parse("::/0").expect("valid").contains(ip("2001:db8::1")));
        assert_eq!(Cidr::parse("192.168.1.77/16").expect("host bits are cleared").to_string(), "192.168.0.0/16");
    }

    #[test]
    fn an_ipv4_mapped_peer_counts_as_its_ipv4_address() {
        let loopback = nets("127.0.0.0/8");
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(!loopback.contains(ip("::ffff:203.0.113.9")));
    }

    #[test]
    fn entries_that_are_not_cidrs_are_named_in_the_error() {
        for (list, bad) in [
            ("10.0.0.0/8, 300.1.1.1/8", "300.1.1.1/8"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("::1/129", "::1/129"),
            ("10.0.0.0/", "10.0.0.0/"),
            ("10.0.0.0/+8", "10.0.0.0/+8"),
            ("localhost", "localhost"),
            ("10.0.0.0/8/8", "10.0.0.0/8/8"),
        ] {
            let error = Networks::parse(list).expect_err(list);
            assert!(error.contains(bad), "{list}: {error}");
        }
        assert_eq!(nets(" 10.0.0.0/8 ,, ::1/128 ").to_string(), "10.0.0.0/8,::1/128");
        assert!(nets("").is_empty());
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let none = Networks::default();
        assert_eq!(client_address(ip("203.0.113.9"), ["127.0.0.1"], &none), ip("203.0.113.9"));
        let proxy = nets("10.0.0.5/32");
        assert_eq!(client_address(ip("203.0.113.9"), ["10.0.0.1"], &proxy), ip("203.0.113.9"), "not the proxy");
    }

    #[test]
    fn a_trusted_proxy_is_believed_for_the_hops_it_and_its_peers_added() {
        let proxies = nets("127.0.0.1/32,10.0.0.0/8");
        assert_eq!(client_address(ip("127.0.0.1"), ["203.0.113.9"], &proxies), ip("203.0.113.9"));
        // The client wrote "10.0.0.1" itself; the proxy appended its real address.
        assert_eq!(client_address(ip("127.0.0.1"), ["10.0.0.1, 203.0.113.9"], &proxies), ip("203.0.113.9"));
        // Two proxies in a row: the first untrusted hop from the right.
        assert_eq!(client_address(ip("127.0.0.1"), ["198.51.100.7", "10.1.2.3"], &proxies), ip("198.51.100.7"));
        assert_eq!(client_address(ip("127.0.0.1"), ["[2001:db8::1]:443"], &proxies), ip("2001:db8::1"));
        assert_eq!(client_address(ip("127.0.0.1"), ["198.51.100.7:5000"], &proxies), ip("198.51.100.7"));
        assert_eq!(client_address(ip("127.0.0.1"), Vec::<&str>::new(), &proxies), ip("127.0.0.1"), "no header");
        assert_eq!(client_address(ip("127.0.0.1"), ["10.0.0.9"], &proxies), ip("10.0.0.9"), "proxies all the way");
        assert_eq!(client_address(ip("127.0.0.1"), ["unknown"], &proxies), UNKNOWN_CLIENT);
        assert_eq!(client_address(ip("127.0.0.1"), ["203.0.113.9, bogus"], &proxies), UNKNOWN_CLIENT);
    }
}
