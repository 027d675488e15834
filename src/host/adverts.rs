//! Server flow advertisements of the host agent (DESIGN.md §5, issue 7).
//!
//! Every `scan_interval` (200 ms by default) the agent lists its open TCP
//! sockets (sock_diag, `/proc/net/tcp*` as the fallback: `super::tcp_sockets`)
//! and reports each connection on a served VIP to signaling's
//! [`ProgressMonitor`]. A connection makes *no progress* when it is ESTABLISHED
//! (or FIN_WAIT1 / CLOSE_WAIT / LAST_ACK / CLOSING with data queued) and its
//! retransmit counter (`retrnsmt`, the kernel's `icsk_retransmits`: RTOs in a row
//! without an ACK that advances) is above zero: exactly what a download looks
//! like once the client's ACKs stop reaching the server because a router on the
//! path lost the flow. For each flow the monitor says is due, the agent sends an
//! ICMP echo request from the VIP to the client whose payload carries the flow,
//! this host's tunnel endpoint address and the VIP port, signed with the trust
//! domain's key ([`AdvertAuth::echo_request`]). The client's echo reply retraces
//! its path to whichever router now gets the flow, and that router re-pins it
//! here.
//!
//! Packets leave through header-included raw sockets (IPv4 `IP_HDRINCL`, IPv6
//! `IPPROTO_RAW`), because the source is the VIP, which the host owns through its
//! `local` route but no socket is bound to.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use router_core::classify::FlowKey;
use router_core::linux::Clock;
use router_core::linux::raw::RawTx;
use router_core::time::Instant;
use router_core::wire::flowad::AdvertFields;
use serde::Serialize;
use signaling::{AdvertAuth, AdvertAuthConfig, AdvertKey, ProgressMonitor, SubnetPrefix};
use tracing::{debug, info, warn};

use super::proc_tcp::TcpSocketLine;
use crate::config::{HostRecovery, KeyPermissions};

/// Most lines of each `/proc/net/tcp*` file read per scan.
const MAX_SCAN_LINES: usize = 1 << 20;
/// Room for the largest echo request (IPv6 header + ICMPv6 + prefix + advert).
const PACKET_BUF: usize = 512;

/// Where advertisements go out: a seam so unit tests see the packets.
pub(super) trait AdvertTx: Send {
    /// Send one finished IP packet toward `dst`.
    fn send(&self, packet: &[u8], dst: IpAddr) -> std::io::Result<()>;
}

/// Header-included raw sockets, one per family that has one.
struct RawAdvertTx {
    v4: Option<RawTx>,
    v6: Option<RawTx>,
}

impl AdvertTx for RawAdvertTx {
    fn send(&self, packet: &[u8], dst: IpAddr) -> std::io::Result<()> {
        let tx = if dst.is_ipv4() { &self.v4 } else { &self.v6 };
        let tx = tx.as_ref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no raw socket of this family",
            )
        })?;
        tx.send_one(packet, dst).map_err(std::io::Error::other)
    }
}

/// Counters of the advertiser (in the host's stats snapshot).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(super) struct AdvertCounters {
    /// Scans done.
    pub(super) scans: u64,
    /// `/proc/net/tcp*` lines that did not parse.
    pub(super) malformed_lines: u64,
    /// Scans that hit the line limit (the rest of the file was not read).
    pub(super) truncated_scans: u64,
    /// Connections on served VIPs seen in the last scan.
    pub(super) connections: u64,
    /// Of those, without progress.
    pub(super) stalled_now: u64,
    /// Stall episodes begun (the monitor's count).
    pub(super) stalled_seen: u64,
    /// Flow advertisements the kernel accepted.
    pub(super) adverts_sent: u64,
    /// Advertisements the kernel refused.
    pub(super) send_errors: u64,
    /// Advertisements that could not be built (no key, bad fields).
    pub(super) build_errors: u64,
    /// Due flows of a family with no server address configured.
    pub(super) no_server_address: u64,
    /// New stalled flows not tracked because the monitor was full.
    pub(super) flows_dropped: u64,
    /// Polls refused by the advert rate cap.
    pub(super) rate_limited: u64,
    /// Flows the monitor holds.
    pub(super) tracked: u64,
}

