//! Typed queries, parsed from URL query strings, and the bounded collector that
//! answers a flow query in one pass over a flow table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::response::{FlowRow, FlowsResponse, GroupCount, GroupCounts};

/// Flow rows returned when a query names no `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// Most flow rows one answer carries.
pub const MAX_PAGE: usize = 1000;
/// Most distinct keys counted per grouping (VIP, client, next hop); the rest are
/// summed into `other`.
pub const MAX_GROUPS: usize = 256;
/// Longest query string accepted.
pub const MAX_QUERY_LEN: usize = 1024;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A parameter this query does not take.
    #[error("unknown parameter {name:?} (this query takes: {expected})")]
    UnknownParameter {
        /// The parameter.
        name: String,
        /// The ones it takes.
        expected: &'static str,
    },
    /// A parameter's value does not parse.
    #[error("parameter {name}: {reason}")]
    BadValue {
        /// The parameter.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The query string is longer than [`MAX_QUERY_LEN`] or not UTF-8 after
    /// percent-decoding.
    #[error("query string unreadable: {reason}")]
    Unreadable {
        /// What is wrong.
        reason: &'static str,
    },
}

/// An address, or a prefix of addresses (`192.200.0.10` or `192.200.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrMatch {
    /// The address (host bits beyond `prefix_len` are ignored when matching).
    pub addr: IpAddr,
    /// Prefix length; 32 or 128 for one address.
    pub prefix_len: u8,
}

impl AddrMatch {
    /// Whether `ip` is inside (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), self.prefix_len),
            (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), self.prefix_len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let bits = usize::from(len).min(a.len() * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

impl FromStr for AddrMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("prefix length {l:?} is outside 0..={max}"))?,
        };
        Ok(Self { addr, prefix_len })
    }
}

impl std::fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix_len == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix_len)
        }
    }
}

/// `GET /v1/flows`: pinned flows, optionally only those to a VIP (or VIP
/// prefix), from a client (or prefix), or pinned to a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// Destination (VIP) filter.
    pub vip: Option<AddrMatch>,
    /// Source (client) filter.
    pub client: Option<AddrMatch>,
    /// Next-hop (tunnel endpoint) filter.
    pub next_hop: Option<AddrMatch>,
    /// Rows in the page, at most [`MAX_PAGE`].
    pub limit: usize,
}

impl Default for FlowQuery {
    fn default() -> Self {
        Self {
            vip: None,
            client: None,
            next_hop: None,
            limit: DEFAULT_PAGE,
        }
    }
}

/// Splits `a=b&c=d`, percent-decoding names and values (`+` is a space).
fn pairs(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(QueryError::Unreadable {
            reason: "longer than 1024 bytes",
        });
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, QueryError> {
    let bad = QueryError::Unreadable {
        reason: "bad percent-encoding",
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(bad.clone())?;
                let text = std::str::from_utf8(hex).map_err(|_| bad.clone())?;
                out.push(u8::from_str_radix(text, 16).map_err(|_| bad.clone())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::Unreadable {
        reason: "not UTF-8",
    })
}

fn addr_param(name: &'static str, v: &str) -> Result<AddrMatch, QueryError> {
    v.parse()
        .map_err(|reason| QueryError::BadValue { name, reason })
}

impl FlowQuery {
    /// Parameters this query takes.
    pub const PARAMETERS: &'static str = "vip, client, next_hop, limit";

    /// Parses `vip=...&client=...&next_hop=...&limit=N`; unknown parameters are
    /// refused so a typo does not silently return every flow.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for (k, v) in pairs(query)? {
            match k.as_str() {
                "vip" => q.vip = Some(addr_param("vip", &v)?),
                "client" => q.client = Some(addr_param("client", &v)?),
                "next_hop" => q.next_hop = Some(addr_param("next_hop", &v)?),
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= MAX_PAGE)
                        .ok_or_else(|| QueryError::BadValue {
                            name: "limit",
                            reason: format!("{v:?} is not a number in 0..={MAX_PAGE}"),
                        })?;
                }
                _ => {
                    return Err(QueryError::UnknownParameter {
                        name: k,
                        expected: Self::PARAMETERS,
                    });
                }
            }
        }
        Ok(q)
    }

    /// The query as a URL query string (the inverse of [`FlowQuery::parse`]).
    pub fn to_query_string(&self) -> String {
        let mut parts = Vec::new();
        // '/' is legal in a query string; ':' of IPv6 too.
        if let Some(v) = self.vip {
            parts.push(format!("vip={v}"));
        }
        if let Some(c) = self.client {
            parts.push(format!("client={c}"));
        }
        if let Some(n) = self.next_hop {
            parts.push(format!("next_hop={n}"));
        }
        parts.push(format!("limit={}", self.limit));
        parts.join("&")
    }

    /// Whether a flow passes every filter.
    pub fn matches(&self, f: &FlowSample<'_>) -> bool {
        self.vip.is_none_or(|m| m.contains(f.vip))
            && self.client.is_none_or(|m| m.contains(f.client))
            && self.next_hop.is_none_or(|m| m.contains(f.next_hop))
    }
}

