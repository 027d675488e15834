//! Time as the sans-IO core sees it: a monotonic timestamp handed in by the shell.

use core::time::Duration;

/// A monotonic instant in nanoseconds since an arbitrary, shell-chosen epoch.
///
/// The core never reads a clock; every call that needs time takes an `Instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Self = Self(0);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000_000))
    }

    /// An instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub const fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}

/// A wall-clock time given as seconds since the Unix epoch (as certificates,
/// rustls and webpki carry them), displayed as a UTC date
/// `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian; Howard Hinnant's
/// civil-from-days): what validity errors print instead of a raw count of
/// seconds or a `SystemTime` debug dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDate(pub i64);

impl core::fmt::Display for UtcDate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let secs = self.0;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Far outside any certificate's range; kept from overflowing below.
        let z = days.saturating_add(719_468);
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe
            .saturating_add(era.saturating_mul(400))
            .saturating_add(i64::from(month <= 2));
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

#[cfg(test)]
mod utc_tests {
    use super::UtcDate;

    #[test]
    fn utc_dates_of_known_instants() {
        assert_eq!(UtcDate(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(UtcDate(951_782_400).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(UtcDate(1_700_000_000).to_string(), "2023-11-14T22:13:20Z");
        assert_eq!(UtcDate(-1).to_string(), "1969-12-31T23:59:59Z");
        // Extremes print something rather than overflow.
        assert!(!UtcDate(i64::MAX).to_string().is_empty());
        assert!(!UtcDate(i64::MIN).to_string().is_empty());
    }
}
