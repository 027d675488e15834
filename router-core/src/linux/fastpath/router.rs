//! The router's fast path: `router_fast.c` loaded, attached and fed.

use super::abi::{self, Config, Flow, KeyV4, KeyV6, MapKey};
use super::{FastPathError, FastPathReader, attach_ingress, load_object, take_counters};
use crate::classify::{FlowKey, VirtualSubnet};
use crate::engine::Engine;
use crate::flow::{FlowActivity, FlowChange, FlowEntry};
use crate::linux::Clock;
use crate::time::Instant;
use crate::tunnel::TunnelSources;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The program's name (its function and tc filter name).
const PROGRAM: &str = "router_fast";
/// The object `scripts/build-bpf.sh` builds from `router-core/bpf/router_fast.c`.
static OBJECT: &[u8] = include_bytes!("../../../bpf/router_fast.o");
/// `BPF_NOEXIST`.
const NOEXIST: u64 = 1;

/// What the router program needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterFastPathConfig {
    /// Links to attach to (tc ingress).
    pub links: Vec<String>,
    /// IPv4 tunnel endpoint (outer source; tunnels to it are re-addressed).
    pub local_v4: Option<Ipv4Addr>,
    /// IPv6 tunnel endpoint.
    pub local_v6: Option<Ipv6Addr>,
    /// Outer TTL / hop limit.
    pub tunnel_ttl: u8,
    /// Path MTU toward next hops, outer header included.
    pub tunnel_mtu: u16,
    /// Tunnel sources admitted (`None`: any), as the engine's.
    pub tunnel_sources: Option<TunnelSources>,
    /// IPv4 flows the map holds (the flow table's capacity).
    pub capacity_v4: usize,
    /// IPv6 flows the map holds.
    pub capacity_v6: usize,
}

/// The loaded router program, its maps and attachments (detached on drop).
pub struct RouterFastPath {
    ebpf: aya::Ebpf,
    flows_v4: HashMap<MapData, KeyV4, Flow>,
    flows_v6: HashMap<MapData, KeyV6, Flow>,
    events: aya::maps::RingBuf<MapData>,
    reader: FastPathReader,
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
    links: Vec<String>,
    map_ids: [u32; 2],
}

impl std::fmt::Debug for RouterFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterFastPath")
            .field("links", &self.links)
            .field("local_v4", &self.local_v4)
            .field("local_v6", &self.local_v6)
            .finish_non_exhaustive()
    }
}

