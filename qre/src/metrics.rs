//! Counters, gauges and bounded latency histograms, and their Prometheus text
//! exposition (format 0.0.4).
//!
//! [`Histogram`] has fixed log-scale buckets (powers of two of nanoseconds, 64 ns
//! to about 0.5 s, plus +Inf) held in atomics: recording is three relaxed atomic
//! adds and no allocation, so the packet thread can record into it, and its size
//! never grows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// log2 of the first bucket's upper bound in ns (64 ns).
const MIN_EXP: u32 = 6;
/// Finite buckets: upper bounds 2^6 .. 2^29 ns (64 ns .. ~0.54 s).
pub const FINITE_BUCKETS: usize = 24;

/// A latency histogram with fixed log2 buckets, safe to record from any thread.
#[derive(Debug)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last is the +Inf bucket.
    buckets: [AtomicU64; FINITE_BUCKETS + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// The bucket of `ns`: the first whose upper bound is at least `ns`.
    fn bucket(ns: u64) -> usize {
        // ceil(log2(ns)) for ns >= 2; 0 and 1 land in the first bucket.
        let exp = u64::BITS - ns.saturating_sub(1).leading_zeros();
        (exp.saturating_sub(MIN_EXP) as usize).min(FINITE_BUCKETS)
    }

    /// Records one observation of `ns` nanoseconds.
    pub fn record_ns(&self, ns: u64) {
        self.buckets[Self::bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration.
    pub fn record(&self, d: std::time::Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Upper bound of finite bucket `i`, in seconds.
    pub fn upper_bound_seconds(i: usize) -> f64 {
        (1u64 << (MIN_EXP as usize + i)) as f64 * 1e-9
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            upper_bounds: (0..FINITE_BUCKETS).map(Self::upper_bound_seconds).collect(),
            // The count is the sum of the buckets read, so the +Inf bucket equals
            // it even while other threads record.
            count: counts.iter().sum(),
            counts,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Finite bucket upper bounds, seconds, ascending.
    pub upper_bounds: Vec<f64>,
    /// Per-bucket counts (not cumulative); one more than `upper_bounds` (+Inf).
    pub counts: Vec<u64>,
    /// Sum of observations, seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// Upper bound (seconds) of the bucket holding quantile `q` (0..=1); `None`
    /// when empty, `+inf` when it lies in the overflow bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.upper_bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// Mean in seconds, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Monotonic count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A latency distribution.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricValue {
    /// A counter.
    Counter(u64),
    /// A gauge.
    Gauge(f64),
    /// A histogram.
    Histogram(HistogramSnapshot),
}

/// One labelled sample of a family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Label pairs, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: MetricValue,
}

/// A metric family: a name, its help text, its kind and its samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricFamily {
    /// Name (`[a-zA-Z_:][a-zA-Z0-9_:]*`; other characters become `_`).
    pub name: String,
    /// One line of help.
    pub help: String,
    /// Type.
    pub kind: MetricKind,
    /// Samples.
    pub samples: Vec<Sample>,
}

/// Collects families by name (samples of one name are merged).
#[derive(Debug, Default)]
pub struct MetricsBuilder {
    families: BTreeMap<String, MetricFamily>,
}

/// A valid metric or label name from `raw` (invalid characters become `_`).
pub fn sanitize_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

impl MetricsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricKind) -> &mut MetricFamily {
        let name = sanitize_name(name);
        self.families
            .entry(name.clone())
            .or_insert_with(|| MetricFamily {
                name,
                help: help.to_owned(),
                kind,
                samples: Vec::new(),
            })
    }

    /// Adds a sample; a family already named with another kind keeps its kind
    /// and the sample is dropped (a programming error, logged).
    pub fn sample(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: MetricValue,
    ) -> &mut Self {
        let kind = match &value {
            MetricValue::Counter(_) => MetricKind::Counter,
            MetricValue::Gauge(_) => MetricKind::Gauge,
            MetricValue::Histogram(_) => MetricKind::Histogram,
        };
        let f = self.family(name, help, kind);
        if f.kind != kind {
            tracing::warn!(metric = %f.name, "sample of another kind dropped");
            return self;
        }
        f.samples.push(Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (sanitize_name(k), (*v).to_owned()))
                .collect(),
            value,
        });
        self
    }

    /// Adds a counter sample.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        v: u64,
    ) -> &mut Self {
        self.sample(name, help, labels, MetricValue::Counter(v))
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) -> &mut Self {
        self.sample(name, help, labels, MetricValue::Gauge(v))
    }

    /// Adds a histogram sample.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: HistogramSnapshot,
    ) -> &mut Self {
        self.sample(name, help, labels, MetricValue::Histogram(h))
    }

    /// Adds every number under `value` (a serialised counters struct): a
    /// number at path `a.b` becomes `{prefix}_a_b_total` (a counter) unless its
    /// last path element is in `gauges`; booleans become 0/1 gauges; arrays of
    /// numbers become one family labelled `index`; strings are skipped. This is
    /// how counters added to a snapshot struct reach the metrics without a
    /// second list to keep in step.
    pub fn flatten(
        &mut self,
        prefix: &str,
        value: &serde_json::Value,
        gauges: &[&str],
    ) -> &mut Self {
        self.flatten_at(prefix, "", value, gauges);
        self
    }

    fn flatten_at(&mut self, name: &str, last: &str, value: &serde_json::Value, gauges: &[&str]) {
        use serde_json::Value;
        let help = format!("{} ({})", last.replace('_', " "), name);
        match value {
            Value::Number(n) if gauges.contains(&last) => {
                self.gauge(name, &help, &[], n.as_f64().unwrap_or(f64::NAN));
            }
            Value::Number(n) => match n.as_u64() {
                Some(v) => {
                    self.counter(&format!("{name}_total"), &help, &[], v);
                }
                None => {
                    self.gauge(name, &help, &[], n.as_f64().unwrap_or(f64::NAN));
                }
            },
            Value::Bool(b) => {
                self.gauge(name, &help, &[], if *b { 1.0 } else { 0.0 });
            }
            Value::Object(map) => {
                for (k, v) in map {
                    self.flatten_at(&format!("{name}_{k}"), k, v, gauges);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    if let Some(n) = v.as_u64() {
                        let idx = i.to_string();
                        self.counter(&format!("{name}_total"), &help, &[("index", &idx)], n);
                    }
                }
            }
            Value::String(_) | Value::Null => {}
        }
    }

    /// The families, by name.
    pub fn finish(self) -> Vec<MetricFamily> {
        self.families.into_values().collect()
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn labels_text(labels: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", sanitize_name(k), escape_label(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape_label(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Renders families as Prometheus text exposition format 0.0.4.
pub fn render_prometheus(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for f in families {
        let name = sanitize_name(&f.name);
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
        for s in &f.samples {
            match &s.value {
                MetricValue::Counter(v) => {
                    let _ = writeln!(out, "{name}{} {v}", labels_text(&s.labels, None));
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "{name}{} {}", labels_text(&s.labels, None), number(*v));
                }
                MetricValue::Histogram(h) => {
                    let mut cumulative = 0u64;
                    for (i, c) in h.counts.iter().enumerate() {
                        cumulative += c;
                        let le = h
                            .upper_bounds
                            .get(i)
                            .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
                        let l = labels_text(&s.labels, Some(("le", &le)));
                        let _ = writeln!(out, "{name}_bucket{l} {cumulative}");
                    }
                    let l = labels_text(&s.labels, None);
                    let _ = writeln!(out, "{name}_sum{l} {}", number(h.sum));
                    let _ = writeln!(out, "{name}_count{l} {cumulative}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn buckets_are_log2_of_nanoseconds_and_bounded() {
        assert_eq!(Histogram::bucket(0), 0);
        assert_eq!(Histogram::bucket(64), 0);
        assert_eq!(Histogram::bucket(65), 1);
        assert_eq!(Histogram::bucket(128), 1);
        assert_eq!(Histogram::bucket(1_000), 4); // <= 1024 ns
        assert_eq!(Histogram::bucket(1 << 29), FINITE_BUCKETS - 1);
        assert_eq!(Histogram::bucket((1 << 29) + 1), FINITE_BUCKETS);
        assert_eq!(Histogram::bucket(u64::MAX), FINITE_BUCKETS);
        let h = Histogram::new();
        for ns in [50, 100, 100, 3_000, 10_000_000_000] {
            h.record_ns(ns);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.counts.len(), FINITE_BUCKETS + 1);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 2);
        assert_eq!(s.counts[FINITE_BUCKETS], 1);
        assert!((s.sum - 10.000_003_25).abs() < 1e-9, "{}", s.sum);
        // The median (3rd of 5) is in the 128 ns bucket.
        assert_eq!(s.quantile_bound(0.5), Some(128e-9));
        assert_eq!(s.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(Histogram::new().snapshot().quantile_bound(0.5), None);
    }

    #[test]
    fn prometheus_text_has_help_type_escaped_labels_and_cumulative_buckets() {
        let h = Histogram::new();
        h.record_ns(100);
        h.record_ns(5_000);
        let mut b = MetricsBuilder::new();
        b.counter(
            "pronto_engine_packets_total",
            "Packets.\nAll of them",
            &[],
            42,
        )
        .counter(
            "pronto_engine_drops_total",
            "Drops by reason",
            &[("reason", "bad \"quote\" \\ x")],
            3,
        )
        .gauge("pronto-flows", "Pinned flows", &[], 7.5)
        .histogram(
            "pronto_lat_seconds",
            "Latency",
            &[("what", "new flow")],
            h.snapshot(),
        );
        let text = render_prometheus(&b.finish());
        assert!(text.contains("# HELP pronto_engine_packets_total Packets.\\nAll of them\n"));
        assert!(text.contains(
            "# TYPE pronto_engine_packets_total counter\npronto_engine_packets_total 42\n"
        ));
        assert!(text.contains(r#"pronto_engine_drops_total{reason="bad \"quote\" \\ x"} 3"#));
        assert!(text.contains("pronto_flows 7.5\n"), "{text}");
        assert!(
            text.contains("pronto_lat_seconds_bucket{what=\"new flow\",le=\"0.000000128\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pronto_lat_seconds_bucket{what=\"new flow\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("pronto_lat_seconds_count{what=\"new flow\"} 2\n"));
        // Every sample line is `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn rendered_text_parses_with_an_independent_prometheus_parser() {
        let h = Histogram::new();
        for ns in [90, 700, 700, 40_000, 2_000_000_000] {
            h.record_ns(ns);
        }
        let mut b = MetricsBuilder::new();
        b.counter("a_total", "A counter", &[("reason", "x\"y")], 5)
            .gauge("b", "A gauge", &[], -1.5)
            .gauge("c", "Not a number", &[], f64::NAN)
            .histogram(
                "d_seconds",
                "A histogram",
                &[("call", "select")],
                h.snapshot(),
            );
        let text = render_prometheus(&b.finish());
        let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let find = |n: &str| s.samples.iter().find(|x| x.metric == n).unwrap();
        assert!(matches!(find("a_total").value, prometheus_parse::Value::Counter(v) if v == 5.0));
        // prometheus-parse keeps label values as escaped in the text.
        assert_eq!(find("a_total").labels.get("reason"), Some("x\\\"y"));
        assert!(matches!(find("b").value, prometheus_parse::Value::Gauge(v) if v == -1.5));
        match &find("d_seconds").value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert_eq!(buckets.len(), FINITE_BUCKETS + 1);
                assert_eq!(buckets.last().unwrap().count, 5.0);
                let le_1us = buckets
                    .iter()
                    .find(|b| (b.less_than - 1.024e-6).abs() < 1e-12);
                assert_eq!(le_1us.unwrap().count, 3.0);
            }
            other => panic!("not a histogram: {other:?}"),
        }
        assert_eq!(s.docs.get("b").map(String::as_str), Some("A gauge"));
    }

    #[test]
    fn flatten_turns_a_snapshot_struct_into_counters_gauges_and_indexed_families() {
        let v = serde_json::json!({
            "registrations": 3,
            "downstream_sessions": 2,
            "upstream_registered": true,
            "lag": [5, 1],
            "name": "skipped",
            "nested": {"x": 1}
        });
        let mut b = MetricsBuilder::new();
        b.flatten("pronto_control", &v, &["downstream_sessions"]);
        let fams = b.finish();
        let get = |n: &str| fams.iter().find(|f| f.name == n).unwrap();
        assert_eq!(
            get("pronto_control_registrations_total").kind,
            MetricKind::Counter
        );
        assert_eq!(
            get("pronto_control_downstream_sessions").kind,
            MetricKind::Gauge
        );
        assert_eq!(
            get("pronto_control_upstream_registered").samples[0].value,
            MetricValue::Gauge(1.0)
        );
        assert_eq!(get("pronto_control_lag_total").samples.len(), 2);
        assert!(
            fams.iter()
                .any(|f| f.name == "pronto_control_nested_x_total")
        );
        assert!(!fams.iter().any(|f| f.name.contains("name")));
    }

    #[test]
    fn names_are_sanitised_and_kinds_do_not_mix() {
        assert_eq!(sanitize_name("9lives-x.y"), "_9lives_x_y");
        let mut b = MetricsBuilder::new();
        b.counter("m", "h", &[], 1).gauge("m", "h", &[], 2.0);
        let f = b.finish();
        assert_eq!(f[0].samples.len(), 1);
    }
}
