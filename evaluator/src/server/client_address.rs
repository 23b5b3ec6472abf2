//! Which address a request comes from, for the per-address limit on the routes that need no
//! token ([`rate_limit`](super::rate_limit)).
//!
//! Behind a reverse proxy every request arrives from the proxy's address, so every anonymous
//! caller (first page loads, an outside uptime check, someone flooding health) would share
//! one bucket, and one caller could spend it for all. A proxy the operator names as trusted
//! (`--trusted-proxy`) says whom it relays for in `X-Forwarded-For`, appending the address it
//! was reached from; the entries before that are whatever the caller sent, so they are never
//! believed. The client is the last address in the header that is not itself a trusted proxy.
//! Headers from any other peer are ignored: anyone can write them.

use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// An address, or a range of them in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
///
/// ```
/// use hexray_evaluator::server::client_address::AddressRange;
///
/// let pods: AddressRange = "10.42.0.0/16".parse().unwrap();
/// assert!(pods.contains("10.42.7.9".parse().unwrap()));
/// assert!(!pods.contains("10.43.0.1".parse().unwrap()));
/// let one: AddressRange = "::1".parse().unwrap();
/// assert!(one.contains("::1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<AddressRange>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    prefix: u32,
}

/// Why a text is not a range of trusted proxies.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BadRange {
    #[error("`{0}` is not an IP address or a CIDR range (such as 10.0.0.0/8 or fd00::/8)")]
    NotARange(String),
    /// `::ffff:10.0.0.0/104` and the like: which IPv4 range is meant is better written plainly.
    #[error("`{0}` is an IPv4 range written as IPv6: write it as IPv4 (such as 10.0.0.0/8)")]
    Mapped(String),
    /// Trusting every peer would let anyone write the address they are limited as.
    #[error("`{0}` trusts every address, so any caller could name itself in X-Forwarded-For: name the proxies' own addresses")]
    Everyone(String),
}

impl FromStr for AddressRange {
    type Err = BadRange;

    fn from_str(text: &str) -> Result<Self, BadRange> {
        let wrong = || BadRange::NotARange(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| wrong())?;
        if network.to_canonical() != network {
            return Err(BadRange::Mapped(text.to_owned()));
        }
        let bits = bits(network);
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(wrong)?,
            None => bits,
        };
        if prefix == 0 {
            return Err(BadRange::Everyone(text.to_owned()));
        }
        Ok(AddressRange { network, prefix })
    }
}

/// As it was written, for the log: `10.0.0.0/8`, or `127.0.0.1` for a single address.
impl std::fmt::Display for AddressRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix == bits(self.network) {
            true => write!(f, "{}", self.network),
            false => write!(f, "{}/{}", self.network, self.prefix),
        }
    }
}

impl AddressRange {
    /// Whether `address` is in the range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
    /// server listening on `[::]` sees IPv4 peers) counts as the IPv4 one.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => same_prefix(
                network.to_bits().into(),
                address.to_bits().into(),
                32,
                self.prefix,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                same_prefix(network.to_bits(), address.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether two `width`-bit numbers share their first `prefix` bits (1 to `width`).
fn same_prefix(a: u128, b: u128, width: u32, prefix: u32) -> bool {
    (a ^ b) >> (width - prefix) == 0
}

/// The bits in an address of `address`'s family.
fn bits(address: IpAddr) -> u32 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed; none by default.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<AddressRange>);

impl TrustedProxies {
    pub fn new(ranges: Vec<AddressRange>) -> Self {
        TrustedProxies(ranges)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(address))
    }

    /// The address a request comes from, given its TCP peer and its `X-Forwarded-For` header
    /// lines in order: the peer, unless it is a trusted proxy; then, reading the header from
    /// its end, the first address that is not a trusted proxy. An entry that is not an address
    /// stops the reading there (a trusted proxy wrote no such thing), and the proxy nearest to
    /// it stands for the client.
    ///
    /// ```
    /// use hexray_evaluator::server::client_address::TrustedProxies;
    ///
    /// let proxies = TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()]);
    /// let ip = |text: &str| Some(text.parse().unwrap());
    /// // nginx on this machine appends the caller's address; what the caller wrote is ignored.
    /// assert_eq!(proxies.client(ip("127.0.0.1"), ["203.0.113.9, 198.51.100.4"]), ip("198.51.100.4"));
    /// // Anyone else's header is not believed.
    /// assert_eq!(proxies.client(ip("192.0.2.7"), ["198.51.100.4"]), ip("192.0.2.7"));
    /// // No header: the proxy itself asked.
    /// assert_eq!(proxies.client(ip("127.0.0.1"), std::iter::empty()), ip("127.0.0.1"));
    /// ```
    pub fn client<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let mut client = peer.map(|peer| peer.to_canonical());
        if !client.is_some_and(|peer| self.trusts(peer)) {
            return client;
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                break;
            };
            client = Some(address);
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|address| address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_back_to_the_first_untrusted_hop() {
        let proxies = TrustedProxies::new(vec![
            "127.0.0.1".parse().unwrap(),
            "10.42.0.0/16".parse().unwrap(),
        ]);
        // The caller forged its first entry; the ingress (10.42.1.1) relayed to nginx.
        let header = ["1.2.3.4", "198.51.100.4, 10.42.1.1"];
        assert_eq!(proxies.client(ip("127.0.0.1"), header), ip("198.51.100.4"));
        // A server on [::] sees IPv4 peers as mapped addresses.
        assert_eq!(
            proxies.client(ip("::ffff:127.0.0.1"), ["198.51.100.4:5123"]),
            ip("198.51.100.4")
        );
        // A hop that is not an address stops the walk at the proxy next to it.
        assert_eq!(
            proxies.client(ip("127.0.0.1"), ["198.51.100.4, unknown, 10.42.1.1"]),
            ip("10.42.1.1")
        );
        // Every hop trusted: the farthest one.
        assert_eq!(
            proxies.client(ip("127.0.0.1"), ["10.42.3.3"]),
            ip("10.42.3.3")
        );
        // Trusting nobody, the peer is the client.
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), header),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ranges_are_read_as_written_or_refused() {
        let v4: AddressRange = "10.1.2.3/8".parse().unwrap();
        assert!(v4.contains("10.200.0.1".parse().unwrap()));
        assert!(!v4.contains("::1".parse().unwrap()));
        assert_eq!(v4.to_string(), "10.1.2.3/8");
        let v6: AddressRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert_eq!("::1".parse::<AddressRange>().unwrap().to_string(), "::1");
        for wrong in [
            "",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "::/129",
            "localhost",
        ] {
            assert_eq!(
                wrong.parse::<AddressRange>(),
                Err(BadRange::NotARange(wrong.into())),
                "{wrong}"
            );
        }
        for mapped in ["::ffff:10.0.0.0/104", "::ffff:127.0.0.1"] {
            assert_eq!(
                mapped.parse::<AddressRange>(),
                Err(BadRange::Mapped(mapped.into()))
            );
        }
        for everyone in ["0.0.0.0/0", "::/0"] {
            assert_eq!(
                everyone.parse::<AddressRange>(),
                Err(BadRange::Everyone(everyone.into()))
            );
        }
    }
}
