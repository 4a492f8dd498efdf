//! Splicing an upgraded connection (a WebSocket) between the client and its node.
//!
//! Qlik app WebSockets live for hours and are idle most of the time, so an idle tunnel must
//! cost little: on plain TCP on both sides the splice waits for readiness with no buffer and
//! borrows one only while bytes flow. Each direction runs until its reader ends, then
//! half-closes its writer; the tunnel ends when both are done, when nothing moved for the idle
//! timeout, or when it is told to close (shutdown, or its node removed past the drain deadline).
//! On such a close, a WebSocket close frame with code 1001 ("going away") is sent to the client
//! when the node-to-client stream is at a frame boundary.

mod frames;
mod generic;
mod takeover;
mod tcp;

pub use frames::FrameTracker;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::{OnUpgrade, Upgraded};
use tokio_util::sync::CancellationToken;

use crate::snapshot::{Node, Snapshot};
use crate::state::State;
use crate::upstream::pool::UpBody;
use takeover::{client_side, node_side, Side};

/// Close frame from a server: FIN + opcode 8, unmasked, 2-byte payload 1001.
const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// How long one direction may go on after the other has ended (HAProxy's `timeout
/// client-fin`): a peer that keeps a half-closed tunnel open does not hold it forever.
const FIN_LINGER: Duration = Duration::from_secs(5);

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One side closed and the other followed, or an I/O error.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// Closed by the balancer (shutdown or node removal).
    Closing,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Closing => "closed_by_balancer",
        }
    }
}

pub use crate::meter::Counts;

/// Runs the tunnel of an upgraded request once both sides have switched protocols, in the
/// tracker that shutdown drains.
pub(crate) fn spawn(
    state: &Arc<State>,
    snap: &Snapshot,
    node: &Node,
    client: OnUpgrade,
    node_upgrade: OnUpgrade,
    node_conn: Option<SendRequest<UpBody>>,
) {
    let node_state = node.state.clone();
    let idle = snap.config.websocket.idle_timeout;
    let close = node_state.tunnels_token();
    let tracker = state.tunnels.clone();
    let state = state.clone();
    let fut = async move {
        let upgraded = tokio::try_join!(client, node_upgrade);
        // The node connection's handle was kept until the upgrade completed.
        drop(node_conn);
        let (c, n) = match upgraded {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(node = %node_state.id, "upgrade failed: {e}");
                return;
            }
        };
        let gauges = &state.metrics_handles;
        node_state.open_tunnels.fetch_add(1, Ordering::Relaxed);
        state.open_tunnels.fetch_add(1, Ordering::Relaxed);
        gauges.open_tunnels.increment(1.0);
        // Counted while it flows: scrapes collect from the open tunnels' counters.
        let ticket = state.ws_meters.open();
        let end = splice(c, n, idle, &close, &state.tunnels_close, &ticket.counts).await;
        let to_node = ticket.counts.to_node.load(Ordering::Relaxed);
        let to_client = ticket.counts.to_client.load(Ordering::Relaxed);
        state.ws_meters.close(ticket);
        node_state.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        state.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        gauges.open_tunnels.decrement(1.0);
        metrics::counter!("lb_websockets_closed_total", "reason" => end.as_str()).increment(1);
        tracing::debug!(node = %node_state.id, end = end.as_str(), to_node, to_client, "websocket closed");
    };
    tracker.spawn(fut);
}

/// Splices the two upgraded connections until the tunnel ends.
/// `close` and `close_all` both end the tunnel: the node's own token (removed past its drain
/// deadline) and the balancer's (shutdown).
pub async fn splice(
    client: Upgraded,
    node: Upgraded,
    idle: Duration,
    close: &CancellationToken,
    close_all: &CancellationToken,
    counts: &Counts,
) -> End {
    let closing = Closing(close, close_all);
    match (client_side(client), node_side(node)) {
        (Side::Tcp(c, cpre), Side::Tcp(n, npre)) => {
            tcp::splice_tcp(c, cpre, n, npre, idle, &closing, counts).await
        }
        (c, n) => generic::splice_generic(c.boxed(), n.boxed(), idle, &closing, counts).await,
    }
}

/// The two ways a tunnel is told to close.
struct Closing<'a>(&'a CancellationToken, &'a CancellationToken);

impl Closing<'_> {
    async fn cancelled(&self) {
        tokio::select! {
            _ = self.0.cancelled() => {}
            _ = self.1.cancelled() => {}
        }
    }
}
