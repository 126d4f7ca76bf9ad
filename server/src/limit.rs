//! Per-address limits on unauthenticated work. A refused session request costs the server a token
//! decode and often a signature check, and anyone can send one: each client address has a token
//! bucket of refusals, and past it its session requests get 429 `overloaded` before any work.
//! Addresses that behave cost nothing (only refusals take tokens), and nonces need no limit: they
//! are stateless MACs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// The address a request came from (set by the accept loop; absent in in-process tests).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

/// Refusals one address may cause in a burst.
const BURST: f64 = 100.0;
/// Refusals one address may cause per second, sustained.
const PER_SEC: f64 = 10.0;
/// Addresses tracked at most (memory bound under a spoofed-source flood).
const MAX_ADDRESSES: usize = 65_536;

/// Token buckets of refusals by address.
#[derive(Default)]
pub struct RefusalLimiter {
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

impl RefusalLimiter {
    fn level(entry: &(f64, Instant), now: Instant) -> f64 {
        (entry.0 + now.duration_since(entry.1).as_secs_f64() * PER_SEC).min(BURST)
    }

    /// Whether `peer` may send another unauthenticated request that could be refused.
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        let Ok(b) = self.buckets.lock() else {
            return true;
        };
        b.get(&peer)
            .is_none_or(|e| Self::level(e, Instant::now()) >= 1.0)
    }

    /// Counts one refusal against `peer`.
    pub fn refused(&self, peer: Option<IpAddr>) {
        let Ok(mut b) = self.buckets.lock() else {
            return;
        };
        let now = Instant::now();
        if b.len() >= MAX_ADDRESSES && !b.contains_key(&peer) {
            // Forget the addresses whose buckets have refilled; if none has, start over.
            b.retain(|_, e| Self::level(e, now) < BURST);
            if b.len() >= MAX_ADDRESSES {
                b.clear();
            }
        }
        let e = b.entry(peer).or_insert((BURST, now));
        *e = ((Self::level(e, now) - 1.0).max(0.0), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_refusals_then_throttled_other_addresses_unaffected() {
        let l = RefusalLimiter::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..BURST as usize {
            assert!(l.allows(a));
            l.refused(a);
        }
        assert!(!l.allows(a));
        assert!(l.allows(b));
        assert!(l.allows(None));
    }
}
