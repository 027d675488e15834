//! Token buckets for rate-limited nodes, in exact integer arithmetic.

use crate::ShareError;

/// Nanoseconds per second: tokens are kept in unit-nanoseconds per second so that
/// refilling `rate` units/s over `dt` ns is the exact integer `rate * dt`.
const NANOS: i128 = 1_000_000_000;

/// A token bucket: at most `rate` units per second on average, bursts up to `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate in units (bytes, CPU ns, fuel) per second.
    pub rate: u64,
    /// Bucket depth in units: the most that can be served back to back after idling.
    pub burst: u64,
}

impl RateLimit {
    /// A validated rate limit; both figures must be positive.
    pub fn new(rate: u64, burst: u64) -> Result<Self, ShareError> {
        if rate == 0 || burst == 0 {
            return Err(ShareError::InvalidRateLimit { rate, burst });
        }
        Ok(Self { rate, burst })
    }

    pub(crate) fn validate(self) -> Result<Self, ShareError> {
        Self::new(self.rate, self.burst)
    }
}

/// Bucket state. Tokens are signed: an item larger than the burst may be served from a
/// full bucket and leaves a debt, so oversize items are slowed down, never stuck.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    /// Units times `NANOS`.
    tokens: i128,
    /// Time of the last refill; never moves backwards.
    last: u64,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub(crate) fn new(limit: RateLimit, now: u64) -> Self {
        Self {
            limit,
            tokens: Self::scaled(limit.burst),
            last: now,
        }
    }

    pub(crate) fn limit(&self) -> RateLimit {
        self.limit
    }

    fn scaled(units: u64) -> i128 {
        i128::from(units) * NANOS
    }

    /// Tokens as of `now` without committing; a clock that steps back refills nothing.
    fn tokens_at(&self, now: u64) -> i128 {
        let dt = now.saturating_sub(self.last);
        let refill = i128::from(self.limit.rate).saturating_mul(i128::from(dt));
        self.tokens
            .saturating_add(refill)
            .min(Self::scaled(self.limit.burst))
    }

    /// What an item of `cost` needs before it may go: its cost, or a full bucket when
    /// it is larger than the burst.
    fn needed(&self, cost: u64) -> i128 {
        Self::scaled(cost.min(self.limit.burst))
    }

    /// Earliest time >= `now` at which an item of `cost` may be served.
    pub(crate) fn ready_at(&self, now: u64, cost: u64) -> u64 {
        let deficit = self.needed(cost) - self.tokens_at(now);
        if deficit <= 0 {
            return now;
        }
        let rate = i128::from(self.limit.rate);
        let wait = (deficit + rate - 1) / rate;
        // Refill runs from `last`, which is later than `now` if the clock stepped back.
        self.last
            .max(now)
            .saturating_add(u64::try_from(wait).unwrap_or(u64::MAX))
    }

    /// Takes `cost` units as of `now` (the caller checked `ready_at`).
    pub(crate) fn charge(&mut self, now: u64, cost: u64) {
        self.tokens = self.tokens_at(now).saturating_sub(Self::scaled(cost));
        self.last = self.last.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_up_to_burst() {
        // 1000 units/s = 1 unit per ms.
        let mut b = TokenBucket::new(RateLimit::new(1000, 10).unwrap(), 0);
        assert_eq!(b.ready_at(0, 10), 0);
        b.charge(0, 10);
        assert_eq!(b.ready_at(0, 1), 1_000_000);
        assert_eq!(b.ready_at(0, 5), 5_000_000);
        // A long idle period fills only up to the burst.
        assert_eq!(b.ready_at(1_000_000_000_000, 10), 1_000_000_000_000);
        b.charge(1_000_000_000_000, 10);
        assert_eq!(b.ready_at(1_000_000_000_000, 1), 1_000_001_000_000);
    }

    #[test]
    fn oversize_item_waits_for_full_bucket_then_leaves_debt() {
        let mut b = TokenBucket::new(RateLimit::new(1000, 10).unwrap(), 0);
        assert_eq!(b.ready_at(0, 25), 0);
        b.charge(0, 25);
        // 15 units of debt plus 1 unit needed.
        assert_eq!(b.ready_at(0, 1), 16_000_000);
    }

    #[test]
    fn clock_stepping_back_refills_nothing() {
        let mut b = TokenBucket::new(RateLimit::new(1000, 10).unwrap(), 5_000_000);
        b.charge(5_000_000, 10);
        assert_eq!(b.ready_at(1_000_000, 1), 6_000_000);
        b.charge(1_000_000, 0);
        assert_eq!(b.ready_at(6_000_000, 1), 6_000_000);
    }

    #[test]
    fn invalid_limits_are_refused() {
        assert!(RateLimit::new(0, 1).is_err());
        assert!(RateLimit::new(1, 0).is_err());
    }
}
