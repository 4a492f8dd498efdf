//! The choose step: which node serves a request. Precedence: the learned Qlik session (its
//! node must be usable), then a valid route cookie, then a new selection from the snapshot's
//! selector; a pin that cannot be honoured becomes a redispatch and the pin moves.

use std::sync::atomic::Ordering;

use http::header;
use http::HeaderMap;

use crate::clock;
use crate::snapshot::{NodePos, Snapshot};
use crate::state::State;
use crate::status::ProxyError;
use crate::sticky::shared::{self, Kind, Lookup};
use crate::sticky::table::SessionKey;
use crate::sticky::{cookie, route, Decision};
use crate::upstream::{AdminState, NodeIdx};

/// Where a request's pins point. Read without allocating for GUID session values.
pub struct Pins {
    /// A learned session: the position of its node (None if no longer configured) and its key.
    pub learned: Option<(Option<NodePos>, SessionKey)>,
    pub route: RoutePin,
    /// A session cookie was present that the table does not know (the shared store may).
    pub unknown_session: bool,
}

/// What the route cookie says.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RoutePin {
    Absent,
    /// Valid for the node at this position.
    Valid(NodePos),
    /// Validly signed for a node this configuration no longer has.
    Removed,
    /// Tampered or garbage: no pin.
    Invalid,
}

/// The node chosen for a request, how, and the pins it came with.
pub struct Choice {
    pub pos: NodePos,
    pub decision: Decision,
    pub pins: Pins,
    /// The request's first `Cookie` header (a shared handle, no copy): a node that removes a
    /// session cookie names it, and the table forgets the value the request carried under
    /// that name.
    pub cookie: Option<http::HeaderValue>,
}

impl Choice {
    /// The value of the request's cookie `name`, if it carried one.
    pub fn request_cookie(&self, name: &[u8]) -> Option<&[u8]> {
        let v = self.cookie.as_ref()?;
        cookie::pairs(v.as_bytes())
            .find(|(n, _)| **n == *name)
            .map(|(_, v)| v)
    }

    /// The request carries a valid route cookie for the node that serves it (no new cookie).
    pub fn route_cookie_current(&self) -> bool {
        self.pins.route == RoutePin::Valid(self.pos)
    }
}

/// Chooses the node of a request, or [`ProxyError::NoNode`].
pub fn choose(state: &State, snap: &Snapshot, headers: &HeaderMap) -> Result<Choice, ProxyError> {
    decide(state, snap, read_pins(snap, state, headers), headers)
}

/// [`choose`] with a shared store: a session cookie unknown here is looked up there first
/// (once, within `lookup_timeout`) and a hit is learned into the table. A request whose pin is
/// known locally, or without a session cookie, never waits for the store.
pub async fn choose_shared(
    state: &State,
    snap: &Snapshot,
    headers: &HeaderMap,
) -> Result<Choice, ProxyError> {
    let mut pins = read_pins(snap, state, headers);
    if let (Some(store), Some((Some(pos), key))) = (&state.shared, &pins.learned) {
        // A session in use here: its store entry is written again every half idle timeout,
        // in the background, so that it does not expire there while it lives here.
        let idle = snap.config.sticky.session_idle_timeout;
        if state
            .sticky
            .store_refresh_due(key, (idle.as_secs() / 2) as u32)
        {
            store.put_session(&shared::session_value(key), &snap.node(*pos).id, idle);
        }
    }
    if let (Some(store), true) = (
        &state.shared,
        pins.unknown_session && pins.learned.is_none(),
    ) {
        if let Some(value) = first_session_value(snap, headers) {
            if let Lookup::Hit(id) = store.lookup(Kind::Session, value).await {
                if let Some(pos) = snap.pos_of_id(&id) {
                    let key = SessionKey::from_value(value);
                    state
                        .sticky
                        .learn_key(key.clone(), snap.node(pos).state.idx.0);
                    pins.learned = Some((Some(pos), key));
                }
            }
        }
    }
    decide(state, snap, pins, headers)
}

/// The value of the first session cookie of a request.
fn first_session_value<'h>(snap: &Snapshot, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        cookie::pairs(v.as_bytes()).find_map(|(name, value)| {
            (*name != *snap.route_cookie && !value.is_empty() && snap.session_names.matches(name))
                .then_some(value)
        })
    })
}

fn decide(
    state: &State,
    snap: &Snapshot,
    pins: Pins,
    headers: &HeaderMap,
) -> Result<Choice, ProxyError> {
    let now = clock::now_ms();
    let mut had_pin = false;
    let mut chosen: Option<(NodePos, Decision)> = None;
    if let Some((pos, _)) = &pins.learned {
        had_pin = true;
        if let Some(pos) = *pos {
            if keeps_pins(snap, pos, now) {
                chosen = Some((pos, Decision::Learned));
            }
        }
    }
    match pins.route {
        RoutePin::Valid(pos) => {
            had_pin = true;
            if chosen.is_none() && keeps_pins(snap, pos, now) {
                chosen = Some((pos, Decision::Cookie));
            }
        }
        // A valid pin to a node this configuration no longer has.
        RoutePin::Removed => had_pin = true,
        RoutePin::Absent | RoutePin::Invalid => {}
    }
    let (pos, decision) = match chosen {
        Some(c) => c,
        None => {
            let d = if had_pin {
                Decision::Redispatch
            } else {
                Decision::New
            };
            match snap.select_new(now, None) {
                Some(p) => (p, d),
                None => return Err(ProxyError::NoNode),
            }
        }
    };
    if decision == Decision::Redispatch {
        redispatched(state, snap, pos, &pins);
    }
    snap.node(pos).state.note_request(now);
    Ok(Choice {
        pos,
        decision,
        pins,
        cookie: headers.get(header::COOKIE).cloned(),
    })
}

