//! TLS shell: moves bytes between a TCP+TLS 1.3 socket and a [`Peer`], fires its
//! timers, and hands events and commands over channels. No protocol logic lives here.
//!
//! Both ends authenticate: the [`Listener`] accepts only clients whose certificate
//! chains to its trust anchors (rustls `WebPkiClientVerifier`), and [`Connector`]
//! verifies the server's chain and that it names the node dialled. A peer's identity
//! is a **dNSName subjectAltName** of its certificate (the subject CN is ignored, as
//! in WebPKI); its `Hello` must name one of them.
//!
//! The listener never waits on a handshake where it accepts: each TCP connection
//! handshakes on a task of its own within [`HandshakeLimits::timeout`], admitted by a
//! [`HandshakeGate`] that bounds the handshakes in progress in total and per source
//! address (beyond them a connection is closed at once). Authenticated sessions
//! arrive from [`Incoming::next_session`]; every refusal is counted by reason in
//! [`TransportStats`].

mod gate;

pub use gate::{HandshakeGate, HandshakeLimits, HandshakeRefusal, HandshakeSlot};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use router_core::time::UtcDate;

use crate::message::{Epoch, NodeName};
use crate::peer::{
    DownReason, LocalNode, Outgoing, Peer, PeerAuth, PeerConfig, PeerEvent, SendError,
};

/// Capacity of a session's event and command channels.
pub const CHANNEL_CAPACITY: usize = 256;
/// Socket read size.
const READ_CHUNK: usize = 16 * 1024;
/// Longest a TLS handshake may take when dialling.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Authenticated sessions waiting for [`Incoming::next_session`].
const INCOMING_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Our certificate chain and key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// End-entity certificate first, then intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

/// What both ends of the shell need.
#[derive(Debug)]
pub struct TransportConfig {
    /// Our certificate and key.
    pub identity: TlsIdentity,
    /// CA certificates a peer's chain must reach; at least one (fails closed).
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// What we say in our Hello / HelloAck.
    pub local: LocalNode,
    /// Session timers and bounds.
    pub peer: PeerConfig,
}

