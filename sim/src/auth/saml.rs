//! SAML as the simulator speaks it: the AuthnRequest a node sends to the identity provider,
//! the Response the identity provider posts back, the node's assertion consumer at
//! `[/<prefix>]/samlauthn/`, and client helpers for tests that play the browser.
//!
//! Messages are small SAML 2.0 XML documents in base64 (the redirect binding's deflate step
//! is left out; signatures too: a node accepts an assertion when it answers a request this node
//! made, `InResponseTo`, and arrives with the RelayState this node issued). The RelayState is
//! known only to the node that started the login, so the cross-site POST must reach it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::gate::{host_of, redirect};
use super::SimUser;
use crate::body::{text, SimBody};
use crate::state::{inc, NodeShared};
use crate::url;

/// Largest `samlauthn` body read.
const MAX_POST: usize = 64 * 1024;

const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";

/// Escapes text for XML and HTML content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Undoes [`escape`].
pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the first element of `xml` that has it.
fn attr(xml: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = xml.find(&key)? + key.len();
    let end = xml[start..].find('"')? + start;
    Some(unescape(&xml[start..end]))
}

/// The text of the first element whose tag ends in `:name` or is `name`.
fn element(xml: &str, name: &str) -> Option<String> {
    for open in [format!(":{name}>"), format!("<{name}>")] {
        if let Some(i) = xml.find(&open) {
            let start = i + open.len();
            let end = xml[start..].find("</")? + start;
            return Some(unescape(&xml[start..end]));
        }
    }
    None
}

fn decode_b64(s: &str) -> Option<String> {
    String::from_utf8(B64.decode(s.trim()).ok()?).ok()
}

/// A node's request to authenticate a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnRequest {
    /// The request id the response must name in `InResponseTo`.
    pub id: String,
    /// Where the identity provider posts the response.
    pub acs_url: String,
    /// Who asks (`lb-sim:<node>`).
    pub issuer: String,
}

impl AuthnRequest {
    /// The request as base64 XML (the `SAMLRequest` value).
    pub fn encode(&self) -> String {
        let xml = format!(
            "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
             xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{}\" Version=\"2.0\" \
             AssertionConsumerServiceURL=\"{}\" \
             ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\">\
             <saml:Issuer>{}</saml:Issuer></samlp:AuthnRequest>",
            escape(&self.id),
            escape(&self.acs_url),
            escape(&self.issuer)
        );
        B64.encode(xml)
    }

    /// Parses a `SAMLRequest` value.
    pub fn decode(b64: &str) -> Option<AuthnRequest> {
        let xml = decode_b64(b64)?;
        xml.contains("AuthnRequest").then_some(())?;
        Some(AuthnRequest {
            id: attr(&xml, "ID")?,
            acs_url: attr(&xml, "AssertionConsumerServiceURL")?,
            issuer: element(&xml, "Issuer").unwrap_or_default(),
        })
    }
}

/// The identity provider's answer: who the user is, for which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// The AuthnRequest id this answers.
    pub in_response_to: String,
    /// The assertion consumer it was sent to.
    pub destination: String,
    /// The user (NameID, and the `userDirectory` attribute).
    pub user: SimUser,
}

impl Assertion {
    /// The response as base64 XML (the `SAMLResponse` value), issued by `issuer`.
    pub fn encode(&self, issuer: &str) -> String {
        let xml = format!(
            "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
             xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"_{}\" Version=\"2.0\" \
             InResponseTo=\"{}\" Destination=\"{}\">\
             <saml:Issuer>{}</saml:Issuer>\
             <samlp:Status><samlp:StatusCode Value=\"{SUCCESS}\"/></samlp:Status>\
             <saml:Assertion><saml:Subject><saml:NameID>{}</saml:NameID></saml:Subject>\
             <saml:AttributeStatement><saml:Attribute Name=\"userDirectory\">\
             <saml:AttributeValue>{}</saml:AttributeValue></saml:Attribute>\
             </saml:AttributeStatement></saml:Assertion></samlp:Response>",
            super::random_id(32),
            escape(&self.in_response_to),
            escape(&self.destination),
            escape(issuer),
            escape(&self.user.id),
            escape(&self.user.directory)
        );
        B64.encode(xml)
    }

    /// Parses a successful `SAMLResponse` value.
    pub fn decode(b64: &str) -> Option<Assertion> {
        let xml = decode_b64(b64)?;
        (attr(&xml, "Value")? == SUCCESS).then_some(())?;
        let id = element(&xml, "NameID")?;
        let dir = element(&xml, "AttributeValue").unwrap_or_else(|| "SAML".to_string());
        Some(Assertion {
            in_response_to: attr(&xml, "InResponseTo")?,
            destination: attr(&xml, "Destination").unwrap_or_default(),
            user: SimUser::new(&dir, &id),
        })
    }
}

