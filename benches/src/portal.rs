//! Portal sign-ins per second, possibly through two balancers: a portal asks one balancer's
//! REST API listener for a ticket (`POST /qps/portal/ticket`, on a keep-alive connection per
//! portal worker) and the user's browser redeems it at another balancer's users' listener
//! (`GET /_sim/whoami?qlikTicket=<ticket>` on a new connection without cookies). A sign-in is
//! good only when a node answered as the ticket's user (`PORTAL\bench<n>`): a ticket redeemed
//! on a node that did not make it is not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::{HttpConn, Target};
use crate::report::{new_histogram, LatencySummary};

/// What the portal sign-ins saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PortalReport {
    pub sign_ins: u64,
    /// The node answered as the ticket's user.
    pub good: u64,
    /// A node answered, but not as the ticket's user (the ticket went to the wrong node).
    pub wrong_user: u64,
    /// No ticket, a failed connection or request, or a status other than 200.
    pub errors: u64,
    pub secs: f64,
    pub good_per_sec: f64,
    /// Of one whole sign-in: the ticket call and the browser's request.
    pub latency: LatencySummary,
}

#[derive(Default)]
struct Counts {
    next: AtomicU64,
    good: AtomicU64,
    wrong_user: AtomicU64,
    errors: AtomicU64,
}

/// Runs `portals` concurrent portal workers for `duration`, each signing users in one after
/// the other: the ticket from `rest`, the browser at `users`.
pub async fn portal_sign_ins(
    rest: Target,
    users: Target,
    portals: usize,
    duration: Duration,
) -> PortalReport {
    let (rest, users) = (Arc::new(rest), Arc::new(users));
    let counts = Arc::new(Counts::default());
    let hist = Arc::new(Mutex::new(new_histogram()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(portals);
    for _ in 0..portals {
        let (rest, users, counts, hist) =
            (rest.clone(), users.clone(), counts.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut portal: Option<HttpConn> = None;
            let mut mine = new_histogram();
            while Instant::now() < deadline {
                let n = counts.next.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(
                    Duration::from_secs(10),
                    sign_in(&rest, &users, &mut portal, n),
                )
                .await
                .unwrap_or(Outcome::Error);
                let c = match outcome {
                    Outcome::Good => &counts.good,
                    Outcome::WrongUser => &counts.wrong_user,
                    Outcome::Error => {
                        portal = None;
                        &counts.errors
                    }
                };
                c.fetch_add(1, Ordering::Relaxed);
                let _ = mine.record((t0.elapsed().as_micros() as u64).max(1));
            }
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&mine);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (good, wrong_user, errors) = (r(&counts.good), r(&counts.wrong_user), r(&counts.errors));
    let latency = hist
        .lock()
        .map(|h| LatencySummary::from_histogram(&h))
        .unwrap_or_default();
    PortalReport {
        sign_ins: good + wrong_user + errors,
        good,
        wrong_user,
        errors,
        secs,
        good_per_sec: good as f64 / secs,
        latency,
    }
}

enum Outcome {
    Good,
    WrongUser,
    Error,
}

async fn sign_in(rest: &Target, users: &Target, portal: &mut Option<HttpConn>, n: u64) -> Outcome {
    let user = format!("bench{n}");
    let conn = match portal {
        Some(c) if !c.is_closed() => c,
        _ => match HttpConn::connect(rest).await {
            Ok(c) => portal.insert(c),
            Err(_) => return Outcome::Error,
        },
    };
    let body = json!({"UserDirectory": "PORTAL", "UserId": user}).to_string();
    let Ok(r) = conn
        .request(
            Method::POST,
            &rest.path("/qps/portal/ticket"),
            None,
            Bytes::from(body),
        )
        .await
    else {
        return Outcome::Error;
    };
    let ticket = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["Ticket"].as_str().map(str::to_string));
    let (StatusCode::CREATED | StatusCode::OK, Some(ticket)) = (r.status, ticket) else {
        return Outcome::Error;
    };
    // The user's browser: a new connection, no cookie of the balancer's.
    let Ok(mut browser) = HttpConn::connect(users).await else {
        return Outcome::Error;
    };
    let path = users.path(&format!("/_sim/whoami?qlikTicket={ticket}"));
    let Ok(r) = browser.get(&path, None).await else {
        return Outcome::Error;
    };
    if r.status != StatusCode::OK {
        return Outcome::Error;
    }
    let me = serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null);
    if me["user"] == format!("PORTAL\\{user}").as_str() {
        Outcome::Good
    } else {
        Outcome::WrongUser
    }
}
