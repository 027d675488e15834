//! Native test harness (host targets only): call a policy or a scheduler through
//! the very byte encoding the host uses, without wasm.
//!
//! Each call encodes the request and candidates into an I/O-buffer-shaped byte
//! array with [`encode_io`], decodes them back with [`decode_io`] (so a layout or
//! codec bug shows up in the author's own tests), runs the policy, and decodes its
//! answer with [`Decision::from_raw`] exactly as the host does.

use std::net::{IpAddr, SocketAddr};
use std::vec;
use std::vec::Vec;

use crate::{
    AbiError, Candidate, Decision, FlowRequest, IO_BUFFER_SIZE, MAX_CANDIDATES, RankRequest,
    decode_io, encode_io, layout, proto, rank_from_raw, rank_to_raw,
};

/// A TCP flow request from `src` to `dst` (site level, subnet 0, time 0).
#[must_use]
pub fn tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> FlowRequest {
    FlowRequest::new(proto::TCP, src.into(), dst.into())
}

/// A UDP flow request from `src` to `dst`.
#[must_use]
pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> FlowRequest {
    FlowRequest::new(proto::UDP, src.into(), dst.into())
}

/// Fluent builder of a candidate list.
#[derive(Debug, Clone, Default)]
pub struct Candidates(Vec<Candidate>);

impl Candidates {
    /// An empty list.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an UP candidate.
    #[must_use]
    pub fn up(mut self, addr: impl Into<IpAddr>, load: f64, route_cost: f64) -> Self {
        self.0.push(Candidate::up(addr.into(), load, route_cost));
        self
    }

    /// Appends a candidate that is not UP.
    #[must_use]
    pub fn down(mut self, addr: impl Into<IpAddr>, load: f64, route_cost: f64) -> Self {
        self.0.push(Candidate::down(addr.into(), load, route_cost));
        self
    }

    /// Appends any candidate.
    #[must_use]
    pub fn push(mut self, candidate: Candidate) -> Self {
        self.0.push(candidate);
        self
    }

    /// Sets operator tags on the last candidate added.
    #[must_use]
    pub fn tagged(mut self, tags: u16) -> Self {
        if let Some(last) = self.0.pop() {
            self.0.push(last.with_tags(tags));
        }
        self
    }

    /// The list.
    #[must_use]
    pub fn build(self) -> Vec<Candidate> {
        self.0
    }
}

/// Round-trips request and candidates through the I/O buffer bytes and hands the
/// decoded values to `f`.
fn through_buffer<R>(
    request: &FlowRequest,
    candidates: &[Candidate],
    f: impl FnOnce(&FlowRequest, &[Candidate]) -> R,
) -> Result<R, AbiError> {
    let mut bytes = vec![0_u8; IO_BUFFER_SIZE];
    encode_io(request, candidates, &mut bytes)?;
    let mut decoded = vec![Candidate::ZEROED; MAX_CANDIDATES];
    let (request, decoded) = decode_io(&bytes, candidates.len(), &mut decoded)?;
    Ok(f(&request, decoded))
}

/// Calls a `select` policy as the host calls `pronto_select`.
pub fn select(
    policy: impl FnOnce(&FlowRequest, &[Candidate]) -> Decision,
    request: &FlowRequest,
    candidates: &[Candidate],
) -> Result<Decision, AbiError> {
    let raw = through_buffer(request, candidates, |request, decoded| {
        policy(request, decoded).to_raw(decoded.len())
    })?;
    Decision::from_raw(raw, candidates.len())
}

/// Calls an `aggregate` (G) function as the host calls `pronto_aggregate`.
pub fn aggregate(
    g: impl FnOnce(&[Candidate]) -> f64,
    candidates: &[Candidate],
) -> Result<f64, AbiError> {
    // The request part of the buffer is ignored by G; any valid one will do.
    let unused = tcp(([0, 0, 0, 0], 0), ([0, 0, 0, 0], 0));
    through_buffer(&unused, candidates, |_, decoded| g(decoded))
}

/// Calls a cost (F) function as the host calls `pronto_cost` (two `f64` in, one
/// out: no buffer involved); here for symmetry.
pub fn cost(f: impl FnOnce(f64, f64) -> f64, load: f64, route_cost: f64) -> f64 {
    f(load, route_cost)
}

/// Calls a scheduler's rank function as the host calls `pronto_rank`: the request
/// goes through the I/O buffer bytes, the answer through [`rank_to_raw`] and
/// [`rank_from_raw`] (so a rank above [`crate::MAX_RANK`] comes back saturated).
pub fn rank(f: impl FnOnce(&RankRequest) -> u64, request: &RankRequest) -> Result<u64, AbiError> {
    let mut bytes = vec![0_u8; IO_BUFFER_SIZE];
    request.encode(&mut bytes[layout::IO_RANK])?;
    let decoded = RankRequest::decode(&bytes[layout::IO_RANK])?;
    rank_from_raw(rank_to_raw(f(&decoded)))
}
