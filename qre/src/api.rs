//! The management API's routing, sans-IO: a [`Request`] (method, path, query
//! string, body bytes) in, a [`Response`] (status, content type, body) out. The
//! daemon's HTTP server only moves bytes.

use serde::{Deserialize, Serialize};

use crate::metrics::render_prometheus;
use crate::query::{BindingQuery, EnvQuery, FlowQuery, QueryError, TableQuery, no_parameters};
use crate::response::CountersResponse;
use crate::state::{ErrorKind, ModuleOp, RouterState, StateError};

/// Largest request body: a signed module file (exec-env's own limit is larger;
/// the API keeps uploads to a few MiB so a client cannot hold much memory).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most subnet rows one table answer carries.
pub const MAX_TABLE_ROWS: usize = 4096;
/// Longest module name in a path.
const MAX_NAME: usize = 64;

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
    /// Anything else (refused with 405).
    Other,
}

impl Method {
    /// From the request line's method.
    pub fn from_name(name: &str) -> Self {
        match name {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "DELETE" => Self::Delete,
            _ => Self::Other,
        }
    }
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Path, without the query string.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: &'a str,
    /// Body (at most [`MAX_BODY`]; the server refuses longer ones first).
    pub body: &'a [u8],
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

/// JSON content type.
pub const JSON: &str = "application/json";
/// Prometheus text exposition content type.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every error body: a stable code, what went wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `bad_request`, `not_found`, `method_not_allowed`, `conflict`, `refused`,
    /// `too_large`, `unavailable`, `internal`.
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl Response {
    fn json<T: Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Self {
                status,
                content_type: JSON,
                body,
            },
            Err(e) => Self::error(
                500,
                "internal",
                format!("cannot encode the answer: {e}"),
                "report this as a bug",
            ),
        }
    }

    /// An error response.
    pub fn error(
        status: u16,
        code: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        let e = ApiError {
            error: code.to_owned(),
            message: message.into(),
            hint: hint.into(),
        };
        // An ApiError of strings always encodes.
        let body = serde_json::to_vec_pretty(&e).unwrap_or_default();
        Self {
            status,
            content_type: JSON,
            body,
        }
    }

    fn from_state(e: &StateError) -> Self {
        Self::error(
            e.kind.status(),
            e.kind.code(),
            e.message.clone(),
            e.hint.clone(),
        )
    }

    fn bad_query(e: &QueryError) -> Self {
        Self::error(
            400,
            ErrorKind::BadRequest.code(),
            e.to_string(),
            "see the API table in README.md (Operate a router) for each query's parameters",
        )
    }
}

fn answer<T: Serialize>(r: Result<T, StateError>) -> Response {
    match r {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::from_state(&e),
    }
}

fn method_not_allowed(req: &Request<'_>, allowed: &str) -> Response {
    Response::error(
        405,
        "method_not_allowed",
        format!("{} does not take this method", req.path),
        format!("use {allowed}"),
    )
}

fn module_name(raw: &str) -> Result<&str, Response> {
    let ok = (1..=MAX_NAME).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(raw)
    } else {
        Err(Response::error(
            400,
            "bad_request",
            format!("{raw:?} is not a module name"),
            "module names are 1-64 of [a-z0-9_-]; see `pronto query modules`",
        ))
    }
}

/// Endpoints, for the index and for 404 hints.
pub const ENDPOINTS: &[&str] = &[
    "GET /v1/summary",
    "GET /v1/flows?vip=&client=&next_hop=&limit=",
    "GET /v1/table?subnet=",
    "GET /v1/peers",
    "GET /v1/modules",
    "GET /v1/queues",
    "GET /v1/counters",
    "GET /metrics",
    "POST /v1/modules/load?env=",
    "POST /v1/modules/swap?env=",
    "POST /v1/modules/{name}/rollback?env=",
    "DELETE /v1/modules/{name}?env=",
    "POST /v1/bindings?env=&module=&subnet=&role=",
    "DELETE /v1/bindings?env=&subnet=&role=",
];

