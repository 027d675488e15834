//! WHOHAS (DESIGN.md §5): an SLR that meets a mid-connection packet of a flow it
//! has no state for asks its upper level and its configured same-level
//! neighbours who has the flow pinned, and re-creates the state from a checked
//! answer. The bookkeeping lives here; [`crate::SlrControl`] owns one
//! `Recovery` and routes session events to it.
//!
//! Scope is one hop: queries go to the upper level and the listed neighbours
//! with `ttl: 0`, and an SLR answers from its own table without forwarding
//! (a received `ttl` is ignored). An answer is installed only if its query is
//! outstanding, came from a session that was asked (once each), names the
//! query's flow, points at a unicast address that is not ours, and the flow is
//! not pinned here by then; every refusal has its counter in [`RecoveryStats`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ring::hmac;
use router_core::api::RouterApi;
use router_core::classify::FlowKey;
use router_core::policy::Level;
use router_core::time::Instant;
use tracing::debug;

use super::advert::is_endpoint;
use super::limit::{RateLimit, TokenBucket};
use crate::message::{FlowRecord, NodeName, WhoHas, WhoHasAnswer};
use crate::slr::SessionId;

/// Most neighbour names in a [`RecoveryScope`].
pub const MAX_NEIGHBOURS: usize = 64;
/// Most spare names in a [`RecoveryScope`].
pub const MAX_SPARES: usize = 8;
/// Most local addresses in a [`RecoveryScope`].
pub const MAX_LOCAL_ADDRS: usize = 64;

/// Limits of state recovery at one SLR (part of [`crate::SlrConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// WHOHAS queries this SLR starts ([`crate::SlrControl::recover`]).
    pub query_rate: RateLimit,
    /// WHOHAS queries answered, per asking session.
    pub answer_rate: RateLimit,
    /// Most queries outstanding at once (one per flow).
    pub max_pending: usize,
    /// A query unanswered for this long is dropped (the client retransmits).
    pub query_timeout: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            query_rate: RateLimit::new(200, 100),
            answer_rate: RateLimit::new(500, 200),
            max_pending: 4096,
            query_timeout: Duration::from_secs(1),
        }
    }
}

/// Who recovery may talk to and what counts as "us". Not `Copy`, so it is set
/// apart from [`crate::SlrConfig`] with [`crate::SlrControl::set_recovery_scope`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RecoveryScope {
    /// Same-level SLRs (by certificate name) that may exchange WHOHAS with us.
    pub neighbours: Vec<NodeName>,
    /// Names that may register here as [`crate::Role::Spare`] and get the flow
    /// table mirrored.
    pub spares: Vec<NodeName>,
    /// This router's own addresses: an answer pinning a flow to one is refused.
    pub local_addrs: Vec<IpAddr>,
    /// Secret keying query ids so they cannot be predicted; the shell fills it
    /// from a CSPRNG (all zeros: predictable ids, for tests).
    pub query_secret: [u8; 32],
}

impl fmt::Debug for RecoveryScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryScope")
            .field("neighbours", &self.neighbours)
            .field("spares", &self.spares)
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

/// What [`crate::SlrControl::recover`] did for a flow without state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoverOutcome {
    /// A WHOHAS query went to `asked` sessions.
    Queried {
        /// The query's id.
        query_id: u64,
        /// Sessions asked.
        asked: usize,
    },
    /// The flow is pinned here after all (state arrived meanwhile).
    Pinned {
        /// Its next hop.
        next_hop: IpAddr,
    },
    /// A query for this flow is already outstanding.
    Pending,
    /// Over the query rate limit.
    RateLimited,
    /// Too many queries outstanding.
    PendingFull,
    /// Nobody to ask (no registered upper level or neighbour).
    NoScope,
}

