//! The second half of the operators' test, on the same lab: modules bound to
//! two subnets at runtime and kept across a restart, then tenant environments
//! (their subnets, names and CRLs).

use std::net::Ipv4Addr;
use std::path::Path;

use router_core::linux::in_netns;

use super::{OpsLab, VIP, get_to, pronto, sign_for};

/// Two subnets of one router under two policy modules, bound at runtime; a
/// restart keeps the runtime load and both bindings; unbind returns the
/// subnet to the built-in.
pub(super) fn bindings_govern_their_subnets_at_once_and_survive_a_restart(
    mut lab: OpsLab,
    hash: &Path,
) -> OpsLab {
    const VIP2: Ipv4Addr = Ipv4Addr::new(192, 200, 1, 10);
    let calls = |lab: &OpsLab, name: &str| lab.module(name)["calls"].as_u64().unwrap();
    // `n` new connections to `vip`, each answered.
    let connect = |lab: &OpsLab, vip: Ipv4Addr, n: u32| {
        in_netns(&lab.ns("client"), || {
            for i in 0..n {
                get_to(vip).unwrap_or_else(|e| panic!("GET {vip} #{i}: {e}"));
            }
        })
        .unwrap();
    };
    lab.wait_sites(&["192.200.0.0/24", "192.200.1.0/24"]);
    let out = lab.ok(&["module", "load"], &[hash.to_str().unwrap()]);
    assert!(out.contains("loaded consistent_hash 1.0.0"), "{out}");
    // Loaded, not bound: it governs nothing yet.
    assert_eq!(
        lab.module("consistent_hash")["bound"],
        serde_json::json!([])
    );
    connect(&lab, VIP2, 5);
    assert_eq!(calls(&lab, "consistent_hash"), 0);

    let out = lab.ok(
        &["module", "bind"],
        &[
            "consistent_hash",
            "--subnet",
            "192.200.1.0/24",
            "--role",
            "policy",
        ],
    );
    eprintln!("{out}");
    assert!(
        out.contains("bound consistent_hash 1.0.0 to policy 192.200.1.0/24"),
        "{out}"
    );
    // Each subnet's new connections go to its own module, from the next one on.
    let (hash0, least0) = (calls(&lab, "consistent_hash"), calls(&lab, "least_load"));
    connect(&lab, VIP2, 20);
    let (hash1, least1) = (calls(&lab, "consistent_hash"), calls(&lab, "least_load"));
    assert!(
        (20..25).contains(&(hash1 - hash0)),
        "VIP2's 20 connections: consistent_hash {hash0} -> {hash1}"
    );
    assert_eq!(least1, least0, "least_load placed none of VIP2's");
    connect(&lab, VIP, 20);
    assert_eq!(calls(&lab, "consistent_hash"), hash1, "nor it VIP's");
    assert!(calls(&lab, "least_load") >= least1 + 20);
    let table = lab.ok(&["query", "table"], &[]);
    eprintln!("{table}");
    // A binding naming a module that cannot serve it is refused and changes nothing.
    let out = lab.run(
        &["module", "bind"],
        &[
            "consistent_hash",
            "--subnet",
            "192.200.1.0/24",
            "--role",
            "cost",
        ],
        true,
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("cannot serve the cost role"), "{e}");

    // A restart keeps the runtime-loaded module and both bindings.
    lab.restart_sys();
    lab.wait_sites(&["192.200.0.0/24", "192.200.1.0/24"]);
    let hash_row = lab.module("consistent_hash");
    assert_eq!(hash_row["active"]["version"], "1.0.0");
    assert_eq!(
        hash_row["bound"],
        serde_json::json!(["policy 192.200.1.0/24"])
    );
    assert_eq!(
        lab.least_load()["bound"],
        serde_json::json!(["policy 192.200.0.0/24"])
    );
    connect(&lab, VIP2, 20);
    let after = calls(&lab, "consistent_hash");
    assert!((20..25).contains(&after), "after the restart: {after}");
    eprintln!("{}", lab.ok(&["query", "modules"], &[]));

    // Unbind: the built-in places VIP2's connections again.
    let out = lab.ok(
        &["module", "unbind"],
        &["--subnet", "192.200.1.0/24", "--role", "policy"],
    );
    assert!(out.contains("unbound consistent_hash"), "{out}");
    connect(&lab, VIP2, 10);
    assert_eq!(calls(&lab, "consistent_hash"), after);
    let out = lab.run(
        &["module", "unbind"],
        &["--subnet", "192.200.1.0/24", "--role", "policy"],
        true,
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("no module is bound"),
        "{e}"
    );
    lab
}