/// Answers one request from `state`.
pub fn handle(state: &dyn RouterState, req: &Request<'_>) -> Response {
    if req.body.len() > MAX_BODY {
        return Response::error(
            413,
            "too_large",
            format!(
                "request body of {} bytes exceeds {MAX_BODY}",
                req.body.len()
            ),
            "module files must be at most 4 MiB",
        );
    }
    let get_only = |f: &dyn Fn() -> Response| -> Response {
        if req.method == Method::Get {
            f()
        } else {
            method_not_allowed(req, "GET")
        }
    };
    let path = req.path.trim_end_matches('/');
    match path {
        "" | "/v1" => get_only(&|| match no_parameters(req.query) {
            Ok(()) => Response::json(200, &serde_json::json!({ "endpoints": ENDPOINTS })),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/summary" => get_only(&|| match no_parameters(req.query) {
            Ok(()) => answer(state.summary()),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/flows" => get_only(&|| match FlowQuery::parse(req.query) {
            Ok(q) => answer(state.flows(&q)),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/table" => get_only(&|| match TableQuery::parse(req.query) {
            Ok(q) => answer(state.table(&q)),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/peers" => get_only(&|| match no_parameters(req.query) {
            Ok(()) => answer(state.peers()),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/modules" => get_only(&|| match no_parameters(req.query) {
            Ok(()) => answer(state.modules()),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/queues" => get_only(&|| match no_parameters(req.query) {
            Ok(()) => answer(state.queues()),
            Err(e) => Response::bad_query(&e),
        }),
        "/v1/counters" => get_only(&|| match no_parameters(req.query) {
            Ok(()) => answer(
                state
                    .metrics()
                    .map(|families| CountersResponse { families }),
            ),
            Err(e) => Response::bad_query(&e),
        }),
        "/metrics" => get_only(&|| match state.metrics() {
            Ok(f) => Response {
                status: 200,
                content_type: PROMETHEUS,
                body: render_prometheus(&f).into_bytes(),
            },
            Err(e) => Response::from_state(&e),
        }),
        "/v1/modules/load" | "/v1/modules/swap" => {
            if req.method != Method::Post {
                return method_not_allowed(req, "POST with the signed module file as the body");
            }
            if req.body.is_empty() {
                return Response::error(
                    400,
                    "bad_request",
                    "empty body",
                    "send the signed module file (from `pronto module sign`) as the body",
                );
            }
            let op = if path.ends_with("load") {
                ModuleOp::Load(req.body)
            } else {
                ModuleOp::Swap(req.body)
            };
            in_env(state, req, op)
        }
        "/v1/bindings" => binding(state, req),
        _ => module_path(state, req, path),
    }
}

/// `POST /v1/bindings?module=&subnet=&role=` binds, `DELETE
/// /v1/bindings?subnet=&role=` unbinds.
fn binding(state: &dyn RouterState, req: &Request<'_>) -> Response {
    if !matches!(req.method, Method::Post | Method::Delete) {
        return method_not_allowed(req, "POST (bind) or DELETE (unbind)");
    }
    let q = match BindingQuery::parse(req.query) {
        Ok(q) => q,
        Err(e) => return Response::bad_query(&e),
    };
    let op = match (req.method, q.module.as_deref()) {
        (Method::Post, Some(m)) => match module_name(m) {
            Ok(module) => ModuleOp::Bind {
                module,
                subnet: q.subnet,
                role: &q.role,
            },
            Err(r) => return r,
        },
        (Method::Post, None) => {
            return Response::error(
                400,
                "bad_request",
                "a bind names the module",
                "POST /v1/bindings?module=NAME&subnet=PREFIX&role=policy|cost",
            );
        }
        (_, Some(_)) => {
            return Response::error(
                400,
                "bad_request",
                "an unbind names the subnet and role, not the module",
                "DELETE /v1/bindings?subnet=PREFIX&role=policy|cost",
            );
        }
        (_, None) => ModuleOp::Unbind {
            subnet: q.subnet,
            role: &q.role,
        },
    };
    match q.env.as_deref().map(env_name).transpose() {
        Ok(env) => answer(state.module_op(env, op)),
        Err(r) => r,
    }
}

/// `op` in the environment `?env=` names.
fn in_env(state: &dyn RouterState, req: &Request<'_>, op: ModuleOp<'_>) -> Response {
    let q = match EnvQuery::parse(req.query) {
        Ok(q) => q,
        Err(e) => return Response::bad_query(&e),
    };
    match q.env.as_deref().map(env_name).transpose() {
        Ok(env) => answer(state.module_op(env, op)),
        Err(r) => r,
    }
}