/// Why the shell could not set up or keep a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No trust anchor configured: refusing to accept anyone.
    #[error("no trust anchors configured; refusing to run unauthenticated")]
    NoTrustAnchors,
    /// A trust anchor or our own certificate/key was rejected by rustls.
    #[error("TLS configuration rejected ({what})")]
    Config {
        /// Which part.
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// Our private key is not the key of our certificate (the first of the
    /// chain): most often another node's key file.
    #[error(
        "our private key does not belong to our certificate (is it another node's key?); \
         give the key issued with this certificate"
    )]
    KeyMismatch,
    /// A socket operation failed.
    #[error("{op} failed")]
    Io {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer's certificate does not chain to our trust anchors (or is absent,
    /// expired, or does not name the node dialled): it was refused.
    #[error("peer {peer} refused: untrusted certificate")]
    UntrustedCertificate {
        /// Remote address.
        peer: SocketAddr,
        /// rustls' verdict, validity times written as dates.
        #[source]
        source: CertificateVerdict,
    },
    /// The TLS handshake failed for another reason (or timed out).
    #[error("TLS handshake with {peer} failed")]
    Handshake {
        /// Remote address.
        peer: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The session ended before registration completed (e.g. the server refused
    /// our certificate with a TLS alert, or its HelloAck named someone else).
    #[error("session with {peer} refused: {reason}")]
    Refused {
        /// Remote address.
        peer: SocketAddr,
        /// Why the session ended.
        reason: DownReason,
    },
    /// The session task has ended.
    #[error("session closed")]
    SessionClosed,
    /// The session refused the message.
    #[error("message refused")]
    Send(#[from] SendError),
}

/// rustls' verdict on a peer's certificate. Its `Display` writes validity times
/// as UTC dates (`certificate expired at 2026-01-31T00:00:00Z (now ...)`) where
/// rustls writes seconds since the epoch.
#[derive(Debug, Clone)]
pub struct CertificateVerdict(pub rustls::Error);

impl std::fmt::Display for CertificateVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rustls::CertificateError as C;
        use rustls_pki_types::UnixTime;
        let date = |t: &UnixTime| UtcDate(i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
        match &self.0 {
            rustls::Error::InvalidCertificate(C::ExpiredContext { time, not_after }) => write!(
                f,
                "certificate expired at {} (now {})",
                date(not_after),
                date(time)
            ),
            rustls::Error::InvalidCertificate(C::NotValidYetContext { time, not_before }) => {
                write!(
                    f,
                    "certificate not valid before {} (now {})",
                    date(not_before),
                    date(time)
                )
            }
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for CertificateVerdict {}

/// Shell counters, shared with the session tasks.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// TCP connections accepted by the listener.
    pub accepted: AtomicU64,
    /// TLS handshakes completed.
    pub handshakes: AtomicU64,
    /// TLS handshakes not completed within their deadline.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed at once: the bound on handshakes in progress was reached.
    pub refused_pending_limit: AtomicU64,
    /// Connections closed at once: the bound on handshakes in progress from their
    /// source address was reached.
    pub refused_per_source_limit: AtomicU64,
    /// Peers refused because their certificate was untrusted or missing.
    pub untrusted_certificates: AtomicU64,
    /// Other TLS handshake failures.
    pub handshake_failures: AtomicU64,
    /// Sessions refused after TLS (registration failed).
    pub refused_sessions: AtomicU64,
    /// Sessions ended.
    pub sessions_down: AtomicU64,
    /// Authenticated sessions closed because the peer sent bytes that are not a
    /// valid frame (bad magic or version, oversize, undecodable body): garbage
    /// after the handshake. The first bad frame closes the session.
    pub garbage_frames: AtomicU64,
    /// Authenticated sessions closed because the peer sent a valid frame its
    /// state does not allow (e.g. a state update before its hello).
    pub protocol_violations: AtomicU64,
}

impl TransportStats {
    /// Current value of a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(anchors: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TransportError> {
    if anchors.is_empty() {
        return Err(TransportError::NoTrustAnchors);
    }
    let mut store = RootCertStore::empty();
    for a in anchors {
        store
            .add(a.clone())
            .map_err(|source| TransportError::Config {
                what: "trust anchor",
                source,
            })?;
    }
    Ok(Arc::new(store))
}

fn fresh_epoch(p: &CryptoProvider) -> Result<Epoch, TransportError> {
    let mut b = [0u8; 8];
    p.secure_random
        .fill(&mut b)
        .map_err(|_| TransportError::Config {
            what: "secure random",
            source: rustls::Error::FailedToGetRandomBytes,
        })?;
    Ok(Epoch(u64::from_le_bytes(b)))
}

impl TransportConfig {
    /// Everything [`Listener::bind`] and [`Connector::new`] check before they
    /// touch a socket: the trust anchors, and that our key is the private key of
    /// our certificate (a key of another node is [`TransportError::KeyMismatch`]).
    /// `pronto router check` runs it so that it refuses what `run` would.
    pub fn validate(&self) -> Result<(), TransportError> {
        let provider = provider();
        server_config(self, &provider)?;
        client_config(self, &provider)?;
        Ok(())
    }
}

/// What rustls said of our certificate and key.
fn identity_error(source: rustls::Error) -> TransportError {
    match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TransportError::KeyMismatch
        }
        source => TransportError::Config {
            what: "our certificate",
            source,
        },
    }
}

/// The listener's TLS: 1.3 only, client certificates required and verified
/// against the trust anchors, our identity.
fn server_config(
    config: &TransportConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots(&config.trust_anchors)?,
        provider.clone(),
    )
    .build()
    .map_err(|e| TransportError::Config {
        what: "client verifier",
        source: rustls::Error::General(e.to_string()),
    })?;
    ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TransportError::Config {
            what: "protocol versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            config.identity.cert_chain.clone(),
            config.identity.key.clone_key(),
        )
        .map_err(identity_error)
}

/// The connector's TLS: 1.3 only, servers verified against the trust anchors,
/// our identity as the client certificate.
fn client_config(
    config: &TransportConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, TransportError> {
    ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TransportError::Config {
            what: "protocol versions",
            source,
        })?
        .with_root_certificates(roots(&config.trust_anchors)?)
        .with_client_auth_cert(
            config.identity.cert_chain.clone(),
            config.identity.key.clone_key(),
        )
        .map_err(identity_error)
}

/// Classifies a handshake failure: untrusted certificates get their own error.
fn handshake_error(peer: SocketAddr, e: std::io::Error, stats: &TransportStats) -> TransportError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(
            source
            @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => {
            TransportStats::bump(&stats.untrusted_certificates);
            let source = CertificateVerdict(source);
            warn!(%peer, error = %source, "peer refused: untrusted certificate");
            TransportError::UntrustedCertificate { peer, source }
        }
        _ if e.kind() == std::io::ErrorKind::TimedOut => {
            TransportStats::bump(&stats.handshake_timeouts);
            debug!(%peer, "TLS handshake timed out");
            TransportError::Handshake { peer, source: e }
        }
        _ => {
            TransportStats::bump(&stats.handshake_failures);
            debug!(%peer, error = %e, "TLS handshake failed");
            TransportError::Handshake { peer, source: e }
        }
    }
}