/// Decides which flows to advertise and sends the advertisements.
pub(super) struct Advertiser {
    monitor: ProgressMonitor,
    auth: AdvertAuth,
    key_id: u32,
    server_v4: Option<Ipv4Addr>,
    server_v6: Option<Ipv6Addr>,
    subnets: Vec<SubnetPrefix>,
    tx: Box<dyn AdvertTx>,
    /// Next nonce: a random start, then counting (unique per advertisement,
    /// which is all the routers' replay cache needs; the MAC does the rest).
    nonce: u64,
    seq: u16,
    counters: AdvertCounters,
    buf: [u8; PACKET_BUF],
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser")
            .field("key_id", &self.key_id)
            .field("server_v4", &self.server_v4)
            .field("server_v6", &self.server_v6)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Advertiser {
    /// An advertiser signing with `auth`'s key `key_id`, naming `servers` (at most
    /// one per family) as the server, sending through `tx`.
    pub(super) fn new(
        cfg: &HostRecovery,
        auth: AdvertAuth,
        servers: &[IpAddr],
        subnets: Vec<SubnetPrefix>,
        tx: Box<dyn AdvertTx>,
        nonce_seed: u64,
    ) -> Result<Self> {
        if auth.mac(cfg.key_id, &[]).is_none() {
            bail!(
                "recovery.key_id = {}: no such key in {}",
                cfg.key_id,
                cfg.advert_keys.display()
            );
        }
        let monitor = ProgressMonitor::new(cfg.progress.clone()).context("[recovery]")?;
        Ok(Self {
            monitor,
            auth,
            key_id: cfg.key_id,
            server_v4: servers.iter().find_map(|a| match a {
                IpAddr::V4(v) => Some(*v),
                IpAddr::V6(_) => None,
            }),
            server_v6: servers.iter().find_map(|a| match a {
                IpAddr::V6(v) => Some(*v),
                IpAddr::V4(_) => None,
            }),
            subnets,
            tx,
            nonce: nonce_seed,
            seq: 0,
            counters: AdvertCounters::default(),
            buf: [0; PACKET_BUF],
        })
    }

    /// Counters as of now.
    pub(super) fn counters(&self) -> AdvertCounters {
        let m = self.monitor.stats();
        AdvertCounters {
            stalled_seen: m.stalls,
            flows_dropped: m.flows_dropped,
            rate_limited: m.rate_limited,
            tracked: u64::try_from(m.tracked).unwrap_or(u64::MAX),
            ..self.counters
        }
    }

    /// One scan over `/proc/net/tcp*` text (`files`: each its lines, and
    /// whether it is the IPv6 file): the fallback where sock_diag is missing,
    /// and the tests' way in. See [`Advertiser::scan_sockets`].
    pub(super) fn scan<L, S>(
        &mut self,
        files: impl IntoIterator<Item = (bool, L)>,
        now: Instant,
        unix_ms: u64,
    ) where
        L: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sockets = Vec::new();
        for (v6, lines) in files {
            let mut read = 0usize;
            for line in lines {
                read += 1;
                if read > MAX_SCAN_LINES {
                    self.counters.truncated_scans += 1;
                    break;
                }
                let line = line.as_ref();
                // The first line of each file is its column header.
                if read == 1 && line.trim_start().starts_with("sl") {
                    continue;
                }
                match TcpSocketLine::parse(line, v6) {
                    Some(t) => sockets.push(t),
                    None => self.counters.malformed_lines += 1,
                }
            }
        }
        self.scan_sockets(sockets, now, unix_ms);
    }

