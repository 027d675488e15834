//! Admission of TLS handshakes: a bound on the handshakes in progress, in total and
//! per source address, so silent or slow connections cannot hold up the others.
//! Shared by the signalling listener and the router's management API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Bounds on the TLS handshakes a listener runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Longest one handshake may take; the connection is closed after it.
    pub timeout: Duration,
    /// Handshakes in progress at once; a connection beyond is closed at once.
    pub max_pending: usize,
    /// Handshakes in progress at once from one source address; a connection
    /// beyond is closed at once.
    pub max_pending_per_source: usize,
}

impl HandshakeLimits {
    /// Default handshake deadline.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default bound on handshakes in progress.
    pub const DEFAULT_MAX_PENDING: usize = 256;
    /// Default bound on handshakes in progress from one source address.
    pub const DEFAULT_MAX_PENDING_PER_SOURCE: usize = 8;
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Self::DEFAULT_TIMEOUT,
            max_pending: Self::DEFAULT_MAX_PENDING,
            max_pending_per_source: Self::DEFAULT_MAX_PENDING_PER_SOURCE,
        }
    }
}

/// Why a connection was not admitted to a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeRefusal {
    /// `max_pending` handshakes are in progress.
    #[error("{limit} TLS handshakes already in progress")]
    PendingLimit {
        /// The bound.
        limit: usize,
    },
    /// `max_pending_per_source` handshakes from this address are in progress.
    #[error("{limit} TLS handshakes from {address} already in progress")]
    PerSourceLimit {
        /// The source address.
        address: IpAddr,
        /// The bound.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct Pending {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Counts the handshakes in progress and admits new ones within the limits.
#[derive(Debug)]
pub struct HandshakeGate {
    limits: HandshakeLimits,
    pending: Mutex<Pending>,
}

impl HandshakeGate {
    /// A gate with nothing pending.
    pub fn new(limits: HandshakeLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            pending: Mutex::new(Pending::default()),
        })
    }

    /// The limits.
    pub fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The counts stay consistent under a panic elsewhere: each update is one
        // statement pair with nothing that can panic between.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one handshake from `source`, or says which bound refuses it. The
    /// slot is held until the returned value is dropped.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<HandshakeSlot, HandshakeRefusal> {
        let mut p = self.lock();
        if p.total >= self.limits.max_pending {
            return Err(HandshakeRefusal::PendingLimit {
                limit: self.limits.max_pending,
            });
        }
        let n = p.by_source.entry(source).or_insert(0);
        if *n >= self.limits.max_pending_per_source {
            return Err(HandshakeRefusal::PerSourceLimit {
                address: source,
                limit: self.limits.max_pending_per_source,
            });
        }
        *n += 1;
        p.total += 1;
        Ok(HandshakeSlot {
            gate: Arc::clone(self),
            source,
        })
    }
}

/// One admitted handshake; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot {
    gate: Arc<HandshakeGate>,
    source: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut p = self.gate.lock();
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn bounds_in_total_and_per_source_and_frees_on_drop() {
        let gate = HandshakeGate::new(HandshakeLimits {
            timeout: Duration::from_secs(1),
            max_pending: 3,
            max_pending_per_source: 2,
        });
        let a1 = gate.admit(ip(1)).unwrap();
        let _a2 = gate.admit(ip(1)).unwrap();
        assert_eq!(
            gate.admit(ip(1)).unwrap_err(),
            HandshakeRefusal::PerSourceLimit {
                address: ip(1),
                limit: 2
            }
        );
        let b1 = gate.admit(ip(2)).unwrap();
        assert_eq!(
            gate.admit(ip(3)).unwrap_err(),
            HandshakeRefusal::PendingLimit { limit: 3 }
        );
        assert_eq!(gate.pending(), 3);
        drop(a1);
        assert_eq!(gate.pending(), 2);
        let _a3 = gate.admit(ip(1)).unwrap();
        drop(b1);
        assert!(
            !gate.lock().by_source.contains_key(&ip(2)),
            "emptied sources are forgotten"
        );
    }
}