fn cap(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

impl RouterFastPath {
    /// Load the program (the verifier runs now) and write its configuration;
    /// nothing is attached yet.
    pub fn load(cfg: &RouterFastPathConfig) -> Result<Self, FastPathError> {
        let mut ebpf = load_object(
            PROGRAM,
            OBJECT,
            &[
                // Exactly what the table can hold: it is mirrored, never
                // outgrown (the maps are plain hashes; router_fast.c).
                ("flows_v4", cap(crate::flow::hard_capacity(cfg.capacity_v4))),
                ("flows_v6", cap(crate::flow::hard_capacity(cfg.capacity_v6))),
            ],
        )?;
        write_config(&mut ebpf, cfg)?;
        write_sources(&mut ebpf, cfg.tunnel_sources.as_ref())?;
        let reader = take_counters(&mut ebpf, PROGRAM)?;
        let (flows_v4, id4) = take_hash(&mut ebpf, "flows_v4")?;
        let (flows_v6, id6) = take_hash(&mut ebpf, "flows_v6")?;
        let events = ebpf.take_map("events").ok_or(FastPathError::Missing {
            program: PROGRAM,
            what: "events ring buffer",
        })?;
        let events =
            aya::maps::RingBuf::try_from(events).map_err(|e| FastPathError::map("events", e))?;
        Ok(Self {
            events,
            map_ids: [id4, id6],
            ebpf,
            flows_v4,
            flows_v6,
            reader,
            local_v4: cfg.local_v4,
            local_v6: cfg.local_v6,
            links: Vec::new(),
        })
    }

    /// Load and attach to every link of `cfg` (at least one).
    pub fn start(cfg: &RouterFastPathConfig) -> Result<(Self, Vec<String>), FastPathError> {
        if cfg.links.is_empty() {
            return Err(FastPathError::NoLinks {
                reason: "none configured or found".into(),
            });
        }
        let mut fp = Self::load(cfg)?;
        for link in &cfg.links {
            fp.attach(link)?;
        }
        let links = fp.links.clone();
        Ok((fp, links))
    }

    /// Attach at tc ingress of `link`.
    pub fn attach(&mut self, link: &str) -> Result<(), FastPathError> {
        attach_ingress(&mut self.ebpf, PROGRAM, link)?;
        self.links.push(link.to_owned());
        Ok(())
    }

    /// The links attached to.
    pub fn links(&self) -> &[String] {
        &self.links
    }

    /// The kernel's ids of the flow maps (IPv4, IPv6): `bpftool map dump id N`.
    pub fn map_ids(&self) -> [u32; 2] {
        self.map_ids
    }

    /// A reader of the program's counters.
    pub fn reader(&self) -> FastPathReader {
        self.reader.clone()
    }

    /// The outer source toward `next_hop`: this router's endpoint of its family.
    fn local_for(&self, next_hop: IpAddr) -> Option<IpAddr> {
        match next_hop {
            IpAddr::V4(_) => self.local_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.local_v6.map(IpAddr::V6),
        }
    }

    /// Write (or rewrite) the entry of a pinned flow. What the program recorded
    /// of it (last packet, TCP state, counts) survives a change of next hop.
    /// Returns false when the router has no tunnel endpoint of the next hop's
    /// family (the engine does not forward such a flow either).
    pub fn pin(&mut self, key: &FlowKey, next_hop: IpAddr) -> Result<bool, FastPathError> {
        let (Some(k), Some(local)) = (MapKey::of(key), self.local_for(next_hop)) else {
            return Ok(false);
        };
        let (nh, family) = abi::addr16(next_hop);
        let (local, _) = abi::addr16(local);
        let fresh = Flow {
            next_hop: nh,
            local,
            family,
            ..Flow::default()
        };
        match k {
            MapKey::V4(k) => upsert(&mut self.flows_v4, "flows_v4", &k, fresh),
            MapKey::V6(k) => upsert(&mut self.flows_v6, "flows_v6", &k, fresh),
        }
        .map(|()| true)
    }

    /// Remove a flow's entry; false if it was not there.
    pub fn unpin(&mut self, key: &FlowKey) -> Result<bool, FastPathError> {
        let r = match MapKey::of(key) {
            Some(MapKey::V4(k)) => self.flows_v4.remove(&k),
            Some(MapKey::V6(k)) => self.flows_v6.remove(&k),
            None => return Ok(false),
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(FastPathError::map("flows", e)),
        }
    }

    /// A flow's entry as the program keeps it.
    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        match MapKey::of(key)? {
            MapKey::V4(k) => self.flows_v4.get(&k, 0).ok(),
            MapKey::V6(k) => self.flows_v6.get(&k, 0).ok(),
        }
    }

    /// Whether `key` has an entry.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.flow(key).is_some()
    }

    /// The next hop of `key`'s entry.
    pub fn next_hop(&self, key: &FlowKey) -> Option<IpAddr> {
        let f = self.flow(key)?;
        Some(match f.family {
            4 => IpAddr::from([f.next_hop[0], f.next_hop[1], f.next_hop[2], f.next_hop[3]]),
            _ => IpAddr::from(f.next_hop),
        })
    }

    /// Packets the program forwarded of `key` since its entry was written.
    pub fn packets(&self, key: &FlowKey) -> Option<u64> {
        self.flow(key).map(|f| f.packets)
    }

    /// What the program saw of `key` (`clock` converts its kernel times).
    pub fn activity(&self, key: &FlowKey, clock: &Clock) -> Option<FlowActivity> {
        let f = self.flow(key)?;
        Some(FlowActivity {
            last_seen: (f.last_seen_ns != 0).then(|| clock.from_kernel_ns(f.last_seen_ns)),
            established: f.seen & abi::SEEN_ESTABLISHED != 0,
            closing: f.seen & abi::SEEN_CLOSING != 0,
        })
    }

    /// Hand each TCP state change the program reported to `f` (flow, what it
    /// saw, when); returns how many.
    pub fn drain_events(
        &mut self,
        clock: &Clock,
        mut f: impl FnMut(&FlowKey, FlowActivity),
    ) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if let Some(e) = abi::Event::parse(&item) {
                f(
                    &e.key,
                    FlowActivity {
                        last_seen: Some(clock.from_kernel_ns(e.at_ns)),
                        established: e.seen & abi::SEEN_ESTABLISHED != 0,
                        closing: e.seen & abi::SEEN_CLOSING != 0,
                    },
                );
                n += 1;
            }
        }
        n
    }

    /// Every flow with an entry (a full walk: tests and resyncs).
    pub fn keys(&self) -> Vec<FlowKey> {
        let v4 = self
            .flows_v4
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.flow_key());
        let v6 = self
            .flows_v6
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.flow_key());
        v4.chain(v6).collect()
    }

    /// Make the maps hold exactly `entries` (after the journal lost changes).
    /// Returns (written, removed).
    pub fn resync(
        &mut self,
        entries: impl Iterator<Item = FlowEntry>,
    ) -> Result<(usize, usize), FastPathError> {
        let want: Vec<FlowEntry> = entries.collect();
        let keep: HashSet<FlowKey> = want.iter().map(|e| e.key).collect();
        let mut removed = 0;
        for k in self.keys() {
            if !keep.contains(&k) && self.unpin(&k)? {
                removed += 1;
            }
        }
        let mut written = 0;
        for e in &want {
            if self.pin(&e.key, e.next_hop)? {
                written += 1;
            }
        }
        Ok((written, removed))
    }
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(nix::libc::ENOENT),
        _ => false,
    }
}