/// Three tenant environments beside the operator's, each with its own CA
/// and a quarter of 192.200.1.0/24: a tenant's module governs its subnet, and
/// is refused (typed error, counter) outside it, over another tenant's module
/// of the same name, and when its signer is revoked.
pub(super) fn tenants_stay_within_their_subnets_and_names(lab: &mut OpsLab) {
    let work = lab.dir.join("tenants");
    let tenants = [
        ("acme", "192.200.1.0/26"),
        ("beta", "192.200.1.64/26"),
        ("gamma", "192.200.1.128/26"),
    ];
    let mut conf = String::new();
    for (name, subnet) in tenants {
        let dir = work.join(name);
        let o = pronto()
            .args(["ca", "init", "--dir"])
            .arg(&dir)
            .args(["--name", &format!("{name} CA"), "--tenant-subnet", subnet])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let crls = if name == "gamma" {
            let o = pronto()
                .args(["ca", "revoke", "--dir"])
                .arg(&dir)
                .arg("--cert")
                .arg(dir.join("signer.pem"))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            format!("crls = [{:?}]\n", dir.join("crl.pem"))
        } else {
            String::new()
        };
        conf.push_str(&format!(
            "\n[[environment]]\nname = \"{name}\"\ntrust_anchors = [{:?}]\n{crls}subnets = [\"{subnet}\"]\n",
            dir.join("ca.pem")
        ));
    }
    let sys_conf = lab.dir.join("conf").join("sys.toml");
    let mut text = std::fs::read_to_string(&sys_conf).unwrap();
    text.push_str(&conf);
    std::fs::write(&sys_conf, text).unwrap();
    lab.restart_sys();
    lab.wait_sites(&["192.200.1.0/24"]);
    let env_row = |lab: &OpsLab, env: &str| -> serde_json::Value {
        let m = lab.json("modules");
        m["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == env)
            .cloned()
            .unwrap_or_else(|| panic!("no environment {env}: {m}"))
    };
    let refused = |lab: &OpsLab, cmd: &[&str], extra: &[&str], says: &str| {
        let out = lab.run(cmd, extra, true);
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{cmd:?} {extra:?}: {e}");
        assert!(!out.status.success() && e.contains(says), "{e}");
    };
    assert_eq!(env_row(lab, "beta")["scope"], "tenant 192.200.1.64/26");

    // acme's least_load governs acme's quarter: VIP2 (192.200.1.10) is in it.
    let acme_ll = work.join("acme-least_load.wasm");
    sign_for(
        &work.join("acme"),
        "least_load",
        "1.0.0",
        &["192.200.1.0/26"],
        &acme_ll,
    );
    lab.ok(
        &["module", "load", "--env", "acme"],
        &[acme_ll.to_str().unwrap()],
    );
    refused(
        lab,
        &["module", "bind", "--env", "acme"],
        &[
            "least_load",
            "--subnet",
            "192.200.1.64/26",
            "--role",
            "policy",
        ],
        "outside",
    );
    assert_eq!(env_row(lab, "acme")["bind_refused"], 1);
    let out = lab.ok(
        &["module", "bind", "--env", "acme"],
        &[
            "least_load",
            "--subnet",
            "192.200.1.0/26",
            "--role",
            "policy",
        ],
    );
    assert!(out.contains("in environment acme"), "{out}");
    in_netns(&lab.ns("client"), || {
        for _ in 0..10 {
            get_to(Ipv4Addr::new(192, 200, 1, 10)).unwrap();
        }
    })
    .unwrap();
    let acme = env_row(lab, "acme");
    assert!(
        acme["modules"][0]["calls"].as_u64().unwrap() >= 10,
        "acme's module placed VIP2's connections: {acme}"
    );

    // beta's module of the same name is beta's own; beta cannot reach acme's.
    let beta_ll = work.join("beta-least_load.wasm");
    sign_for(
        &work.join("beta"),
        "least_load",
        "2.0.0",
        &["192.200.1.64/26"],
        &beta_ll,
    );
    lab.ok(
        &["module", "load", "--env", "beta"],
        &[beta_ll.to_str().unwrap()],
    );
    refused(
        lab,
        &["module", "swap", "--env", "acme"],
        &[beta_ll.to_str().unwrap()],
        "not trusted",
    );
    refused(
        lab,
        &["module", "bind", "--env", "beta"],
        &[
            "least_load",
            "--subnet",
            "192.200.1.0/26",
            "--role",
            "policy",
        ],
        "outside",
    );
    assert_eq!(
        env_row(lab, "acme")["modules"][0]["active"]["version"],
        "1.0.0"
    );
    assert_eq!(env_row(lab, "acme")["refused"], 1);
    // Nor may the operator's environment take acme's subnet and role.
    refused(
        lab,
        &["module", "bind"],
        &[
            "least_load",
            "--subnet",
            "192.200.1.0/26",
            "--role",
            "policy",
        ],
        "by environment acme",
    );

    // gamma's signer is revoked by gamma's CRL.
    let gamma_ll = work.join("gamma-least_load.wasm");
    sign_for(
        &work.join("gamma"),
        "least_load",
        "1.0.0",
        &["192.200.1.128/26"],
        &gamma_ll,
    );
    refused(
        lab,
        &["module", "load", "--env", "gamma"],
        &[gamma_ll.to_str().unwrap()],
        "revoked",
    );
    assert_eq!(env_row(lab, "gamma")["refused"], 1);
    refused(
        lab,
        &["module", "load", "--env", "delta"],
        &[gamma_ll.to_str().unwrap()],
        "no environment",
    );

    let text = lab.ok(&["query", "metrics"], &[]);
    for line in [
        "pronto_env_bind_refused_total{environment=\"acme\"} 1",
        "pronto_env_bind_refused_total{environment=\"beta\"} 1",
        "pronto_env_refused_total{environment=\"gamma\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in the metrics");
    }
    eprintln!("{}", lab.ok(&["query", "modules"], &[]));
}
