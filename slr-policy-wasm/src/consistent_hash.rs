//! Consistent hash: Maglev (Eisenbud et al., NSDI'16) over the UP candidates,
//! keyed by the flow 5-tuple, so the same flow maps to the same next hop on any
//! router of a cluster and a next hop leaving moves only about 1/N of the flows.
//!
//! The lookup table has [`TABLE_SIZE`] (prime, 65 537) slots, enough for an even
//! spread over all [`sdk::MAX_CANDIDATES`] candidates. It is rebuilt only when the
//! *set* of UP addresses changes, and otherwise reused: next-hop tables list
//! candidates cheapest first, so their order (and loads) change all the time while
//! the set rarely does, and a rebuild costs ~16 M fuel. A call costs one flow hash,
//! an order-independent fingerprint of the UP set and a scan of the candidates.
//! Each candidate's preference list comes from a hash of its *address*, and
//! candidates fill the table in address order, so the table does not depend on the
//! order in which the host lists them. Slots name a position in the sorted UP set,
//! mapped back to the caller's index by address at lookup.

use sdk::{Candidate, Decision, FlowRequest, MAX_CANDIDATES};

/// Module name, as in `manifests/consistent_hash.toml`.
pub const NAME: &str = "consistent_hash";
/// Slots in the Maglev lookup table (prime).
pub const TABLE_SIZE: usize = 65_537;

const OFFSET_SEED: u64 = 0x5052_4f4e_544f_0001;
const SKIP_SEED: u64 = 0x5052_4f4e_544f_0002;
const FLOW_SEED: u64 = 0x5052_4f4e_544f_0003;

/// Murmur3's 64-bit finaliser: spreads FNV's weak low bits.
const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Seeded FNV-1a with a final mix; deterministic across hosts and wasm.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for byte in bytes {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    fmix64(h)
}

/// Hash of the flow 5-tuple (proto, src addr, src port, dst addr, dst port).
#[must_use]
pub fn flow_hash(request: &FlowRequest) -> u64 {
    let mut key = [0_u8; 37];
    let (proto, rest) = key.split_at_mut(1);
    let (src, rest) = rest.split_at_mut(16);
    let (src_port, rest) = rest.split_at_mut(2);
    let (dst, dst_port) = rest.split_at_mut(16);
    proto.copy_from_slice(&[request.proto]);
    src.copy_from_slice(&request.src_addr);
    src_port.copy_from_slice(&request.src_port.to_le_bytes());
    dst.copy_from_slice(&request.dst_addr);
    dst_port.copy_from_slice(&request.dst_port.to_le_bytes());
    hash(FLOW_SEED, &key)
}

/// Slot index of `h` in a table of `TABLE_SIZE` slots.
fn slot_of(h: u64) -> usize {
    // TABLE_SIZE fits in u64 and the remainder fits in usize on every target.
    (h % TABLE_SIZE as u64) as usize
}

/// A Maglev lookup table and the candidate set it was built for.
///
/// All-zero when empty, so a `static` of it costs no bytes in the wasm file.
#[derive(Clone)]
pub struct MaglevTable {
    /// Position + 1 in `addrs` per slot (0 only before the first build).
    slots: [u16; TABLE_SIZE],
    /// The distinct UP addresses the table was built for, sorted.
    addrs: [[u8; 16]; MAX_CANDIDATES],
    n_up: usize,
    /// Wrapping sum of the address hashes of the UP candidates at build time.
    fingerprint: u64,
    built: bool,
    rebuilds: u64,
}

impl core::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MaglevTable")
            .field("n_up", &self.n_up)
            .field("built", &self.built)
            .field("rebuilds", &self.rebuilds)
            .finish_non_exhaustive()
    }
}

impl MaglevTable {
    /// A table built for nothing yet.
    pub const EMPTY: Self = Self {
        slots: [0; TABLE_SIZE],
        addrs: [[0; 16]; MAX_CANDIDATES],
        n_up: 0,
        fingerprint: 0,
        built: false,
        rebuilds: 0,
    };

    /// How many times the table was (re)built.
    #[must_use]
    pub const fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Order-independent fingerprint of the UP candidates' addresses.
    fn fingerprint_of(candidates: &[Candidate]) -> u64 {
        candidates
            .iter()
            .filter(|c| c.is_up())
            .fold(0_u64, |acc, c| acc.wrapping_add(hash(OFFSET_SEED, &c.addr)))
    }