/// The identity provider URL a node redirects to: `SAMLRequest` and `RelayState` added.
pub(crate) fn redirect_url(
    idp_sso_url: &str,
    request_id: &str,
    acs_url: &str,
    node: &str,
    relay: &str,
) -> String {
    let req = AuthnRequest {
        id: request_id.to_string(),
        acs_url: acs_url.to_string(),
        issuer: format!("lb-sim:{node}"),
    };
    let u = url::with_param(idp_sso_url, "SAMLRequest", &req.encode());
    url::with_param(&u, "RelayState", relay)
}

/// An HTML form that submits itself: what an identity provider answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoPost {
    /// The form's `action`.
    pub action: String,
    /// Its hidden fields, in order.
    pub fields: Vec<(String, String)>,
}

impl AutoPost {
    /// The page: a form posting the fields to the action, submitted on load.
    pub fn html(&self) -> String {
        let mut s = format!(
            "<!doctype html><html><head><title>Signing in</title></head>\
             <body onload=\"document.forms[0].submit()\">\
             <form method=\"post\" action=\"{}\">",
            escape(&self.action)
        );
        for (k, v) in &self.fields {
            s.push_str(&format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            ));
        }
        s.push_str(
            "<noscript><button type=\"submit\">Continue</button></noscript></form></body></html>\n",
        );
        s
    }

    /// Reads the first form of `html` back (action and every input with a name).
    pub fn parse(html: &str) -> Option<AutoPost> {
        let form = &html[html.find("<form")?..];
        let head_end = form.find('>')?;
        let action = attr(&form[..head_end], "action")?;
        let mut fields = Vec::new();
        let mut rest = &form[head_end..];
        while let Some(i) = rest.find("<input") {
            let tag_end = rest[i..].find('>').map(|e| i + e)?;
            let tag = &rest[i..tag_end];
            if let Some(name) = attr(tag, "name") {
                fields.push((name, attr(tag, "value").unwrap_or_default()));
            }
            rest = &rest[tag_end..];
        }
        Some(AutoPost { action, fields })
    }

    /// The fields as an `application/x-www-form-urlencoded` body.
    pub fn body(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{}={}", url::encode(k), url::encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// `POST [/<prefix>]/samlauthn/`: the identity provider's answer, through the browser.
pub(crate) async fn handle_acs(shared: &NodeShared, req: Request<Incoming>) -> Response<SimBody> {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let host = host_of(&req);
    let body = match Limited::new(req.into_body(), MAX_POST).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad form\n"),
    };
    let relay = url::param(Some(&body), "RelayState").unwrap_or_default();
    let assertion = url::param(Some(&body), "SAMLResponse").and_then(|r| Assertion::decode(&r));
    let si = &shared.signin;
    let login = si.take_relay(&relay);
    let (Some(login), Some(assertion)) = (login, assertion) else {
        inc(&shared.stats.saml_rejections);
        return text(
            StatusCode::UNAUTHORIZED,
            "SAML response not expected here\n",
        );
    };
    if assertion.in_response_to != login.request_id {
        inc(&shared.stats.saml_rejections);
        return text(
            StatusCode::UNAUTHORIZED,
            "SAML response for another request\n",
        );
    }
    inc(&shared.stats.saml_logins);
    let (_, cookie) = shared.new_session(assertion.user);
    let target = si.take_target(&login.target_id).unwrap_or_else(|| {
        inc(&shared.stats.unknown_targets);
        si.hub_uri(&host)
    });
    let mut r = redirect(&target);
    if let Some(c) = cookie {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_forms_round_trip() {
        let req = AuthnRequest {
            id: "_1".into(),
            acs_url: "http://site/saml/samlauthn/".into(),
            issuer: "lb-sim:node1".into(),
        };
        assert_eq!(AuthnRequest::decode(&req.encode()), Some(req));
        let a = Assertion {
            in_response_to: "_1".into(),
            destination: "http://site/saml/samlauthn/".into(),
            user: SimUser::new("CORP", "o'brien & co"),
        };
        assert_eq!(Assertion::decode(&a.encode("idp")), Some(a));
        let p = AutoPost {
            action: "http://site/saml/samlauthn/?a=1&b=2".into(),
            fields: vec![
                ("SAMLResponse".into(), "ab+/=".into()),
                ("RelayState".into(), "r\"1".into()),
            ],
        };
        assert_eq!(AutoPost::parse(&p.html()), Some(p.clone()));
        assert_eq!(p.body(), "SAMLResponse=ab%2B%2F%3D&RelayState=r%221");
    }
}
