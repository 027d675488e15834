//! Policy calls: `pronto_select` on the router's types or on ABI types.
//!
//! A module that exports `pronto_select_v2` is called through it, with the
//! request as seven word arguments: the host then writes nothing into guest
//! memory for a flow whose candidates are the ones already resident. Modules
//! without it (every module built before the export existed, signed ones
//! included) are called through `pronto_select` with the request written into
//! their I/O buffer, as before.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use router_core::policy::{Candidate, Decision, FlowRequest, Level, Policy, PolicyError};
use sdk::MAX_CANDIDATES;

use super::error::unavailable;
use super::instance::Step;
use super::live::Live;
use super::{CallOutcome, Fault, PolicyInstance};

/// ABI form of the router's request.
fn abi_request(req: &FlowRequest, now_unix_secs: u64) -> sdk::FlowRequest {
    let level = match req.level {
        Level::Network => sdk::Level::Network,
        Level::System => sdk::Level::System,
        Level::Site => sdk::Level::Site,
    };
    sdk::FlowRequest::new(
        req.key.proto,
        SocketAddr::new(req.key.src, req.key.src_port),
        SocketAddr::new(req.key.dst, req.key.dst_port),
    )
    .with_subnet(req.subnet.0)
    .with_level(level)
    .with_now(now_unix_secs)
}

/// `abi_request(req, now_unix_secs).to_words()` straight from the router's
/// fields, without the 56-byte request in between (a v2 call needs only these).
fn request_words(req: &FlowRequest, now_unix_secs: u64) -> [u64; sdk::FlowRequest::WORDS] {
    let family = match (req.key.src, req.key.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => sdk::AddressFamily::V4,
        _ => sdk::AddressFamily::V6,
    };
    let level = match req.level {
        Level::Network => sdk::Level::Network,
        Level::System => sdk::Level::System,
        Level::Site => sdk::Level::Site,
    };
    let [src0, src1] = address_words(req.key.src);
    let [dst0, dst1] = address_words(req.key.dst);
    [
        u64::from(req.key.proto)
            | (family as u64) << 8
            | (level as u64) << 16
            | u64::from(req.key.src_port) << 32
            | u64::from(req.key.dst_port) << 48,
        u64::from(req.subnet.0),
        src0,
        src1,
        dst0,
        dst1,
        now_unix_secs,
    ]
}

/// The 16-byte ABI address as two little-endian words.
fn address_words(addr: IpAddr) -> [u64; 2] {
    let value = u128::from_le_bytes(sdk::addr_bytes(addr));
    [value as u64, (value >> 64) as u64]
}

impl PolicyInstance {
    /// `pronto_select` on the router's types; `fuel_limit` caps this call's fuel
    /// below the per-call budget (the caller's CPU share).
    pub fn call_select(
        &self,
        req: &FlowRequest,
        candidates: &[Candidate],
        now_unix_secs: u64,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<Decision> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        self.run(fuel_limit, |live| {
            let in_memory = live.select_v2.is_none();
            let request = in_memory.then(|| abi_request(req, now_unix_secs));
            live.place(request.as_ref(), candidates)?;
            let words = || request_words(req, now_unix_secs);
            Self::select_on(live, words, candidates.len(), |i| {
                candidates.get(i).is_some_and(|c| c.up)
            })
        })
    }

    /// `pronto_select` on ABI types (operator tags included), as the shipped
    /// modules' differential tests drive it.
    pub fn call_select_abi(
        &self,
        req: &sdk::FlowRequest,
        candidates: &[sdk::Candidate],
        fuel_limit: Option<u64>,
    ) -> CallOutcome<Decision> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        self.run(fuel_limit, |live| {
            let in_memory = live.select_v2.is_none();
            live.place_abi(in_memory.then_some(req), candidates)?;
            Self::select_on(
                live,
                || req.to_words(),
                candidates.len(),
                |i| candidates.get(i).is_some_and(sdk::Candidate::is_up),
            )
        })
    }

    /// Calls `pronto_select_v2(n, words())` if the module has it, else
    /// `pronto_select(n)` on the request already in the guest's I/O buffer, on
    /// `n` candidates already there, and validates the answer (`is_up` says
    /// whether the host's candidate `i` is UP).
    fn select_on(
        live: &mut Live,
        words: impl FnOnce() -> [u64; sdk::FlowRequest::WORDS],
        n: usize,
        is_up: impl Fn(usize) -> bool,
    ) -> Result<Decision, Step> {
        // Borrow the handles in place: cloning a TypedFunc touches wasmtime's type
        // registry (atomics and a lock), a third of a call's time.
        let Live {
            store,
            select,
            select_v2,
            ..
        } = live;
        // n <= MAX_CANDIDATES was checked by the caller.
        let count = i32::try_from(n).unwrap_or(i32::MAX);
        let raw = match (select_v2, select) {
            (Some(v2), _) => {
                // Bit-for-bit: the guest reads each word back as a u64.
                let [w0, w1, w2, w3, w4, w5, w6] = words().map(|w| w as i64);
                v2.call(&mut *store, (count, w0, w1, w2, w3, w4, w5, w6))
            }
            (None, Some(v1)) => v1.call(&mut *store, count),
            (None, None) => return Err(unavailable("module exports no pronto_select").into()),
        }
        .map_err(Step::Wasm)?;
        match sdk::Decision::from_raw(raw, n) {
            Ok(sdk::Decision::Reject) => Ok(Decision::Reject),
            Ok(sdk::Decision::Select(index)) if is_up(index) => Ok(Decision::Select(index)),
            Ok(sdk::Decision::Select(index)) => Err(Step::Fault(Fault::DownCandidate {
                index,
                candidates: n,
            })),
            Err(_) => Err(Step::Fault(Fault::BadDecision { raw, candidates: n })),
        }
    }
}

impl Policy for PolicyInstance {
    fn name(&self) -> &str {
        self.module.name()
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let now = self.module.inner.vm.clock.unix_secs.load(Ordering::Relaxed);
        self.call_select(req, candidates, now, None)
            .result
            .map_err(PolicyError::from)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use router_core::classify::FlowKey;
    use router_core::policy::{FlowRequest, Level, SubnetId};

    use super::{abi_request, request_words};

    #[test]
    fn request_words_are_the_abi_request_in_words() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 3, 4));
        let vip = IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
        for (src, dst) in [(v4, vip), (v6, vip), (v4, v6), (v6, v6)] {
            for level in [Level::Network, Level::System, Level::Site] {
                let req = FlowRequest {
                    key: FlowKey {
                        proto: 17,
                        src,
                        src_port: 40_001,
                        dst,
                        dst_port: 443,
                    },
                    subnet: SubnetId(0xdead_beef),
                    level,
                };
                let now = 0x0102_0304_0506_0708;
                assert_eq!(
                    request_words(&req, now),
                    abi_request(&req, now).to_words(),
                    "{src} -> {dst} at {level:?}"
                );
            }
        }
    }
}
