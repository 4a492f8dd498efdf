//! A small SAML identity provider on its own port, another site than the Qlik nodes.
//!
//! - `GET /sso?SAMLRequest=..&RelayState=..`: answers a page whose form posts `SAMLResponse`
//!   and `RelayState` to the request's assertion consumer URL, submitted on load (the
//!   cross-site POST a browser makes). The user is the one signed in at the IdP (cookie set by
//!   `/login`), or the IdP's default user.
//! - `GET /login?user=DIR%5Cid`: signs that user in at the IdP (a cookie of the IdP's site).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::auth::saml::{Assertion, AuthnRequest, AutoPost};
use crate::body::{text, SimBody};
use crate::node::{accept_loop, bind_reuse, Running};
use crate::{cookie_values, url, SimUser};

/// Name of the IdP's own cookie: who is signed in there.
const IDP_COOKIE: &str = "sim_idp_user";

struct IdpShared {
    default_user: SimUser,
    responses: AtomicU64,
}

/// A simulated SAML identity provider.
pub struct SimIdp {
    addr: SocketAddr,
    shared: Arc<IdpShared>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for SimIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimIdp").field("addr", &self.addr).finish()
    }
}

impl SimIdp {
    /// Binds `addr` (port 0 for an ephemeral one); users not signed in at the IdP are
    /// `default_user`.
    pub async fn start(addr: SocketAddr, default_user: SimUser) -> io::Result<SimIdp> {
        let listener = bind_reuse(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(IdpShared {
            default_user,
            responses: AtomicU64::new(0),
        });
        let running = Running::new();
        let s = shared.clone();
        accept_loop(&running, listener, move |stream, _peer| {
            let s = s.clone();
            async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(handle(&s, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        Ok(SimIdp {
            addr,
            shared,
            running: Mutex::new(Some(running)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its single sign-on URL (`http://<addr>/sso`), for [`crate::Auth::Saml`].
    pub fn sso_url(&self) -> String {
        format!("http://{}/sso", self.addr)
    }

    /// SAML responses it has issued.
    pub fn responses(&self) -> u64 {
        self.shared.responses.load(Ordering::Relaxed)
    }

    /// Stops it.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(r) = running {
            r.stop().await;
        }
    }
}

impl Drop for SimIdp {
    fn drop(&mut self) {
        if let Ok(mut g) = self.running.lock() {
            if let Some(r) = g.take() {
                r.cancel.cancel();
            }
        }
    }
}

fn handle(s: &IdpShared, req: &Request<Incoming>) -> Response<SimBody> {
    let query = req.uri().query();
    match req.uri().path() {
        "/login" => {
            let user = url::param(query, "user").unwrap_or_default();
            let mut r = text(StatusCode::OK, format!("signed in at the IdP as {user}\n"));
            let cookie = format!("{IDP_COOKIE}={}; Path=/; HttpOnly", url::encode(&user));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        "/sso" => {
            let Some(request) =
                url::param(query, "SAMLRequest").and_then(|r| AuthnRequest::decode(&r))
            else {
                return text(StatusCode::BAD_REQUEST, "no valid SAMLRequest\n");
            };
            let relay = url::param(query, "RelayState").unwrap_or_default();
            let user = cookie_values(req.headers(), IDP_COOKIE)
                .first()
                .map(|v| SimUser::parse(&url::decode(v), "SAML"))
                .filter(|u| !u.id.is_empty())
                .unwrap_or_else(|| s.default_user.clone());
            let assertion = Assertion {
                in_response_to: request.id,
                destination: request.acs_url.clone(),
                user,
            };
            let page = AutoPost {
                action: request.acs_url,
                fields: vec![
                    ("SAMLResponse".to_string(), assertion.encode("lb-sim-idp")),
                    ("RelayState".to_string(), relay),
                ],
            };
            s.responses.fetch_add(1, Ordering::Relaxed);
            let mut r = text(StatusCode::OK, page.html());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
