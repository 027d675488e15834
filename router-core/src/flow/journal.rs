//! The table's journal for a kernel fast path that mirrors it (see the parent
//! module's docs): the changes, the due list, and settling idle entries with
//! what the fast path saw of them.

use super::*;

/// A change to the set of pinned flows, journaled for a fast path that
/// mirrors the table ([`FlowTable::set_journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowChange {
    /// `key` is pinned to `next_hop` now (a new flow, a replaced or an
    /// imported entry).
    Pinned {
        /// The flow.
        key: FlowKey,
        /// Where it goes.
        next_hop: IpAddr,
    },
    /// `key` is no longer pinned (removed, expired or evicted).
    Unpinned {
        /// The flow.
        key: FlowKey,
    },
}

/// What a fast path saw of a pinned flow the table did not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowActivity {
    /// When it forwarded the flow's last packet (`None`: no packet yet).
    pub last_seen: Option<Instant>,
    /// TCP: a segment without SYN (the handshake is done).
    pub established: bool,
    /// TCP: FIN or RST.
    pub closing: bool,
}

/// Most due keys listed between two [`FlowTable::resolve_due`] calls; the
/// sweep leaves the rest for its next pass.
const MAX_DUE: usize = 4096;

/// The journal of changes and the due list (see the module docs).
#[derive(Debug)]
pub(super) struct Journal {
    changes: std::collections::VecDeque<FlowChange>,
    capacity: usize,
    overflowed: bool,
    pub(super) due: Vec<FlowKey>,
}

impl Journal {
    pub(super) fn record(&mut self, c: FlowChange) {
        if self.changes.len() >= self.capacity {
            self.overflowed = true;
        } else {
            self.changes.push_back(c);
        }
    }
}

impl FlowTable {
    /// Journal pins and unpins for a fast path, at most `capacity` between two
    /// drains (0: no journal, and idle entries expire by the table's own view
    /// again). Turning it on over a non-empty table reports an overflow, so the
    /// consumer starts with a full sync.
    pub fn set_journal(&mut self, capacity: usize) {
        if capacity == 0 {
            self.journal = None;
            return;
        }
        self.journal = Some(Journal {
            changes: std::collections::VecDeque::with_capacity(capacity),
            capacity,
            overflowed: !self.is_empty(),
            due: Vec::with_capacity(MAX_DUE),
        });
    }

    /// Whether the journal is on.
    pub fn journal_on(&self) -> bool {
        self.journal.is_some()
    }

    /// Hand every journaled change to `f`, oldest first. Returns true when
    /// changes were lost since the last drain (the journal was full): the
    /// consumer must then resync from [`FlowTable::export`].
    pub fn drain_changes(&mut self, mut f: impl FnMut(FlowChange)) -> bool {
        let Some(j) = &mut self.journal else {
            return false;
        };
        for c in j.changes.drain(..) {
            f(c);
        }
        // Back to the front of the ring: popping alone moves its head on, so
        // a steady trickle of changes would walk (and make resident) every
        // page of the preallocated ring, which a SYN flood showed as RSS.
        j.changes.clear();
        std::mem::take(&mut j.overflowed)
    }

    /// Fold what a fast path saw of `key` (a TCP state change it reports as it
    /// happens) into its entry; false if the flow is not pinned.
    pub fn refresh(&mut self, key: &FlowKey, activity: &FlowActivity, now: Instant) -> bool {
        let hasher = &self.hasher;
        with_family!(
            self,
            key,
            |t, k, _conv| {
                let Some(i) = t.find(t.probe(hasher.hash_one(k)), &k) else {
                    return false;
                };
                refresh(&mut t.slots[i].meta, activity, now);
                true
            },
            false
        )
    }

    /// Settle the entries the sweep found idle (journal on): `activity` tells
    /// what the fast path saw of each; an entry active since is refreshed (last
    /// packet, TCP state), one still idle past its state's timeout is removed
    /// (counted as expired, journaled as unpinned). Returns how many expired.
    pub fn resolve_due(
        &mut self,
        now: Instant,
        mut activity: impl FnMut(&FlowKey) -> Option<FlowActivity>,
    ) -> usize {
        let Some(j) = &mut self.journal else {
            return 0;
        };
        let mut due = std::mem::take(&mut j.due);
        let mut expired = 0;
        for key in &due {
            let act = activity(key);
            let timeouts = self.timeouts;
            let hasher = &self.hasher;
            let idle = with_family!(
                self,
                key,
                |t, k, _conv| {
                    let Some(i) = t.find(t.probe(hasher.hash_one(k)), &k) else {
                        continue;
                    };
                    let meta = &mut t.slots[i].meta;
                    if let Some(a) = act {
                        refresh(meta, &a, now);
                    }
                    Self::idle_ms(meta, now) > timeout_of(&timeouts, meta.state)
                },
                continue
            );
            if idle && self.remove(key, now).is_some() {
                // Counted as expired, not as a removal on request.
                self.stats.removed -= 1;
                self.stats.expired += 1;
                expired += 1;
            }
        }
        due.clear();
        if let Some(j) = &mut self.journal {
            j.due = due;
        }
        expired
    }
}

/// Fold a fast path's activity into an entry.
fn refresh(meta: &mut Meta, a: &FlowActivity, now: Instant) {
    if let Some(seen) = a.last_seen {
        let seen_ms = seen.min(now).as_millis() as u32;
        // Wrapping millisecond stamps: newer when the difference is "positive".
        if seen_ms.wrapping_sub(meta.last_seen_ms) < u32::MAX / 2 {
            meta.last_seen_ms = seen_ms;
        }
    }
    let state = FlowState::from_u8(meta.state);
    if matches!(
        state,
        FlowState::SynSeen | FlowState::Established | FlowState::Closing
    ) {
        // A new connection on a closed flow's ports is the engine's to place
        // (the program hands its SYN on), so the kernel never reopens a flow.
        let next = if a.closing {
            FlowState::Closing
        } else if a.established && state == FlowState::SynSeen {
            FlowState::Established
        } else {
            state
        };
        meta.state = next as u8;
    }
}

/// List the idle entries of up to `max_buckets` buckets (from the sweep cursor)
/// as due, without removing them.
pub(super) fn due_in<K: SlotKey>(
    t: &mut Table<K>,
    timeouts: &Timeouts,
    now: Instant,
    max_buckets: usize,
    conv: fn(&K) -> FlowKey,
    due: &mut Vec<FlowKey>,
) {
    let n = t.buckets();
    if n == 0 {
        return;
    }
    for _ in 0..max_buckets.min(n) {
        let b = t.sweep_cursor;
        let idle: usize = (0..WAYS)
            .filter(|&way| {
                let s = &t.slots[b * WAYS + way];
                tag_of(t.tags[b], way) != 0
                    && FlowTable::idle_ms(&s.meta, now) > timeout_of(timeouts, s.meta.state)
            })
            .count();
        if due.len() + idle > MAX_DUE {
            // This bucket first on the next pass.
            return;
        }
        for way in 0..WAYS {
            let s = &t.slots[b * WAYS + way];
            if tag_of(t.tags[b], way) != 0
                && FlowTable::idle_ms(&s.meta, now) > timeout_of(timeouts, s.meta.state)
            {
                due.push(conv(&s.key));
            }
        }
        t.sweep_cursor = if b + 1 == n { 0 } else { b + 1 };
    }
}
