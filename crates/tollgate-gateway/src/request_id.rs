//! The gateway's own id of every request: a UUIDv7 (time-ordered), made when
//! the request arrives, answered as `x-request-id` on every response
//! (errors, refusals and admin calls too) and written to the usage ledger.
//! An id the client sent is not trusted as ours; the upstream's own id is
//! passed on as `x-upstream-request-id`.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// `x-request-id`.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// `x-upstream-request-id`: the upstream's `x-request-id`, passed on.
pub const UPSTREAM_HEADER: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// A request's id, in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub uuid::Uuid);

impl RequestId {
    /// A new id (UUIDv7).
    pub fn new() -> Self {
        RequestId(uuid::Uuid::now_v7())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Middleware: gives the request its id and the response its header.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = RequestId::new();
    req.extensions_mut().insert(id);
    let mut resp = next.run(req).await;
    let mut text = uuid::Uuid::encode_buffer();
    if let Ok(v) = HeaderValue::from_str(id.0.hyphenated().encode_lower(&mut text)) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}