/// Upper-level side: accepts registrations from lower levels.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    server: Arc<ServerConfig>,
    provider: Arc<CryptoProvider>,
    local: LocalNode,
    peer: PeerConfig,
    limits: HandshakeLimits,
    stats: Arc<TransportStats>,
}

impl Listener {
    /// Binds `addr` and prepares mutual TLS 1.3.
    pub async fn bind(addr: SocketAddr, config: TransportConfig) -> Result<Self, TransportError> {
        let provider = provider();
        let server = server_config(&config, &provider)?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| TransportError::Io { op: "bind", source })?;
        Ok(Self {
            tcp,
            server: Arc::new(server),
            provider,
            local: config.local,
            peer: config.peer,
            limits: HandshakeLimits::default(),
            stats: Arc::new(TransportStats::default()),
        })
    }

    /// Replaces the default bounds on handshakes in progress.
    #[must_use]
    pub fn with_handshake_limits(mut self, limits: HandshakeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.tcp.local_addr().map_err(|source| TransportError::Io {
            op: "local_addr",
            source,
        })
    }

    /// Shell counters.
    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }

    /// Starts accepting on a task of its own (call within a tokio runtime): each
    /// connection admitted by the handshake bounds handshakes on a task of its
    /// own; the authenticated sessions arrive from [`Incoming::next_session`].
    pub fn incoming(self) -> Incoming {
        let (tx, sessions) = mpsc::channel(INCOMING_QUEUE);
        let local_addr = self.tcp.local_addr().ok();
        let stats = Arc::clone(&self.stats);
        let task = tokio::spawn(accept_loop(Arc::new(self), tx));
        Incoming {
            sessions,
            local_addr,
            stats,
            task,
        }
    }

    /// Completes mutual TLS on an accepted connection within the deadline; the
    /// session then runs on its own task and reports `Registered` once the peer's
    /// Hello is checked.
    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Result<Session, TransportError> {
        let tls = match tokio::time::timeout(
            self.limits.timeout,
            TlsAcceptor::from(self.server.clone()).accept(tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(handshake_error(peer, e, &self.stats)),
            Err(_) => {
                return Err(handshake_error(
                    peer,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout"),
                    &self.stats,
                ));
            }
        };
        let Some(cert) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
        else {
            // The verifier requires a certificate; defend in depth anyway.
            TransportStats::bump(&self.stats.untrusted_certificates);
            return Err(TransportError::UntrustedCertificate {
                peer,
                source: CertificateVerdict(rustls::Error::NoCertificatesPresented),
            });
        };
        TransportStats::bump(&self.stats.handshakes);
        info!(%peer, "TLS session accepted; awaiting hello");
        let clock = tokio::time::Instant::now();
        let peer_sm = Peer::accept(
            self.peer,
            self.local.clone(),
            PeerAuth::Certificate(cert),
            fresh_epoch(&self.provider)?,
            router_core::time::Instant::ZERO,
        );
        Ok(Session::spawn(
            tls,
            peer_sm,
            clock,
            peer,
            self.stats.clone(),
        ))
    }
}

