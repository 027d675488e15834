//! Validation of whole router and host files: values accepted, and errors
//! that name the field.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use router_core::policy::Level;
use signaling::NodeName;

use super::host::host_from_file;
use super::router::router_from_file;
use super::*;

const ROUTER: &str = r#"
level = "site"
name = "site-a.lab"
listen = "0.0.0.0:7800"
default_route_cost = 0.5

[tunnel]
local_v4 = "10.1.0.2"
mtu = 1600

[tls]
trust_anchors = ["ca.pem"]
cert = "peer.pem"
key = "/abs/peer.key"

[upstream]
address = "10.1.0.1:7800"
name = "sys.lab"

[[downstream]]
name = "a1.site-a.lab"
route_cost = 0.25

[[downstream]]
name = "a2.site-a.lab"
tunnel = "10.1.2.2"

[[static_subnets]]
subnet = "198.51.100.0/24"
next_hops = [{ address = "10.9.9.9", load = 0.1 }]

[table]
interval_ms = 200
hold_ms = 2000

[flows]
capacity_v4 = 16384

[policy]
name = "flow-hash"

[modules]
trust_anchors = ["ca.pem"]
crls = ["crl.pem"]
files = ["least_load.signed.wasm"]
subnet = "192.200.0.0/16"
policy = "least_load"
"#;

fn router(text: &str) -> Result<RouterConfig, ConfigError> {
    let p = Path::new("/etc/pronto/router.toml");
    router_from_file(p, parse_str(p, text)?)
}

fn host(text: &str) -> Result<HostDaemonConfig, ConfigError> {
    let p = Path::new("/etc/pronto/host.toml");
    host_from_file(p, parse_str(p, text)?)
}

