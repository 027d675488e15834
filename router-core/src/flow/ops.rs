//! Operations on one family's table: occupied slots, the sweep, timeouts and
//! insertion with displacement and eviction.

use super::*;

pub(super) fn occupied<K: SlotKey>(t: &Table<K>) -> impl Iterator<Item = &Slot<K>> {
    t.slots
        .iter()
        .enumerate()
        .filter(|(i, _)| tag_of(t.tags[i / WAYS], i % WAYS) != 0)
        .map(|(_, s)| s)
}

pub(super) fn timeout_of(t: &Timeouts, state: u8) -> u64 {
    let d = match FlowState::from_u8(state) {
        FlowState::SynSeen => t.syn,
        FlowState::Established => t.established,
        FlowState::Closing => t.closing,
        FlowState::Udp => t.udp,
        FlowState::Other => t.other,
    };
    d.as_millis() as u64
}

pub(super) fn sweep_table<K: SlotKey>(
    t: &mut Table<K>,
    timeouts: &Timeouts,
    now: Instant,
    max_buckets: usize,
    released: &mut Vec<u32>,
) -> usize {
    let n = t.buckets();
    if n == 0 {
        return 0;
    }
    let mut removed = 0;
    for _ in 0..max_buckets.min(n) {
        let b = t.sweep_cursor;
        t.sweep_cursor = if b + 1 == n { 0 } else { b + 1 };
        for way in 0..WAYS {
            let i = b * WAYS + way;
            if tag_of(t.tags[b], way) != 0 {
                let m = &t.slots[i].meta;
                if FlowTable::idle_ms(m, now) > timeout_of(timeouts, m.state) {
                    released.push(t.clear(i).meta.next_hop);
                    removed += 1;
                }
            }
        }
    }
    removed
}

pub(super) struct Outcome {
    pub(super) inserted: Inserted,
    /// A different flow that lost its slot (expired or evicted).
    pub(super) unpinned: Option<FlowKey>,
    /// Next-hop references dropped by replaced, expired or evicted entries.
    pub(super) released: [Option<u32>; 1],
    pub(super) expired: bool,
    pub(super) displaced: u64,
}

pub(super) fn insert_into<K: SlotKey>(
    t: &mut Table<K>,
    hasher: &RandomState,
    timeouts: &Timeouts,
    key: K,
    meta: Meta,
    now: Instant,
    conv: fn(&K) -> FlowKey,
) -> Result<Outcome, FlowError> {
    if t.buckets() == 0 {
        return Err(FlowError::NoCapacity);
    }
    let p = t.probe(hasher.hash_one(key));
    let slot = Slot { key, meta };
    if let Some(i) = t.find(p, &key) {
        let old = core::mem::replace(&mut t.slots[i], slot);
        return Ok(Outcome {
            inserted: Inserted::Replaced,
            unpinned: None,
            released: [Some(old.meta.next_hop)],
            expired: false,
            displaced: 0,
        });
    }
    if let Some(i) = t.free_way(p.b1).or_else(|| t.free_way(p.b2)) {
        t.place(i, p.tag, slot);
        return Ok(Outcome {
            inserted: Inserted::Fresh,
            unpinned: None,
            released: [None],
            expired: false,
            displaced: 0,
        });
    }
    // Both buckets full: reuse a timed-out entry, else pick the eviction victim
    // in the same pass.
    let mut victim: Option<(usize, bool, u64)> = None; // (slot, embryonic, idle)
    for b in [p.b1, p.b2] {
        for way in 0..WAYS {
            let i = b * WAYS + way;
            let m = &t.slots[i].meta;
            let idle = FlowTable::idle_ms(m, now);
            if idle > timeout_of(timeouts, m.state) {
                let old = t.clear(i);
                t.place(i, p.tag, slot);
                return Ok(Outcome {
                    inserted: Inserted::Fresh,
                    unpinned: Some(conv(&old.key)),
                    released: [Some(old.meta.next_hop)],
                    expired: true,
                    displaced: 0,
                });
            }
            let embryonic = m.state == FlowState::SynSeen as u8;
            let better = match victim {
                None => true,
                Some((_, ve, vi)) => (embryonic, idle) > (ve, vi),
            };
            if better {
                victim = Some((i, embryonic, idle));
            }
        }
    }
    // Displacement pays off while the table has room; near full, a search of
    // 146 buckets almost always fails after ~1,200 rehashes (16 us measured), so
    // a flood against a full table would cost that per SYN. Evict directly there.
    let nearly_full = t.len >= t.slots.len() - t.slots.len() / 16;
    if !nearly_full && let Some(i) = t.make_room(p, hasher) {
        t.place(i, p.tag, slot);
        return Ok(Outcome {
            inserted: Inserted::Fresh,
            unpinned: None,
            released: [None],
            expired: false,
            displaced: 1,
        });
    }
    let Some((i, _, _)) = victim else {
        return Err(FlowError::NoCapacity);
    };
    let old = t.clear(i);
    t.place(i, p.tag, slot);
    Ok(Outcome {
        inserted: Inserted::Evicted(conv(&old.key)),
        unpinned: Some(conv(&old.key)),
        released: [Some(old.meta.next_hop)],
        expired: false,
        displaced: 0,
    })
}