/// The listener's accept loop: TCP accept, admission, and a handshake task per
/// admitted connection. Ends when the [`Incoming`] is dropped.
async fn accept_loop(listener: Arc<Listener>, tx: mpsc::Sender<Session>) {
    let gate = HandshakeGate::new(listener.limits);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        TransportStats::bump(&listener.stats.accepted);
        let slot = match gate.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let counter = match refusal {
                    HandshakeRefusal::PendingLimit { .. } => &listener.stats.refused_pending_limit,
                    HandshakeRefusal::PerSourceLimit { .. } => {
                        &listener.stats.refused_per_source_limit
                    }
                };
                TransportStats::bump(counter);
                debug!(%peer, %refusal, "connection closed before its handshake");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let listener = Arc::clone(&listener);
        let tx = tx.clone();
        tokio::spawn(async move {
            let session = listener.handshake(tcp, peer).await;
            // The handshake is over (the slot bounded it, not the delivery).
            drop(slot);
            match session {
                // A closed channel drops the session, which ends it.
                Ok(session) => drop(tx.send(session).await),
                // Logged and counted by reason in `handshake`.
                Err(e) => debug!(%peer, error = %e, "lower-level connection refused"),
            }
        });
    }
}

/// Authenticated sessions of a [`Listener`], as their handshakes complete.
/// Dropping it stops accepting.
#[derive(Debug)]
pub struct Incoming {
    sessions: mpsc::Receiver<Session>,
    local_addr: Option<SocketAddr>,
    stats: Arc<TransportStats>,
    task: JoinHandle<()>,
}

impl Incoming {
    /// The next session whose TLS handshake completed; its first event is
    /// `Registered` or `PeerDown` once the peer's Hello is checked. `None` when
    /// the accept loop has ended.
    pub async fn next_session(&mut self) -> Option<Session> {
        self.sessions.recv().await
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Shell counters.
    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lower-level side: registers with an upper level.
#[derive(Debug)]
pub struct Connector {
    client: Arc<ClientConfig>,
    provider: Arc<CryptoProvider>,
    local: LocalNode,
    peer: PeerConfig,
    stats: Arc<TransportStats>,
}

impl Connector {
    /// Prepares mutual TLS 1.3 with our identity and trust anchors.
    pub fn new(config: TransportConfig) -> Result<Self, TransportError> {
        let provider = provider();
        let client = client_config(&config, &provider)?;
        Ok(Self {
            client: Arc::new(client),
            provider,
            local: config.local,
            peer: config.peer,
            stats: Arc::new(TransportStats::default()),
        })
    }

    /// Shell counters.
    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.stats
    }

    /// Dials `addr`, verifies its certificate names `server`, sends our Hello and
    /// waits for the HelloAck. The returned session's first event is `Registered`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server: &NodeName,
    ) -> Result<Session, TransportError> {
        let name = ServerName::try_from(server.as_str().to_owned()).map_err(|_| {
            TransportError::Config {
                what: "server name",
                source: rustls::Error::General(format!("{server} is not a DNS name")),
            }
        })?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TransportError::Io {
                op: "connect",
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            TlsConnector::from(self.client.clone()).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(handshake_error(addr, e, &self.stats)),
            Err(_) => {
                return Err(handshake_error(
                    addr,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout"),
                    &self.stats,
                ));
            }
        };
        TransportStats::bump(&self.stats.handshakes);
        let clock = tokio::time::Instant::now();
        let peer_sm = Peer::connect(
            self.peer,
            self.local.clone(),
            // rustls already checked the certificate names `server`.
            PeerAuth::Name(server.clone()),
            fresh_epoch(&self.provider)?,
            router_core::time::Instant::ZERO,
        );
        let mut session = Session::spawn(tls, peer_sm, clock, addr, self.stats.clone());
        // In TLS 1.3 the server judges our certificate after our handshake ends, so
        // a refusal shows up here, as the first event.
        match session.events.recv().await {
            Some(ev @ PeerEvent::Registered { .. }) => {
                session.first = Some(ev);
                Ok(session)
            }
            Some(PeerEvent::PeerDown { reason }) => {
                TransportStats::bump(&self.stats.refused_sessions);
                Err(TransportError::Refused { peer: addr, reason })
            }
            Some(_) | None => {
                TransportStats::bump(&self.stats.refused_sessions);
                Err(TransportError::SessionClosed)
            }
        }
    }
}

