//! Helpers of the sign-in tests: a balancer configuration with the sign-in listeners, a
//! portal's REST API calls, and a portal user's browser (by ticket or by session) with a
//! WebSocket.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use lb_sim::browser::{Browser, Conn, Identity};
use lb_sim::{SimCluster, SimUser};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `lb` with a users' listener, an `auth` listener and a `rest` REST API listener in front of
/// `sim`'s user, authentication and REST ports; `extra` is appended (sections other than the
/// listeners and nodes), `listener_extra` goes into `[listener]` and `[listeners.auth]`.
pub fn signin_config(sim: &SimCluster, listener_extra: &str, extra: &str) -> String {
    let mut s = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{listener_extra}\n\
         [listeners.auth]\naddress = \"127.0.0.1:0\"\n{listener_extra}\n\
         [listeners.rest]\naddress = \"127.0.0.1:0\"\nrole = \"rest-api\"\n\
         {extra}\n"
    );
    let (auth, rest) = (sim.auth_addrs(), sim.rest_addrs());
    for (i, a) in sim.addrs().iter().enumerate() {
        s.push_str(&format!(
            "[[nodes]]\nid = \"qps{}\"\naddress = \"{a}\"\naddresses = {{ auth = \"{}\", rest = \"{}\" }}\n",
            i + 1,
            auth[i],
            rest[i]
        ));
    }
    s
}

/// A WebSocket through the balancer with `cookie`: the node that accepted it, after one echo.
pub async fn websocket(lb: SocketAddr, cookie: &str) -> Result<String, String> {
    let mut req = format!("ws://{lb}/app/doc1").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", cookie.parse().map_err(|_| "cookie header")?);
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    let node = resp
        .headers()
        .get(lb_sim::NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ws.send(Message::text("ping"))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {}
        other => return Err(format!("no echo: {other:?}")),
    }
    let _ = ws.close(None).await;
    Ok(node)
}

pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

pub async fn post_json(addr: SocketAddr, path: &str, v: &Value) -> (u16, Value) {
    let mut c = Conn::connect(addr).await.unwrap();
    let r = c
        .send(
            http::Method::POST,
            path,
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await
        .unwrap();
    (r.status, json_of(&r.body))
}

pub fn guid(i: usize) -> String {
    format!("5e55{i:04x}-0000-4000-8000-00000000{i:04x}")
}

/// A portal makes a session for `user` through the balancer's REST API listener.
pub async fn portal_session(rest: SocketAddr, user: &SimUser, id: &str) {
    let body = json!({"UserDirectory": user.directory, "UserId": user.id, "SessionId": id});
    let (status, v) = post_json(rest, "/qps/portal/session", &body).await;
    assert_eq!(status, 201, "{v}");
}

/// Portal user `PORTAL\p{i}`: the portal makes a ticket (even `i`) or a session (odd `i`)
/// through the REST API listener at `rest`, and the user's browser, with no cookie of the
/// balancer's, arrives at the users' listener `users`. Returns whether the user reached a node
/// as themselves (the page, `/_sim/whoami`, one session in `sim`) and whether a WebSocket with
/// the browser's cookies reached the node holding that session.
pub async fn portal_user(
    users: SocketAddr,
    rest: SocketAddr,
    sim: &SimCluster,
    i: usize,
) -> (bool, bool) {
    let user = SimUser::new("PORTAL", &format!("p{i}"));
    // A browser with no cookie of ours: the portal hands it a ticket or a session.
    let mut b = Browser::new(Identity::None);
    let url = if i.is_multiple_of(2) {
        let body = json!({"UserDirectory": "PORTAL", "UserId": user.id});
        let (status, v) = post_json(rest, "/qps/portal/ticket", &body).await;
        assert_eq!(status, 201, "{v}");
        let ticket = v["Ticket"].as_str().unwrap().to_string();
        format!("http://{users}/hub/?qlikTicket={ticket}")
    } else {
        let id = guid(i);
        portal_session(rest, &user, &id).await;
        b.set_cookie("X-Qlik-Session", &id);
        format!("http://{users}/hub/")
    };
    let page = b.navigate(&url).await.unwrap();
    let me = b
        .navigate(&format!("http://{users}/_sim/whoami"))
        .await
        .map(|p| json_of(&p.body))
        .unwrap_or(Value::Null);
    let sessions = sim.sessions_of(&user);
    let as_self =
        page.status == 200 && me["user"] == format!("PORTAL\\p{i}").as_str() && sessions.len() == 1;
    if !as_self {
        eprintln!(
            "portal user p{i}: {} {me} {sessions:?} {:?}",
            page.status, b.trail
        );
        return (false, false);
    }
    let ws = websocket(users, &b.cookie_header().unwrap()).await;
    (true, ws.as_deref() == Ok(sessions[0].0.as_str()))
}
