//! `pronto query ...` and `pronto module load|swap|rollback|remove --router URL`:
//! the client of a router's management API (src/mgmt/, qre's schema).
//!
//! Output is a human table by default and the API's JSON with `--json`. Errors
//! say what failed and what to do: a refused TLS handshake, a certificate that
//! does not match, an API error's message and hint.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qre::response::{
    CountersResponse, FlowsResponse, ModuleOpReport, ModulesResponse, PeersResponse,
    QueuesResponse, RouterSummary, TableResponse,
};
use qre::{AddrMatch, ApiError, FlowQuery};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::cli_tables::{
    print_counters, print_flows, print_modules, print_peers, print_queues, print_summary,
    print_table,
};

/// Largest answer read (a full flow page and counters are well below).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How to reach and authenticate to a router.
#[derive(Debug, Clone, Args)]
pub(crate) struct Conn {
    /// The router's management URL: https://NAME:PORT, or https://ADDR:PORT
    /// with --server-name.
    #[arg(long, value_name = "URL")]
    router: String,
    /// Our certificate, PEM (from `pronto ca issue-peer`).
    #[arg(long, value_name = "PEM")]
    cert: Option<PathBuf>,
    /// Our private key, PEM.
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// CA certificate the router's certificate must chain to (the trust
    /// domain's ca.pem).
    #[arg(long, value_name = "PEM")]
    ca: PathBuf,
    /// Name the router's certificate carries [default: the URL's host].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

/// `pronto query ...`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(subcommand)]
    what: QueryCommand,
}