    /// Whether the table was built for exactly this set of UP addresses: the
    /// fingerprint matches and every UP address is in the built set.
    fn built_for(&self, candidates: &[Candidate], fingerprint: u64) -> bool {
        let set = &self.addrs[..self.n_up];
        self.built
            && fingerprint == self.fingerprint
            && candidates
                .iter()
                .filter(|c| c.is_up())
                .all(|c| set.binary_search(&c.addr).is_ok())
    }

    /// Maglev population over the distinct UP addresses (at most `MAX_CANDIDATES`).
    fn rebuild(&mut self, candidates: &[Candidate], fingerprint: u64) {
        self.rebuilds = self.rebuilds.wrapping_add(1);
        self.built = true;
        self.fingerprint = fingerprint;
        let mut n_up = 0;
        for candidate in candidates.iter().filter(|c| c.is_up()) {
            if let Some(slot) = self.addrs.get_mut(n_up) {
                *slot = candidate.addr;
                n_up += 1;
            }
        }
        let set = &mut self.addrs[..n_up];
        set.sort_unstable();
        // Dedup in place: a next hop listed twice gets one share, not two.
        let mut distinct = 0;
        for i in 0..n_up {
            if distinct == 0 || set[i] != set[distinct - 1] {
                set[distinct] = set[i];
                distinct += 1;
            }
        }
        self.n_up = distinct;
        self.slots.fill(0);
        if distinct == 0 {
            return;
        }
        let set = &self.addrs[..distinct];
        let m = TABLE_SIZE as u64;
        let mut position = [0_u64; MAX_CANDIDATES];
        let mut skip = [0_u64; MAX_CANDIDATES];
        for (j, addr) in set.iter().enumerate() {
            position[j] = hash(OFFSET_SEED, addr) % m;
            skip[j] = hash(SKIP_SEED, addr) % (m - 1) + 1;
        }
        let mut filled = 0;
        'fill: loop {
            for j in 0..distinct {
                // `skip` is in 1..m and m is prime, so each candidate's sequence
                // visits every slot and this inner loop ends.
                loop {
                    let slot = position[j] as usize;
                    position[j] = (position[j] + skip[j]) % m;
                    if self.slots[slot] == 0 {
                        // j < MAX_CANDIDATES = 256, so j + 1 fits in u16.
                        self.slots[slot] = j as u16 + 1;
                        filled += 1;
                        break;
                    }
                }
                if filled == TABLE_SIZE {
                    break 'fill;
                }
            }
        }
    }

    /// Chooses for `request`, rebuilding first if the candidate set changed.
    /// Returns the decision and whether a rebuild happened.
    pub fn select_tracking(
        &mut self,
        request: &FlowRequest,
        candidates: &[Candidate],
    ) -> (Decision, bool) {
        if candidates.len() > MAX_CANDIDATES {
            return (Decision::Reject, false);
        }
        let fingerprint = Self::fingerprint_of(candidates);
        let rebuilt = !self.built_for(candidates, fingerprint);
        if rebuilt {
            self.rebuild(candidates, fingerprint);
        }
        if self.n_up == 0 {
            return (Decision::Reject, rebuilt);
        }
        let addr = self
            .slots
            .get(slot_of(flow_hash(request)))
            .and_then(|&entry| usize::from(entry).checked_sub(1))
            .and_then(|j| self.addrs[..self.n_up].get(j));
        let decision = addr
            .and_then(|a| candidates.iter().position(|c| c.is_up() && c.addr == *a))
            .map_or(Decision::Reject, Decision::Select);
        (decision, rebuilt)
    }

    /// The policy with this table as its state.
    pub fn select(&mut self, request: &FlowRequest, candidates: &[Candidate]) -> Decision {
        self.select_tracking(request, candidates).0
    }
}

#[cfg(test)]
mod tests {
    use std::boxed::Box;
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::vec::Vec;

    use sdk::harness::{self, Candidates};
    use sdk::{Candidate, Decision, FlowRequest};

    use super::MaglevTable;

