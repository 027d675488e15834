//! TLS shell over loopback: mutual TLS 1.3, registration, state updates, and an
//! untrusted peer refused at the handshake.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use router_core::policy::Level;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use signaling::*;

const UPPER: &str = "sys1.as65001.example";
const LOWER: &str = "site-a.as65001.example";
const STEP: Duration = Duration::from_secs(10);

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(cn: &str) -> Result<Self> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        Ok(Self(CertifiedIssuer::self_signed(p, KeyPair::generate()?)?))
    }

    fn anchor(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    fn issue(&self, dns_name: &str) -> Result<TlsIdentity> {
        let mut p = CertificateParams::new(vec![dns_name.to_owned()])?;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.0)?;
        Ok(TlsIdentity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn config(
    identity: TlsIdentity,
    anchor: CertificateDer<'static>,
    name: &str,
    level: Level,
    role: Role,
) -> Result<TransportConfig> {
    Ok(TransportConfig {
        identity,
        trust_anchors: vec![anchor],
        local: LocalNode {
            name: NodeName::new(name)?,
            level,
            role,
        },
        peer: PeerConfig::default(),
    })
}

async fn next(s: &mut Session) -> Result<PeerEvent> {
    tokio::time::timeout(STEP, s.next_event())
        .await
        .context("no event in time")?
        .context("session ended")
}

fn subnets(load: f32) -> Result<Vec<SubnetLoad>> {
    Ok(vec![SubnetLoad {
        subnet: SubnetPrefix::new("192.200.0.0".parse()?, 16)?,
        load,
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_registration_updates_and_untrusted_peer_refused() -> Result<()> {
    let ca = Ca::new("pronto test CA")?;
    let rogue_ca = Ca::new("rogue CA")?;

    let listener = Listener::bind(
        "127.0.0.1:0".parse()?,
        config(
            ca.issue(UPPER)?,
            ca.anchor(),
            UPPER,
            Level::System,
            Role::System,
        )?,
    )
    .await?;
    let addr: SocketAddr = listener.local_addr()?;
    let upper_stats = listener.stats().clone();
    let mut incoming = listener.incoming();

    // The lower level registers.
    let lower = Connector::new(config(
        ca.issue(LOWER)?,
        ca.anchor(),
        LOWER,
        Level::Site,
        Role::Site,
    )?)?;
    let upper_name = NodeName::new(UPPER)?;
    let (lower_session, accepted) = tokio::join!(
        tokio::time::timeout(STEP, lower.connect(addr, &upper_name)),
        tokio::time::timeout(STEP, incoming.next_session())
    );
    let mut lower_session = lower_session??;
    let mut upper_session = accepted?.context("accept loop ended")?;

    match next(&mut lower_session).await? {
        PeerEvent::Registered {
            identity,
            level,
            role,
            ..
        } => {
            assert_eq!(identity.as_str(), UPPER);
            assert_eq!((level, role), (Level::System, Role::System));
        }
        other => bail!("lower: expected Registered, got {other:?}"),
    }
    match next(&mut upper_session).await? {
        PeerEvent::Registered {
            identity,
            level,
            role,
            ..
        } => {
            assert_eq!(identity.as_str(), LOWER);
            assert_eq!((level, role), (Level::Site, Role::Site));
        }
        other => bail!("upper: expected Registered, got {other:?}"),
    }

    // State updates travel up with increasing sequence numbers.
    lower_session
        .send(Outgoing::StateUpdate {
            subnets: subnets(0.3)?,
        })
        .await?;
    lower_session
        .send(Outgoing::StateUpdate {
            subnets: subnets(0.4)?,
        })
        .await?;
    for (seq, load) in [(1, 0.3), (2, 0.4)] {
        match next(&mut upper_session).await? {
            PeerEvent::StateUpdate(u) => {
                assert_eq!(u.seq, seq);
                assert_eq!(u.subnets, subnets(load)?);
            }
            other => bail!("expected StateUpdate, got {other:?}"),
        }
    }

    // A peer whose certificate comes from another CA is refused at the handshake.
    let rogue = Connector::new(config(
        rogue_ca.issue("rogue.as65001.example")?,
        ca.anchor(),
        "rogue.as65001.example",
        Level::Site,
        Role::Site,
    )?)?;
    let rogue_result = tokio::time::timeout(STEP, rogue.connect(addr, &upper_name)).await?;
    // The listener refuses it on the handshake's task: counted, never delivered.
    let deadline = tokio::time::Instant::now() + STEP;
    while TransportStats::get(&upper_stats.untrusted_certificates) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rogue peer not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Ok(Some(s)) =
        tokio::time::timeout(Duration::from_millis(200), incoming.next_session()).await
    {
        bail!("listener delivered a rogue peer from {}", s.remote_addr());
    }
    assert_eq!(TransportStats::get(&upper_stats.untrusted_certificates), 1);
    assert_eq!(TransportStats::get(&upper_stats.handshakes), 1);
    // The rogue side learns it was refused (the server's alert arrives after the
    // client's half of the TLS 1.3 handshake), and never registers.
    match rogue_result {
        Err(TransportError::Refused {
            reason: DownReason::TransportFailed { detail },
            ..
        }) => {
            assert!(detail.to_lowercase().contains("unknown"), "{detail}");
        }
        Err(TransportError::Handshake { .. } | TransportError::UntrustedCertificate { .. }) => {}
        other => bail!("rogue: expected a refusal, got {other:?}"),
    }

    // The rogue side also refuses a server it cannot verify.
    let lonely = Connector::new(config(
        rogue_ca.issue("rogue.as65001.example")?,
        rogue_ca.anchor(),
        "rogue.as65001.example",
        Level::Site,
        Role::Site,
    )?)?;
    match tokio::time::timeout(STEP, lonely.connect(addr, &upper_name)).await? {
        Err(TransportError::UntrustedCertificate { .. }) => {}
        other => bail!("expected UntrustedCertificate on the client, got {other:?}"),
    }
    assert_eq!(
        TransportStats::get(&lonely.stats().untrusted_certificates),
        1
    );

    // The registered session is unaffected.
    lower_session
        .send(Outgoing::StateUpdate {
            subnets: subnets(0.5)?,
        })
        .await?;
    assert!(matches!(next(&mut upper_session).await?, PeerEvent::StateUpdate(u) if u.seq == 3));

    // Closing one side takes the other down.
    drop(lower_session);
    match next(&mut upper_session).await? {
        PeerEvent::PeerDown { reason } => assert!(
            matches!(
                reason,
                DownReason::TransportClosed | DownReason::TransportFailed { .. }
            ),
            "{reason:?}"
        ),
        other => bail!("expected PeerDown, got {other:?}"),
    }
    drop(incoming);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_must_name_the_certificate() -> Result<()> {
    let ca = Ca::new("pronto test CA")?;
    let listener = Listener::bind(
        "127.0.0.1:0".parse()?,
        config(
            ca.issue(UPPER)?,
            ca.anchor(),
            UPPER,
            Level::System,
            Role::System,
        )?,
    )
    .await?;
    let addr = listener.local_addr()?;
    let mut incoming = listener.incoming();
    // A trusted certificate for site-b, but its Hello claims to be site-a.
    let liar = Connector::new(config(
        ca.issue("site-b.as65001.example")?,
        ca.anchor(),
        LOWER,
        Level::Site,
        Role::Site,
    )?)?;
    let upper_name = NodeName::new(UPPER)?;
    let (client, accepted) = tokio::join!(
        tokio::time::timeout(STEP, liar.connect(addr, &upper_name)),
        tokio::time::timeout(STEP, incoming.next_session())
    );
    let mut upper_session = accepted?.context("accept loop ended")?;
    match next(&mut upper_session).await? {
        PeerEvent::PeerDown {
            reason: DownReason::IdentityMismatch { claimed },
        } => assert_eq!(claimed.as_str(), LOWER),
        other => bail!("expected IdentityMismatch, got {other:?}"),
    }
    assert!(matches!(client?, Err(TransportError::Refused { .. })));
    Ok(())
}

/// A TCP connection from `source` (any 127/8 address is local on Linux) that
/// never starts TLS.
async fn silent(source: [u8; 4], to: SocketAddr) -> Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((source, 0)))?;
    Ok(sock.connect(to).await?)
}

/// Whether the listener closed `s` (EOF or reset) within `within`.
async fn closed_by_peer(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_bounded_and_never_hold_up_a_valid_peer() -> Result<()> {
    let ca = Ca::new("pronto test CA")?;
    let limits = HandshakeLimits {
        // Long enough that the held connections outlast the steps below.
        timeout: Duration::from_millis(1500),
        max_pending: 4,
        max_pending_per_source: 2,
    };
    let listener = Listener::bind(
        "127.0.0.1:0".parse()?,
        config(
            ca.issue(UPPER)?,
            ca.anchor(),
            UPPER,
            Level::System,
            Role::System,
        )?,
    )
    .await?
    .with_handshake_limits(limits);
    let addr = listener.local_addr()?;
    let stats = listener.stats().clone();
    let mut incoming = listener.incoming();
    let lower = Connector::new(config(
        ca.issue(LOWER)?,
        ca.anchor(),
        LOWER,
        Level::Site,
        Role::Site,
    )?)?;
    let upper_name = NodeName::new(UPPER)?;

    // Two silent connections from one source fill its share; a third is closed
    // at once.
    let mut held = vec![
        silent([127, 0, 0, 2], addr).await?,
        silent([127, 0, 0, 2], addr).await?,
    ];
    let mut third = silent([127, 0, 0, 2], addr).await?;
    assert!(closed_by_peer(&mut third, Duration::from_millis(300)).await);
    // A valid peer from another source registers meanwhile.
    let (client, accepted) = tokio::join!(
        tokio::time::timeout(STEP, lower.connect(addr, &upper_name)),
        tokio::time::timeout(STEP, incoming.next_session())
    );
    let mut upper_session = accepted?.context("accept loop ended")?;
    assert!(matches!(
        next(&mut upper_session).await?,
        PeerEvent::Registered { .. }
    ));
    drop(client??);
    // Two more sources fill the total; a fifth connection is closed at once.
    held.push(silent([127, 0, 0, 3], addr).await?);
    held.push(silent([127, 0, 0, 4], addr).await?);
    let mut fifth = silent([127, 0, 0, 5], addr).await?;
    assert!(closed_by_peer(&mut fifth, Duration::from_millis(300)).await);
    // The held ones are closed at the handshake deadline, freeing their slots.
    for s in &mut held {
        assert!(
            closed_by_peer(s, STEP).await,
            "closed by the handshake deadline"
        );
    }
    let (client, accepted) = tokio::join!(
        tokio::time::timeout(STEP, lower.connect(addr, &upper_name)),
        tokio::time::timeout(STEP, incoming.next_session())
    );
    let mut upper_session = accepted?.context("accept loop ended")?;
    assert!(matches!(
        next(&mut upper_session).await?,
        PeerEvent::Registered { .. }
    ));
    drop(client??);

    let get = |c: &std::sync::atomic::AtomicU64| TransportStats::get(c);
    assert_eq!(get(&stats.accepted), 8);
    assert_eq!(get(&stats.handshakes), 2);
    assert_eq!(get(&stats.refused_per_source_limit), 1);
    assert_eq!(get(&stats.refused_pending_limit), 1);
    assert_eq!(get(&stats.handshake_timeouts), 4);
    assert_eq!(get(&stats.handshake_failures), 0);
    assert_eq!(get(&stats.untrusted_certificates), 0);
    Ok(())
}

/// A peer with a trusted certificate completes TLS and then sends bytes that
/// are not a frame: the session is closed and the listener counts it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_the_session_and_is_counted() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let ca = Ca::new("pronto test CA")?;
    let listener = Listener::bind(
        "127.0.0.1:0".parse()?,
        config(
            ca.issue(UPPER)?,
            ca.anchor(),
            UPPER,
            Level::System,
            Role::System,
        )?,
    )
    .await?;
    let addr = listener.local_addr()?;
    let stats = listener.stats().clone();
    let mut incoming = listener.incoming();

    // An authenticated client that speaks raw TLS rather than signalling.
    let me = ca.issue(LOWER)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.anchor())?;
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(me.cert_chain, me.key)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server = rustls_pki_types::ServerName::try_from(UPPER)?;
    let mut tls = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)).connect(server, tcp),
    )
    .await??;
    let mut session = tokio::time::timeout(STEP, incoming.next_session())
        .await?
        .context("accept loop ended")?;
    assert_eq!(TransportStats::get(&stats.handshakes), 1);
    assert_eq!(TransportStats::get(&stats.garbage_frames), 0);

    tls.write_all(b"GET / HTTP/1.1\r\nHost: sys1\r\n\r\n")
        .await?;
    tls.flush().await?;
    match next(&mut session).await? {
        PeerEvent::PeerDown {
            reason: DownReason::Codec(_),
        } => {}
        other => bail!("expected a codec error, got {other:?}"),
    }
    // Counted when the session task reports its end.
    let deadline = tokio::time::Instant::now() + STEP;
    while TransportStats::get(&stats.garbage_frames) == 0 {
        if tokio::time::Instant::now() > deadline {
            bail!("garbage_frames not counted");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(TransportStats::get(&stats.garbage_frames), 1);
    assert_eq!(TransportStats::get(&stats.protocol_violations), 0);
    assert_eq!(TransportStats::get(&stats.untrusted_certificates), 0);
    Ok(())
}

/// `TransportConfig::validate` refuses, without a socket, what `Listener::bind`
/// and `Connector::new` refuse: here another node's key.
#[tokio::test]
async fn another_nodes_key_is_refused_before_any_socket() -> Result<()> {
    let ca = Ca::new("pronto test CA")?;
    let mine = ca.issue(LOWER)?;
    let theirs = ca.issue(UPPER)?;
    let good = config(
        ca.issue(LOWER)?,
        ca.anchor(),
        LOWER,
        Level::Site,
        Role::Site,
    )?;
    good.validate()?;
    let wrong = || {
        config(
            TlsIdentity {
                cert_chain: mine.cert_chain.clone(),
                key: theirs.key.clone_key(),
            },
            ca.anchor(),
            LOWER,
            Level::Site,
            Role::Site,
        )
    };
    assert!(matches!(
        wrong()?.validate(),
        Err(TransportError::KeyMismatch)
    ));
    assert!(matches!(
        Connector::new(wrong()?),
        Err(TransportError::KeyMismatch)
    ));
    assert!(matches!(
        Listener::bind("127.0.0.1:0".parse()?, wrong()?).await,
        Err(TransportError::KeyMismatch)
    ));
    Ok(())
}

/// Certificate validity refusals name dates, not seconds since the epoch.
#[test]
fn certificate_verdicts_print_dates() {
    use rustls::CertificateError as C;
    use rustls_pki_types::UnixTime;
    let t = |s: u64| UnixTime::since_unix_epoch(Duration::from_secs(s));
    let expired = CertificateVerdict(rustls::Error::InvalidCertificate(C::ExpiredContext {
        time: t(1_700_000_000),
        not_after: t(951_782_400),
    }));
    assert_eq!(
        expired.to_string(),
        "certificate expired at 2000-02-29T00:00:00Z (now 2023-11-14T22:13:20Z)"
    );
    let early = CertificateVerdict(rustls::Error::InvalidCertificate(C::NotValidYetContext {
        time: t(951_782_400),
        not_before: t(1_700_000_000),
    }));
    assert_eq!(
        early.to_string(),
        "certificate not valid before 2023-11-14T22:13:20Z (now 2000-02-29T00:00:00Z)"
    );
    let err = TransportError::UntrustedCertificate {
        peer: SocketAddr::from(([127, 0, 0, 1], 7800)),
        source: expired,
    };
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(
        source.as_deref(),
        Some("certificate expired at 2000-02-29T00:00:00Z (now 2023-11-14T22:13:20Z)")
    );
}