#[derive(Debug, Subcommand)]
enum QueryCommand {
    /// Who the router is and its main figures.
    Summary(Plain),
    /// Pinned flows: counts by VIP, client and next hop, and a page of flows.
    Flows {
        #[command(flatten)]
        common: Plain,
        /// Only flows to this VIP or VIP prefix.
        #[arg(long)]
        vip: Option<AddrMatch>,
        /// Only flows from this client address or prefix.
        #[arg(long)]
        client: Option<AddrMatch>,
        /// Only flows pinned to this next hop.
        #[arg(long)]
        next_hop: Option<AddrMatch>,
        /// Flows listed (the counts cover all), at most 1000.
        #[arg(long, default_value_t = qre::query::DEFAULT_PAGE)]
        limit: usize,
    },
    /// The next-hop table: per virtual subnet, the next hops with loads and costs.
    Table {
        #[command(flatten)]
        common: Plain,
        /// Only this subnet (or the one containing this address).
        #[arg(long)]
        subnet: Option<AddrMatch>,
    },
    /// Signalling peers and hosts, with their last state update.
    Peers(Plain),
    /// Modules per environment: version, signer, digest, calls, faults, CPU, state.
    Modules(Plain),
    /// Queues and scheduler shares.
    Queues(Plain),
    /// Every counter and histogram.
    Counters(Plain),
    /// The Prometheus exposition text (as /metrics serves it).
    Metrics {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Connection options and `--json`.
#[derive(Debug, Args)]
pub(crate) struct Plain {
    #[command(flatten)]
    conn: Conn,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `pronto module load|swap|rollback|remove|bind|unbind --router URL ...`: module
/// operations on a running router, mounted in `pronto module`'s tree.
#[derive(Debug, Subcommand)]
pub(crate) enum RemoteOp {
    /// Install a signed module whose name is not installed yet.
    Load {
        #[command(flatten)]
        common: Remote,
        /// The signed module file.
        file: PathBuf,
    },
    /// Replace an installed module by a new signed version, atomically, while
    /// packets flow; the old version stays as the rollback target.
    Swap {
        #[command(flatten)]
        common: Remote,
        /// The signed module file.
        file: PathBuf,
    },
    /// Make a module's previous version active again.
    Rollback {
        #[command(flatten)]
        common: Remote,
        /// Module name.
        name: String,
    },
    /// Remove a module (flows it would place fall back to the built-in policy).
    Remove {
        #[command(flatten)]
        common: Remote,
        /// Module name.
        name: String,
    },
    /// Bind an installed module to govern a subnet, at once and without a
    /// restart; the router keeps the binding across restarts.
    Bind {
        #[command(flatten)]
        common: Remote,
        /// Module name.
        name: String,
        /// The virtual subnet (ADDR/LEN) it governs (not for `--role
        /// scheduler`: a scheduler ranks the whole link).
        #[arg(long)]
        subnet: Option<AddrMatch>,
        /// `policy` (places new flows), `cost` (F and G of the table) or
        /// `scheduler` (ranks the `[scheduler]` stage's link).
        #[arg(long)]
        role: exec_env::manager::Role,
    },
    /// End a subnet's binding in a role: the built-in serves it again.
    Unbind {
        #[command(flatten)]
        common: Remote,
        /// The virtual subnet (ADDR/LEN), as `pronto query modules` shows it
        /// (not for `--role scheduler`).
        #[arg(long)]
        subnet: Option<AddrMatch>,
        /// `policy`, `cost` or `scheduler` (back to the built-in rank).
        #[arg(long)]
        role: exec_env::manager::Role,
    },
}

/// Connection options, `--json`, and the environment a module operation acts in.
#[derive(Debug, Args)]
pub(crate) struct Remote {
    #[command(flatten)]
    plain: Plain,
    /// The environment (default: the operator's; a tenant's by its
    /// `[[environment]] name`).
    #[arg(long, value_name = "NAME")]
    env: Option<String>,
}

/// Run `pronto module load|swap|rollback|remove|bind|unbind ...`.
pub(crate) fn run_remote_module(op: &RemoteOp) -> Result<()> {
    let (common, method, path, body, what) = match op {
        RemoteOp::Load { common, file } | RemoteOp::Swap { common, file } => {
            let op = if matches!(op, RemoteOp::Load { .. }) {
                "load"
            } else {
                "swap"
            };
            let path = format!("/v1/modules/{op}{}", env_query(common));
            (
                common,
                "POST",
                path,
                read_module(file)?,
                file.display().to_string(),
            )
        }
        RemoteOp::Rollback { common, name } => {
            let path = format!("/v1/modules/{name}/rollback{}", env_query(common));
            (common, "POST", path, Vec::new(), name.clone())
        }
        RemoteOp::Remove { common, name } => {
            let path = format!("/v1/modules/{name}{}", env_query(common));
            (common, "DELETE", path, Vec::new(), name.clone())
        }
        RemoteOp::Bind {
            common,
            name,
            subnet,
            role,
        } => {
            let q = qre::BindingQuery {
                env: common.env.clone(),
                module: Some(name.clone()),
                subnet: binding_subnet(*subnet, *role)?,
                role: role.to_string(),
            };
            let what = format!("{name} ({role} {})", q.subnet);
            let path = format!("/v1/bindings?{}", q.to_query_string());
            (common, "POST", path, Vec::new(), what)
        }
        RemoteOp::Unbind {
            common,
            subnet,
            role,
        } => {
            let q = qre::BindingQuery {
                env: common.env.clone(),
                module: None,
                subnet: binding_subnet(*subnet, *role)?,
                role: role.to_string(),
            };
            let what = format!("{role} {}", q.subnet);
            let path = format!("/v1/bindings?{}", q.to_query_string());
            (common, "DELETE", path, Vec::new(), what)
        }
    };
    let conn = &common.plain.conn;
    let text = request(conn, method, &path, body)
        .with_context(|| format!("module operation on {what} at {}", conn.router))?;
    if common.plain.json {
        println!("{text}");
        return Ok(());
    }
    let r: ModuleOpReport = decode(&text)?;
    let active = r.active.as_deref().unwrap_or("-");
    match r.op.as_str() {
        "load" => println!(
            "loaded {} {active} into environment {}",
            r.name, r.environment
        ),
        "swap" => println!(
            "swapped {} {} -> {active} in environment {} (previous kept for rollback)",
            r.name,
            r.replaced.as_deref().unwrap_or("-"),
            r.environment
        ),
        "rollback" => println!(
            "rolled {} back: {} -> {active} in environment {}",
            r.name,
            r.replaced.as_deref().unwrap_or("-"),
            r.environment
        ),
        "bind" => println!(
            "bound {} {active} to {}{} in environment {}",
            r.name,
            r.binding.as_deref().unwrap_or("-"),
            r.replaced
                .as_deref()
                .map_or_else(String::new, |m| format!(" (replacing {m})")),
            r.environment
        ),
        "unbind" => println!(
            "unbound {} from {}: the built-in serves it",
            r.name,
            r.binding.as_deref().unwrap_or("-"),
        ),
        _ => println!(
            "removed {} {} from environment {}",
            r.name,
            r.replaced.as_deref().unwrap_or("-"),
            r.environment
        ),
    }
    if let (Some(d), Some(s)) = (&r.digest, &r.signer) {
        println!("  signer {s}\n  digest {d}");
    }
    Ok(())
}

/// The subnet a binding names: `--subnet`, required but for the scheduler
/// role, which is recorded under the whole link (`0.0.0.0/0`).
fn binding_subnet(subnet: Option<AddrMatch>, role: exec_env::manager::Role) -> Result<AddrMatch> {
    use exec_env::manager::Role;
    match (subnet, role) {
        (Some(s), _) => Ok(s),
        (None, Role::Scheduler) => Ok(AddrMatch {
            addr: Role::LINK.addr(),
            prefix_len: Role::LINK.prefix_len(),
        }),
        (None, _) => bail!("--subnet ADDR/LEN is required for the {role} role"),
    }
}

/// `?env=NAME` for `--env`, or nothing.
fn env_query(common: &Remote) -> String {
    let q = qre::EnvQuery {
        env: common.env.clone(),
    }
    .to_query_string();
    if q.is_empty() { q } else { format!("?{q}") }
}

fn read_module(p: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut bytes = Vec::new();
    f.take(qre::api::MAX_BODY as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", p.display()))?;
    if bytes.len() > qre::api::MAX_BODY {
        bail!(
            "{} is larger than the API's {} byte limit for module files",
            p.display(),
            qre::api::MAX_BODY
        );
    }
    Ok(bytes)
}

/// Run `pronto query ...`.
pub(crate) fn run_query(args: &QueryArgs) -> Result<()> {
    match &args.what {
        QueryCommand::Summary(p) => show::<RouterSummary>(p, "/v1/summary", print_summary),
        QueryCommand::Flows {
            common,
            vip,
            client,
            next_hop,
            limit,
        } => {
            let q = FlowQuery {
                vip: *vip,
                client: *client,
                next_hop: *next_hop,
                limit: *limit,
            };
            show::<FlowsResponse>(
                common,
                &format!("/v1/flows?{}", q.to_query_string()),
                print_flows,
            )
        }
        QueryCommand::Table { common, subnet } => {
            let path = match subnet {
                Some(s) => format!("/v1/table?subnet={s}"),
                None => "/v1/table".to_owned(),
            };
            show::<TableResponse>(common, &path, print_table)
        }
        QueryCommand::Peers(p) => show::<PeersResponse>(p, "/v1/peers", print_peers),
        QueryCommand::Modules(p) => show::<ModulesResponse>(p, "/v1/modules", print_modules),
        QueryCommand::Queues(p) => queues(p),
        QueryCommand::Counters(p) => show::<CountersResponse>(p, "/v1/counters", print_counters),
        QueryCommand::Metrics { conn } => {
            print!("{}", request(conn, "GET", "/metrics", Vec::new())?);
            Ok(())
        }
    }
}

fn show<T: serde::de::DeserializeOwned>(p: &Plain, path: &str, print: fn(&T)) -> Result<()> {
    let text = request(&p.conn, "GET", path, Vec::new())?;
    if p.json {
        println!("{text}");
    } else {
        print(&decode(&text)?);
    }
    Ok(())
}

/// `query queues`: with an egress stage, two answers a second apart, so the
/// table shows each class's share of the last second.
fn queues(p: &Plain) -> Result<()> {
    let first = request(&p.conn, "GET", "/v1/queues", Vec::new())?;
    if p.json {
        println!("{first}");
        return Ok(());
    }
    let first: QueuesResponse = decode(&first)?;
    let (now, previous) = match first.egress.clone() {
        Some(e) => {
            std::thread::sleep(Duration::from_secs(1));
            let now = decode(&request(&p.conn, "GET", "/v1/queues", Vec::new())?)?;
            (now, Some(e))
        }
        None => (first, None),
    };
    print_queues(&now, previous.as_ref());
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).context(
        "the router's answer does not match this client's schema (is the router the same pronto version?)",
    )
}

// ----- the HTTPS client ----------------------------------------------------------------

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

/// A certificate verdict in words, with validity dates as
/// `YYYY-MM-DDTHH:MM:SSZ` rather than rustls' seconds since the epoch.
pub(crate) fn certificate_error_text(c: &rustls::CertificateError) -> String {
    use exec_env::trust::utc_unix;
    match c {
        rustls::CertificateError::ExpiredContext { time, not_after } => format!(
            "certificate expired at {} (now {})",
            utc_unix(*not_after),
            utc_unix(*time)
        ),
        rustls::CertificateError::NotValidYetContext { time, not_before } => format!(
            "certificate not valid before {} (now {})",
            utc_unix(*not_before),
            utc_unix(*time)
        ),
        other => other.to_string(),
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
                    format!(
                        "the router's certificate is not acceptable: {}",
                        certificate_error_text(c)
                    )
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
fn request(conn: &Conn, method: &str, path: &str, body: Vec<u8>) -> Result<String> {
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
    fn certificate_validity_errors_print_dates() {
        use rustls::pki_types::UnixTime;
        use std::time::Duration;
        let e = rustls::CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
            not_after: UnixTime::since_unix_epoch(Duration::from_secs(951_782_400)),
        };
        assert_eq!(
            certificate_error_text(&e),
            "certificate expired at 2000-02-29T00:00:00Z (now 2023-11-14T22:13:20Z)"
        );
        let e = rustls::CertificateError::NotValidYetContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(951_782_400)),
            not_before: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
        };
        let t = certificate_error_text(&e);
        assert!(t.contains("not valid before 2023-11-14T22:13:20Z"), "{t}");
        assert!(!t.contains("UNIX"), "{t}");
    }

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
