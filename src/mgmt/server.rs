//! The HTTPS server: mutual TLS 1.3 (client certificates chaining to
//! `management.trust_anchors`), HTTP/1.1 with one request per connection, the
//! handshake bounds (a task per connection, a deadline of its own, pending
//! handshakes bounded in total and per source), the request bounds, and the hand-off of each request to qre's
//! router (`qre::api::handle`) on a blocking worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use signaling::transport::{HandshakeGate, HandshakeLimits, HandshakeRefusal};

use super::MgmtState;
use super::authz::{self, Access, Authorizer, ManagementClient};
use crate::config;

/// A running management server (a task on the daemon's runtime); stops
/// accepting when dropped.
#[derive(Debug)]
pub(crate) struct MgmtServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for MgmtServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The server's TLS configuration: TLS 1.3, ring, client certificates required
/// and verified against the trust anchors. Reads and checks every file of
/// `[management]` (the daemon does this before it binds anything, and `router
/// check` does it too).
pub(crate) fn server_tls(cfg: &config::Management) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let anchors = config::load_anchors("management.trust_anchors", &cfg.trust_anchors)?;
    for c in anchors {
        roots
            .add(c)
            .context("management.trust_anchors: a certificate is not a usable CA")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("management: client certificate verifier")?;
    let identity = config::load_identity(
        ("management.cert", &cfg.cert),
        ("management.key", &cfg.key),
        cfg.key_permissions,
    )?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("management: TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain, identity.key)
        .context("management.cert / management.key do not form a usable identity")
}

/// Start serving `state` on `cfg.listen` as a task of the daemon's runtime
/// `rt` (requests that wait for the dataplane run on its blocking pool), with
/// the TLS configuration [`server_tls`] made. Errors (bind) are returned before
/// anything runs.
pub(crate) fn spawn(
    rt: &tokio::runtime::Runtime,
    cfg: &config::Management,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<MgmtState>,
) -> Result<MgmtServer> {
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("management.listen = {}: cannot listen", cfg.listen))?;
    listener
        .set_nonblocking(true)
        .context("management: nonblocking listener")?;
    let listener = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(listener).context("management: listener")?
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let limits = Limits {
        requests: cfg.max_connections,
        request_timeout: cfg.request_timeout,
        handshakes: cfg.handshakes,
    };
    let authz = Arc::new(Authorizer::new(&cfg.operators, &cfg.viewers));
    rt.spawn(async move {
        tokio::select! {
            () = serve(listener, tls, state, authz, limits) => {}
            _ = stop_rx => {}
        }
    });
    info!(addr = %cfg.listen, handshakes = ?cfg.handshakes, "management API listening (mutual TLS)");
    Ok(MgmtServer {
        stop: Some(stop_tx),
    })
}

/// The server's bounds (`[management]`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Requests served at once, after their handshake.
    requests: usize,
    /// Deadline of one request, from the end of its handshake.
    request_timeout: Duration,
    /// Deadline and bounds of the handshakes in progress.
    handshakes: HandshakeLimits,
}

/// Accepts every connection at once and hands it to a task of its own; the
/// accept loop waits on nothing else, so idle connections cannot stall it.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<MgmtState>,
    authz: Arc<Authorizer>,
    limits: Limits,
) {
    let gate = HandshakeGate::new(limits.handshakes);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.requests));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "management accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let s = &state.stats;
        s.connections.fetch_add(1, Ordering::Relaxed);
        let slot = match gate.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let counter = match refusal {
                    HandshakeRefusal::PendingLimit { .. } => &s.refused_pending_limit,
                    HandshakeRefusal::PerSourceLimit { .. } => &s.refused_per_source_limit,
                    _ => &s.handshake_failures,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, %refusal, "management connection closed before its handshake");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let slots = Arc::clone(&slots);
        let authz = Arc::clone(&authz);
        tokio::spawn(async move {
            let Some(tls) = handshake(tcp, peer, acceptor, limits.handshakes.timeout, &state).await
            else {
                return;
            };
            drop(slot);
            // The request's own deadline starts after the handshake and covers
            // the wait for a request slot.
            let served = tokio::time::timeout(limits.request_timeout, async {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return;
                };
                connection(tls, peer, &state, &authz).await;
            })
            .await;
            if served.is_err() {
                state.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "management request timed out");
            }
        });
    }
}