/// `GET /v1/table`: the next-hop table, optionally of one virtual subnet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableQuery {
    /// Only the subnet equal to this prefix (or containing this address).
    pub subnet: Option<AddrMatch>,
}

impl TableQuery {
    /// Parameters this query takes.
    pub const PARAMETERS: &'static str = "subnet";

    /// Parses `subnet=192.200.0.0/24`.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for (k, v) in pairs(query)? {
            match k.as_str() {
                "subnet" => q.subnet = Some(addr_param("subnet", &v)?),
                _ => {
                    return Err(QueryError::UnknownParameter {
                        name: k,
                        expected: Self::PARAMETERS,
                    });
                }
            }
        }
        Ok(q)
    }

    /// Whether a subnet row (`prefix`) is selected: the same prefix, or one that
    /// contains the queried address.
    pub fn selects(&self, prefix: &AddrMatch) -> bool {
        self.subnet.is_none_or(|q| {
            q == *prefix || (prefix.prefix_len <= q.prefix_len && prefix.contains(q.addr))
        })
    }
}

/// `POST /v1/bindings?module=&subnet=&role=` (bind) and
/// `DELETE /v1/bindings?subnet=&role=` (unbind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingQuery {
    /// The environment (default: the operator's).
    pub env: Option<String>,
    /// The module (bind only).
    pub module: Option<String>,
    /// The subnet, as a prefix.
    pub subnet: AddrMatch,
    /// `policy` or `cost` (the router decides which roles it serves).
    pub role: String,
}

impl BindingQuery {
    /// Parameters this query takes.
    pub const PARAMETERS: &'static str = "env, module, subnet, role";

    /// Parses `module=NAME&subnet=PREFIX&role=ROLE`; `subnet` and `role` are
    /// required, `module` is left to the operation to require or refuse.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let (mut env, mut module, mut subnet, mut role) = (None, None, None, None);
        for (k, v) in pairs(query)? {
            match k.as_str() {
                "env" => env = Some(v),
                "module" => module = Some(v),
                "subnet" => subnet = Some(addr_param("subnet", &v)?),
                "role" => role = Some(v),
                _ => {
                    return Err(QueryError::UnknownParameter {
                        name: k,
                        expected: Self::PARAMETERS,
                    });
                }
            }
        }
        let missing = |name| QueryError::BadValue {
            name,
            reason: "required".to_owned(),
        };
        Ok(Self {
            env,
            module,
            subnet: subnet.ok_or_else(|| missing("subnet"))?,
            role: role.ok_or_else(|| missing("role"))?,
        })
    }

    /// The query string [`BindingQuery::parse`] reads back.
    pub fn to_query_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.env {
            parts.push(format!("env={}", percent_encode(e)));
        }
        if let Some(m) = &self.module {
            parts.push(format!("module={}", percent_encode(m)));
        }
        parts.push(format!("subnet={}", self.subnet));
        parts.push(format!("role={}", percent_encode(&self.role)));
        parts.join("&")
    }
}

/// `?env=NAME` of the module operations: which environment (default: the
/// operator's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvQuery {
    /// The environment.
    pub env: Option<String>,
}

impl EnvQuery {
    /// Parses `env=NAME` (or nothing).
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for (k, v) in pairs(query)? {
            match k.as_str() {
                "env" => q.env = Some(v),
                _ => {
                    return Err(QueryError::UnknownParameter {
                        name: k,
                        expected: "env",
                    });
                }
            }
        }
        Ok(q)
    }

    /// The query string [`EnvQuery::parse`] reads back (empty for none).
    pub fn to_query_string(&self) -> String {
        self.env
            .as_ref()
            .map_or_else(String::new, |e| format!("env={}", percent_encode(e)))
    }
}

