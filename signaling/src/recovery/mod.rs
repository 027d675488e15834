//! Failure recovery (DESIGN.md §5), sans-IO: nothing here reads a clock, a socket
//! or randomness; the shell hands in `now` (and, for advertisements, the wall
//! clock in Unix milliseconds) and carries out the outputs.
//!
//! - [`auth`]: HMAC-SHA256 authentication of server flow advertisements, the
//!   shared key file format, the replay cache.
//! - [`advert`]: what a router does with an authenticated advertisement.
//! - [`whohas`]: WHOHAS queries and answers, owned by [`crate::SlrControl`]
//!   ([`crate::SlrControl::recover`]).
//! - [`mirror`]: the hot spare: [`MirrorSender`] on the primary,
//!   [`MirrorReceiver`] and [`FailoverMonitor`] on the spare.
//! - [`limit`]: token buckets.

pub mod advert;
pub mod auth;
pub mod limit;
pub mod mirror;
pub mod whohas;

pub use advert::{AdvertOutcome, AdvertRefusal, handle_advert};
pub use auth::{
    AdvertAuth, AdvertAuthConfig, AdvertAuthStats, AdvertKey, AdvertReject, KeyFileError,
    MAX_ADVERT_KEYS, MAX_KEY_FILE_LEN, MAX_SECRET_LEN, MIN_SECRET_LEN, SignError,
    parse_advert_keys, read_advert_keys,
};
pub use limit::RateLimit;
pub use mirror::{
    FailoverMonitor, MirrorConfig, MirrorReceiver, MirrorReceiverStats, MirrorSender,
    MirrorSenderStats, Takeover,
};
pub use whohas::{
    MAX_LOCAL_ADDRS, MAX_NEIGHBOURS, MAX_SPARES, RecoverOutcome, RecoveryConfig, RecoveryScope,
    RecoveryStats,
};