/// The TLS handshake within `deadline`; failures are counted by reason.
async fn handshake(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    deadline: Duration,
    state: &MgmtState,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let s = &state.stats;
    let e = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            s.handshakes.fetch_add(1, Ordering::Relaxed);
            return Some(tls);
        }
        Ok(Err(e)) => e,
        Err(_) => {
            s.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "management TLS handshake timed out");
            return None;
        }
    };
    let kind = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned();
    match kind {
        Some(rustls::Error::NoCertificatesPresented) => {
            s.unauthenticated.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "management client refused: no client certificate");
        }
        Some(rustls::Error::InvalidCertificate(reason)) => {
            s.untrusted.fetch_add(1, Ordering::Relaxed);
            let reason = crate::cli_query::certificate_error_text(&reason);
            warn!(%peer, %reason, "management client refused: untrusted certificate");
        }
        _ => {
            s.handshake_failures.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, error = %e, "management TLS handshake failed");
        }
    }
    None
}

/// One request on an authenticated connection.
async fn connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    state: &Arc<MgmtState>,
    authz: &Authorizer,
) {
    // The grant is decided once, from the certificate TLS verified.
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let client = Arc::new(authz.client(leaf.map(AsRef::as_ref)));
    debug!(%peer, client = %client.name, roles = %client.roles_text(), grant = ?client.grant, "management client");
    let st = Arc::clone(state);
    let service = service_fn(move |req| {
        let st = Arc::clone(&st);
        let client = Arc::clone(&client);
        async move { Ok::<_, std::convert::Infallible>(request(req, st, peer, &client).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = r {
        debug!(%peer, error = %e, "management connection ended with an error");
    }
}

async fn request(
    req: hyper::Request<Incoming>,
    state: Arc<MgmtState>,
    peer: SocketAddr,
    client: &ManagementClient,
) -> hyper::Response<Full<Bytes>> {
    let method = qre::Method::from_name(req.method().as_str());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let access = Access::of(req.method());
    if let Err(why) = client.allows(access) {
        state.stats.forbidden[why.index()].fetch_add(1, Ordering::Relaxed);
        warn!(
            %peer, client = %client.name, roles = %client.roles_text(), path,
            reason = why.as_str(), "management request refused: role"
        );
        // Read (and drop) what the client sends, within the usual bound, so it
        // sees the 403 rather than a connection reset in the middle of an upload.
        let mut body = Limited::new(req.into_body(), qre::api::MAX_BODY);
        while let Some(Ok(_)) = body.frame().await {}
        return respond(&state, authz::refusal(client, access, why), &path, peer);
    }
    let body = match Limited::new(req.into_body(), qre::api::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let r = if too_big {
                qre::Response::error(
                    413,
                    "too_large",
                    format!("request body exceeds {} bytes", qre::api::MAX_BODY),
                    "module files must be at most 4 MiB",
                )
            } else {
                qre::Response::error(
                    400,
                    "bad_request",
                    format!("cannot read the body: {e}"),
                    "retry",
                )
            };
            return respond(&state, r, &path, peer);
        }
    };
    let st = Arc::clone(&state);
    let p = path.clone();
    let answer = tokio::task::spawn_blocking(move || {
        qre::api::handle(
            &*st,
            &qre::Request {
                method,
                path: &p,
                query: &query,
                body: &body,
            },
        )
    })
    .await
    .unwrap_or_else(|e| {
        qre::Response::error(
            500,
            "internal",
            format!("request handler failed: {e}"),
            "see the router's log",
        )
    });
    respond(&state, answer, &path, peer)
}

fn respond(
    state: &MgmtState,
    r: qre::Response,
    path: &str,
    peer: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let counter = match r.status {
        200..=299 => &state.stats.requests_ok,
        400..=499 => &state.stats.requests_client_error,
        _ => &state.stats.requests_server_error,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, path, status = r.status, "management request");
    let mut resp = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(r.content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
