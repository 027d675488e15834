use super::*;
use proptest::prelude::*;

fn key(i: u32) -> FlowKey {
    FlowKey {
        proto: ip_proto::TCP,
        src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        src_port: (i % 60000) as u16 + 1024,
        dst: IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
        dst_port: 80,
    }
}

fn key6(i: u32) -> FlowKey {
    FlowKey {
        proto: ip_proto::UDP,
        src: IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i))),
        src_port: 5000,
        dst: IpAddr::V6("2001:db8:ffff::10".parse().unwrap()),
        dst_port: 53,
    }
}

fn hop(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 0, i))
}

fn table(cap: usize) -> FlowTable {
    FlowTable::new(&FlowConfig {
        capacity_v4: cap,
        capacity_v6: cap,
        max_next_hops: 64,
        timeouts: Timeouts::default(),
    })
}

const T0: Instant = Instant::from_secs(1000);

fn before(t: Instant, ms: u64) -> Instant {
    Instant::from_millis(t.as_millis() - ms)
}

fn drained(t: &mut FlowTable) -> (Vec<FlowChange>, bool) {
    let mut v = Vec::new();
    let lost = t.drain_changes(|c| v.push(c));
    (v, lost)
}

#[test]
fn journal_records_every_pin_and_unpin() {
    let mut t = table(16);
    t.set_journal(64);
    let syn = FlowState::SynSeen;
    t.insert(&key(1), hop(1), 1, Level::Site, syn, T0).unwrap();
    // Replaced with another next hop (a shortcut, a WHOHAS answer).
    t.insert(&key(1), hop(2), 1, Level::Site, syn, T0).unwrap();
    t.insert(&key6(1), hop(3), 2, Level::Site, syn, T0).unwrap();
    t.remove(&key(1), T0).unwrap();
    let (changes, lost) = drained(&mut t);
    assert!(!lost);
    assert_eq!(
        changes,
        vec![
            FlowChange::Pinned {
                key: key(1),
                next_hop: hop(1)
            },
            FlowChange::Pinned {
                key: key(1),
                next_hop: hop(2)
            },
            FlowChange::Pinned {
                key: key6(1),
                next_hop: hop(3)
            },
            FlowChange::Unpinned { key: key(1) },
        ]
    );
    // Evictions are unpins too: fill a tiny table past capacity.
    let mut t = table(16);
    t.set_journal(1024);
    let cap = t.capacity().0;
    for i in 0..(cap as u32 + 8) {
        t.insert(&key(i), hop(1), i, Level::Site, syn, T0).unwrap();
    }
    let (changes, _) = drained(&mut t);
    let pinned: std::collections::HashSet<_> =
        changes
            .iter()
            .fold(std::collections::HashSet::new(), |mut set, c| {
                match c {
                    FlowChange::Pinned { key, .. } => set.insert(*key),
                    FlowChange::Unpinned { key } => set.remove(key),
                };
                set
            });
    let table: std::collections::HashSet<_> = t.export(T0).map(|e| e.key).collect();
    assert_eq!(pinned, table, "replaying the journal gives the table");
}

#[test]
fn journal_overflow_asks_for_a_resync() {
    let mut t = table(64);
    t.insert(&key(0), hop(1), 0, Level::Site, FlowState::Udp, T0)
        .unwrap();
    t.set_journal(2);
    // Turned on over a non-empty table: resync first.
    assert!(drained(&mut t).1);
    for i in 1..=3 {
        t.insert(&key(i), hop(1), i, Level::Site, FlowState::Udp, T0)
            .unwrap();
    }
    let (changes, lost) = drained(&mut t);
    assert_eq!(changes.len(), 2);
    assert!(lost);
    assert!(!drained(&mut t).1, "reported once");
    t.set_journal(0);
    assert!(!t.journal_on());
}

