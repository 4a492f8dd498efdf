//! The QPS REST API port (plain HTTP in the simulator; a real QPS wants Qlik's client
//! certificates on 4243): the ticket and session endpoints external modules and portals use.
//!
//! - `POST /qps/[<prefix>/]ticket` `{"UserDirectory","UserId","Attributes"?,"TargetId"?}` ->
//!   `201 {"UserDirectory","UserId","Attributes","Ticket","TargetUri"}`; the ticket is valid once,
//!   for the ticket lifetime, on this node. `TargetUri` is the targetId's URL when this node
//!   issued it, else `null`.
//! - `POST /qps/[<prefix>/]session` `{"UserDirectory","UserId","Attributes"?,"SessionId"}` ->
//!   `201` with the session; the browser then sends `SessionId` as its session cookie.
//! - `GET|DELETE /qps/[<prefix>/]session/<id>`: the session, or `404`; deleting logs it out.
//! - `GET /qps/[<prefix>/]user/<directory>/<id>`: the user's sessions on this node.
//!
//! The prefix (virtual proxy) is accepted and not checked. User directory and id must not be
//! blank nor contain a backslash (`400`, as Qlik documents).

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::SimUser;
use crate::body::{json_resp, text, SimBody};
use crate::state::{inc, NodeShared};
use crate::url;

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserRequest {
    user_directory: String,
    user_id: String,
    #[serde(default)]
    attributes: Vec<Value>,
    #[serde(default)]
    target_id: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

impl UserRequest {
    fn user(&self) -> Result<SimUser, &'static str> {
        let (d, i) = (self.user_directory.trim(), self.user_id.trim());
        if d.is_empty() || i.is_empty() {
            return Err("UserDirectory and UserId must not be blank");
        }
        if d.contains('\\') || i.contains('\\') {
            return Err("UserDirectory and UserId must not contain a backslash");
        }
        Ok(SimUser::new(d, i))
    }
}

fn session_json(id: &str, user: &SimUser, attributes: &[Value]) -> Value {
    json!({
        "UserDirectory": user.directory,
        "UserId": user.id,
        "Attributes": attributes,
        "SessionId": id,
    })
}

fn error(status: StatusCode, msg: &str) -> Response<SimBody> {
    json_resp(status, &json!({ "error": msg }))
}

/// One request on the REST API port.
pub(crate) async fn handle_rest(shared: &NodeShared, req: Request<Incoming>) -> Response<SimBody> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let Some(rest) = path.strip_prefix("/qps/") else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut seg: Vec<String> = rest.split('/').map(url::decode).collect();
    // A leading segment that is none of the resources is the virtual proxy prefix.
    if seg.len() > 1 && !matches!(seg[0].as_str(), "ticket" | "session" | "user") {
        seg.remove(0);
    }
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, seg.as_slice()) {
        (Method::POST, ["ticket"]) => match read(req).await {
            Ok(r) => add_ticket(shared, r),
            Err(e) => e,
        },
        (Method::POST, ["session"]) => match read(req).await {
            Ok(r) => add_session(shared, r),
            Err(e) => e,
        },
        (Method::GET, ["session", id]) => match shared.session(id) {
            Some(user) => json_resp(StatusCode::OK, &session_json(id, &user, &[])),
            None => error(StatusCode::NOT_FOUND, "no such session"),
        },
        (Method::DELETE, ["session", id]) => match shared.session(id) {
            Some(user) if shared.remove_session(id) => {
                json_resp(StatusCode::OK, &session_json(id, &user, &[]))
            }
            _ => error(StatusCode::NOT_FOUND, "no such session"),
        },
        (Method::GET, ["user", dir, id]) => {
            let user = SimUser::new(dir, id);
            let sessions: Vec<Value> = shared
                .live_sessions()
                .iter()
                .filter(|s| s.user == user)
                .map(|s| session_json(&s.id, &s.user, &[]))
                .collect();
            json_resp(StatusCode::OK, &Value::Array(sessions))
        }
        (_, ["ticket"] | ["session"] | ["session", _] | ["user", _, _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn read(req: Request<Incoming>) -> Result<UserRequest, Response<SimBody>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| error(StatusCode::BAD_REQUEST, "unreadable body"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))
}

fn add_ticket(shared: &NodeShared, r: UserRequest) -> Response<SimBody> {
    let user = match r.user() {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let target_id = r.target_id.as_deref().filter(|t| !t.is_empty());
    let (ticket, target) = shared.signin.issue_ticket(user.clone(), target_id);
    inc(&shared.stats.tickets_issued);
    if target_id.is_some() && target.is_none() {
        inc(&shared.stats.unknown_targets);
    }
    json_resp(
        StatusCode::CREATED,
        &json!({
            "UserDirectory": user.directory,
            "UserId": user.id,
            "Attributes": r.attributes,
            "Ticket": ticket,
            "TargetUri": target,
        }),
    )
}

fn add_session(shared: &NodeShared, r: UserRequest) -> Response<SimBody> {
    let user = match r.user() {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(id) = r
        .session_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return error(StatusCode::BAD_REQUEST, "SessionId is required");
    };
    shared.add_session(id, user.clone());
    json_resp(StatusCode::CREATED, &session_json(id, &user, &r.attributes))
}
