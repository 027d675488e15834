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
    let (acc_tx, mut acc_rx) = tokio::sync::mpsc::channel(4);
    let accept_loop = tokio::spawn(async move {
        loop {
            let r = listener.accept().await;
            if acc_tx.send(r).await.is_err() {
                break;
            }
        }
    });

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
        tokio::time::timeout(STEP, acc_rx.recv())
    );
    let mut lower_session = lower_session??;
    let mut upper_session = accepted?.context("accept loop ended")??;

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
    let refused = tokio::time::timeout(STEP, acc_rx.recv())
        .await?
        .context("accept loop ended")?;
    match refused {
        Err(TransportError::UntrustedCertificate { source, .. }) => {
            assert!(
                matches!(
                    source,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                ),
                "{source:?}"
            );
        }
        Err(e) => bail!("listener: expected UntrustedCertificate, got {e:?}"),
        Ok(_) => bail!("listener accepted a rogue peer"),
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
    accept_loop.abort();
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
        tokio::time::timeout(STEP, listener.accept())
    );
    let mut upper_session = accepted??;
    match next(&mut upper_session).await? {
        PeerEvent::PeerDown {
            reason: DownReason::IdentityMismatch { claimed },
        } => assert_eq!(claimed.as_str(), LOWER),
        other => bail!("expected IdentityMismatch, got {other:?}"),
    }
    assert!(matches!(client?, Err(TransportError::Refused { .. })));
    Ok(())
}
