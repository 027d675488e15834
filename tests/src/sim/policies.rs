//! A built-in spreading policy for simulations and the demo (the engine's own
//! built-in is least cost): rendezvous hashing of the flow's five-tuple over the
//! usable candidates, so each new flow lands on a stable pseudo-random next hop.

use router_core::policy::{Candidate, Decision, FlowRequest, Policy, PolicyError};
use std::net::IpAddr;

/// Rendezvous (highest random weight) hashing over the usable candidates.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowHash;

fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

impl Policy for FlowHash {
    fn name(&self) -> &str {
        "sim-flow-hash"
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let k = &req.key;
        let base = fnv1a(
            addr_bytes(k.src)
                .into_iter()
                .chain(addr_bytes(k.dst))
                .chain(k.src_port.to_be_bytes())
                .chain(k.dst_port.to_be_bytes())
                .chain([k.proto]),
            0xCBF2_9CE4_8422_2325,
        );
        let best = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.up)
            .map(|(i, c)| (fnv1a(addr_bytes(c.addr), base), i))
            .max();
        Ok(best.map_or(Decision::Reject, |(_, i)| Decision::Select(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::{FlowKey, Level, SubnetId};

    #[test]
    fn spreads_stably_over_usable_candidates() {
        let cands: Vec<Candidate> = (1..=4u8)
            .map(|i| Candidate {
                addr: IpAddr::from([10, 0, 0, i]),
                load: 0.0,
                route_cost: 0.0,
                up: i != 4,
            })
            .collect();
        let mut hits = [0u32; 4];
        for port in 0..400u16 {
            let req = FlowRequest {
                key: FlowKey {
                    proto: 6,
                    src: IpAddr::from([198, 51, 100, 7]),
                    src_port: port,
                    dst: IpAddr::from([192, 200, 0, 10]),
                    dst_port: 80,
                },
                subnet: SubnetId(0),
                level: Level::Site,
            };
            let Ok(Decision::Select(i)) = FlowHash.select(&req, &cands) else {
                panic!("no choice");
            };
            assert_eq!(FlowHash.select(&req, &cands), Ok(Decision::Select(i)));
            hits[i] += 1;
        }
        assert_eq!(hits[3], 0, "a candidate that is not up is never chosen");
        assert!(hits[..3].iter().all(|&h| h > 80), "{hits:?}");
    }
}