    /// splitmix64: a seeded, dependency-free flow generator.
    fn flows(count: usize, mut seed: u64) -> Vec<FlowRequest> {
        let mut next = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            super::fmix64(seed)
        };
        (0..count)
            .map(|_| {
                let r = next();
                let ip = Ipv4Addr::from((r >> 32) as u32);
                harness::tcp((ip, r as u16), ([192, 200, 0, 10], 80))
            })
            .collect()
    }

    fn servers(n: u8) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate::up(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i + 1)), 0.5, 0.0))
            .collect()
    }

    /// Chosen address per flow, through the harness byte path.
    fn assign(table: &mut MaglevTable, flows: &[FlowRequest], c: &[Candidate]) -> Vec<IpAddr> {
        flows
            .iter()
            .map(|f| match harness::select(|r, c| table.select(r, c), f, c) {
                Ok(Decision::Select(i)) => c[i].ip(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn spreads_flows_evenly() {
        let mut table = Box::new(MaglevTable::EMPTY);
        let c = servers(10);
        let f = flows(20_000, 1);
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for ip in assign(&mut table, &f, &c) {
            *counts.entry(ip).or_default() += 1;
        }
        assert_eq!(counts.len(), 10);
        for (ip, n) in counts {
            assert!((1_600..=2_400).contains(&n), "{ip} got {n} of 20000");
        }
        assert_eq!(
            table.rebuilds(),
            1,
            "the table is reused while the set is unchanged"
        );
    }

    fn check_disruption(before: &[IpAddr], after: &[IpAddr], gone: IpAddr, n: usize) {
        let total = before.len();
        let moved = before.iter().zip(after).filter(|(b, a)| b != a).count();
        let stayed_ok = before.iter().filter(|b| **b != gone).count();
        let moved_needlessly = before
            .iter()
            .zip(after)
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        assert!(
            after.iter().all(|a| *a != gone),
            "a flow still goes to the removed hop"
        );
        // Ideal: exactly the removed hop's flows (~1/N) move, nobody else.
        assert!(
            moved as f64 / total as f64 <= 1.0 / n as f64 + 0.02,
            "moved {moved} of {total}"
        );
        assert!(
            (moved_needlessly as f64) / (stayed_ok as f64) <= 0.02,
            "{moved_needlessly} of {stayed_ok} flows moved though their hop stayed"
        );
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let f = flows(20_000, 2);
        let c = servers(10);
        let mut table = Box::new(MaglevTable::EMPTY);
        let before = assign(&mut table, &f, &c);
        let gone = c[3].ip();

        // Leaves by going down...
        let mut down = c.clone();
        down[3] = Candidate::down(gone, 0.5, 0.0);
        let after_down = assign(&mut table, &f, &down);
        check_disruption(&before, &after_down, gone, 10);

        // ...or by disappearing from the list (indices shift; addresses decide).
        let mut removed = c.clone();
        removed.remove(3);
        let after_removed = assign(&mut table, &f, &removed);
        check_disruption(&before, &after_removed, gone, 10);
        assert_eq!(after_down, after_removed);
        // Going down and disappearing leave the same UP set: one rebuild, not two.
        assert_eq!(table.rebuilds(), 2);
    }

    #[test]
    fn reordering_and_load_changes_do_not_rebuild() {
        let f = flows(2_000, 5);
        let c = servers(8);
        let mut table = Box::new(MaglevTable::EMPTY);
        let before = assign(&mut table, &f, &c);
        let mut shuffled = c.clone();
        shuffled.reverse();
        for (i, cand) in shuffled.iter_mut().enumerate() {
            cand.load = i as f64 / 10.0;
        }
        let after = assign(&mut table, &f, &shuffled);
        assert_eq!(before, after, "same flows, same next hops");
        assert_eq!(table.rebuilds(), 1);
    }

    #[test]
    fn listing_order_does_not_matter() {
        let f = flows(2_000, 3);
        let c = servers(7);
        let mut reversed = c.clone();
        reversed.reverse();
        let mut table = Box::new(MaglevTable::EMPTY);
        assert_eq!(
            assign(&mut table, &f, &c),
            assign(&mut table, &f, &reversed)
        );
    }

    #[test]
    fn down_is_never_chosen_and_none_up_rejects() {
        let mut table = Box::new(MaglevTable::EMPTY);
        let req = harness::tcp(([10, 0, 0, 1], 1), ([192, 200, 0, 10], 80));
        let none = Candidates::new().down([10, 1, 0, 1], 0.0, 0.0).build();
        assert_eq!(
            harness::select(|r, c| table.select(r, c), &req, &none),
            Ok(Decision::Reject)
        );
        assert_eq!(
            harness::select(|r, c| table.select(r, c), &req, &[]),
            Ok(Decision::Reject)
        );
        let one = Candidates::new()
            .down([10, 1, 0, 1], 0.0, 0.0)
            .up([10, 1, 0, 2], 0.0, 0.0)
            .down([10, 1, 0, 3], 0.0, 0.0)
            .build();
        for f in flows(500, 4) {
            assert_eq!(
                harness::select(|r, c| table.select(r, c), &f, &one),
                Ok(Decision::Select(1))
            );
        }
    }
}
