//! The forms login of the user port, for browsers whose User-Agent lacks the Windows
//! authentication pattern: `GET [/<prefix>]/internal_forms_authentication/?targetId=T` serves
//! a login form; its `POST` (`application/x-www-form-urlencoded`, fields `username` as
//! `DOMAIN\user` and `pwd`) checks the password ([`crate::SimOptions::form_password`]) and
//! answers `302` to the target with `qlikTicket=<K>`, or `401` with the form again.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::gate::{host_of, redirect, TICKET_PARAM};
use super::SimUser;
use crate::body::{text, SimBody};
use crate::state::{inc, NodeShared};
use crate::url;

/// Largest login form body read.
const MAX_FORM: usize = 16 * 1024;

fn page(status: StatusCode, target_id: &str, message: &str) -> Response<SimBody> {
    let t = url::encode(target_id);
    let html = format!(
        "<!doctype html><html><head><title>Qlik Sense login</title></head><body>\
         <p>{message}</p>\
         <form method=\"post\" action=\"?targetId={t}\">\
         <input name=\"username\" placeholder=\"DOMAIN\\user\">\
         <input name=\"pwd\" type=\"password\">\
         <button type=\"submit\">Log in</button></form></body></html>\n"
    );
    let mut r = text(status, html);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `GET` or `POST` of the forms login.
pub(crate) async fn handle_form(shared: &NodeShared, req: Request<Incoming>) -> Response<SimBody> {
    let target_id = url::param(req.uri().query(), "targetId").unwrap_or_default();
    match *req.method() {
        Method::GET => page(StatusCode::OK, &target_id, "Log in to Qlik Sense"),
        Method::POST => {
            let host = host_of(&req);
            let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "bad form\n"),
            };
            let name = url::param(Some(&body), "username").unwrap_or_default();
            let pwd = url::param(Some(&body), "pwd").unwrap_or_default();
            let user = SimUser::parse(name.trim(), "FORMS");
            if user.id.is_empty() || pwd != shared.signin.form_password {
                inc(&shared.stats.form_failures);
                return page(
                    StatusCode::UNAUTHORIZED,
                    &target_id,
                    "Incorrect user name or password",
                );
            }
            inc(&shared.stats.form_logins);
            let si = &shared.signin;
            let (ticket, target) = si.issue_ticket(user, Some(&target_id));
            inc(&shared.stats.tickets_issued);
            let target = target.unwrap_or_else(|| {
                inc(&shared.stats.unknown_targets);
                si.hub_uri(&host)
            });
            redirect(&url::with_param(&target, TICKET_PARAM, &ticket))
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}