#[derive(Debug)]
struct Command {
    out: Outgoing,
    reply: oneshot::Sender<Result<(), SendError>>,
}

/// A running session: events out, messages in. Dropping it closes the session.
#[derive(Debug)]
pub struct Session {
    events: mpsc::Receiver<PeerEvent>,
    commands: mpsc::Sender<Command>,
    first: Option<PeerEvent>,
    remote_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Session {
    fn spawn<S>(
        stream: S,
        peer: Peer,
        clock: tokio::time::Instant,
        remote_addr: SocketAddr,
        stats: Arc<TransportStats>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (ev_tx, events) = mpsc::channel(CHANNEL_CAPACITY);
        let (commands, cmd_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::spawn(run(stream, peer, clock, cmd_rx, ev_tx, remote_addr, stats));
        Self {
            events,
            commands,
            first: None,
            remote_addr,
            task,
        }
    }

    /// The next event; `None` after `PeerDown` has been delivered and the task ended.
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        if let Some(ev) = self.first.take() {
            return Some(ev);
        }
        self.events.recv().await
    }

    /// Queues a message for the peer.
    pub async fn send(&self, out: Outgoing) -> Result<(), TransportError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command { out, reply })
            .await
            .map_err(|_| TransportError::SessionClosed)?;
        rx.await.map_err(|_| TransportError::SessionClosed)??;
        Ok(())
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a session the peer's input ended (garbage, a forbidden message); the
/// peer state machine has logged why.
fn count_refusal(reason: &DownReason, stats: &TransportStats, remote: SocketAddr) {
    let counter = match reason {
        DownReason::Codec(_) => &stats.garbage_frames,
        DownReason::Protocol { .. } => &stats.protocol_violations,
        _ => return,
    };
    TransportStats::bump(counter);
    debug!(%remote, %reason, "session closed on the peer's input");
}

fn core_now(clock: tokio::time::Instant) -> router_core::time::Instant {
    let nanos = u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
    router_core::time::Instant::from_nanos(nanos)
}

/// The shell loop: flush, deliver events, then wait for bytes, a command or a timer.
async fn run<S>(
    mut stream: S,
    mut peer: Peer,
    clock: tokio::time::Instant,
    mut cmd_rx: mpsc::Receiver<Command>,
    ev_tx: mpsc::Sender<PeerEvent>,
    remote: SocketAddr,
    stats: Arc<TransportStats>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = vec![0u8; READ_CHUNK];
    let mut wbuf = Vec::new();
    let mut commands_open = true;
    loop {
        if peer.poll_transmit(&mut wbuf) > 0 {
            let res = async {
                stream.write_all(&wbuf).await?;
                stream.flush().await
            }
            .await;
            wbuf.clear();
            if let Err(e) = res {
                peer.handle_transport_closed(Some(e.to_string()));
            }
        }
        while let Some(ev) = peer.poll_event() {
            let down = match &ev {
                PeerEvent::PeerDown { reason } => {
                    count_refusal(reason, &stats, remote);
                    true
                }
                _ => false,
            };
            if ev_tx.send(ev).await.is_err() {
                // Nobody listens any more: end the session.
                peer.close();
            }
            if down {
                TransportStats::bump(&stats.sessions_down);
                debug!(%remote, "session down");
                let _ = stream.shutdown().await;
                return;
            }
        }
        let deadline = peer
            .poll_timeout()
            .map(|t| clock + Duration::from_nanos(t.as_nanos()));
        tokio::select! {
            r = stream.read(&mut rbuf) => match r {
                Ok(0) => peer.handle_transport_closed(None),
                Ok(n) => peer.handle_input(core_now(clock), &rbuf[..n]),
                Err(e) => peer.handle_transport_closed(Some(e.to_string())),
            },
            cmd = cmd_rx.recv(), if commands_open => match cmd {
                Some(Command { out, reply }) => {
                    let _ = reply.send(peer.send(core_now(clock), out));
                }
                None => commands_open = false,
            },
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => peer.handle_timeout(core_now(clock)),
        }
    }
}