#[test]
fn with_a_fast_path_idle_flows_expire_only_as_its_activity_says() {
    let mut t = table(64);
    t.set_journal(64);
    let to = Timeouts::default();
    t.insert(&key(1), hop(1), 1, Level::Site, FlowState::SynSeen, T0)
        .unwrap();
    t.insert(&key(2), hop(1), 2, Level::Site, FlowState::SynSeen, T0)
        .unwrap();
    t.insert(&key(3), hop(1), 3, Level::Site, FlowState::Udp, T0)
        .unwrap();
    let _ = drained(&mut t);
    let later = T0 + to.syn + Duration::from_secs(1);
    // No lazy expiry on a hit: the fast path carried the flow meanwhile.
    assert!(t.touch(&key(3), None, 1, later).is_some());
    assert_eq!(t.sweep(later, 1 << 20), 0, "the sweep only lists them");
    let seen = before(later, 10);
    let expired = t.resolve_due(later, |k| {
        (*k == key(1)).then_some(FlowActivity {
            last_seen: Some(seen),
            established: true,
            closing: false,
        })
    });
    // key(1) went on in the kernel and completed its handshake; key(2)
    // saw nothing since its SYN; key(3) was touched above.
    assert_eq!(expired, 1);
    let e = t.get(&key(1), later).unwrap();
    assert_eq!(e.state, FlowState::Established);
    assert_eq!(e.last_seen, seen);
    assert!(t.get(&key(2), later).is_none());
    assert_eq!(
        drained(&mut t).0,
        vec![FlowChange::Unpinned { key: key(2) }]
    );
    assert_eq!(t.stats().expired, 1);
    // Much later the kernel saw FIN: the closing timeout runs from the
    // flow's last packet there, not from what the table saw.
    let check = seen + to.established + Duration::from_secs(1);
    assert_eq!(t.sweep(check, 1 << 20), 0);
    let closing = |ago: u64| {
        move |_: &FlowKey| {
            Some(FlowActivity {
                last_seen: Some(before(check, ago * 1000)),
                established: true,
                closing: true,
            })
        }
    };
    assert_eq!(t.resolve_due(check, closing(1)), 0);
    assert_eq!(t.get(&key(1), check).unwrap().state, FlowState::Closing);
    let check2 = check + to.closing;
    assert_eq!(t.sweep(check2, 1 << 20), 0);
    assert_eq!(t.resolve_due(check2, |_| None), 1);
    assert!(t.get(&key(1), check2).is_none());
}

#[test]
fn a_fast_path_state_change_makes_a_syn_only_flow_established() {
    let mut t = table(16);
    t.set_journal(16);
    t.insert(&key(1), hop(1), 1, Level::Site, FlowState::SynSeen, T0)
        .unwrap();
    let later = T0 + Duration::from_secs(2);
    let act = FlowActivity {
        last_seen: Some(later),
        established: true,
        closing: false,
    };
    assert!(t.refresh(&key(1), &act, later));
    let e = t.get(&key(1), later).unwrap();
    assert_eq!((e.state, e.last_seen), (FlowState::Established, later));
    // An older report does not move the last packet back.
    let old = FlowActivity {
        last_seen: Some(T0),
        ..act
    };
    assert!(t.refresh(&key(1), &old, later));
    assert_eq!(t.get(&key(1), later).unwrap().last_seen, later);
    assert!(!t.refresh(&key(2), &act, later), "not pinned");
    // UDP flows keep their state whatever the report says.
    t.insert(&key(3), hop(1), 3, Level::Site, FlowState::Udp, T0)
        .unwrap();
    t.refresh(&key(3), &act, later);
    assert_eq!(t.get(&key(3), later).unwrap().state, FlowState::Udp);
}

#[test]
fn slot_sizes_meet_the_memory_budget() {
    assert_eq!(size_of::<Slot<KeyV4>>(), 52);
    assert_eq!(size_of::<Slot<KeyV6>>(), 76);
}

#[test]
fn insert_touch_remove_both_families() {
    let mut t = table(64);
    for k in [key(1), key6(1)] {
        let state = FlowState::initial(k.proto, Some(TcpFlags::SYN));
        assert_eq!(
            t.insert(&k, hop(1), 7, Level::Site, state, T0).unwrap(),
            Inserted::Fresh
        );
        let hit = t.touch(&k, Some(TcpFlags::ACK), 100, T0).unwrap();
        assert_eq!(t.next_hop_addr(hit.next_hop), hop(1));
        let e = t.get(&k, T0).unwrap();
        assert_eq!(
            (e.packets, e.bytes, e.label, e.next_hop),
            (1, 100, 7, hop(1))
        );
        assert_eq!(t.remove(&k, T0).unwrap().key, k);
        assert!(t.touch(&k, None, 1, T0).is_none());
    }
    assert!(t.is_empty());
    assert_eq!(t.stats().removed, 2);
}

