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
use crate::sticky::table::SessionKey;
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

/// Both sides of a protocol switch: the client's and the node's pending upgrades, and the node
/// connection's handle, kept until the upgrade completes.
pub(crate) struct Upgrade {
    pub client: OnUpgrade,
    pub node: OnUpgrade,
    pub node_conn: Option<SendRequest<UpBody>>,
}

/// Runs the tunnel of an upgraded request once both sides have switched protocols, in the
/// tracker that shutdown drains. `keep` lives as long as the tunnel (the client connection's
/// place in the limits); `session` is refreshed in the sticky table while bytes move.
pub(crate) fn spawn(
    state: &Arc<State>,
    snap: &Snapshot,
    node: &Node,
    upgrade: Upgrade,
    keep: impl Send + Sync + 'static,
    session: Option<SessionKey>,
) {
    let Upgrade {
        client,
        node: node_upgrade,
        node_conn,
    } = upgrade;
    let node_state = node.state.clone();
    let idle = snap.config.websocket.idle_timeout;
    let stall = write_stall_bound(idle, snap.config.listener.send_timeout);
    let touch_every = touch_period(snap.config.sticky.session_idle_timeout);
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
        let counts = &ticket.counts;
        let end = {
            let spliced = splice(c, n, (idle, stall), &close, &state.tunnels_close, counts);
            match &session {
                None => spliced.await,
                Some(key) => {
                    let refresh = keep_session(&state, key, counts, touch_every);
                    tokio::pin!(spliced);
                    // In this order, without a random start: the tunnel is what wakes it.
                    tokio::select! {
                        biased;
                        end = &mut spliced => end,
                        never = refresh => match never {},
                    }
                }
            }
        };
        let to_node = counts.to_node.load(Ordering::Relaxed);
        let to_client = counts.to_client.load(Ordering::Relaxed);
        state.ws_meters.close(ticket);
        node_state.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        state.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        gauges.open_tunnels.decrement(1.0);
        metrics::counter!("lb_websockets_closed_total", "reason" => end.as_str()).increment(1);
        tracing::debug!(node = %node_state.id, end = end.as_str(), to_node, to_client, "websocket closed");
        drop(keep);
    };
    tracker.spawn(fut);
}

/// How long a tunnel's write may stay blocked (a peer that stopped reading): the idle timeout,
/// or `listener.send_timeout` when shorter. Past it the tunnel ends, so a client that stops
/// reading does not stall the other direction for the whole idle timeout.
fn write_stall_bound(idle: Duration, send_timeout: Duration) -> Duration {
    if send_timeout.is_zero() {
        idle
    } else {
        send_timeout.min(idle)
    }
}

/// How long a blocked write may still finish once the tunnel is told to close, so that its
/// close frame can follow; then the sockets are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often a tunnel refreshes its learned session: a quarter of the sticky idle timeout,
/// between 1 s and 60 s.
fn touch_period(session_idle: Duration) -> Duration {
    (session_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// WebSocket traffic keeps the learned session of its user alive (a user inside one app makes
/// no HTTP request for hours): every `every`, when bytes moved since the last look, the session
/// is refreshed in the sticky table. One timer per tunnel, no work per frame.
async fn keep_session(
    state: &State,
    key: &SessionKey,
    counts: &Counts,
    every: Duration,
) -> std::convert::Infallible {
    let moved =
        || counts.to_node.load(Ordering::Relaxed) + counts.to_client.load(Ordering::Relaxed);
    let mut seen = moved();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = moved();
        if now != seen {
            seen = now;
            let _ = state.sticky.lookup_key(key);
        }
    }
}

/// Splices the two upgraded connections until the tunnel ends. `timeouts` is the idle timeout
/// and the bound on a blocked write.
/// `close` and `close_all` both end the tunnel: the node's own token (removed past its drain
/// deadline) and the balancer's (shutdown).
pub async fn splice(
    client: Upgraded,
    node: Upgraded,
    timeouts: (Duration, Duration),
    close: &CancellationToken,
    close_all: &CancellationToken,
    counts: &Counts,
) -> End {
    let closing = Closing(close, close_all);
    match (client_side(client), node_side(node)) {
        (Side::Tcp(c, cpre), Side::Tcp(n, npre)) => {
            tcp::splice_tcp(c, cpre, n, npre, timeouts, &closing, counts).await
        }
        // TLS on a side: its own (larger) future on the heap, so the plain splice's stays small.
        (c, n) => {
            Box::pin(generic::splice_generic(
                c.boxed(),
                n.boxed(),
                timeouts,
                &closing,
                counts,
            ))
            .await
        }
    }
}

/// The two ways a tunnel is told to close.
struct Closing<'a>(&'a CancellationToken, &'a CancellationToken);

impl Closing<'_> {
    async fn cancelled(&self) {
        // Polled at every readiness event of the tunnel: no random start.
        tokio::select! {
            biased;
            _ = self.0.cancelled() => {}
            _ = self.1.cancelled() => {}
        }
    }
}