fn err_text(r: Result<impl std::fmt::Debug, ConfigError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn shaping_validates_and_names_bad_fields() {
    let ok = format!(
        "{ROUTER}\n[shaping]\nlink = \"eth1\"\nrate_mbit = 100\ndefault_class = 16\n\
         [[shaping.class]]\nid = 16\nweight = 20\nsubnets = [\"192.200.0.0/24\"]\n\
         [[shaping.class]]\nid = 32\nweight = 80\n"
    );
    let c = router(&ok).unwrap();
    let sh = c.shaping.unwrap();
    assert_eq!(sh.link, "eth1");
    let shares = sh.tree.leaf_shares().unwrap();
    assert!((shares[&16] - 0.2).abs() < 1e-9 && (shares[&32] - 0.8).abs() < 1e-9);
    let zero_rate = ok.replace("rate_mbit = 100", "rate_mbit = 0");
    assert!(err_text(router(&zero_rate)).contains("shaping.rate_mbit"));
    let bad_subnet = ok.replace("192.200.0.0/24", "192.200.0.1/24");
    assert!(err_text(router(&bad_subnet)).contains("shaping.class[0].subnets[0]"));
    let zero_weight = ok.replace("weight = 80", "weight = 0");
    assert!(err_text(router(&zero_weight)).contains("shaping.class[1].weight"));
    let unknown_default = ok.replace("default_class = 16", "default_class = 99");
    assert!(err_text(router(&unknown_default)).contains("shaping"));
    assert!(router(ROUTER).unwrap().shaping.is_none());
}

#[test]
fn a_full_router_file_validates() {
    let c = router(ROUTER).unwrap();
    assert_eq!(c.level, Level::Site);
    assert_eq!(c.name.as_str(), "site-a.lab");
    assert_eq!(
        c.dataplane.engine.local_v4,
        Some(Ipv4Addr::new(10, 1, 0, 2))
    );
    assert_eq!(c.dataplane.engine.tunnel_mtu, 1600);
    assert_eq!(c.dataplane.engine.flows.capacity_v4, 16384);
    assert!(c.slr.shortcuts, "site level originates shortcuts");
    assert!(c.dataplane.new_flow_queue > 0);
    assert_eq!(c.slr.table.interval, Duration::from_millis(200));
    assert_eq!(c.policy, PolicyName::FlowHash);
    assert_eq!(c.upstream.as_ref().unwrap().name.as_str(), "sys.lab");
    let a1 = NodeName::new("a1.site-a.lab").unwrap();
    let a2 = NodeName::new("a2.site-a.lab").unwrap();
    assert_eq!(c.downstream[&a1].route_cost, 0.25);
    assert_eq!(c.downstream[&a2].route_cost, 0.5, "default_route_cost");
    assert_eq!(c.downstream[&a2].tunnel, Some("10.1.2.2".parse().unwrap()));
    assert_eq!(c.static_subnets[0].1[0].load, 0.1);
    assert_eq!(
        c.tls.trust_anchors,
        vec![PathBuf::from("/etc/pronto/ca.pem")]
    );
    assert_eq!(c.tls.key, PathBuf::from("/abs/peer.key"));
    let m = c.modules.unwrap();
    assert_eq!(
        m.files,
        vec![PathBuf::from("/etc/pronto/least_load.signed.wasm")]
    );
    assert_eq!(m.crls, vec![PathBuf::from("/etc/pronto/crl.pem")]);
    assert_eq!(m.policy.as_deref(), Some("least_load"));
    assert_eq!(m.cost, None);
    assert_eq!(m.state_dir, PathBuf::from("/etc/pronto/router.state"));
}

#[test]
fn router_errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("mtu = 1600", "mtu = 100", "tunnel.mtu"),
        ("local_v4 = \"10.1.0.2\"", "", "tunnel.local_v4"),
        ("name = \"site-a.lab\"", "name = \"not a name\"", "name"),
        (
            "route_cost = 0.25",
            "route_cost = -1.0",
            "downstream[0].route_cost",
        ),
        (
            "name = \"a2.site-a.lab\"",
            "name = \"a1.site-a.lab\"",
            "downstream[1].name",
        ),
        (
            "198.51.100.0/24",
            "198.51.100.1/24",
            "static_subnets[0].subnet",
        ),
        ("hold_ms = 2000", "hold_ms = 100", "table.hold_ms"),
        (
            "trust_anchors = [\"ca.pem\"]\ncrls",
            "trust_anchors = []\ncrls",
            "modules.trust_anchors",
        ),
        (
            "subnet = \"192.200.0.0/16\"\npolicy",
            "policy",
            "modules.subnet",
        ),
        (
            "crls = [\"crl.pem\"]",
            "crls = [\"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\", \"a\"]",
            "modules.crls",
        ),
        (
            "subnet = \"192.200.0.0/16\"",
            "subnet = \"192.200.0.0\"",
            "modules.subnet",
        ),
        (
            "trust_anchors = [\"ca.pem\"]",
            "trust_anchors = []",
            "tls.trust_anchors",
        ),
        ("level = \"site\"", "level = \"network\"", "upstream"),
        (
            "capacity_v4 = 16384",
            "capacity_v4 = 0",
            "flows.capacity_v4",
        ),
    ];
    for (from, to, field) in cases {
        assert!(ROUTER.contains(from), "{from}");
        let text = ROUTER.replacen(from, to, 1);
        let e = err_text(router(&text));
        assert!(e.contains(field), "{field}: {e}");
        assert!(e.contains("/etc/pronto/router.toml"), "{e}");
    }
}