fn exists(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(nix::libc::EEXIST))
}

/// Insert `fresh` for `k`, or, when an entry exists, keep what the program
/// recorded in it and change where it goes.
fn upsert<K: aya::Pod>(
    map: &mut HashMap<MapData, K, Flow>,
    name: &'static str,
    k: &K,
    fresh: Flow,
) -> Result<(), FastPathError> {
    match map.insert(k, fresh, NOEXIST) {
        Ok(()) => return Ok(()),
        Err(e) if exists(&e) => {}
        Err(e) => return Err(FastPathError::map(name, e)),
    }
    let merged = match map.get(k, 0) {
        Ok(old) => Flow {
            next_hop: fresh.next_hop,
            local: fresh.local,
            family: fresh.family,
            ..old
        },
        Err(_) => fresh,
    };
    map.insert(k, merged, 0)
        .map_err(|e| FastPathError::map(name, e))
}

/// A flow map and its kernel id.
fn take_hash<K: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<(HashMap<MapData, K, Flow>, u32), FastPathError> {
    let map = ebpf.take_map(name).ok_or(FastPathError::Missing {
        program: PROGRAM,
        what: "flow map",
    })?;
    let id = match &map {
        aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => {
            d.info().map(|i| i.id()).unwrap_or(0)
        }
        _ => 0,
    };
    let map = HashMap::try_from(map).map_err(|e| FastPathError::map(name, e))?;
    Ok((map, id))
}

fn write_config(ebpf: &mut aya::Ebpf, cfg: &RouterFastPathConfig) -> Result<(), FastPathError> {
    let c = Config {
        local_v4: cfg.local_v4.map_or([0; 4], |a| a.octets()),
        local_v6: cfg.local_v6.map_or([0; 16], |a| a.octets()),
        has_v4: u8::from(cfg.local_v4.is_some()),
        has_v6: u8::from(cfg.local_v6.is_some()),
        tunnel_ttl: cfg.tunnel_ttl,
        admit_any: u8::from(cfg.tunnel_sources.is_none()),
        tunnel_mtu: cfg.tunnel_mtu,
        pad: 0,
    };
    let map = ebpf.map_mut("config").ok_or(FastPathError::Missing {
        program: PROGRAM,
        what: "config map",
    })?;
    let mut array: Array<&mut MapData, Config> =
        Array::try_from(map).map_err(|e| FastPathError::map("config", e))?;
    array
        .set(0, c, 0)
        .map_err(|e| FastPathError::map("config", e))
}

fn write_sources(
    ebpf: &mut aya::Ebpf,
    sources: Option<&TunnelSources>,
) -> Result<(), FastPathError> {
    let Some(sources) = sources else {
        return Ok(());
    };
    for p in sources.prefixes() {
        add_prefix(ebpf, PROGRAM, "tunnel_src_v4", "tunnel_src_v6", p)?;
    }
    Ok(())
}

/// Add `p` to the LPM map of its family.
pub(super) fn add_prefix(
    ebpf: &mut aya::Ebpf,
    program: &'static str,
    v4: &'static str,
    v6: &'static str,
    p: &VirtualSubnet,
) -> Result<(), FastPathError> {
    let missing = FastPathError::Missing {
        program,
        what: "prefix map",
    };
    match p.addr() {
        IpAddr::V4(a) => {
            let map = ebpf.map_mut(v4).ok_or(missing)?;
            let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> =
                LpmTrie::try_from(map).map_err(|e| FastPathError::map(v4, e))?;
            trie.insert(&Key::new(u32::from(p.prefix_len()), a.octets()), 1, 0)
                .map_err(|e| FastPathError::map(v4, e))
        }
        IpAddr::V6(a) => {
            let map = ebpf.map_mut(v6).ok_or(missing)?;
            let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
                LpmTrie::try_from(map).map_err(|e| FastPathError::map(v6, e))?;
            trie.insert(&Key::new(u32::from(p.prefix_len()), a.octets()), 1, 0)
                .map_err(|e| FastPathError::map(v6, e))
        }
    }
}

