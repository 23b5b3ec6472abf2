//! A per-address rate limit for the routes anyone may call without a token (health, the
//! OpenAPI document), so that they cannot be used to load the node or its database.
//!
//! Each client address has a bucket of `burst` requests that refills at `per_second`; a
//! request finding it empty gets 429 with Retry-After. A Kubernetes probe (one request every
//! few seconds) or a page loading never comes near it. An IPv6 client is counted by its /64,
//! the block one host or site is given: it could otherwise take a fresh address, and a fresh
//! bucket, for every request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use super::error::ApiError;

/// How many addresses are remembered before the full buckets are forgotten.
const MAX_ADDRESSES: usize = 4096;

/// Token buckets, one per client address.
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

impl RateLimit {
    /// A limit of `per_second` requests per address, with bursts of up to `burst`.
    pub fn new(per_second: f64, burst: f64) -> Self {
        RateLimit {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `address`'s bucket, or refuses with 429.
    pub fn take(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        let address = address.map(bucket_of);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() >= MAX_ADDRESSES {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (left, since)| {
                *left + since.elapsed().as_secs_f64() * per_second < burst
            });
        }
        let (left, since) = buckets.entry(address).or_insert((self.burst, now));
        *left =
            (*left + now.duration_since(*since).as_secs_f64() * self.per_second).min(self.burst);
        *since = now;
        if *left < 1.0 {
            let retry_after = ((1.0 - *left) / self.per_second).ceil().max(1.0) as u64;
            return Err(ApiError::RateLimited { retry_after });
        }
        *left -= 1.0;
        Ok(())
    }
}

/// The address a bucket is kept under: an IPv4 address (mapped ones too) as it is, an IPv6
/// address as its /64.
fn bucket_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_address_is_refused_while_another_is_not() {
        let limit = RateLimit::new(1.0, 3.0);
        let (a, b) = (Some([10, 0, 0, 1].into()), Some([10, 0, 0, 2].into()));
        for _ in 0..3 {
            limit.take(a).unwrap();
        }
        assert!(matches!(
            limit.take(a),
            Err(ApiError::RateLimited { retry_after: 1 })
        ));
        limit.take(b).unwrap();
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_block() {
        let limit = RateLimit::new(1.0, 3.0);
        for host in 1..=3u16 {
            limit
                .take(Some([0x2001, 0xdb8, 0, 1, 0, 0, 0, host].into()))
                .unwrap();
        }
        assert!(limit
            .take(Some([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 4].into()))
            .is_err());
        limit
            .take(Some([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1].into()))
            .unwrap();
    }
}
