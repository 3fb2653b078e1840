//! The page, its script and its styles, built into the binary, and the
//! headers every dashboard answer carries.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The dashboard page (shown once signed in).
pub const INDEX_HTML: &str = include_str!("assets/index.html");
/// The sign-in page; `<!--message-->` is replaced by what went wrong.
pub const LOGIN_HTML: &str = include_str!("assets/login.html");
/// The pages' helpers (elements, number formats, bars, JSON reads).
pub const UTIL_JS: &str = include_str!("assets/util.js");
/// The page's script: fetches the JSON endpoints and draws the tables.
pub const APP_JS: &str = include_str!("assets/app.js");
/// A client's page (shown once signed in).
pub const CLIENT_HTML: &str = include_str!("assets/client.html");
/// The client page's script: draws the client and its keys, issues and
/// revokes keys.
pub const CLIENT_JS: &str = include_str!("assets/client.js");
/// The styles of every page.
pub const APP_CSS: &str = include_str!("assets/app.css");

/// This origin only: no script, style, image or connection elsewhere, no
/// inline script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers of every dashboard answer.
pub(crate) fn headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // Figures and pages are per sign-in and change every second.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// An HTML page with `status`.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (status, headers("text/html; charset=utf-8"), body).into_response()
}

/// `GET /dashboard/app.js` (no token needed: it holds no data).
pub async fn script() -> Response {
    (headers("text/javascript; charset=utf-8"), APP_JS).into_response()
}

/// `GET /dashboard/util.js` (no token needed: it holds no data).
pub async fn util_script() -> Response {
    (headers("text/javascript; charset=utf-8"), UTIL_JS).into_response()
}

/// `GET /dashboard/client.js` (no token needed: it holds no data).
pub async fn client_script() -> Response {
    (headers("text/javascript; charset=utf-8"), CLIENT_JS).into_response()
}

/// `GET /dashboard/app.css` (no token needed: it holds no data).
pub async fn style() -> Response {
    (headers("text/css; charset=utf-8"), APP_CSS).into_response()
}

/// `s` with the characters that mean something in HTML escaped.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_load_nothing_from_elsewhere() {
        for page in [
            INDEX_HTML,
            LOGIN_HTML,
            CLIENT_HTML,
            APP_CSS,
            APP_JS,
            UTIL_JS,
            CLIENT_JS,
        ] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                assert!(!page.contains(outside), "{outside} in an asset");
            }
        }
        assert!(LOGIN_HTML.contains("<!--message-->"));
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
