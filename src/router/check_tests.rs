//! `router check` refuses what `router run` refuses at start: each case is a
//! valid configuration broken in one way, and the error must name the cause.
//! The fixture (a CA, two peers' certificates, configuration files in a
//! temporary directory) is shared with the host's tests.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A temporary directory with a CA (`ca/ca.pem`) and the certificates of
/// `site-a.lab` and `other.lab` (`ca/peer-NAME.pem`, `.key`, mode 0600);
/// removed on drop.
pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
}

impl Fixture {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pronto-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = dir.join("ca");
        exec_env::ca::init_ca(&ca, &exec_env::ca::CaOptions::new("check CA", 30)).unwrap();
        for name in ["site-a.lab", "other.lab"] {
            exec_env::ca::issue_peer_cert(&ca, name).unwrap();
        }
        Self { dir }
    }

    /// Writes `text` to `name` in the directory; its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Replaces `name` in the directory with a FIFO; its path.
    pub(crate) fn fifo(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    pub(crate) fn chmod(&self, name: &str, mode: u32) {
        std::fs::set_permissions(self.dir.join(name), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `[tls]` of `site-a.lab` with `key` as its key file.
pub(crate) fn tls(key: &str) -> String {
    format!(
        "[tls]\ntrust_anchors = [\"ca/ca.pem\"]\ncert = \"ca/peer-site-a.lab.pem\"\nkey = \"{key}\"\n"
    )
}

const ROUTER: &str = r#"
level = "site"
name = "site-a.lab"
listen = "127.0.0.1:7800"

[tunnel]
local_v4 = "10.1.0.2"

[upstream]
address = "10.1.0.1:7800"
name = "sys.lab"
"#;

const MODULES: &str = r#"
[modules]
trust_anchors = ["ca/ca.pem"]
files = ["least_load.signed.wasm"]
subnet = "192.200.0.0/16"
policy = "least_load"
"#;

/// `router check` of `text` written as `router.toml` in `f`.
fn check(f: &Fixture, text: &str) -> anyhow::Result<()> {
    let path = f.write("router.toml", text);
    super::prepare(&path).map(drop)
}

/// The error of a check that must fail, as `main` prints it.
fn refusal(f: &Fixture, text: &str) -> String {
    let started = Instant::now();
    let e = check(f, text).expect_err("check passed a configuration run refuses");
    assert!(started.elapsed() < Duration::from_secs(10));
    format!("{e:#}")
}

fn assert_names(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "{p:?} not in: {e}");
    }
}

#[test]
fn a_valid_router_passes_with_management_and_recovery_keys() {
    let f = Fixture::new("valid");
    f.write("advert.keys", &format!("1:{}\n", "ab".repeat(32)));
    f.chmod("advert.keys", 0o600);
    let text = format!(
        "{ROUTER}{}\n[management]\nlisten = \"127.0.0.1:7900\"\n\n[recovery]\nadvert_keys = \"advert.keys\"\n",
        tls("ca/peer-site-a.lab.key")
    );
    check(&f, &text).unwrap();
}

#[test]
fn another_nodes_key_is_refused_naming_both_files() {
    let f = Fixture::new("otherkey");
    let e = refusal(&f, &format!("{ROUTER}{}", tls("ca/peer-other.lab.key")));
    assert_names(
        &e,
        &[
            "tls.key",
            "peer-other.lab.key",
            "is not the private key of tls.cert",
            "peer-site-a.lab.pem",
        ],
    );
}

#[test]
fn another_nodes_key_for_the_management_api_is_refused() {
    let f = Fixture::new("mgmtkey");
    let text = format!(
        "{ROUTER}{}\n[management]\nlisten = \"127.0.0.1:7900\"\nkey = \"ca/peer-other.lab.key\"\n",
        tls("ca/peer-site-a.lab.key")
    );
    let e = refusal(&f, &text);
    assert_names(
        &e,
        &[
            "management.key",
            "peer-other.lab.key",
            "not the private key",
        ],
    );
}

#[test]
fn a_missing_module_file_is_refused() {
    let f = Fixture::new("nomodule");
    let e = refusal(
        &f,
        &format!("{ROUTER}{}{MODULES}", tls("ca/peer-site-a.lab.key")),
    );
    assert_names(
        &e,
        &["modules.files[0]", "least_load.signed.wasm", "cannot open"],
    );
}

#[test]
fn a_missing_module_trust_anchor_is_refused() {
    let f = Fixture::new("noanchor");
    let modules = MODULES.replace("ca/ca.pem", "ca/modules-ca.pem");
    let e = refusal(
        &f,
        &format!("{ROUTER}{}{modules}", tls("ca/peer-site-a.lab.key")),
    );
    assert_names(
        &e,
        &["modules.trust_anchors[0]", "modules-ca.pem", "cannot open"],
    );
}

#[test]
fn a_module_file_that_is_not_signed_is_refused() {
    let f = Fixture::new("badmodule");
    f.write("least_load.signed.wasm", "not a module");
    let e = refusal(
        &f,
        &format!("{ROUTER}{}{MODULES}", tls("ca/peer-site-a.lab.key")),
    );
    assert_names(
        &e,
        &["modules.files[0]", "least_load.signed.wasm", "refused"],
    );
}

#[test]
fn a_missing_management_certificate_is_refused() {
    let f = Fixture::new("nomgmtcert");
    let text = format!(
        "{ROUTER}{}\n[management]\nlisten = \"127.0.0.1:7900\"\ncert = \"ca/mgmt.pem\"\n",
        tls("ca/peer-site-a.lab.key")
    );
    let e = refusal(&f, &text);
    assert_names(&e, &["management.cert", "mgmt.pem", "cannot open"]);
}

#[test]
fn a_missing_recovery_key_file_is_refused() {
    let f = Fixture::new("noadvert");
    let text = format!(
        "{ROUTER}{}\n[recovery]\nadvert_keys = \"advert.keys\"\n",
        tls("ca/peer-site-a.lab.key")
    );
    let e = refusal(&f, &text);
    assert_names(&e, &["recovery.advert_keys", "advert.keys", "cannot open"]);
}

#[test]
fn fifos_are_refused_at_once() {
    let f = Fixture::new("fifo");
    // The configuration itself.
    let config = f.fifo("fifo.toml");
    let started = Instant::now();
    let e = super::prepare(&config)
        .map(drop)
        .expect_err("a FIFO config");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_names(
        &format!("{e:#}"),
        &["fifo.toml is a FIFO, not a regular file"],
    );
    // A certificate, a key, a trust anchor.
    f.fifo("fifo.pem");
    for (from, field) in [
        ("cert = \"ca/peer-site-a.lab.pem\"", "tls.cert"),
        ("key = \"ca/peer-site-a.lab.key\"", "tls.key"),
        ("trust_anchors = [\"ca/ca.pem\"]", "tls.trust_anchors[0]"),
    ] {
        let to = from
            .replace("ca/peer-site-a.lab.pem", "fifo.pem")
            .replace("ca/peer-site-a.lab.key", "fifo.pem")
            .replace("ca/ca.pem", "fifo.pem");
        let text = format!("{ROUTER}{}", tls("ca/peer-site-a.lab.key")).replace(from, &to);
        let e = refusal(&f, &text);
        assert_names(&e, &[field, "fifo.pem is a FIFO"]);
    }
}

#[test]
fn keys_readable_by_others_pass_with_a_warning_or_are_refused_when_asked() {
    let f = Fixture::new("perms");
    f.chmod("ca/peer-site-a.lab.key", 0o644);
    let base = format!("{ROUTER}{}", tls("ca/peer-site-a.lab.key"));
    check(&f, &base).unwrap();
    let strict = format!("{base}\n[security]\nkey_permissions = \"refuse\"\n");
    let e = refusal(&f, &strict);
    assert_names(
        &e,
        &[
            "tls.key",
            "peer-site-a.lab.key is a private key readable by group and others (mode 0644)",
            "chmod 600",
        ],
    );
    f.chmod("ca/peer-site-a.lab.key", 0o600);
    check(&f, &strict).unwrap();
    // The advertisement keys are secrets too.
    f.write("advert.keys", &format!("1:{}\n", "ab".repeat(32)));
    f.chmod("advert.keys", 0o640);
    let e = refusal(
        &f,
        &format!("{strict}\n[recovery]\nadvert_keys = \"advert.keys\"\n"),
    );
    assert_names(&e, &["recovery.advert_keys", "readable by its group"]);
    let e = refusal(
        &f,
        &format!("{base}\n[security]\nkey_permissions = \"maybe\"\n"),
    );
    assert_names(&e, &["key_permissions", "maybe"]);
}
