//! The host's open TCP sockets, for its load figure and its stalled-connection
//! scan: netlink sock_diag with the state filter applied in the kernel (only
//! open states; the thousands of TIME_WAIT sockets a load test leaves are never
//! read), falling back to `/proc/net/tcp*` text where the kernel has no
//! inet_diag (logged once).

use router_core::linux::sock_diag::{SockDiag, TcpSocket, state};
use signaling::SubnetPrefix;
use tracing::warn;

use super::proc_tcp::TcpSocketLine;

/// States a served connection can be in while it still carries data.
const OPEN: u32 = state::bit(state::ESTABLISHED)
    | state::bit(state::FIN_WAIT1)
    | state::bit(state::CLOSE_WAIT)
    | state::bit(state::LAST_ACK)
    | state::bit(state::CLOSING);

/// See the module documentation.
#[derive(Debug)]
pub(super) struct TcpSockets {
    diag: Option<SockDiag>,
}

impl TcpSockets {
    /// A sock_diag socket in this namespace, or the `/proc` fallback.
    pub(super) fn open() -> Self {
        let diag = SockDiag::open()
            .inspect_err(
                |e| warn!(error = %e, "sock_diag unavailable: reading /proc/net/tcp instead"),
            )
            .ok();
        Self { diag }
    }

    /// Open TCP sockets (at most `max`), or `None` when the fallback applies.
    pub(super) fn open_sockets(&mut self, max: usize) -> Option<Vec<TcpSocketLine>> {
        let mut out = Vec::new();
        self.dump(OPEN, |s| {
            if out.len() < max {
                out.push(line_of(s));
            }
        })?;
        Some(out)
    }

    /// ESTABLISHED sockets whose local address is in `subnets`, or `None`
    /// when the fallback applies.
    pub(super) fn established_on(&mut self, subnets: &[SubnetPrefix]) -> Option<u32> {
        let mut n = 0u32;
        self.dump(state::bit(state::ESTABLISHED), |s| {
            if subnets.iter().any(|p| p.contains(s.local.ip())) {
                n = n.saturating_add(1);
            }
        })?;
        Some(n)
    }

    fn dump(&mut self, states: u32, each: impl FnMut(&TcpSocket)) -> Option<()> {
        let diag = self.diag.as_mut()?;
        match diag.dump_tcp(states, each) {
            Ok(_) => Some(()),
            Err(e) => {
                warn!(error = %e, "sock_diag dump failed: reading /proc/net/tcp from now on");
                self.diag = None;
                None
            }
        }
    }
}

fn line_of(s: &TcpSocket) -> TcpSocketLine {
    TcpSocketLine {
        local: s.local,
        remote: s.remote,
        state: s.state,
        tx_queue: s.send_queue,
        retransmits: s.retransmits,
    }
}
