//! Management API requests from arbitrary bytes, as the router's HTTPS server
//! handles them once hyper has parsed the request line: the admission by the
//! client certificate's roles (pronto's `mgmt::authz`), then qre's routing, its
//! query-string parsers and the module operations, whose bodies go to a real
//! operator environment through pronto's `mgmt::modules` (verification refuses
//! them; nothing is compiled).
//!
//! Input: a certificate selector byte, then `METHOD SP request-target LF body`.
//! Checks: nothing panics; every answer is JSON (or Prometheus text) with an
//! [`qre::ApiError`] body when it is not a 2xx; only a known endpoint with its
//! method answers 2xx; parsed queries print back to themselves; binds and
//! unbinds reach the environment and are refused (it holds no module).
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use exec_env::ca::{CertificateAuthority, KeyAlgorithm, Validity};
use exec_env::manager::{Environment, EnvironmentConfig};
use exec_env::role::Role;
use exec_env::trust::TrustAnchors;
use libfuzzer_sys::fuzz_target;
use qre::metrics::MetricsBuilder;
use qre::response::{
    FlowsResponse, ModuleOpReport, ModulesResponse, NextHopRow, PeersResponse, QueuesResponse,
    RouterSummary, SubnetRow, TableResponse,
};
use qre::{
    AddrMatch, ApiError, BindingQuery, EnvQuery, FlowCollector, FlowQuery, FlowSample,
    MetricFamily, ModuleOp, RouterState, StateError, TableQuery,
};

/// `[management] operators` and `viewers` of the router under test.
const OPERATORS: &[&str] = &["ops.lab"];
const VIEWERS: &[&str] = &["noc.lab"];

struct Fixture {
    state: State,
    /// Client certificates (DER): operator, viewer, host, router, no role, a
    /// host listed as viewer, a router listed as operator.
    certs: Vec<Vec<u8>>,
    operators: Vec<String>,
    viewers: Vec<String>,
}

/// A router of two flows and one subnet whose module operations go to a real
/// operator environment.
struct State {
    env: Arc<Environment>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let v = Validity::days_from(std::time::SystemTime::now(), 1).expect("validity");
        let ca = CertificateAuthority::generate("Fuzz CA", v, KeyAlgorithm::Ed25519).expect("CA");
        let peer = |name: &str, role: Option<Role>| {
            ca.issue_peer_as(name, role, v)
                .expect("peer certificate")
                .cert_der
                .to_vec()
        };
        let certs = vec![
            peer("alice.lab", Some(Role::Operator)),
            peer("bob.lab", Some(Role::Viewer)),
            peer("h1.lab", Some(Role::Host)),
            peer("site-a.lab", Some(Role::Router)),
            peer("old.lab", None),
            peer("noc.lab", Some(Role::Host)),
            peer("ops.lab", Some(Role::Router)),
        ];
        let anchors = TrustAnchors::from_pem(ca.cert_pem().as_bytes()).expect("anchors");
        let env = Environment::new(EnvironmentConfig::operator("operator"), anchors)
            .expect("environment");
        Fixture {
            state: State { env: Arc::new(env) },
            certs,
            operators: OPERATORS.iter().map(|s| (*s).to_owned()).collect(),
            viewers: VIEWERS.iter().map(|s| (*s).to_owned()).collect(),
        }
    })
}

fn flow(client: [u8; 4], hop: [u8; 4]) -> FlowSample<'static> {
    FlowSample {
        proto: 6,
        client: IpAddr::from(client),
        client_port: 1234,
        vip: IpAddr::from([192, 200, 0, 10]),
        vip_port: 80,
        next_hop: IpAddr::from(hop),
        state: "established",
        packets: 1,
        bytes: 60,
        age_ms: 0,
        idle_ms: 0,
    }
}