/// Every byte but `[A-Za-z0-9._-]` as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Refuses any parameter (queries that take none).
pub fn no_parameters(query: &str) -> Result<(), QueryError> {
    match pairs(query)?.into_iter().next() {
        Some((k, _)) => Err(QueryError::UnknownParameter {
            name: k,
            expected: "none",
        }),
        None => Ok(()),
    }
}

/// One pinned flow as the daemon hands it to a [`FlowCollector`] (borrowed, so
/// flows outside the page cost no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSample<'a> {
    /// IP protocol number.
    pub proto: u8,
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// VIP.
    pub vip: IpAddr,
    /// VIP port.
    pub vip_port: u16,
    /// Where the flow is pinned.
    pub next_hop: IpAddr,
    /// TCP-aware state (`syn_seen`, `established`, ...).
    pub state: &'a str,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Milliseconds since the flow was pinned.
    pub age_ms: u64,
    /// Milliseconds since its last packet.
    pub idle_ms: u64,
}

impl FlowSample<'_> {
    fn row(&self) -> FlowRow {
        FlowRow {
            proto: self.proto,
            client: self.client,
            client_port: self.client_port,
            vip: self.vip,
            vip_port: self.vip_port,
            next_hop: self.next_hop,
            state: self.state.to_owned(),
            packets: self.packets,
            bytes: self.bytes,
            age_ms: self.age_ms,
            idle_ms: self.idle_ms,
        }
    }
}

/// Counts per key, at most [`MAX_GROUPS`] keys; the rest go to `other`.
#[derive(Debug, Default)]
struct Groups {
    counts: BTreeMap<IpAddr, u64>,
    other: u64,
}

impl Groups {
    fn add(&mut self, key: IpAddr) {
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
        } else if self.counts.len() < MAX_GROUPS {
            self.counts.insert(key, 1);
        } else {
            self.other += 1;
        }
    }

    /// Largest first, then by address.
    fn finish(self) -> GroupCounts {
        let mut groups: Vec<GroupCount> = self
            .counts
            .into_iter()
            .map(|(key, flows)| GroupCount { key, flows })
            .collect();
        groups.sort_by(|a, b| b.flows.cmp(&a.flows).then(a.key.cmp(&b.key)));
        GroupCounts {
            groups,
            other: self.other,
        }
    }
}

/// Answers a [`FlowQuery`] in one pass: counts every matching flow by VIP,
/// client and next hop, keeps the first `limit` as rows. Memory is bounded by
/// [`MAX_PAGE`] rows and [`MAX_GROUPS`] keys per grouping whatever the table size.
#[derive(Debug)]
pub struct FlowCollector {
    query: FlowQuery,
    scanned: u64,
    matched: u64,
    page: Vec<FlowRow>,
    by_vip: Groups,
    by_client: Groups,
    by_next_hop: Groups,
}

impl FlowCollector {
    /// A collector for `query` (its limit is capped at [`MAX_PAGE`]).
    pub fn new(mut query: FlowQuery) -> Self {
        query.limit = query.limit.min(MAX_PAGE);
        Self {
            query,
            scanned: 0,
            matched: 0,
            page: Vec::with_capacity(query.limit.min(DEFAULT_PAGE)),
            by_vip: Groups::default(),
            by_client: Groups::default(),
            by_next_hop: Groups::default(),
        }
    }

    /// Offers one flow of the table.
    pub fn offer(&mut self, f: &FlowSample<'_>) {
        self.scanned += 1;
        if !self.query.matches(f) {
            return;
        }
        self.matched += 1;
        self.by_vip.add(f.vip);
        self.by_client.add(f.client);
        self.by_next_hop.add(f.next_hop);
        if self.page.len() < self.query.limit {
            self.page.push(f.row());
        }
    }