/// Can a pinned session stay on its node? Where active health checks run, their verdict decides
/// (with the admin state and a removed node's drain deadline): passive errors alone keep new
/// sessions away but do not move, and so log out, the node's signed-in users. A node that
/// really fails still loses them, on the connect failure that redispatches the request.
fn keeps_pins(snap: &Snapshot, pos: NodePos, now: u64) -> bool {
    let node = snap.node(pos);
    if !snap.config.health.enabled {
        return node.usable(now);
    }
    node.retiring_until_ms.is_none_or(|t| now < t)
        && node.state.healthy()
        && node.state.admin_state() != AdminState::Maint
}

fn read_pins(snap: &Snapshot, state: &State, headers: &HeaderMap) -> Pins {
    let mut pins = Pins {
        learned: None,
        route: RoutePin::Absent,
        unknown_session: false,
    };
    for v in headers.get_all(header::COOKIE) {
        for (name, value) in cookie::pairs(v.as_bytes()) {
            if *name == *snap.route_cookie {
                if pins.route == RoutePin::Absent {
                    pins.route = route_pin(snap, value);
                }
            } else if pins.learned.is_none()
                && !value.is_empty()
                && snap.session_names.matches(name)
            {
                let key = SessionKey::from_value(value);
                if let Some(idx) = state.sticky.lookup_key(&key) {
                    pins.learned = Some((snap.pos_of_idx(NodeIdx(idx)), key));
                } else {
                    pins.unknown_session = true;
                }
            }
        }
    }
    pins
}

fn route_pin(snap: &Snapshot, value: &[u8]) -> RoutePin {
    match route::node_id_of(value).and_then(|id| snap.pos_of_id(id)) {
        Some(pos) if route::matches(&snap.node(pos).route_value, value) => RoutePin::Valid(pos),
        Some(_) => RoutePin::Invalid,
        None if snap.route_key.verify(value).is_some() => RoutePin::Removed,
        None => RoutePin::Invalid,
    }
}

/// A users' listener request with `?qlikTicket=<id>` of a ticket made through the REST API
/// listener goes to the node that made it (the ticket is valid there only), before any other
/// pin.
pub fn ticket_pin(state: &State, snap: &Snapshot, uri: &http::Uri, choice: &mut Choice) {
    // Most requests have no query: nothing to look up.
    let Some(id) = ticket_of(uri) else {
        return;
    };
    if let Some(idx) = state.tickets.node_of_ticket(id) {
        pin_ticket(snap, snap.pos_of_idx(NodeIdx(idx)), choice);
    }
}

/// [`ticket_pin`] with a shared store: a ticket unknown here (made through another balancer's
/// REST API listener) is looked up there once, within `lookup_timeout`; a hit is learned for
/// `sticky.ticket_lifetime` and pins. A timeout or an error is a miss. A request without a
/// ticket never waits for the store.
pub async fn ticket_pin_shared(
    state: &State,
    snap: &Snapshot,
    uri: &http::Uri,
    choice: &mut Choice,
) {
    let Some(id) = ticket_of(uri) else {
        return;
    };
    if let Some(idx) = state.tickets.node_of_ticket(id) {
        return pin_ticket(snap, snap.pos_of_idx(NodeIdx(idx)), choice);
    }
    let Some(store) = &state.shared else {
        return;
    };
    if let Lookup::Hit(node) = store.lookup(Kind::Ticket, id).await {
        if let Some(pos) = snap.pos_of_id(&node) {
            let ttl_ms = snap.config.sticky.ticket_lifetime.as_millis() as u64;
            state
                .tickets
                .learn_ticket(id, snap.node(pos).state.idx.0, ttl_ms);
            pin_ticket(snap, Some(pos), choice);
        }
    }
}

fn ticket_of(uri: &http::Uri) -> Option<&[u8]> {
    uri.query()
        .and_then(crate::sticky::tickets::ticket_in_query)
        .map(str::as_bytes)
}

fn pin_ticket(snap: &Snapshot, pos: Option<NodePos>, choice: &mut Choice) {
    if let Some(pos) = pos.filter(|p| snap.node(*p).usable(clock::now_ms())) {
        choice.pos = pos;
        choice.decision = Decision::Learned;
    }
}

/// A REST API listener request naming a node (`X-Lb-Node: <id>`) goes to it when it is usable.
pub fn named_node(snap: &Snapshot, headers: &HeaderMap, choice: &mut Choice) {
    let Some(id) = headers
        .get(&super::rest::X_LB_NODE)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    if let Some(pos) = snap.pos_of_id(id.trim()) {
        if snap.node(pos).usable(clock::now_ms()) {
            choice.pos = pos;
            choice.decision = Decision::Cookie;
        }
    }
}

/// A pinned request went to another node: count it and move the learned pin.
pub fn redispatched(state: &State, snap: &Snapshot, pos: NodePos, pins: &Pins) {
    let n = snap.node(pos);
    n.state.redispatches_total.fetch_add(1, Ordering::Relaxed);
    if let Some((_, key)) = &pins.learned {
        state.sticky.learn_key(key.clone(), n.state.idx.0);
        if let Some(store) = &state.shared {
            let idle = snap.config.sticky.session_idle_timeout;
            store.put_session(&shared::session_value(key), &n.id, idle);
        }
    }
}