/// Counters of state recovery; every refusal has its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Queries started.
    pub queries: u64,
    /// WHOHAS messages sent (a query goes to several sessions).
    pub whohas_sent: u64,
    /// recover() found the flow pinned.
    pub recover_pinned: u64,
    /// recover() joined an outstanding query.
    pub recover_coalesced: u64,
    /// recover() over the rate limit.
    pub recover_rate_limited: u64,
    /// recover() with the pending map full.
    pub recover_pending_full: u64,
    /// recover() with nobody to ask.
    pub recover_no_scope: u64,
    /// Queries that timed out.
    pub queries_expired: u64,
    /// Queries every asked session answered "unknown".
    pub queries_not_found: u64,
    /// Answers installed.
    pub answers_installed: u64,
    /// "Unknown" answers.
    pub answers_negative: u64,
    /// Refused: no such query outstanding (unsolicited, late or guessed id).
    pub answer_not_pending: u64,
    /// Refused: from a session the query was not sent to.
    pub answer_not_asked: u64,
    /// Refused: the record's key is not the query's.
    pub answer_key_mismatch: u64,
    /// Refused: the record pins the flow to one of our own addresses.
    pub answer_points_at_us: u64,
    /// Refused: the record's next hop is not a unicast endpoint.
    pub answer_bad_next_hop: u64,
    /// Refused: the flow is pinned here already (never overwritten).
    pub answer_already_pinned: u64,
    /// Refused: the engine would not install it.
    pub answer_engine_refused: u64,
    /// WHOHAS queries answered.
    pub whohas_answered: u64,
    /// ... of which with "unknown".
    pub whohas_unknown: u64,
    /// WHOHAS queries refused by the per-session rate limit.
    pub whohas_rate_limited: u64,
    /// WHOHAS or answers from sessions that may not send them.
    pub whohas_refused_session: u64,
    /// Neighbour sessions registered.
    pub neighbours_registered: u64,
    /// Same-level registrations refused (name not listed, wrong level).
    pub neighbours_refused: u64,
    /// Spare sessions registered.
    pub spares_registered: u64,
    /// Spare registrations refused (name not listed, wrong level).
    pub spares_refused: u64,
    /// Advertisements that installed a flow.
    pub adverts_installed: u64,
    /// Advertisements for a flow already pinned to the server.
    pub adverts_current: u64,
    /// Advertisements relayed along an existing pin.
    pub adverts_relayed: u64,
    /// Advertisements for a VIP not served here.
    pub adverts_not_served: u64,
    /// Advertisements naming one of our addresses or a non-unicast server.
    pub adverts_bad_server: u64,
    /// Advertisements the engine refused.
    pub adverts_engine_refused: u64,
}

#[derive(Debug)]
struct Pending {
    key: FlowKey,
    /// Sessions asked, and whether each has answered.
    asked: Vec<(SessionId, bool)>,
    deadline: Instant,
}

/// A checked, installable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub(crate) key: FlowKey,
    pub(crate) next_hop: IpAddr,
}

