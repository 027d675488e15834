//! The HTTPS client: the management URL, mutual TLS, one request per
//! connection, and errors that explain a refused handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qre::ApiError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Largest answer read (a full flow page and counters are well below).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How to reach and authenticate to a router.
#[derive(Debug, Clone, Args)]
pub(crate) struct Conn {
    /// The router's management URL: https://NAME:PORT, or https://ADDR:PORT
    /// with --server-name.
    #[arg(long, value_name = "URL")]
    pub(super) router: String,
    /// Our certificate, PEM (from `pronto ca issue-peer`).
    #[arg(long, value_name = "PEM")]
    pub(super) cert: Option<PathBuf>,
    /// Our private key, PEM.
    #[arg(long, value_name = "PEM")]
    pub(super) key: Option<PathBuf>,
    /// CA certificate the router's certificate must chain to (the trust
    /// domain's ca.pem).
    #[arg(long, value_name = "PEM")]
    pub(super) ca: PathBuf,
    /// Name the router's certificate carries [default: the URL's host].
    #[arg(long, value_name = "NAME")]
    pub(super) server_name: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub(super) timeout_secs: u64,
}

/// The URL's host, port and default server name.
fn parse_url(url: &str) -> Result<(String, u16)> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        anyhow!("--router {url:?}: write https://HOST:PORT (the management API is TLS only)")
    })?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        bail!("--router {url:?}: give only https://HOST:PORT, no path");
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse::<u16>()
                .map_err(|_| anyhow!("--router {url:?}: {p:?} is not a port"))?,
        ),
        _ => bail!("--router {url:?}: give the port (the [management] listen port)"),
    };
    Ok((host, port))
}

fn client_tls(conn: &Conn) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let bytes = std::fs::read(&conn.ca)
        .with_context(|| format!("--ca: cannot read {}", conn.ca.display()))?;
    for c in CertificateDer::pem_slice_iter(&bytes) {
        let c = c.with_context(|| format!("--ca: bad PEM in {}", conn.ca.display()))?;
        roots.add(c).with_context(|| {
            format!("--ca: {} is not a usable CA certificate", conn.ca.display())
        })?;
    }
    if roots.is_empty() {
        bail!("--ca: no certificate in {}", conn.ca.display());
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots);
    match (&conn.cert, &conn.key) {
        (Some(cert), Some(key)) => {
            let b = std::fs::read(cert)
                .with_context(|| format!("--cert: cannot read {}", cert.display()))?;
            let chain = CertificateDer::pem_slice_iter(&b)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--cert: bad PEM in {}", cert.display()))?;
            if chain.is_empty() {
                bail!("--cert: no certificate in {}", cert.display());
            }
            let b = std::fs::read(key)
                .with_context(|| format!("--key: cannot read {}", key.display()))?;
            let k = PrivateKeyDer::from_pem_slice(&b)
                .with_context(|| format!("--key: no private key in {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, k)
                .context("--cert and --key do not belong together")
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => bail!("give both --cert and --key (from `pronto ca issue-peer`), or neither"),
    }
}

/// Explains a failure of the connection, naming what to do.
fn explain(e: &(dyn std::error::Error + 'static), conn: &Conn, name: &str) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            use rustls::AlertDescription as A;
            use rustls::CertificateError as C;
            return Some(match t {
                rustls::Error::AlertReceived(A::CertificateRequired) => {
                    "TLS handshake refused: the router requires a client certificate; pass --cert/--key from `pronto ca issue-peer`".to_owned()
                }
                rustls::Error::AlertReceived(
                    A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError,
                ) => format!(
                    "TLS handshake refused: the router does not trust our certificate ({t}); use a certificate from the router's trust domain (`pronto ca issue-peer --dir <its CA dir>`)"
                ),
                rustls::Error::AlertReceived(A::CertificateExpired) => {
                    "TLS handshake refused: our certificate has expired; issue a new one with `pronto ca issue-peer`".to_owned()
                }
                rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
                    "the router's certificate does not name {name:?}; pass --server-name with the router's name (its `name` in the configuration)"
                ),
                rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                    "the router's certificate does not chain to --ca {}; pass the CA of the router's trust domain",
                    conn.ca.display()
                ),
                rustls::Error::InvalidCertificate(c) => {
                    format!("the router's certificate is not acceptable: {c:?}")
                }
                other => format!("TLS failed: {other}"),
            });
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref()
                && let Some(s) = explain(inner, conn, name)
            {
                return Some(s);
            }
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Some(format!(
                    "cannot connect to {}: connection refused; is the router running with a [management] section listening there?",
                    conn.router
                ));
            }
        }
        cur = err.source();
    }
    None
}

/// One request; the answer's body on 2xx, else an error naming the router's
/// message and hint.
pub(super) fn request(conn: &Conn, method: &str, path: &str, body: Vec<u8>) -> Result<String> {
    let (host, port) = parse_url(&conn.router)?;
    let name = conn.server_name.clone().unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        anyhow!("{name:?} is not a server name; pass --server-name with the router's name")
    })?;
    let tls = Arc::new(client_tls(conn)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let timeout = Duration::from_secs(conn.timeout_secs.max(1));
    let fut = exchange(&host, port, server_name, tls, method, path, body);
    let (status, text) = match rt.block_on(async { tokio::time::timeout(timeout, fut).await }) {
        Err(_) => bail!(
            "no answer from {} within {} s; is the management address right and reachable?",
            conn.router,
            timeout.as_secs()
        ),
        Ok(Err(e)) => {
            let root: &(dyn std::error::Error + 'static) = e.as_ref();
            match explain(root, conn, &name) {
                Some(msg) => bail!("{msg}"),
                None => return Err(anyhow!(e).context(format!("talking to {}", conn.router))),
            }
        }
        Ok(Ok(x)) => x,
    };
    if (200..300).contains(&status) {
        return Ok(text);
    }
    match serde_json::from_str::<ApiError>(&text) {
        Ok(e) => bail!(
            "router refused ({status} {}): {}\n  hint: {}",
            e.error,
            e.message,
            e.hint
        ),
        Err(_) => bail!(
            "router answered {status}: {}",
            text.chars().take(500).collect::<String>()
        ),
    }
}

async fn exchange(
    host: &str,
    port: u16,
    name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (mut send, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_https_a_host_and_a_port() {
        assert_eq!(
            parse_url("https://sys.lab:7900").unwrap(),
            ("sys.lab".into(), 7900)
        );
        assert_eq!(
            parse_url("https://10.0.0.1:7900/").unwrap(),
            ("10.0.0.1".into(), 7900)
        );
        assert_eq!(
            parse_url("https://[::1]:7900").unwrap(),
            ("::1".into(), 7900)
        );
        assert!(
            parse_url("http://sys.lab:7900")
                .unwrap_err()
                .to_string()
                .contains("TLS only")
        );
        assert!(
            parse_url("https://sys.lab")
                .unwrap_err()
                .to_string()
                .contains("port")
        );
        assert!(parse_url("https://sys.lab:7900/v1").is_err());
    }
}