    /// The answer; `capacity` is the flow table's size, for context.
    pub fn finish(self, capacity: u64) -> FlowsResponse {
        FlowsResponse {
            query: self.query,
            capacity,
            scanned: self.scanned,
            matched: self.matched,
            truncated: self.matched > self.page.len() as u64,
            by_vip: self.by_vip.finish(),
            by_client: self.by_client.finish(),
            by_next_hop: self.by_next_hop.finish(),
            flows: self.page,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn sample(client: [u8; 4], vip: [u8; 4], hop: [u8; 4]) -> FlowSample<'static> {
        FlowSample {
            proto: 6,
            client: IpAddr::from(client),
            client_port: 40_000,
            vip: IpAddr::from(vip),
            vip_port: 80,
            next_hop: IpAddr::from(hop),
            state: "established",
            packets: 3,
            bytes: 180,
            age_ms: 10,
            idle_ms: 1,
        }
    }

    #[test]
    fn flow_query_parses_filters_and_refuses_unknown_or_bad_parameters() {
        let q = FlowQuery::parse("vip=192.200.0.0%2F24&client=172.16.0.2&limit=5").unwrap();
        assert_eq!(q.vip.unwrap().prefix_len, 24);
        assert_eq!(q.client.unwrap().prefix_len, 32);
        assert_eq!(q.limit, 5);
        assert_eq!(FlowQuery::parse(&q.to_query_string()).unwrap(), q);
        assert_eq!(FlowQuery::parse("").unwrap(), FlowQuery::default());
        let e = FlowQuery::parse("vpi=1.2.3.4").unwrap_err();
        assert!(e.to_string().contains("vpi"), "{e}");
        assert!(matches!(
            FlowQuery::parse("limit=100000"),
            Err(QueryError::BadValue { name: "limit", .. })
        ));
        assert!(FlowQuery::parse("vip=1.2.3.4/33").is_err());
        assert!(FlowQuery::parse("vip=%zz").is_err());
        assert!(FlowQuery::parse(&"a".repeat(2000)).is_err());
        let v6 = FlowQuery::parse("next_hop=2001%3Adb8%3A%3A1").unwrap();
        assert_eq!(v6.next_hop.unwrap().to_string(), "2001:db8::1");
    }

    #[test]
    fn prefixes_match_only_inside_and_never_across_families() {
        let m: AddrMatch = "192.200.0.0/23".parse().unwrap();
        assert!(m.contains("192.200.1.255".parse().unwrap()));
        assert!(!m.contains("192.200.2.0".parse().unwrap()));
        assert!(!m.contains("::ffff:192.200.0.1".parse().unwrap()));
        let all: AddrMatch = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let odd: AddrMatch = "10.0.0.128/25".parse().unwrap();
        assert!(odd.contains("10.0.0.200".parse().unwrap()));
        assert!(!odd.contains("10.0.0.100".parse().unwrap()));
    }

    #[test]
    fn collector_counts_every_match_but_keeps_a_bounded_page_and_groups() {
        let q = FlowQuery {
            vip: Some("192.200.0.0/24".parse().unwrap()),
            limit: 10,
            ..FlowQuery::default()
        };
        let mut c = FlowCollector::new(q);
        for i in 0..2000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let hop = [10, 1, 1 + (i % 2) as u8, 2];
            c.offer(&sample([172, 16, a, b], [192, 200, 0, 10], hop));
            // Outside the VIP prefix: scanned, not matched.
            c.offer(&sample([172, 16, a, b], [192, 201, 0, 10], hop));
        }
        let r = c.finish(16_384);
        assert_eq!((r.scanned, r.matched), (4000, 2000));
        assert_eq!(r.flows.len(), 10);
        assert!(r.truncated);
        assert_eq!(r.by_vip.groups.len(), 1);
        assert_eq!(r.by_vip.groups[0].flows, 2000);
        let hops: Vec<u64> = r.by_next_hop.groups.iter().map(|g| g.flows).collect();
        assert_eq!(hops, vec![1000, 1000]);
        // 2000 distinct clients: MAX_GROUPS kept, the rest summed.
        assert_eq!(r.by_client.groups.len(), MAX_GROUPS);
        let kept: u64 = r.by_client.groups.iter().map(|g| g.flows).sum();
        assert_eq!(kept + r.by_client.other, 2000);
    }

    #[test]
    fn table_query_selects_the_prefix_or_the_one_containing_an_address() {
        let row: AddrMatch = "192.200.0.0/24".parse().unwrap();
        assert!(TableQuery::parse("").unwrap().selects(&row));
        assert!(
            TableQuery::parse("subnet=192.200.0.0/24")
                .unwrap()
                .selects(&row)
        );
        assert!(
            TableQuery::parse("subnet=192.200.0.10")
                .unwrap()
                .selects(&row)
        );
        assert!(
            !TableQuery::parse("subnet=192.200.0.0/16")
                .unwrap()
                .selects(&row)
        );
        assert!(
            !TableQuery::parse("subnet=192.201.0.10")
                .unwrap()
                .selects(&row)
        );
        assert!(no_parameters("x=1").is_err());
        assert!(no_parameters("").is_ok());
    }
}
