//! A three-namespace lab shared by the netns tests and the dataplane bench:
//!
//! ```text
//!   client ns  cr 198.18.1.1 ---- rc 198.18.1.2   router ns (lo 198.18.0.1 = tunnel endpoint)
//!              ch 198.18.3.1 --+  rh 198.18.2.1 ---- hr 198.18.2.2  host ns
//!                              +-------------------- hc 198.18.3.2  (direct return path)
//! ```
//!
//! Clients reach the VIP subnet 198.19.0.0/24 through the router; the host answers
//! straight back over ch/hc, never through the router. All addresses live only in
//! namespaces this lab creates; they are deleted on drop, also when a test panics.
#![allow(dead_code, reason = "each user of the lab uses a different part of it")]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub(crate) const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub(crate) const ROUTER_ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub(crate) const ROUTER_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub(crate) const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub(crate) const VIP_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// MTU of the router-host link: room for the 20-byte outer header.
pub(crate) const TUNNEL_LINK_MTU: u32 = 1600;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Run `ip ARGS`, panicking with its stderr on failure.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command inside namespace `ns` and return its stdout.
pub(crate) fn exec(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the test runs as root; when not, print why it skips, and fail under CI.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let msg = format!("SKIP {test}: needs root (network namespaces, TUN, raw sockets)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true runs as root, so a skip is a failure");
    }
    eprintln!("{msg}");
    false
}

/// The three namespaces, removed on drop.
#[derive(Debug)]
pub(crate) struct Lab {
    pub(crate) client: String,
    pub(crate) router: String,
    pub(crate) host: String,
}

impl Lab {
    /// Build the topology with unique namespace names.
    pub(crate) fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", std::process::id(), tag);
        let lab = Self {
            client: format!("pronto-c-{id}"),
            router: format!("pronto-r-{id}"),
            host: format!("pronto-h-{id}"),
        };
        for ns in [&lab.client, &lab.router, &lab.host] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (c, r, h) = (&lab.client[..], &lab.router[..], &lab.host[..]);
        ip(&[
            "link", "add", "cr", "netns", c, "type", "veth", "peer", "name", "rc", "netns", r,
        ]);
        ip(&[
            "link", "add", "rh", "netns", r, "type", "veth", "peer", "name", "hr", "netns", h,
        ]);
        ip(&[
            "link", "add", "ch", "netns", c, "type", "veth", "peer", "name", "hc", "netns", h,
        ]);
        for (ns, dev, addr) in [
            (c, "cr", "198.18.1.1/24"),
            (r, "rc", "198.18.1.2/24"),
            (r, "rh", "198.18.2.1/24"),
            (h, "hr", "198.18.2.2/24"),
            (c, "ch", "198.18.3.1/24"),
            (h, "hc", "198.18.3.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let mtu = TUNNEL_LINK_MTU.to_string();
        ip(&["-n", r, "link", "set", "rh", "mtu", &mtu]);
        ip(&["-n", h, "link", "set", "hr", "mtu", &mtu]);
        ip(&["-n", r, "addr", "add", "198.18.0.1/32", "dev", "lo"]);
        // Client: VIPs and the router's endpoint via the router.
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "198.19.0.0/24",
            "via",
            "198.18.1.2",
        ]);
        ip(&[
            "-n",
            c,
            "route",
            "add",
            "198.18.0.1/32",
            "via",
            "198.18.1.2",
        ]);
        // Host: replies to clients go straight back over hc (direct server return).
        ip(&[
            "-n",
            h,
            "route",
            "add",
            "198.18.1.0/24",
            "via",
            "198.18.3.1",
        ]);
        ip(&[
            "-n",
            h,
            "route",
            "add",
            "198.18.0.1/32",
            "via",
            "198.18.2.1",
        ]);
        // The client accepts VIP-sourced replies on ch although the VIP route is cr.
        router_core::linux::in_netns(c, || {
            for dev in ["all", "default", "ch", "cr"] {
                let key = format!("net/ipv4/conf/{dev}/rp_filter");
                router_core::linux::sysctl::write(&key, "0").expect("rp_filter");
            }
        })
        .expect("client namespace");
        lab
    }

    /// A link counter (`rx_packets`, `tx_packets`, ...) of `dev` in `ns`.
    pub(crate) fn link_stat(&self, ns: &str, dev: &str, stat: &str) -> u64 {
        exec(
            ns,
            &["cat", &format!("/sys/class/net/{dev}/statistics/{stat}")],
        )
        .trim()
        .parse()
        .expect("counter")
    }

    /// Plain kernel forwarding of the VIP subnet to the host (the baseline).
    pub(crate) fn kernel_forwarding(&self) {
        router_core::linux::in_netns(&self.router, || {
            router_core::linux::sysctl::enable_forwarding(false).expect("ip_forward")
        })
        .expect("router namespace");
        ip(&[
            "-n",
            &self.router,
            "route",
            "replace",
            "198.19.0.0/24",
            "via",
            "198.18.2.2",
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client, &self.router, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
