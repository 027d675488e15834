//! Token-bucket rate limits for recovery queries and answers.

use std::time::Duration;

use router_core::time::Instant;

/// A rate: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate, tokens per second (0: only the burst, never refilled).
    pub per_sec: u32,
    /// Bucket size (0 refuses everything).
    pub burst: u32,
}

impl RateLimit {
    /// `per_sec` a second with a burst of `burst`.
    pub const fn new(per_sec: u32, burst: u32) -> Self {
        Self { per_sec, burst }
    }
}

/// A token bucket on the caller's clock. Tokens are kept in nanotokens (1e-9) so
/// a slow rate still refills between close calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    nanotokens: u128,
    at: Instant,
}

const NANO: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            nanotokens: u128::from(limit.burst) * NANO,
            at: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed: Duration = now.saturating_since(self.at);
        if now > self.at {
            self.at = now;
        }
        // per_sec tokens/s * elapsed ns = per_sec * ns nanotokens.
        let refill = u128::from(self.limit.per_sec) * elapsed.as_nanos();
        let cap = u128::from(self.limit.burst) * NANO;
        self.nanotokens = self.nanotokens.saturating_add(refill).min(cap);
        if self.nanotokens >= NANO {
            self.nanotokens -= NANO;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(RateLimit::new(10, 3), Instant::ZERO);
        let t0 = Instant::ZERO;
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "burst spent");
        // 10/s: one token per 100 ms.
        assert!(!b.take(Instant::from_millis(99)));
        assert!(b.take(Instant::from_millis(100)));
        assert!(!b.take(Instant::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = Instant::from_secs(100);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn zero_burst_refuses_everything() {
        let mut b = TokenBucket::new(RateLimit::new(1000, 0), Instant::ZERO);
        assert!(!b.take(Instant::from_secs(5)));
    }

    proptest! {
        /// Over any sequence of calls, what is granted never exceeds burst + rate * time.
        #[test]
        fn never_exceeds_burst_plus_rate(
            per_sec in 0u32..1000,
            burst in 0u32..50,
            steps in proptest::collection::vec(0u64..50_000_000, 1..300),
        ) {
            let mut b = TokenBucket::new(RateLimit::new(per_sec, burst), Instant::ZERO);
            let mut t = 0u64;
            let mut granted = 0u64;
            for s in steps {
                t += s;
                if b.take(Instant::from_nanos(t)) {
                    granted += 1;
                }
            }
            let bound = u128::from(burst) + u128::from(per_sec) * u128::from(t) / NANO;
            prop_assert!(u128::from(granted) <= bound, "granted {} > bound {}", granted, bound);
        }
    }
}