#[test]
fn unknown_keys_and_bad_types_are_refused_with_their_name() {
    let e = err_text(router(&ROUTER.replace("[flows]", "[flows]\ncapacity = 3")));
    assert!(e.contains("capacity"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    let e = err_text(router(&ROUTER.replace("\"flow-hash\"", "\"random\"")));
    assert!(e.contains("random"), "{e}");
    let e = err_text(router(&ROUTER.replace("\"0.0.0.0:7800\"", "\"nowhere\"")));
    assert!(e.contains("listen") || e.contains("line 4"), "{e}");
    let e = err_text(router("level = \"site\"\n"));
    assert!(e.contains("missing field"), "{e}");
}

const HOST: &str = r#"
name = "a1.site-a.lab"
subnets = ["192.200.0.0/24"]

[site]
address = "10.1.1.1:7800"
name = "site-a.lab"

[tls]
trust_anchors = ["ca.pem"]
cert = "a1.pem"
key = "a1.key"

[load]
update_interval_ms = 200
capacity = 10
cpu_weight = 0.0
background_file = "load-a1"

[http_demo]
listen = "0.0.0.0:80"
"#;

#[test]
fn a_host_file_validates_and_errors_name_the_field() {
    let c = host(HOST).unwrap();
    assert_eq!(c.subnets.len(), 1);
    assert_eq!(c.load.capacity, 10);
    assert_eq!(
        c.load.background_file,
        Some(PathBuf::from("/etc/pronto/load-a1"))
    );
    let demo = c.http_demo.unwrap();
    assert_eq!(demo.body, "a1.site-a.lab");
    let e = err_text(host(&HOST.replace("192.200.0.0/24", "192.200.0.0/40")));
    assert!(e.contains("subnets[0]"), "{e}");
    let e = err_text(host(&HOST.replace("capacity = 10", "capacity = 0")));
    assert!(e.contains("load.capacity"), "{e}");
    let e = err_text(host(&HOST.replace("name = \"site-a.lab\"", "name = \"-\"")));
    assert!(e.contains("site.name"), "{e}");
    let e = err_text(host(&HOST.replace("[load]", "[load]\ncpu = 1")));
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn host_recovery_validates_and_errors_name_the_field() {
    assert!(host(HOST).unwrap().recovery.is_none());
    let ok = format!(
        "{HOST}\n[recovery]\nadvert_keys = \"advert.keys\"\nkey_id = 7\nstall_after_ms = 500\n\
         server_addresses = [\"10.1.2.2\", \"2001:db8::2\"]\n"
    );
    let r = host(&ok).unwrap().recovery.unwrap();
    assert_eq!(r.advert_keys, PathBuf::from("/etc/pronto/advert.keys"));
    assert_eq!(r.key_id, 7);
    assert_eq!(r.progress.stall_after, Duration::from_millis(500));
    assert_eq!(r.progress.readvertise_after, Duration::from_secs(1));
    assert_eq!(r.scan_interval, Duration::from_millis(200));
    assert_eq!(r.server_addresses.len(), 2);
    let off = format!("{HOST}\n[recovery]\nenabled = false\n");
    assert!(host(&off).unwrap().recovery.is_none());
    let e = err_text(host(&format!("{HOST}\n[recovery]\nkey_id = 1\n")));
    assert!(e.contains("recovery.advert_keys"), "{e}");
    let e = err_text(host(&ok.replace("key_id = 7\n", "")));
    assert!(e.contains("recovery.key_id"), "{e}");
    let e = err_text(host(
        &ok.replace("stall_after_ms = 500", "stall_after_ms = 0"),
    ));
    assert!(e.contains("recovery.stall_after_ms"), "{e}");
    let e = err_text(host(&ok.replace("2001:db8::2", "10.1.2.3")));
    assert!(e.contains("recovery.server_addresses"), "{e}");
    let e = err_text(host(&ok.replace("10.1.2.2", "0.0.0.0")));
    assert!(e.contains("recovery.server_addresses"), "{e}");
    let e = err_text(host(&format!("{ok}max_adverts_per_sec = 0\n")));
    assert!(e.contains("recovery.max_adverts_per_sec"), "{e}");
}

#[test]
fn management_defaults_to_the_tls_files_and_refuses_bad_values() {
    assert!(router(ROUTER).unwrap().management.is_none());
    let ok = format!("{ROUTER}\n[management]\nlisten = \"127.0.0.1:7900\"\n");
    let m = router(&ok).unwrap().management.unwrap();
    assert_eq!(m.listen, "127.0.0.1:7900".parse().unwrap());
    assert_eq!(m.key, PathBuf::from("/abs/peer.key"));
    assert_eq!(m.trust_anchors, vec![PathBuf::from("/etc/pronto/ca.pem")]);
    assert_eq!(m.max_connections, 64);
    let own = format!("{ok}cert = \"mgmt.pem\"\ntrust_anchors = [\"ops-ca.pem\"]\n");
    let m = router(&own).unwrap().management.unwrap();
    assert_eq!(m.cert, PathBuf::from("/etc/pronto/mgmt.pem"));
    assert_eq!(
        m.trust_anchors,
        vec![PathBuf::from("/etc/pronto/ops-ca.pem")]
    );
    let e = err_text(router(&format!("{ok}trust_anchors = []\n")));
    assert!(e.contains("management.trust_anchors"), "{e}");
    let e = err_text(router(&format!("{ok}max_connections = 0\n")));
    assert!(e.contains("management.max_connections"), "{e}");
    let e = err_text(router(&format!("{ok}port = 1\n")));
    assert!(e.contains("port"), "{e}");
}

#[test]
fn handshake_bounds_default_and_refuse_bad_values() {
    let d = signaling::HandshakeLimits::default();
    assert_eq!(
        (d.timeout, d.max_pending, d.max_pending_per_source),
        (Duration::from_secs(2), 256, 8)
    );
    assert_eq!(router(ROUTER).unwrap().handshakes, d);
    let ok = format!("{ROUTER}\n[management]\nlisten = \"127.0.0.1:7900\"\n");
    let m = router(&ok).unwrap().management.unwrap();
    assert_eq!(m.handshakes, d);
    assert_eq!(m.request_timeout, Duration::from_secs(30));
    let own = format!(
        "{ok}\n[management.handshakes]\ntimeout_ms = 500\nmax_pending = 16\nmax_pending_per_source = 2\n"
    );
    let m = router(&own).unwrap().management.unwrap();
    assert_eq!(
        (
            m.handshakes.timeout.as_millis(),
            m.handshakes.max_pending,
            m.handshakes.max_pending_per_source
        ),
        (500, 16, 2)
    );
    let sig = format!("{ROUTER}\n[handshakes]\ntimeout_ms = 750\n");
    assert_eq!(router(&sig).unwrap().handshakes.timeout.as_millis(), 750);
    let e = err_text(router(&format!(
        "{ROUTER}\n[handshakes]\nmax_pending = 0\n"
    )));
    assert!(e.contains("handshakes.max_pending"), "{e}");
    let e = err_text(router(&format!(
        "{ROUTER}\n[handshakes]\nmax_pending = 4\nmax_pending_per_source = 5\n"
    )));
    assert!(e.contains("handshakes.max_pending_per_source"), "{e}");
    let e = err_text(router(&format!(
        "{ok}\n[management.handshakes]\ntimeout_ms = 0\n"
    )));
    assert!(e.contains("management.handshakes.timeout_ms"), "{e}");
}

#[test]
fn management_role_lists_are_dns_names() {
    let ok = format!("{ROUTER}\n[management]\nlisten = \"127.0.0.1:7900\"\n");
    let m = router(&ok).unwrap().management.unwrap();
    assert!(
        m.operators.is_empty() && m.viewers.is_empty(),
        "nobody by default"
    );
    let lists = format!("{ok}operators = [\"Alice.Example\"]\nviewers = [\"grafana.example\"]\n");
    let m = router(&lists).unwrap().management.unwrap();
    assert_eq!(m.operators, vec!["alice.example".to_owned()]);
    assert_eq!(m.viewers, vec!["grafana.example".to_owned()]);
    let e = err_text(router(&format!("{ok}viewers = [\"not a name\"]\n")));
    assert!(
        e.contains("management.viewers") && e.contains("issue-peer"),
        "{e}"
    );
    let e = err_text(router(&format!("{ok}operators = [\"\"]\n")));
    assert!(e.contains("management.operators"), "{e}");
}

#[test]
fn tunnel_sources_are_the_upper_level_and_accept_from_and_bad_ones_are_named() {
    let admitted = |cfg: &RouterConfig| -> Vec<String> {
        cfg.tunnel_sources
            .prefixes()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    // Default: the upper level at its signalling address.
    let cfg = router(ROUTER).unwrap();
    assert_eq!(admitted(&cfg), ["10.1.0.1/32"]);
    // Its tunnel endpoint when named, and accept_from (address or prefix).
    let text = ROUTER
        .replace(
            "name = \"sys.lab\"\n",
            "name = \"sys.lab\"\ntunnel = \"10.0.0.1\"\n",
        )
        .replace(
            "mtu = 1600\n",
            "mtu = 1600\naccept_from = [\"10.0.0.2\", \"10.8.0.0/16\"]\n",
        );
    let cfg = router(&text).unwrap();
    assert_eq!(
        admitted(&cfg),
        ["10.0.0.2/32", "10.8.0.0/16", "10.0.0.1/32"]
    );
    let bad = ROUTER.replace(
        "mtu = 1600\n",
        "mtu = 1600\naccept_from = [\"10.0.0.0/33\"]\n",
    );
    assert!(
        err_text(router(&bad)).contains("tunnel.accept_from[0]"),
        "{}",
        err_text(router(&bad))
    );
}

#[test]
fn engine_threads_and_tun_offload_are_read_and_bounded() {
    let c = router(ROUTER).unwrap();
    assert_eq!(c.dataplane.engine_threads, 1);
    assert!(c.dataplane.tun_offload);
    let two = ROUTER.replace(
        "default_route_cost = 0.5",
        "default_route_cost = 0.5\nengine_threads = 2",
    );
    let two = two.replace("mtu = 1600", "mtu = 1600\noffload = false");
    let c = router(&two).unwrap();
    assert_eq!(c.dataplane.engine_threads, 2);
    assert!(!c.dataplane.tun_offload);
    for bad in ["0", "17"] {
        let t = ROUTER.replace(
            "default_route_cost = 0.5",
            &format!("default_route_cost = 0.5\nengine_threads = {bad}"),
        );
        assert!(err_text(router(&t)).contains("engine_threads"), "{bad}");
    }
}

#[test]
fn tenant_environments_parse_and_may_not_share_subnets() {
    let env = |name: &str, subnet: &str| {
        format!(
            "\n[[environment]]\nname = \"{name}\"\ntrust_anchors = [\"{name}/ca.pem\"]\nsubnets = [\"{subnet}\"]\ncpu_weight = 3\n"
        )
    };
    let text = format!(
        "{ROUTER}{}{}",
        env("acme", "192.200.1.0/26"),
        env("beta", "192.200.1.64/26")
    );
    let c = router(&text).unwrap();
    assert_eq!(c.tenants.len(), 2);
    let acme = &c.tenants[0];
    assert_eq!(acme.name, "acme");
    assert_eq!(
        acme.trust_anchors,
        vec![PathBuf::from("/etc/pronto/acme/ca.pem")]
    );
    assert_eq!(acme.cpu_weight, 3);
    assert_eq!(
        acme.state_dir,
        PathBuf::from("/etc/pronto/router.state/env-acme")
    );
    for (extra, field, says) in [
        (
            env("beta", "192.200.1.0/25"),
            "environment[1].subnets",
            "overlaps",
        ),
        (env("acme", "10.0.0.0/8"), "environment[1].name", "unique"),
        (
            env("operator", "10.0.0.0/8"),
            "environment[1].name",
            "operator",
        ),
        (
            env("Bad Name", "10.0.0.0/8"),
            "environment[1].name",
            "a-z0-9",
        ),
        (
            env("beta", "10.0.0.0/8").replace("cpu_weight = 3", "cpu_weight = 0"),
            "environment[1].cpu_weight",
            "outside",
        ),
        (
            env("beta", "10.0.0.0/8").replace("subnets = [\"10.0.0.0/8\"]", "subnets = []"),
            "environment[1].subnets",
            "name the subnets",
        ),
    ] {
        let text = format!("{ROUTER}{}{extra}", env("acme", "192.200.1.0/26"));
        let e = err_text(router(&text));
        assert!(e.contains(field) && e.contains(says), "{field}: {e}");
    }
}

#[test]
fn the_scheduler_section_names_its_classes_and_a_module_needs_it() {
    let section = "\n[scheduler]\nlink = \"eth1\"\nrate_mbit = 100\ndefault_class = 1\nrank = \"strict_priority\"\n\n\
                   [[scheduler.class]]\nid = 1\nweight = 20\nsources = [\"10.77.0.1/32\"]\n\n\
                   [[scheduler.class]]\nid = 2\nweight = 80\npriority = 1\n";
    let c = router(&format!("{ROUTER}{section}")).unwrap();
    let s = c.scheduler.unwrap();
    assert_eq!((s.link.as_str(), s.rate_bps), ("eth1", 100_000_000));
    assert_eq!(s.rank, BuiltinRank::StrictPriority);
    assert_eq!(s.classes.len(), 2);
    assert_eq!(s.classes[1].priority, 1);
    assert_eq!(s.classes[0].sources[0].to_string(), "10.77.0.1/32");
    for (from, to, field) in [
        (
            "default_class = 1",
            "default_class = 9",
            "scheduler.default_class",
        ),
        ("rate_mbit = 100", "rate_mbit = 0", "scheduler.rate_mbit"),
        ("weight = 80", "weight = 0", "scheduler.class[1].weight"),
        ("id = 2", "id = 1", "scheduler.class[1].id"),
        (
            "10.77.0.1/32",
            "10.77.0.1/8",
            "scheduler.class[0].sources[0]",
        ),
    ] {
        let e = err_text(router(&format!(
            "{ROUTER}{}",
            section.replacen(from, to, 1)
        )));
        assert!(e.contains(field), "{field}: {e}");
    }
    // A scheduler module without the stage it would rank.
    let text = ROUTER.replace(
        "policy = \"least_load\"",
        "policy = \"least_load\"\nscheduler = \"sfq\"",
    );
    let e = err_text(router(&text));
    assert!(
        e.contains("modules.scheduler") && e.contains("[scheduler]"),
        "{e}"
    );
}
