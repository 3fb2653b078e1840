//! Who may see the dashboard: whoever presents the admin token, as
//! `Authorization: Bearer` or in the cookie that the sign-in form sets.
//!
//! The cookie holds the token itself (base64url), `HttpOnly` (scripts cannot
//! read it), `SameSite=Strict` (other sites cannot send it) and scoped to
//! `/dashboard`, for [`SESSION_SECS`], and `Secure` when a proxy in front
//! says the browser came over TLS (`X-Forwarded-Proto: https`). Every
//! request checks it against the
//! configured hash in constant time, as the admin API does; a token changed
//! in the config ends every session. Serve the gateway behind TLS when the
//! dashboard is reached over a network: the cookie is a bearer credential.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::assets::{self, escape};
use crate::gateway::Gateway;

/// The cookie's name.
pub const COOKIE: &str = "tollgate_admin";

/// How long a sign-in lasts: 12 hours.
pub const SESSION_SECS: u64 = 12 * 3600;

/// The most a sign-in form may hold.
const LOGIN_BODY_LIMIT: usize = 4096;

/// Why a request may not see the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No `admin.token_sha256` in the config.
    AdminOff,
    /// No token, or a wrong one.
    NoToken,
}

impl Denied {
    fn message(self) -> &'static str {
        match self {
            Denied::AdminOff => "The admin API is off, and the dashboard with it: set admin.token_sha256 in the config (`tollgate hash-key TOKEN`).",
            Denied::NoToken => "Sign in with the admin token.",
        }
    }

    /// The answer to a JSON request.
    pub(crate) fn json(self) -> Response {
        let (status, code) = match self {
            Denied::AdminOff => (StatusCode::FORBIDDEN, "admin_disabled"),
            Denied::NoToken => (StatusCode::UNAUTHORIZED, "invalid_admin_token"),
        };
        let body = json!({"error": {"message": self.message(), "type": "authentication_error", "code": code}});
        (
            status,
            assets::headers("application/json"),
            body.to_string(),
        )
            .into_response()
    }
}

/// The token in the dashboard's cookie, if any.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .find_map(|(_, value)| {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(value)
                .ok()?;
            String::from_utf8(bytes).ok()
        })
}

/// Whether the request carries the admin token (header or cookie).
pub(crate) fn check(gw: &Gateway, headers: &HeaderMap) -> Result<(), Denied> {
    if gw.admin_tokens.is_empty() {
        return Err(Denied::AdminOff);
    }
    let ok = |token: Option<&str>| gw.admin_tokens.find(token).is_some();
    if ok(crate::auth::bearer(headers)) || ok(cookie_token(headers).as_deref()) {
        Ok(())
    } else {
        Err(Denied::NoToken)
    }
}

/// The header every change the page makes carries. A page of another site
/// cannot send it without the browser asking first (a CORS preflight, which
/// the gateway never grants), so a forged form or link changes nothing even
/// if the browser sent the cookie.
pub const CHANGE_HEADER: &str = "x-tollgate-dashboard";

/// The headers of a change the page asks for, turned into an admin API
/// request: the session's token as `Authorization: Bearer`, so the admin
/// handler authorises it (token and role) exactly as it would the token
/// itself. Without a session, or without [`CHANGE_HEADER`], why not.
pub(crate) fn as_admin(gw: &Gateway, headers: &HeaderMap) -> Result<HeaderMap, ChangeDenied> {
    check(gw, headers).map_err(ChangeDenied::Session)?;
    if headers.get(CHANGE_HEADER).is_none() {
        return Err(ChangeDenied::NoHeader);
    }
    let token = crate::auth::bearer(headers)
        .map(str::to_string)
        .or_else(|| cookie_token(headers))
        .unwrap_or_default();
    let mut out = headers.clone();
    out.remove(header::COOKIE);
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ChangeDenied::Session(Denied::NoToken))?;
    out.insert(header::AUTHORIZATION, value);
    Ok(out)
}