/// WHOHAS bookkeeping of one SLR.
pub(crate) struct Recovery {
    pub(crate) cfg: RecoveryConfig,
    pub(crate) scope: RecoveryScope,
    query_key: hmac::Key,
    counter: u64,
    query_bucket: TokenBucket,
    pending: HashMap<u64, Pending>,
    by_key: HashMap<FlowKey, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    answer_buckets: HashMap<SessionId, TokenBucket>,
    pub(crate) stats: RecoveryStats,
}

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("cfg", &self.cfg)
            .field("scope", &self.scope)
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Recovery {
    pub(crate) fn new(cfg: RecoveryConfig, now: Instant) -> Self {
        let scope = RecoveryScope::default();
        Self {
            query_key: hmac::Key::new(hmac::HMAC_SHA256, &scope.query_secret),
            scope,
            counter: 0,
            query_bucket: TokenBucket::new(cfg.query_rate, now),
            pending: HashMap::new(),
            by_key: HashMap::new(),
            deadlines: BTreeSet::new(),
            answer_buckets: HashMap::new(),
            stats: RecoveryStats::default(),
            cfg,
        }
    }

    pub(crate) fn set_scope(&mut self, scope: RecoveryScope) {
        self.query_key = hmac::Key::new(hmac::HMAC_SHA256, &scope.query_secret);
        self.scope = scope;
    }

    pub(crate) fn is_local(&self, ip: IpAddr) -> bool {
        self.scope.local_addrs.contains(&ip)
    }

    /// An unpredictable, currently unused query id: HMAC(secret, counter).
    fn next_query_id(&mut self) -> u64 {
        loop {
            self.counter = self.counter.wrapping_add(1);
            let tag = hmac::sign(&self.query_key, &self.counter.to_be_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&tag.as_ref()[..8]);
            let id = u64::from_be_bytes(b);
            // The map is bounded, so a free id is found at once in practice.
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Starts a query for `key` to `scope` sessions, after the checks of
    /// [`crate::SlrControl::recover`]. Returns the WHOHAS to send.
    pub(crate) fn start<A: RouterApi + ?Sized>(
        &mut self,
        key: FlowKey,
        now: Instant,
        api: &A,
        scope: &[SessionId],
    ) -> Result<WhoHas, RecoverOutcome> {
        if let Some(e) = api.lookup_flow(&key, now) {
            self.stats.recover_pinned += 1;
            return Err(RecoverOutcome::Pinned {
                next_hop: e.next_hop,
            });
        }
        self.expire(now);
        if self.by_key.contains_key(&key) {
            self.stats.recover_coalesced += 1;
            return Err(RecoverOutcome::Pending);
        }
        if scope.is_empty() {
            self.stats.recover_no_scope += 1;
            return Err(RecoverOutcome::NoScope);
        }
        if self.pending.len() >= self.cfg.max_pending {
            self.stats.recover_pending_full += 1;
            return Err(RecoverOutcome::PendingFull);
        }
        if !self.query_bucket.take(now) {
            self.stats.recover_rate_limited += 1;
            return Err(RecoverOutcome::RateLimited);
        }
        let query_id = self.next_query_id();
        let deadline = now + self.cfg.query_timeout;
        self.pending.insert(
            query_id,
            Pending {
                key,
                asked: scope.iter().map(|s| (*s, false)).collect(),
                deadline,
            },
        );
        self.by_key.insert(key, query_id);
        self.deadlines.insert((deadline, query_id));
        self.stats.queries += 1;
        self.stats.whohas_sent += scope.len() as u64;
        Ok(WhoHas {
            query_id,
            key,
            ttl: 0,
        })
    }

    fn finish(&mut self, query_id: u64) {
        if let Some(p) = self.pending.remove(&query_id) {
            self.by_key.remove(&p.key);
            self.deadlines.remove(&(p.deadline, query_id));
        }
    }

    /// Drops queries past their deadline.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.stats.queries_expired += 1;
            self.finish(id);
        }
    }

    /// The earliest query deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|d| d.0)
    }

    /// Answers a WHOHAS from `session` (already known to be allowed to ask), or
    /// `None` when over its rate limit.
    pub(crate) fn answer<A: RouterApi + ?Sized>(
        &mut self,
        session: SessionId,
        q: &WhoHas,
        now: Instant,
        api: &A,
    ) -> Option<WhoHasAnswer> {
        let limit = self.cfg.answer_rate;
        let bucket = self
            .answer_buckets
            .entry(session)
            .or_insert_with(|| TokenBucket::new(limit, now));
        if !bucket.take(now) {
            self.stats.whohas_rate_limited += 1;
            return None;
        }
        let entry = api
            .lookup_flow(&q.key, now)
            .map(|e| FlowRecord::from_entry(&e, now));
        self.stats.whohas_answered += 1;
        if entry.is_none() {
            self.stats.whohas_unknown += 1;
        }
        Some(WhoHasAnswer {
            query_id: q.query_id,
            entry,
        })
    }

    /// Forgets per-session state of a session that ended.
    pub(crate) fn session_down(&mut self, session: SessionId) {
        self.answer_buckets.remove(&session);
    }

    /// Checks an answer from `session` and installs it. `Some` when a flow was
    /// re-created.
    pub(crate) fn handle_answer<A: RouterApi + ?Sized>(
        &mut self,
        session: SessionId,
        a: &WhoHasAnswer,
        level: Level,
        now: Instant,
        api: &mut A,
    ) -> Option<Recovered> {
        self.expire(now);
        let Some(p) = self.pending.get_mut(&a.query_id) else {
            self.stats.answer_not_pending += 1;
            debug!(
                session = session.0,
                query_id = a.query_id,
                "WHOHAS answer for no outstanding query refused"
            );
            return None;
        };
        let Some(slot) = p.asked.iter_mut().find(|(s, _)| *s == session) else {
            self.stats.answer_not_asked += 1;
            debug!(
                session = session.0,
                "WHOHAS answer from a session not asked refused"
            );
            return None;
        };
        if slot.1 {
            // Each asked session answers once; a second answer is as unsolicited
            // as one from a session never asked.
            self.stats.answer_not_asked += 1;
            return None;
        }
        slot.1 = true;
        let key = p.key;
        let all_answered = p.asked.iter().all(|(_, done)| *done);
        let Some(rec) = a.entry else {
            self.stats.answers_negative += 1;
            if all_answered {
                self.stats.queries_not_found += 1;
                self.finish(a.query_id);
            }
            return None;
        };
        let refused = if rec.key != key {
            self.stats.answer_key_mismatch += 1;
            Some("key mismatch")
        } else if self.is_local(rec.next_hop) {
            self.stats.answer_points_at_us += 1;
            Some("pinned to us")
        } else if !is_endpoint(rec.next_hop) {
            self.stats.answer_bad_next_hop += 1;
            Some("next hop not unicast")
        } else {
            None
        };
        if let Some(reason) = refused {
            debug!(session = session.0, %key, next_hop = %rec.next_hop, reason, "WHOHAS answer refused");
            if all_answered {
                self.finish(a.query_id);
            }
            return None;
        }
        // Whatever happens now, the query is settled.
        self.finish(a.query_id);
        if api.lookup_flow(&key, now).is_some() {
            self.stats.answer_already_pinned += 1;
            debug!(%key, "WHOHAS answer for a flow pinned here meanwhile: not overwritten");
            return None;
        }
        let mut entry = rec.to_entry(now);
        entry.level = level;
        match api.install_flow(&entry, now) {
            Ok(_) => {
                self.stats.answers_installed += 1;
                debug!(%key, next_hop = %rec.next_hop, "flow state re-created from a WHOHAS answer");
                Some(Recovered {
                    key,
                    next_hop: rec.next_hop,
                })
            }
            Err(e) => {
                self.stats.answer_engine_refused += 1;
                debug!(%key, error = %e, "engine refused a recovered flow");
                None
            }
        }
    }

    /// Queries outstanding.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}