/// An environment name: `operator` or a tenant's, `[a-z0-9_-]{1,64}`.
fn env_name(raw: &str) -> Result<&str, Response> {
    module_name(raw).map_err(|_| {
        Response::error(
            400,
            "bad_request",
            format!("{raw:?} is not an environment name"),
            "environment names are 1-64 of [a-z0-9_-]; `pronto query modules` lists them",
        )
    })
}

/// `/v1/modules/{name}/rollback` and `/v1/modules/{name}`.
fn module_path(state: &dyn RouterState, req: &Request<'_>, path: &str) -> Response {
    let not_found = || {
        Response::error(
            404,
            "not_found",
            format!("no endpoint {path}"),
            format!("endpoints: {}", ENDPOINTS.join(", ")),
        )
    };
    let Some(rest) = path.strip_prefix("/v1/modules/") else {
        return not_found();
    };
    match rest.split_once('/') {
        Some((name, "rollback")) => {
            if req.method != Method::Post {
                return method_not_allowed(req, "POST");
            }
            match module_name(name) {
                Ok(n) => in_env(state, req, ModuleOp::Rollback(n)),
                Err(r) => r,
            }
        }
        Some(_) => not_found(),
        None => {
            if req.method != Method::Delete {
                return method_not_allowed(req, "DELETE (to remove it)");
            }
            match module_name(rest) {
                Ok(n) => in_env(state, req, ModuleOp::Remove(n)),
                Err(r) => r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::net::IpAddr;
    use std::sync::Mutex;

    use super::*;
    use crate::metrics::{Histogram, MetricFamily, MetricsBuilder};
    use crate::query::{FlowCollector, FlowSample};
    use crate::response::*;

    /// A router of two flows, one module, one share tree.
    #[derive(Default)]
    struct Fake {
        modules: Mutex<Vec<(String, Vec<String>)>>,
        latency: Histogram,
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

    impl RouterState for Fake {
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
                modules: 1,
                packets: 9,
                fast_path: "userspace (test)".into(),
                fast_path_forwarded: 0,
            })
        }
        fn flows(&self, q: &FlowQuery) -> Result<FlowsResponse, StateError> {
            let mut c = FlowCollector::new(*q);
            c.offer(&flow([172, 16, 0, 2], [10, 1, 0, 2]));
            c.offer(&flow([172, 16, 0, 3], [10, 2, 0, 2]));
            Ok(c.finish(64))
        }
        fn table(&self, q: &TableQuery) -> Result<TableResponse, StateError> {
            let prefix = "192.200.0.0/24".parse().unwrap();
            let rows = q.selects(&prefix).then(|| SubnetRow {
                subnet: "192.200.0.0/24".into(),
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
            b.counter("pronto_engine_packets_total", "Packets", &[], 9)
                .histogram(
                    "pronto_new_flow_decision_seconds",
                    "New-flow decision latency",
                    &[],
                    self.latency.snapshot(),
                );
            Ok(b.finish())
        }
        fn module_op(
            &self,
            env: Option<&str>,
            op: ModuleOp<'_>,
        ) -> Result<ModuleOpReport, StateError> {
            let mut m = self.modules.lock().unwrap();
            let report = |name: &str, active: Option<&str>| ModuleOpReport {
                op: op.name().into(),
                environment: env.unwrap_or("operator").into(),
                name: name.into(),
                active: active.map(str::to_owned),
                replaced: None,
                digest: None,
                signer: None,
                binding: None,
            };
            match op {
                ModuleOp::Load(b) | ModuleOp::Swap(b) => {
                    // The fake's "module file": `name version`, or refused.
                    let text = std::str::from_utf8(b).map_err(|_| {
                        StateError::new(ErrorKind::Refused, "module is unsigned", "sign it")
                    })?;
                    let (name, version) = text.split_once(' ').unwrap();
                    let exists = m.iter().any(|(n, _)| n == name);
                    match (op, exists) {
                        (ModuleOp::Load(_), true) => Err(StateError::new(
                            ErrorKind::Conflict,
                            format!("{name} is installed"),
                            "use swap",
                        )),
                        (ModuleOp::Swap(_), false) => Err(StateError::new(
                            ErrorKind::NotFound,
                            format!("{name} is not installed"),
                            "use load",
                        )),
                        _ => {
                            match m.iter_mut().find(|(n, _)| n == name) {
                                Some((_, v)) => v.push(version.into()),
                                None => m.push((name.into(), vec![version.into()])),
                            }
                            Ok(report(name, Some(version)))
                        }
                    }
                }
                ModuleOp::Rollback(name) => {
                    let (_, v) = m.iter_mut().find(|(n, _)| n == name).ok_or_else(|| {
                        StateError::new(ErrorKind::NotFound, "no such module", "see modules")
                    })?;
                    v.pop();
                    Ok(report(name, v.last().map(String::as_str)))
                }
                ModuleOp::Remove(name) => {
                    m.retain(|(n, _)| n != name);
                    Ok(report(name, None))
                }
                ModuleOp::Bind {
                    module,
                    subnet,
                    role,
                } => Ok(ModuleOpReport {
                    binding: Some(format!("{role} {}/{}", subnet.addr, subnet.prefix_len)),
                    ..report(module, None)
                }),
                ModuleOp::Unbind { subnet, role } => Ok(ModuleOpReport {
                    binding: Some(format!("{role} {}/{}", subnet.addr, subnet.prefix_len)),
                    ..report("-", None)
                }),
            }
        }
    }

    fn get(state: &Fake, path: &str, query: &str) -> Response {
        handle(
            state,
            &Request {
                method: Method::Get,
                path,
                query,
                body: &[],
            },
        )
    }

    fn json(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn queries_answer_typed_json_that_round_trips() {
        let s = Fake::default();
        let r = get(&s, "/v1/flows", "next_hop=10.2.0.2");
        assert_eq!(r.status, 200);
        let flows: FlowsResponse = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((flows.scanned, flows.matched), (2, 1));
        assert_eq!(flows.flows[0].client, IpAddr::from([172, 16, 0, 3]));
        let t: TableResponse =
            serde_json::from_slice(&get(&s, "/v1/table", "subnet=192.200.0.10").body).unwrap();
        assert_eq!(t.subnets.len(), 1);
        assert!(t.subnets[0].next_hops[0].best);
        let t: TableResponse =
            serde_json::from_slice(&get(&s, "/v1/table", "subnet=10.0.0.0/8").body).unwrap();
        assert!(t.subnets.is_empty());
        let sum: RouterSummary = serde_json::from_slice(&get(&s, "/v1/summary/", "").body).unwrap();
        assert_eq!(sum.name, "sys.lab");
        let c: CountersResponse =
            serde_json::from_slice(&get(&s, "/v1/counters", "").body).unwrap();
        assert_eq!(c.families.len(), 2);
        assert!(json(&get(&s, "/v1", ""))["endpoints"].is_array());
    }

    #[test]
    fn errors_are_json_with_a_code_message_and_hint() {
        let s = Fake::default();
        let r = get(&s, "/v1/flows", "vip=not-an-ip");
        assert_eq!(r.status, 400);
        let e: ApiError = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e.error, "bad_request");
        assert!(e.message.contains("vip"), "{e:?}");
        assert!(!e.hint.is_empty());
        let r = get(&s, "/v2/nothing", "");
        assert_eq!(r.status, 404);
        assert!(json(&r)["hint"].as_str().unwrap().contains("/v1/flows"));
        let r = get(&s, "/v1/peers", "x=1");
        assert_eq!(r.status, 400);
        let post = |path: &str, body: &[u8]| {
            handle(
                &s,
                &Request {
                    method: Method::Post,
                    path,
                    query: "",
                    body,
                },
            )
        };
        assert_eq!(post("/v1/flows", b"").status, 405);
        assert_eq!(post("/v1/modules/load", b"").status, 400);
        let big = vec![b'x'; MAX_BODY + 1];
        assert_eq!(post("/v1/modules/load", &big).status, 413);
        assert_eq!(post("/v1/modules/Bad Name/rollback", b"").status, 400);
        let r = post("/v1/modules/load", &[0xff, 0xfe]);
        assert_eq!(r.status, 422);
        assert_eq!(json(&r)["error"], "refused");
    }

    #[test]
    fn bindings_route_post_to_bind_and_delete_to_unbind() {
        let s = Fake::default();
        let req = |method, query: &'static str| {
            handle(
                &s,
                &Request {
                    method,
                    path: "/v1/bindings",
                    query,
                    body: &[],
                },
            )
        };
        let r = req(
            Method::Post,
            "module=least_load&subnet=192.200.1.0%2F24&role=policy",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let rep: ModuleOpReport = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(rep.op, "bind");
        assert_eq!(rep.name, "least_load");
        assert_eq!(rep.binding.as_deref(), Some("policy 192.200.1.0/24"));
        let r = req(Method::Delete, "subnet=192.200.1.0/24&role=cost");
        assert_eq!(r.status, 200);
        assert_eq!(json(&r)["op"], "unbind");
        // Each refusal says what the request lacks.
        for (method, query, says) in [
            (
                Method::Post,
                "subnet=192.200.1.0/24&role=policy",
                "names the module",
            ),
            (
                Method::Delete,
                "module=x&subnet=192.200.1.0/24&role=policy",
                "not the module",
            ),
            (Method::Post, "module=x&role=policy", "subnet"),
            (Method::Post, "module=x&subnet=192.200.1.0/24", "role"),
            (
                Method::Post,
                "module=Bad&subnet=192.200.1.0/24&role=policy",
                "module name",
            ),
            (Method::Post, "module=x&subnet=nope&role=policy", "subnet"),
            (
                Method::Post,
                "module=x&subnet=10.0.0.0/8&role=policy&x=1",
                "unknown",
            ),
        ] {
            let r = req(method, query);
            assert_eq!(r.status, 400, "{query}");
            assert!(
                json(&r)["message"].as_str().unwrap().contains(says),
                "{query}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        assert_eq!(req(Method::Get, "").status, 405);
        let r = req(Method::Delete, "env=acme&subnet=192.200.1.0/24&role=policy");
        assert_eq!(json(&r)["environment"], "acme");
        let r = req(Method::Delete, "env=Bad&subnet=192.200.1.0/24&role=policy");
        assert_eq!(r.status, 400);
        // What the CLI sends is what the server reads.
        let q = BindingQuery {
            env: Some("acme".into()),
            module: Some("a&b=c".into()),
            subnet: "2001:db8::/32".parse().unwrap(),
            role: "cost".into(),
        };
        assert_eq!(BindingQuery::parse(&q.to_query_string()).unwrap(), q);
    }

    #[test]
    fn module_operations_route_to_load_swap_rollback_and_remove() {
        let s = Fake::default();
        let req = |method, path: &'static str, body: &'static [u8]| {
            handle(
                &s,
                &Request {
                    method,
                    path,
                    query: "",
                    body,
                },
            )
        };
        assert_eq!(
            req(Method::Post, "/v1/modules/swap", b"p 1.0.0").status,
            404
        );
        let r = req(Method::Post, "/v1/modules/load", b"p 1.0.0");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            req(Method::Post, "/v1/modules/load", b"p 1.0.1").status,
            409
        );
        let r = req(Method::Post, "/v1/modules/swap", b"p 1.1.0");
        let rep: ModuleOpReport = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (rep.op.as_str(), rep.active.as_deref()),
            ("swap", Some("1.1.0"))
        );
        let r = req(Method::Post, "/v1/modules/p/rollback", b"");
        let rep: ModuleOpReport = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(rep.active.as_deref(), Some("1.0.0"));
        assert_eq!(req(Method::Get, "/v1/modules/p/rollback", b"").status, 405);
        assert_eq!(req(Method::Get, "/v1/modules/p", b"").status, 405);
        assert_eq!(req(Method::Delete, "/v1/modules/p", b"").status, 200);
        assert!(s.modules.lock().unwrap().is_empty());
    }

    #[test]
    fn metrics_endpoint_renders_prometheus_text() {
        let s = Fake::default();
        s.latency.record_ns(2_000);
        let r = get(&s, "/metrics", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, PROMETHEUS);
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains("pronto_engine_packets_total 9\n"));
        assert!(text.contains("pronto_new_flow_decision_seconds_count 1\n"));
    }
}
