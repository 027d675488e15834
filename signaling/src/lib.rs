//! `signaling`: Pronto's authenticated router-to-router protocol (DESIGN.md §4, §5).
//!
//! Owns the signalling messages (hello, state update, tunnel object, WHOHAS, mirror
//! delta, keepalive), their bounded binary framing ([`codec`]), the sans-IO session
//! state machine ([`Peer`]), a thin tokio + rustls shell ([`transport`]) that runs
//! it over mutually authenticated TLS 1.3, and the sans-IO control logic the
//! sessions feed: the next-hop table ([`table`]), an SLR's control side with
//! shortcuts ([`slr`]), a host server's agent ([`host`]) and failure recovery
//! ([`recovery`]: WHOHAS, hot-spare mirroring and failover, authenticated server
//! flow advertisements), and the router [`node`]: one sans-IO type owning the
//! engine, the control side, recovery and policy bindings, driven by every shell.
//!
//! It must never: read a clock, a socket or randomness inside [`Peer`], the codec
//! or the [`node`] (the shell hands those in; only [`transport`] does I/O); allocate for a frame or list beyond its limit before
//! checking it; panic on bytes from the network; or accept a peer whose certificate
//! does not chain to the configured trust anchors or does not carry the name it
//! claims.
#![warn(missing_docs)]

pub mod codec;
pub mod host;
pub mod message;
pub mod node;
pub mod peer;
pub mod progress;
pub mod recovery;
pub mod slr;
pub mod table;
pub mod transport;

pub use codec::{CodecError, CodecStats, Decoder, MAX_FRAME_LEN, decode, encode};
pub use host::{HostAgent, HostConfig, HostError, HostStats};
pub use message::{
    Envelope, Epoch, FlowPhase, FlowRecord, HelloAck, MAX_DELTA_REMOVALS, MAX_DELTA_UPSERTS,
    MAX_NODE_NAME_LEN, MAX_SUBNETS_PER_UPDATE, MAX_WHOHAS_TTL, Message, MirrorDelta, NodeName,
    PrefixError, Registration, Role, StateUpdate, SubnetLoad, SubnetPrefix, TunnelObject, WhoHas,
    WhoHasAnswer,
};
pub use peer::{
    DownReason, LocalNode, MIN_SPARE_KEEPALIVE, Outgoing, Peer, PeerAuth, PeerConfig, PeerEvent,
    PeerStats, SendError,
};
pub use progress::{
    MAX_ADVERTS_PER_SEC, ProgressConfig, ProgressError, ProgressMonitor, ProgressStats,
};
pub use recovery::{
    AdvertAuth, AdvertAuthConfig, AdvertAuthStats, AdvertKey, AdvertOutcome, AdvertRefusal,
    AdvertReject, FailoverMonitor, KeyFileError, MirrorConfig, MirrorReceiver, MirrorReceiverStats,
    MirrorSender, MirrorSenderStats, RateLimit, RecoverOutcome, RecoveryConfig, RecoveryScope,
    RecoveryStats, SignError, Takeover, handle_advert, parse_advert_keys, read_advert_keys,
};
pub use slr::{
    SessionId, ShortcutError, SlrAction, SlrConfig, SlrControl, SlrError, SlrStats,
    install_shortcut,
};
pub use table::{
    ApplyReport, FollowTable, Ignored, NextHopTable, PeerView, SubnetRoute, TableConfig,
    TableError, TableStats, TableUpdate, UpdateReport,
};
pub use transport::{
    CertificateVerdict, Connector, HandshakeLimits, Incoming, Listener, Session, TlsIdentity,
    TransportConfig, TransportError, TransportStats,
};
