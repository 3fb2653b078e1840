//! Errors as clients see them: OpenAI's error shape
//! (`{"error": {"message", "type", "param", "code"}}`), so SDKs handle them.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type` (e.g. `invalid_request_error`, `rate_limit_error`).
    pub kind: &'static str,
    /// Machine-readable `code` (e.g. `client_rpm_exceeded`).
    pub code: String,
    /// What happened and what to do.
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<&'static str>,
    /// Sent as `Retry-After` (whole seconds, rounded up) and `retry-after-ms`.
    pub retry_after: Option<Duration>,
    /// Extra headers (rate-limit headers); boxed to keep errors small.
    pub headers: Box<HeaderMap>,
}

impl ApiError {
    /// An error with no retry hint.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code: code.to_string(),
            message: message.into(),
            param: None,
            retry_after: None,
            headers: Box::default(),
        }
    }

    /// 400 `invalid_request_error` about one field.
    pub fn invalid(code: &str, param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                code,
                message,
            )
        }
    }

    /// 429 with a `Retry-After`.
    pub fn rate_limited(
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, kind, code, message)
        }
    }

    /// 401 for a missing or unknown key.
    pub fn unauthorized(message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 500/503 for a failure of the gateway itself.
    pub fn internal(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self::new(status, "server_error", code, message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.extend(*self.headers);
        if let Some(d) = self.retry_after {
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                h.insert("retry-after", v);
            }
            if let Ok(v) = HeaderValue::from_str(&d.as_millis().max(1).to_string()) {
                h.insert("retry-after-ms", v);
            }
        }
        resp
    }
}