impl RouterState for State {
    fn summary(&self) -> Result<RouterSummary, StateError> {
        Ok(RouterSummary {
            name: "sys.lab".into(),
            level: "system".into(),
            pid: 1,
            uptime_ms: 5,
            rss_kib: 100,
            flows: 2,
            flow_capacity: 64,
            subnets: 1,
            downstream_peers: 2,
            upstream_registered: false,
            modules: 0,
            packets: 9,
            fast_path: "bpf".into(),
            fast_path_forwarded: 3,
        })
    }
    fn flows(&self, q: &FlowQuery) -> Result<FlowsResponse, StateError> {
        let mut c = FlowCollector::new(*q);
        c.offer(&flow([172, 16, 0, 2], [10, 1, 0, 2]));
        c.offer(&flow([172, 16, 0, 3], [10, 2, 0, 2]));
        let r = c.finish(64);
        assert!(r.flows.len() <= q.limit.min(qre::query::MAX_PAGE));
        Ok(r)
    }
    fn table(&self, q: &TableQuery) -> Result<TableResponse, StateError> {
        let prefix: AddrMatch = "192.200.0.0/24".parse().expect("prefix");
        let rows = q.selects(&prefix).then(|| SubnetRow {
            subnet: prefix.to_string(),
            source: "table".into(),
            policy: "least-cost".into(),
            cost_model: "builtin-sum-cost".into(),
            aggregate: Some(0.1),
            next_hops: vec![NextHopRow {
                address: IpAddr::from([10, 1, 0, 2]),
                peer: Some("site-a.lab".into()),
                load: 0.1,
                route_cost: 0.0,
                cost: Some(0.1),
                up: true,
                best: true,
            }],
        });
        Ok(TableResponse {
            cost_model: "builtin-sum-cost".into(),
            subnets: rows.into_iter().collect(),
            omitted: 0,
        })
    }
    fn peers(&self) -> Result<PeersResponse, StateError> {
        Ok(PeersResponse {
            downstream_role: "site".into(),
            peers: vec![],
        })
    }
    fn modules(&self) -> Result<ModulesResponse, StateError> {
        Ok(ModulesResponse {
            environments: vec![],
        })
    }
    fn queues(&self) -> Result<QueuesResponse, StateError> {
        Ok(QueuesResponse {
            share_trees: vec![],
            egress: None,
            note: "none".into(),
        })
    }
    fn metrics(&self) -> Result<Vec<MetricFamily>, StateError> {
        let mut b = MetricsBuilder::new();
        b.counter(
            "pronto_engine_packets_total",
            "Packets",
            &[("reason", "a\"b\\c\n")],
            9,
        );
        Ok(b.finish())
    }
    fn module_op(
        &self,
        _env: Option<&str>,
        op: ModuleOp<'_>,
    ) -> Result<ModuleOpReport, StateError> {
        let r = pronto::fuzz::module_operation(&self.env, op);
        // Nothing fuzzed here is signed by the environment's CA.
        assert!(r.is_err(), "{op:?} succeeded: {r:?}");
        r
    }
}

/// The parsed query strings print back to what they parsed from.
fn query_round_trips(query: &str) {
    if let Ok(q) = FlowQuery::parse(query) {
        assert_eq!(FlowQuery::parse(&q.to_query_string()), Ok(q), "{query:?}");
    }
    if let Ok(q) = TableQuery::parse(query)
        && let Some(s) = q.subnet
    {
        assert_eq!(s.to_string().parse::<AddrMatch>(), Ok(s), "{query:?}");
    }
    if let Ok(q) = BindingQuery::parse(query) {
        assert_eq!(
            BindingQuery::parse(&q.to_query_string()),
            Ok(q),
            "{query:?}"
        );
    }
    if let Ok(q) = EnvQuery::parse(query) {
        assert_eq!(EnvQuery::parse(&q.to_query_string()), Ok(q), "{query:?}");
    }
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let (line, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return;
    };
    // What hyper hands the service: a method token and a parsed URI (it
    // answers 400 itself to anything that does not parse).
    let (Ok(method), Ok(uri)) = (
        http::Method::from_bytes(&line[..sp]),
        http::Uri::try_from(&line[sp + 1..]),
    ) else {
        return;
    };
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    query_round_trips(query);

    // Admission, as the server decides it before reading the body.
    let leaf = f.certs.get(usize::from(selector % 9)).map(Vec::as_slice);
    let leaf = if selector % 9 == 8 { Some(body) } else { leaf };
    let admitted = pronto::fuzz::management_admission(&f.operators, &f.viewers, leaf, &method);
    let reads = method == http::Method::GET || method == http::Method::HEAD;
    match selector % 9 {
        // Operator by role, or router listed as operator: everything.
        0 | 6 => assert!(admitted.is_ok(), "{method} refused to an operator"),
        // Viewer by role, or host listed as viewer: reads only.
        1 | 5 => assert_eq!(admitted.is_ok(), reads, "{method} for a viewer"),
        // Host, router, no role: nothing.
        2..=4 => assert!(
            admitted.is_err(),
            "{method} granted to a certificate without role"
        ),
        // No certificate at all: nothing.
        7 => assert!(admitted.is_err()),
        _ => {}
    }
    if let Err(refusal) = &admitted {
        assert_eq!(refusal.status, 403);
        let e: ApiError = serde_json::from_slice(&refusal.body).expect("403 body is an ApiError");
        assert_eq!(e.error, "forbidden");
    }

    // qre's routing (always, so every route is reached whatever the selector).
    let m = qre::Method::from_name(method.as_str());
    let r = qre::api::handle(
        &f.state,
        &qre::Request {
            method: m,
            path,
            query,
            body,
        },
    );
    assert!((200..600).contains(&r.status));
    if r.content_type == qre::api::JSON {
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("answer is JSON");
        if r.status >= 300 {
            let e: ApiError = serde_json::from_value(v).expect("error body is an ApiError");
            assert!(!e.error.is_empty() && !e.hint.is_empty());
        }
    } else {
        assert_eq!(r.content_type, qre::api::PROMETHEUS);
        assert_eq!(r.status, 200);
        assert!(std::str::from_utf8(&r.body).is_ok());
    }
    if (200..300).contains(&r.status) {
        let p = path.trim_end_matches('/');
        let known = [
            "",
            "/v1",
            "/v1/summary",
            "/v1/flows",
            "/v1/table",
            "/v1/peers",
            "/v1/modules",
            "/v1/queues",
            "/v1/counters",
            "/metrics",
        ];
        assert!(
            m == qre::Method::Get && known.contains(&p),
            "{m:?} {p:?} answered {}",
            r.status
        );
    }
});
