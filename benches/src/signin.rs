//! The demo's sign-in phase: users sign in through the balancer with Windows authentication
//! (NTLM, three legs with pauses, on the balancer's authentication listener) and each opens an
//! app WebSocket; what became of them, as counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lb_sim::browser::{Browser, Identity};
use lb_sim::{SimCluster, SimUser};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// What the sign-in phase saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SignInReport {
    pub users: usize,
    /// Ended with a session of their own name on exactly one node.
    pub signed_in: usize,
    /// Sign-ins that failed (an NTLM leg on the wrong connection, an error page, ...).
    pub broken: usize,
    /// Of the signed-in users, those whose WebSocket reached the node holding their session.
    pub websockets_on_own_node: usize,
}

/// Signs `users` NTLM users (`CORP\demo<i>`) in through `lb` (the users' listener), with
/// `leg_pause` between the legs of each handshake, then opens one WebSocket per user.
pub async fn windows_sign_ins(
    lb: SocketAddr,
    cluster: Arc<SimCluster>,
    users: usize,
    leg_pause: Duration,
) -> SignInReport {
    let mut tasks = Vec::with_capacity(users);
    for i in 0..users {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            let user = SimUser::new("CORP", &format!("demo{i}"));
            let mut b = Browser::new(Identity::Ntlm(user.clone()));
            b.leg_pause = leg_pause;
            let ok =
                matches!(b.navigate(&format!("http://{lb}/hub/")).await, Ok(p) if p.status == 200);
            let sessions = cluster.sessions_of(&user);
            if !ok || sessions.len() != 1 {
                return (false, false);
            }
            let ws = websocket(lb, &b.cookie_header().unwrap_or_default()).await;
            (true, ws.as_deref() == Some(sessions[0].0.as_str()))
        }));
    }
    let mut r = SignInReport {
        users,
        ..SignInReport::default()
    };
    for t in tasks {
        match t.await {
            Ok((true, ws)) => {
                r.signed_in += 1;
                r.websockets_on_own_node += ws as usize;
            }
            _ => r.broken += 1,
        }
    }
    r
}

/// One app WebSocket with `cookie` and one echo: the node that accepted it.
async fn websocket(lb: SocketAddr, cookie: &str) -> Option<String> {
    let mut req = format!("ws://{lb}/app/demo").into_client_request().ok()?;
    req.headers_mut().insert("cookie", cookie.parse().ok()?);
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .ok()?
    .ok()?;
    let node = resp
        .headers()
        .get(lb_sim::NODE_HEADER)?
        .to_str()
        .ok()?
        .to_string();
    ws.send(Message::text("hello")).await.ok()?;
    let echoed = matches!(ws.next().await, Some(Ok(Message::Text(_))));
    let _ = ws.close(None).await;
    echoed.then_some(node)
}