    /// One scan over the TCP sockets of the host, then the advertisements
    /// due. `now` is monotonic, `unix_ms` the wall clock the advertisements carry.
    pub(super) fn scan_sockets(
        &mut self,
        sockets: impl IntoIterator<Item = TcpSocketLine>,
        now: Instant,
        unix_ms: u64,
    ) {
        let (mut conns, mut stalled) = (0u64, 0u64);
        for t in sockets {
            if !t.is_open() || !self.subnets.iter().any(|s| s.contains(t.local.ip())) {
                continue;
            }
            conns += 1;
            let no_progress = t.no_progress();
            stalled += u64::from(no_progress);
            self.monitor.observe(t.flow_key(), no_progress, now);
        }
        self.monitor.end_scan(now);
        self.counters.scans += 1;
        self.counters.connections = conns;
        self.counters.stalled_now = stalled;
        while let Some(key) = self.monitor.poll_advert(now) {
            self.advertise(key, unix_ms);
        }
    }

    fn advertise(&mut self, key: FlowKey, unix_ms: u64) {
        let server = match key.dst {
            IpAddr::V4(_) => self.server_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.server_v6.map(IpAddr::V6),
        };
        let Some(server) = server else {
            self.counters.no_server_address += 1;
            debug!(flow = %key, "no server address of this family; flow not advertised");
            return;
        };
        let fields = AdvertFields {
            key,
            server: SocketAddr::new(server, key.dst_port),
            key_id: self.key_id,
            timestamp_ms: unix_ms,
            nonce: self.nonce,
        };
        self.nonce = self.nonce.wrapping_add(1);
        self.seq = self.seq.wrapping_add(1);
        // The identifier only has to let the client's stack answer; take it from
        // the nonce so successive adverts do not look like one ping session.
        let ident = (fields.nonce & 0xffff) as u16;
        let len = match self
            .auth
            .echo_request(&mut self.buf, &fields, ident, self.seq)
        {
            Ok(len) => len,
            Err(e) => {
                self.counters.build_errors += 1;
                warn!(flow = %key, error = %e, "flow advertisement not built");
                return;
            }
        };
        match self.tx.send(&self.buf[..len], key.src) {
            Ok(()) => {
                self.counters.adverts_sent += 1;
                info!(flow = %key, server = %fields.server, nonce = fields.nonce, "no progress: flow advertised");
            }
            Err(e) => {
                self.counters.send_errors += 1;
                warn!(flow = %key, error = %e, "flow advertisement not sent");
            }
        }
    }
}