#[test]
fn tcp_state_drives_idle_timeouts() {
    let mut t = table(64);
    let to = Timeouts::default();
    let (syn, est, fin) = (key(1), key(2), key(3));
    for k in [syn, est, fin] {
        t.insert(&k, hop(1), 1, Level::Site, FlowState::SynSeen, T0)
            .unwrap();
    }
    assert_eq!(
        t.touch(&est, Some(TcpFlags::ACK), 1, T0).unwrap().state,
        FlowState::Established
    );
    assert_eq!(
        t.touch(&fin, Some(TcpFlags::FIN | TcpFlags::ACK), 1, T0)
            .unwrap()
            .state,
        FlowState::Closing
    );
    // Past the SYN timeout, only the SYN-only flow is gone.
    let later = T0 + to.syn + Duration::from_millis(1);
    assert!(t.touch(&syn, None, 1, later).is_none());
    assert!(t.touch(&est, None, 1, later).is_some());
    // Past the closing timeout (counted from its last packet), FIN flow is gone.
    let later2 = later + to.closing + Duration::from_millis(2);
    assert!(t.touch(&fin, None, 1, later2).is_none());
    assert!(t.touch(&est, None, 1, later2).is_some());
    // Established survives until its own idle timeout.
    assert!(
        t.touch(
            &est,
            None,
            1,
            later2 + (to.established - Duration::from_secs(1))
        )
        .is_some()
    );
    assert_eq!(t.stats().expired, 2);
}

#[test]
fn sweep_removes_only_expired_and_is_bounded() {
    let mut t = table(1024);
    for i in 0..500 {
        t.insert(&key(i), hop(1), i, Level::Site, FlowState::SynSeen, T0)
            .unwrap();
    }
    for i in 0..250 {
        t.touch(&key(i), Some(TcpFlags::ACK), 1, T0).unwrap();
    }
    let later = T0 + Duration::from_secs(60);
    // One bucket per call at most removes 8 flows.
    assert!(t.sweep(later, 1) <= WAYS);
    let mut removed = 0;
    for _ in 0..t.v4.buckets() {
        removed += t.sweep(later, 1);
    }
    assert!(t.len() == 250, "left {}", t.len());
    assert!(removed <= 250);
    assert!((0..250).all(|i| t.get(&key(i), later).is_some()));
}

#[test]
fn hard_capacity_is_what_the_table_allocates() {
    for n in [1, 7, 8, 9, 16, 1000, 16_384, 65_537] {
        assert_eq!(hard_capacity(n), table(n).capacity().0, "{n}");
        assert!(hard_capacity(n) >= n);
    }
}

#[test]
fn capacity_is_never_exceeded_and_evictions_are_counted() {
    let mut t = table(1000);
    let (cap, _) = t.capacity();
    let mut first_eviction_at = None;
    for i in 0..(cap as u32 * 4) {
        let r = t
            .insert(
                &key(i),
                hop((i % 4) as u8),
                i,
                Level::Site,
                FlowState::Established,
                T0,
            )
            .unwrap();
        if matches!(r, Inserted::Evicted(_)) && first_eviction_at.is_none() {
            first_eviction_at = Some(t.len());
        }
        assert!(t.len() <= cap);
    }
    assert_eq!(t.len(), cap, "a full table stays full");
    let fill = first_eviction_at.unwrap() as f64 / cap as f64;
    assert!(
        fill > 0.9,
        "cuckoo displacement should fill >90% before evicting, got {fill}"
    );
    let s = t.stats();
    assert_eq!(s.inserted + s.evicted, cap as u64 * 4);
    assert_eq!(s.inserted as usize, cap);
}

#[test]
fn eviction_prefers_embryonic_then_longest_idle() {
    // Two buckets: every key's two candidates are the whole table.
    let mut t = table(16);
    assert_eq!(t.capacity().0, 16);
    for i in 0..16 {
        let now = T0 + Duration::from_millis(u64::from(i));
        let state = if i == 9 {
            FlowState::SynSeen
        } else {
            FlowState::Established
        };
        t.insert(&key(i), hop(1), i, Level::Site, state, now)
            .unwrap();
    }
    let now = T0 + Duration::from_secs(1);
    // Flow 9 is embryonic, so it goes although flow 0 is idle longer.
    assert_eq!(
        t.insert(
            &key(100),
            hop(1),
            0,
            Level::Site,
            FlowState::Established,
            now
        )
        .unwrap(),
        Inserted::Evicted(key(9))
    );
    // No embryonic entry left: the longest idle (flow 0) goes.
    assert_eq!(
        t.insert(
            &key(101),
            hop(1),
            0,
            Level::Site,
            FlowState::Established,
            now
        )
        .unwrap(),
        Inserted::Evicted(key(0))
    );
    // A timed-out entry is reused before anything is evicted.
    let much_later = now + Timeouts::default().established;
    t.touch(&key(100), None, 1, much_later).unwrap();
    let before = t.stats().evicted;
    assert_eq!(
        t.insert(
            &key(102),
            hop(1),
            0,
            Level::Site,
            FlowState::SynSeen,
            much_later
        )
        .unwrap(),
        Inserted::Fresh
    );
    assert_eq!(t.stats().evicted, before);
}

