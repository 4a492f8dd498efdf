//! `POST /drain`, `POST /undrain` and `POST /ready`: the balancer-wide drain of
//! [`crate::drain`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{no_store, status, App};
use crate::state::State;
use crate::status::AdminError;

/// The longest deadline a drain takes.
const MAX_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, serde::Deserialize)]
pub(super) struct DrainQuery {
    /// A duration (`"90s"`, `"10m"`): WebSockets still open then are closed (1001).
    deadline: Option<String>,
}

pub(super) async fn post_drain(
    Extract(app): Extract<Arc<App>>,
    Query(q): Query<DrainQuery>,
) -> Response {
    let deadline = match q.deadline.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => match humantime::parse_duration(d) {
            Ok(d) if d <= MAX_DEADLINE => Some(d),
            Ok(_) => {
                return AdminError::BadRequest(format!(
                    "deadline {d:?} is longer than 30 days; drain without one instead"
                ))
                .into_response()
            }
            Err(e) => {
                return AdminError::BadRequest(format!(
                    "deadline {d:?}: {e} (expected a duration such as \"90s\" or \"10m\")"
                ))
                .into_response()
            }
        },
    };
    let state = &app.ctx.state;
    let was = state.drain.is_draining();
    let epoch = state.drain.start(deadline);
    match deadline {
        Some(d) => tracing::info!(
            "balancer drain {}: /ready answers 503; WebSockets left in {} are closed",
            if was { "deadline changed" } else { "started" },
            humantime::format_duration(d)
        ),
        None if !was => {
            tracing::info!("balancer drain started: /ready answers 503; no deadline")
        }
        None => {}
    }
    if !was {
        metrics::counter!("lb_admin_actions_total", "action" => "balancer_drain").increment(1);
    }
    if let Some(d) = deadline {
        tokio::spawn(close_at_deadline(state.clone(), epoch, d));
    }
    answer(state)
}

pub(super) async fn post_undrain(Extract(app): Extract<Arc<App>>) -> Response {
    let state = &app.ctx.state;
    if state.drain.stop() {
        tracing::info!("balancer drain ended: ready again");
        metrics::counter!("lb_admin_actions_total", "action" => "balancer_ready").increment(1);
    }
    answer(state)
}

fn answer(state: &State) -> Response {
    no_store(Json(status::balancer_drain(state)))
}

/// At the deadline of drain `epoch` (if it is still the drain in force), closes every open
/// WebSocket with 1001.
async fn close_at_deadline(state: Arc<State>, epoch: u64, after: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(after) => {}
        _ = state.shutdown.cancelled() => return,
    }
    if !state.drain.is_epoch(epoch) {
        return;
    }
    let open = state
        .open_tunnels
        .load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!("balancer drain deadline: closing {open} open WebSocket(s)");
    for n in state.registry.all() {
        n.close_tunnels();
    }
}