/// What keeping the maps in step with the engine did (atomics: read from any
/// thread).
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Entries written (new and changed pins).
    pub pins: AtomicU64,
    /// Entries removed (unpins, expiries, evictions).
    pub unpins: AtomicU64,
    /// Map operations that failed (the flow then stays on the engine's path).
    pub errors: AtomicU64,
    /// Full resyncs after the journal overflowed.
    pub resyncs: AtomicU64,
    /// Idle flows checked against the program's activity.
    pub idle_checked: AtomicU64,
    /// Of those, expired (no activity in the kernel either).
    pub idle_expired: AtomicU64,
    /// TCP state changes the program reported and the engine folded in.
    pub state_events: AtomicU64,
}

/// A copy of [`SyncCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSnapshot {
    /// Entries written.
    pub pins: u64,
    /// Entries removed.
    pub unpins: u64,
    /// Map operations that failed.
    pub errors: u64,
    /// Full resyncs.
    pub resyncs: u64,
    /// Idle flows checked against the program's activity.
    pub idle_checked: u64,
    /// Of those, expired.
    pub idle_expired: u64,
    /// TCP state changes folded in.
    pub state_events: u64,
}

impl SyncCounters {
    /// The counters now.
    pub fn snapshot(&self) -> SyncSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SyncSnapshot {
            pins: r(&self.pins),
            unpins: r(&self.unpins),
            errors: r(&self.errors),
            resyncs: r(&self.resyncs),
            idle_checked: r(&self.idle_checked),
            idle_expired: r(&self.idle_expired),
            state_events: r(&self.state_events),
        }
    }
}

/// The dataplane thread's side of the fast path: mirrors the engine's flow
/// table into the maps from its journal, and settles idle flows with the
/// program's activity.
#[derive(Debug)]
pub struct FastPathSync {
    fp: RouterFastPath,
    counters: Arc<SyncCounters>,
}

/// Journal capacity between two syncs: the dataplane syncs after every batch
/// (at most a batch of pins plus evictions) and every control change; a
/// mirror takeover or resync beyond it is handled by a full resync.
pub const JOURNAL_CAPACITY: usize = 16 * 1024;

impl FastPathSync {
    /// Keep `fp` in step with an engine ([`FastPathSync::start`]).
    pub fn new(fp: RouterFastPath) -> Self {
        Self {
            fp,
            counters: Arc::new(SyncCounters::default()),
        }
    }

    /// Turn the engine's journal on (a non-empty table then syncs in full
    /// on the first [`FastPathSync::sync`]).
    pub fn start(&mut self, engine: &mut Engine) {
        engine.set_flow_journal(JOURNAL_CAPACITY);
    }

    /// The counters (shared).
    pub fn counters(&self) -> Arc<SyncCounters> {
        Arc::clone(&self.counters)
    }

    /// The fast path itself.
    pub fn fast_path(&self) -> &RouterFastPath {
        &self.fp
    }

    /// Fold the TCP state changes the program reported into the engine, then
    /// apply what the engine journaled since the last call.
    pub fn sync(&mut self, engine: &mut Engine, now: Instant, clock: &Clock) {
        let events = self.fp.drain_events(clock, |key, act| {
            engine.refresh_flow(key, &act, now);
        });
        self.counters
            .state_events
            .fetch_add(events as u64, Ordering::Relaxed);
        let (fp, c) = (&mut self.fp, &self.counters);
        let lost = engine.drain_flow_changes(|change| {
            let r = match change {
                FlowChange::Pinned { key, next_hop } => fp.pin(&key, next_hop).map(|written| {
                    if written {
                        c.pins.fetch_add(1, Ordering::Relaxed);
                    }
                }),
                FlowChange::Unpinned { key } => fp.unpin(&key).map(|_| {
                    c.unpins.fetch_add(1, Ordering::Relaxed);
                }),
            };
            if let Err(e) = r {
                c.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "fast path map update failed; the engine forwards the flow");
            }
        });
        if lost {
            self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            match self.fp.resync(engine.flows().export(now)) {
                Ok((written, removed)) => {
                    tracing::info!(
                        written,
                        removed,
                        "fast path maps resynchronised with the flow table"
                    );
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "fast path resync failed");
                }
            }
        }
    }

    /// Settle the flows the engine's sweep found idle, then apply the unpins.
    pub fn resolve_idle(&mut self, engine: &mut Engine, now: Instant, clock: &Clock) {
        let (fp, c) = (&self.fp, &self.counters);
        let expired = engine.resolve_idle_flows(now, |k| {
            c.idle_checked.fetch_add(1, Ordering::Relaxed);
            fp.activity(k, clock)
        });
        c.idle_expired.fetch_add(expired as u64, Ordering::Relaxed);
        self.sync(engine, now, clock);
    }
}