#[test]
fn export_import_round_trip() {
    let mut a = table(256);
    for i in 0..100 {
        let k = if i % 2 == 0 { key(i) } else { key6(i) };
        a.insert(
            &k,
            hop((i % 3) as u8),
            i,
            Level::System,
            FlowState::Established,
            T0,
        )
        .unwrap();
        a.touch(
            &k,
            Some(TcpFlags::ACK),
            1500,
            T0 + Duration::from_millis(u64::from(i)),
        )
        .unwrap();
    }
    let now = T0 + Duration::from_secs(2);
    let mut b = table(256);
    let exported: Vec<_> = a.export(now).collect();
    assert_eq!(exported.len(), 100);
    for e in &exported {
        b.import(e, now).unwrap();
    }
    for e in &exported {
        assert_eq!(b.get(&e.key, now).as_ref(), Some(e));
    }
}

#[test]
fn next_hops_are_bounded_and_recycled() {
    let mut t = FlowTable::new(&FlowConfig {
        capacity_v4: 64,
        max_next_hops: 2,
        ..FlowConfig::default()
    });
    t.insert(&key(1), hop(1), 1, Level::Site, FlowState::Udp, T0)
        .unwrap();
    t.insert(&key(2), hop(2), 1, Level::Site, FlowState::Udp, T0)
        .unwrap();
    assert_eq!(
        t.insert(&key(3), hop(3), 1, Level::Site, FlowState::Udp, T0),
        Err(FlowError::NextHopsFull { limit: 2 })
    );
    assert!(t.get(&key(3), T0).is_none());
    t.remove(&key(1), T0).unwrap();
    t.insert(&key(3), hop(3), 1, Level::Site, FlowState::Udp, T0)
        .unwrap();
    assert_eq!(t.get(&key(3), T0).unwrap().next_hop, hop(3));
    assert_eq!(t.get(&key(2), T0).unwrap().next_hop, hop(2));
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u32, u8),
    Touch(u32),
    Remove(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..200, 0u8..4).prop_map(|(k, h)| Op::Insert(k, h)),
        (0u32..200).prop_map(Op::Touch),
        (0u32..200).prop_map(Op::Remove),
    ]
}

proptest! {
    /// Without evictions or timeouts the table behaves exactly like a map.
    #[test]
    fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..400)) {
        let mut t = table(4096);
        let mut model = HashMap::new();
        for o in ops {
            match o {
                Op::Insert(k, h) => {
                    let k = if k % 3 == 0 { key6(k) } else { key(k) };
                    t.insert(&k, hop(h), 0, Level::Site, FlowState::Established, T0).unwrap();
                    model.insert(k, hop(h));
                }
                Op::Touch(k) => {
                    let k = if k % 3 == 0 { key6(k) } else { key(k) };
                    let got = t.touch(&k, None, 1, T0).map(|h| t.next_hop_addr(h.next_hop));
                    prop_assert_eq!(got, model.get(&k).copied());
                }
                Op::Remove(k) => {
                    let k = if k % 3 == 0 { key6(k) } else { key(k) };
                    prop_assert_eq!(t.remove(&k, T0).map(|e| e.next_hop), model.remove(&k));
                }
            }
            prop_assert_eq!(t.len(), model.len());
        }
    }

    /// Under random churn beyond capacity the table never exceeds it and every
    /// flow it reports is one that was inserted with that next hop.
    #[test]
    fn bounded_under_churn(keys in proptest::collection::vec(0u32..10_000, 1..2000)) {
        let mut t = table(64);
        let cap = t.capacity().0;
        for k in keys {
            t.insert(&key(k), hop((k % 7) as u8), k, Level::Site, FlowState::SynSeen, T0).unwrap();
            prop_assert!(t.len() <= cap);
        }
        for e in t.export(T0) {
            prop_assert_eq!(e.next_hop, hop((e.label % 7) as u8));
        }
    }
}