/// The advertiser's thread, stopped (and joined) on drop.
#[derive(Debug)]
pub(super) struct AdvertHandle {
    stop: Arc<AtomicBool>,
    counters: Arc<Mutex<AdvertCounters>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdvertHandle {
    /// A shared view of the counters (for the stats writer).
    pub(super) fn counters_view(&self) -> Arc<Mutex<AdvertCounters>> {
        Arc::clone(&self.counters)
    }
}

impl Drop for AdvertHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read the key file (a secret, judged by `permissions`) and check that it
/// holds the signing key; `host run` and `host check` alike.
pub(super) fn signing_keys(
    cfg: &HostRecovery,
    permissions: KeyPermissions,
) -> Result<Vec<AdvertKey>> {
    let keys =
        crate::config::read_advert_keys("recovery.advert_keys", &cfg.advert_keys, permissions)?;
    if !keys.iter().any(|k| k.id == cfg.key_id) {
        bail!(
            "recovery.key_id = {}: no such key in {}",
            cfg.key_id,
            cfg.advert_keys.display()
        );
    }
    Ok(keys)
}

/// Start advertising with `keys` (from [`signing_keys`]): open the raw sockets,
/// pick the server addresses (configured, or the address this host uses toward
/// `site`), and scan on a thread of its own (the `/proc` reads block).
pub(super) fn start(
    cfg: &HostRecovery,
    keys: Vec<AdvertKey>,
    subnets: &[SubnetPrefix],
    site: SocketAddr,
) -> Result<AdvertHandle> {
    let auth = AdvertAuth::new(keys, AdvertAuthConfig::default());
    // Configured addresses first; the family of the site session defaults to the
    // address the site router sees this host come from (and so tunnels to).
    let mut servers = cfg.server_addresses.clone();
    if !servers.iter().any(|a| a.is_ipv4() == site.is_ipv4()) {
        match address_toward(site) {
            Ok(a) => servers.push(a),
            Err(e) if servers.is_empty() => {
                return Err(e).context(
                    "recovery: cannot find this host's address toward the site router; set recovery.server_addresses",
                );
            }
            Err(e) => {
                warn!(%site, error = %e, "no address toward the site router; flows of its family are not advertised")
            }
        }
    }
    let want_v4 = subnets.iter().any(|s| s.addr().is_ipv4());
    let want_v6 = subnets.iter().any(|s| s.addr().is_ipv6());
    let open = |v4: bool| match RawTx::open(v4, !v4) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(family = if v4 { "IPv4" } else { "IPv6" }, error = %e, "no raw socket: flows of this family are not advertised");
            None
        }
    };
    let tx = RawAdvertTx {
        v4: if want_v4 { open(true) } else { None },
        v6: if want_v6 { open(false) } else { None },
    };
    if tx.v4.is_none() && tx.v6.is_none() {
        bail!("recovery: no raw socket could be opened (needs CAP_NET_RAW)");
    }
    let mut adv = Advertiser::new(
        cfg,
        auth,
        &servers,
        subnets.to_vec(),
        Box::new(tx),
        nonce_seed(),
    )?;
    info!(?servers, key_id = cfg.key_id, stall_after = ?cfg.progress.stall_after, "server flow advertisements on");
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Mutex::new(AdvertCounters::default()));
    let interval = cfg.scan_interval;
    let thread = {
        let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
        std::thread::Builder::new()
            .name("pronto-adverts".into())
            .spawn(move || {
                let clock = Clock::new();
                let mut diag = super::tcp_sockets::TcpSockets::open();
                while !stop.load(Ordering::Relaxed) {
                    match diag.open_sockets(MAX_SCAN_LINES) {
                        Some(sockets) => adv.scan_sockets(sockets, clock.now(), unix_ms()),
                        None => adv.scan(proc_tcp_files(), clock.now(), unix_ms()),
                    }
                    if let Ok(mut c) = counters.lock() {
                        *c = adv.counters();
                    }
                    std::thread::sleep(interval);
                }
            })
            .context("spawning the advertiser thread")?
    };
    Ok(AdvertHandle {
        stop,
        counters,
        thread: Some(thread),
    })
}

/// `/proc/net/tcp{,6}` as line iterators (the fallback without sock_diag).
fn proc_tcp_files() -> Vec<(bool, Box<dyn Iterator<Item = String>>)> {
    [("/proc/net/tcp", false), ("/proc/net/tcp6", true)]
        .into_iter()
        .filter_map(|(path, v6)| {
            let f = std::fs::File::open(path).ok()?;
            let lines = std::io::BufReader::new(f).lines().map_while(Result::ok);
            Some((v6, Box::new(lines) as Box<dyn Iterator<Item = String>>))
        })
        .collect()
}