/// Why a change from the page was refused before the admin API saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeDenied {
    /// Not signed in.
    Session(Denied),
    /// Without [`CHANGE_HEADER`].
    NoHeader,
}

impl ChangeDenied {
    /// The answer (JSON).
    pub(crate) fn json(self) -> Response {
        match self {
            ChangeDenied::Session(d) => d.json(),
            ChangeDenied::NoHeader => {
                let body = json!({"error": {"message": format!("A dashboard change needs the {CHANGE_HEADER} header (the page sends it)."), "type": "permission_error", "code": "missing_dashboard_header"}});
                (
                    StatusCode::FORBIDDEN,
                    assets::headers("application/json"),
                    body.to_string(),
                )
                    .into_response()
            }
        }
    }
}

/// The sign-in page with `message` (escaped) above the form.
fn login_page(status: StatusCode, message: &str) -> Response {
    let note = if message.is_empty() {
        String::new()
    } else {
        format!(
            "<p id=\"login-error\" role=\"alert\">{}</p>",
            escape(message)
        )
    };
    assets::html(status, assets::LOGIN_HTML.replace("<!--message-->", &note))
}

/// `GET /dashboard`: the page, the sign-in form (401) or, with the admin
/// API off, a page that says how to turn it on (403).
pub async fn page(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    page_or_login(&gw, &headers, assets::INDEX_HTML)
}

/// `page` to a signed-in request, else the sign-in form (401) or, with the
/// admin API off, a page that says how to turn it on (403).
pub(crate) fn page_or_login(gw: &Gateway, headers: &HeaderMap, page: &str) -> Response {
    match check(gw, headers) {
        Ok(()) => assets::html(StatusCode::OK, page.to_string()),
        Err(Denied::AdminOff) => login_page(StatusCode::FORBIDDEN, Denied::AdminOff.message()),
        Err(Denied::NoToken) => login_page(StatusCode::UNAUTHORIZED, ""),
    }
}

fn see_dashboard(cookie: String) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

/// The `token` field of an `application/x-www-form-urlencoded` body.
fn form_token(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
}

/// `POST /dashboard/login`: a right token sets the cookie and goes to the
/// dashboard (303); a wrong one shows the form again (401).
pub async fn login(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    if gw.admin_tokens.is_empty() {
        return login_page(StatusCode::FORBIDDEN, Denied::AdminOff.message());
    }
    let timeout = Duration::from_secs_f64(gw.config.server.body_read_timeout_secs);
    let body =
        match tokio::time::timeout(timeout, axum::body::to_bytes(body, LOGIN_BODY_LIMIT)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return login_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The sign-in form was too large or broken off; enter the admin token only.",
                )
            }
            Err(_) => {
                return login_page(
                    StatusCode::REQUEST_TIMEOUT,
                    "The sign-in form did not arrive in time; try again.",
                )
            }
        };
    let token = form_token(&body).unwrap_or_default();
    if token.is_empty() || gw.admin_tokens.find(Some(&token)).is_none() {
        tracing::warn!("dashboard sign-in with a wrong admin token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Wrong admin token: it is the token whose SHA-256 is admin.token_sha256 in the config.",
        );
    }
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.as_bytes());
    // Behind a TLS-terminating proxy the browser must never send the
    // cookie over plain HTTP.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    see_dashboard(format!(
        "{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{}",
        if secure { "; Secure" } else { "" }
    ))
}

/// `POST /dashboard/logout`: drops the cookie.
pub async fn logout() -> Response {
    see_dashboard(format!(
        "{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_decoded() {
        let token = "tok en;=ü";
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={value}; c=d")).unwrap(),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some(token));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("tollgate_admin=%%%"),
        );
        assert_eq!(cookie_token(&h), None);
        assert_eq!(
            form_token(b"x=1&token=a%2Bb+c").as_deref(),
            Some("a+b c"),
            "form decoding"
        );
    }
}