/// The source address the kernel picks toward `site`: the address the site
/// router sees this host's session come from, and so tunnels to.
fn address_toward(site: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if site.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    // connect() on UDP only picks a route and a source; nothing is sent.
    s.connect(site)?;
    Ok(s.local_addr()?.ip())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random start for the nonces, so a restarted agent does not repeat the
/// nonces it used before (the routers would drop those as replays).
fn nonce_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        // Without urandom, wall-clock nanoseconds differ between restarts too.
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proc_tcp::tests::{ep4, ep6, line, stalled_download};
    use super::*;
    use router_core::wire::flowad::{ECHO_PREFIX_LEN, FlowAdvert};
    use router_core::wire::{
        Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, icmpv4_type, icmpv6_type,
    };
    use std::path::PathBuf;
    use std::time::Duration;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 2);
    const SECRET: [u8; 32] = [7; 32];

    /// A packet sent and where to.
    type Sent = (Vec<u8>, IpAddr);

    #[derive(Clone, Default)]
    struct Capture {
        sent: Arc<Mutex<Vec<Sent>>>,
        fail: Arc<AtomicBool>,
    }

    impl AdvertTx for Capture {
        fn send(&self, packet: &[u8], dst: IpAddr) -> std::io::Result<()> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("refused"));
            }
            if let Ok(mut s) = self.sent.lock() {
                s.push((packet.to_vec(), dst));
            }
            Ok(())
        }
    }

    fn recovery(key_id: u32) -> HostRecovery {
        HostRecovery {
            advert_keys: PathBuf::from("/etc/pronto/advert.keys"),
            key_id,
            progress: signaling::ProgressConfig::default(),
            scan_interval: Duration::from_millis(200),
            server_addresses: vec![],
        }
    }

    fn auth() -> AdvertAuth {
        AdvertAuth::new(
            vec![AdvertKey::new(1, &SECRET).unwrap()],
            AdvertAuthConfig::default(),
        )
    }

    fn advertiser(servers: &[IpAddr], tx: &Capture) -> Advertiser {
        Advertiser::new(
            &recovery(1),
            auth(),
            servers,
            vec![SubnetPrefix::new(IpAddr::V4(Ipv4Addr::new(192, 200, 0, 0)), 24).unwrap()],
            Box::new(tx.clone()),
            1000,
        )
        .unwrap()
    }

    fn scan(a: &mut Advertiser, lines: &[String], now_ms: u64, unix_ms: u64) {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".to_owned();
        let v4: Vec<String> = std::iter::once(header)
            .chain(lines.iter().cloned())
            .collect();
        a.scan([(false, v4)], Instant::from_millis(now_ms), unix_ms);
    }

    #[test]
    fn an_unknown_key_id_is_refused_at_start() {
        let e = Advertiser::new(
            &recovery(9),
            auth(),
            &[SERVER.into()],
            vec![],
            Box::new(Capture::default()),
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("key_id = 9"), "{e}");
    }

    #[test]
    fn a_stalled_download_is_advertised_with_a_valid_mac_from_the_vip() {
        let tx = Capture::default();
        let mut a = advertiser(&[SERVER.into()], &tx);
        let other = line(
            &ep4(Ipv4Addr::new(10, 1, 2, 2), 22),
            &ep4(CLIENT, 50_000),
            1,
            100,
            5,
        );
        let healthy = line(&ep4(VIP, 80), &ep4(CLIENT, 40_001), 1, 100, 0);
        let lines = [stalled_download(40_000), other, healthy, "junk".into()];
        let unix = 1_764_000_000_000;
        for t in [0, 200, 400, 600, 800] {
            scan(&mut a, &lines, t, unix + t);
        }
        assert!(
            tx.sent.lock().unwrap().is_empty(),
            "not yet stalled for 1 s"
        );
        scan(&mut a, &lines, 1000, unix + 1000);
        let sent = tx.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let (pkt, dst) = &sent[0];
        assert_eq!(*dst, IpAddr::V4(CLIENT));
        let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (VIP, CLIENT));
        assert!(ip.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(&pkt[ip.header_len()..]).unwrap();
        assert_eq!(icmp.msg_type(), icmpv4_type::ECHO_REQUEST);
        assert!(icmp.verify_checksum());
        let adv = FlowAdvert::new_checked(&pkt[ip.header_len() + 8 + ECHO_PREFIX_LEN..]).unwrap();
        // A router of the trust domain accepts it: the flow, this host, the port.
        let mut router = auth();
        let f = router.verify(&adv, unix + 1010).unwrap();
        assert_eq!(
            f.key,
            TcpSocketLine::parse(&lines[0], false).unwrap().flow_key()
        );
        assert_eq!(f.server, SocketAddr::new(SERVER.into(), 80));
        assert_eq!((f.key_id, f.timestamp_ms, f.nonce), (1, unix + 1000, 1000));
        // A router with another secret does not.
        let mut stranger = AdvertAuth::new(
            vec![AdvertKey::new(1, &[8; 32]).unwrap()],
            AdvertAuthConfig::default(),
        );
        assert!(stranger.verify(&adv, unix + 1010).is_err());
        let c = a.counters();
        assert_eq!(c.adverts_sent, 1);
        assert_eq!(
            c.connections, 2,
            "the VIP's two connections, not port 22 on the host"
        );
        assert_eq!(c.stalled_now, 1);
        assert_eq!(c.stalled_seen, 1);
        assert_eq!(c.malformed_lines, 6, "junk once per scan");
        // Re-advertised after readvertise_after with a fresh nonce.
        scan(&mut a, &lines, 1600, unix + 1600);
        scan(&mut a, &lines, 2000, unix + 2000);
        let sent = tx.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        let p = &sent[1].0;
        let adv = FlowAdvert::new_checked(&p[20 + 8 + ECHO_PREFIX_LEN..]).unwrap();
        assert_eq!(adv.nonce(), 1001);
        assert!(router.verify(&adv, unix + 2000).is_ok());
    }

    #[test]
    fn an_ipv6_flow_is_advertised_in_an_icmpv6_echo_request() {
        let (vip, client): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8:c8::10".parse().unwrap(),
            "2001:db8:1::2".parse().unwrap(),
        );
        let server: IpAddr = "2001:db8:99::2".parse().unwrap();
        let tx = Capture::default();
        let mut a = Advertiser::new(
            &recovery(1),
            auth(),
            &[SERVER.into(), server],
            vec![SubnetPrefix::new(IpAddr::V6(vip), 128).unwrap()],
            Box::new(tx.clone()),
            5,
        )
        .unwrap();
        let stalled = line(&ep6(vip, 443), &ep6(client, 50_000), 1, 1000, 2);
        for t in [0, 1000] {
            a.scan(
                [(true, [stalled.as_str()])],
                Instant::from_millis(t),
                77 + t,
            );
        }
        let sent = tx.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let (pkt, dst) = &sent[0];
        assert_eq!(*dst, IpAddr::V6(client));
        let ip = Ipv6Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (vip, client));
        let icmp = Icmpv6Packet::new_checked(&pkt[40..]).unwrap();
        assert_eq!(icmp.msg_type(), icmpv6_type::ECHO_REQUEST);
        assert!(icmp.verify_checksum(&vip, &client));
        let adv = FlowAdvert::new_checked(&pkt[40 + 8 + ECHO_PREFIX_LEN..]).unwrap();
        let f = auth().verify(&adv, 1077).unwrap();
        assert_eq!(f.key.src, IpAddr::V6(client));
        assert_eq!(f.key.dst_port, 443);
        assert_eq!(
            f.server,
            SocketAddr::new(server, 443),
            "the IPv6 server address"
        );
    }

    #[test]
    fn send_errors_and_missing_server_addresses_are_counted() {
        let tx = Capture::default();
        tx.fail.store(true, Ordering::Relaxed);
        let mut a = advertiser(&[SERVER.into()], &tx);
        let lines = [stalled_download(40_000)];
        scan(&mut a, &lines, 0, 1);
        scan(&mut a, &lines, 1000, 2);
        let c = a.counters();
        assert_eq!((c.adverts_sent, c.send_errors), (0, 1));

        let tx = Capture::default();
        let mut a = advertiser(&["2001:db8::2".parse().unwrap()], &tx);
        scan(&mut a, &lines, 0, 1);
        scan(&mut a, &lines, 1000, 2);
        let c = a.counters();
        assert_eq!((c.adverts_sent, c.no_server_address), (0, 1));
        assert!(tx.sent.lock().unwrap().is_empty());
    }
}
