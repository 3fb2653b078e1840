//! How a request ended, as one closed set: the `outcome` label of
//! `tollgate_requests_total`, the ledger's outcome and the logs all use these
//! names, so a typo cannot open a new series and every cause of a refusal or
//! failure stays apart from the others.

/// The names of the outcomes, as they appear in metrics and logs.
pub mod names {
    /// Answered by the upstream, charged.
    pub const OK: &str = "ok";
    /// No or unknown API key.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Refused by a rate-limit bucket (the client's or the provider model's).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Refused by the client's daily or monthly budget.
    pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
    /// The limit or spend store could not be reached (and the outage policy
    /// refuses).
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    /// The request itself was wrong (validation, size, media type, method).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The gateway refused a connection or request to protect itself
    /// (connection limit).
    pub const OVERLOADED: &str = "overloaded";
    /// The upstream could not be reached or answered an error status.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// The upstream answered 429.
    pub const UPSTREAM_RATE_LIMITED: &str = "upstream_rate_limited";
    /// The upstream did not answer (or stalled) within its timeout.
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    /// A stream broke off after it had started.
    pub const STREAM_BROKEN: &str = "stream_broken";
    /// The client went away before the answer was complete.
    pub const CLIENT_GONE: &str = "client_gone";
    /// The upstream answered success with a body that is not what the API
    /// defines (not JSON, no usage where usage is due, wrong shape).
    pub const UPSTREAM_BAD_BODY: &str = "upstream_bad_body";
    /// A failure of the gateway itself.
    pub const INTERNAL: &str = "internal_error";
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// See [`names::OK`].
    Ok,
    /// See [`names::UNAUTHORIZED`].
    Unauthorized,
    /// See [`names::RATE_LIMITED`].
    RateLimited,
    /// See [`names::BUDGET_EXCEEDED`].
    BudgetExceeded,
    /// See [`names::STORE_UNAVAILABLE`].
    StoreUnavailable,
    /// See [`names::BAD_REQUEST`].
    BadRequest,
    /// See [`names::OVERLOADED`].
    Overloaded,
    /// See [`names::UPSTREAM_ERROR`].
    UpstreamError,
    /// See [`names::UPSTREAM_RATE_LIMITED`].
    UpstreamRateLimited,
    /// See [`names::UPSTREAM_TIMEOUT`].
    UpstreamTimeout,
    /// See [`names::STREAM_BROKEN`].
    StreamBroken,
    /// See [`names::CLIENT_GONE`].
    ClientGone,
    /// See [`names::UPSTREAM_BAD_BODY`].
    UpstreamBadBody,
    /// See [`names::INTERNAL`].
    Internal,
}

impl Outcome {
    /// Every outcome, in the order of the docs.
    pub const ALL: &'static [Outcome] = &[
        Outcome::Ok,
        Outcome::Unauthorized,
        Outcome::RateLimited,
        Outcome::BudgetExceeded,
        Outcome::StoreUnavailable,
        Outcome::BadRequest,
        Outcome::Overloaded,
        Outcome::UpstreamError,
        Outcome::UpstreamRateLimited,
        Outcome::UpstreamTimeout,
        Outcome::StreamBroken,
        Outcome::ClientGone,
        Outcome::UpstreamBadBody,
        Outcome::Internal,
    ];

    /// The name in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => names::OK,
            Outcome::Unauthorized => names::UNAUTHORIZED,
            Outcome::RateLimited => names::RATE_LIMITED,
            Outcome::BudgetExceeded => names::BUDGET_EXCEEDED,
            Outcome::StoreUnavailable => names::STORE_UNAVAILABLE,
            Outcome::BadRequest => names::BAD_REQUEST,
            Outcome::Overloaded => names::OVERLOADED,
            Outcome::UpstreamError => names::UPSTREAM_ERROR,
            Outcome::UpstreamRateLimited => names::UPSTREAM_RATE_LIMITED,
            Outcome::UpstreamTimeout => names::UPSTREAM_TIMEOUT,
            Outcome::StreamBroken => names::STREAM_BROKEN,
            Outcome::ClientGone => names::CLIENT_GONE,
            Outcome::UpstreamBadBody => names::UPSTREAM_BAD_BODY,
            Outcome::Internal => names::INTERNAL,
        }
    }

    /// The outcome of a request the gateway refused before forwarding it,
    /// from the error it answered: the store's outage, a budget, a bucket
    /// or the request itself.
    pub fn of_refusal(e: &crate::error::ApiError) -> Outcome {
        use axum::http::StatusCode;
        if e.code == "store_unavailable" {
            Outcome::StoreUnavailable
        } else if e.code.ends_with("budget_exceeded") {
            Outcome::BudgetExceeded
        } else if e.status == StatusCode::TOO_MANY_REQUESTS {
            Outcome::RateLimited
        } else if e.status == StatusCode::UNAUTHORIZED {
            Outcome::Unauthorized
        } else if e.status.is_client_error() {
            Outcome::BadRequest
        } else {
            Outcome::Internal
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use axum::http::StatusCode;
    use std::time::Duration;

    #[test]
    fn names_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            assert!(seen.insert(o.as_str()), "{o} twice");
        }
    }

    #[test]
    fn refusals_are_told_apart() {
        let store = ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "x");
        assert_eq!(Outcome::of_refusal(&store), Outcome::StoreUnavailable);
        let budget = ApiError::rate_limited(
            "insufficient_quota",
            "daily_budget_exceeded",
            "x",
            Duration::from_secs(1),
        );
        assert_eq!(Outcome::of_refusal(&budget), Outcome::BudgetExceeded);
        let rl = ApiError::rate_limited(
            "rate_limit_error",
            "client_requests_exceeded",
            "x",
            Duration::from_secs(1),
        );
        assert_eq!(Outcome::of_refusal(&rl), Outcome::RateLimited);
        let bad = ApiError::invalid("invalid_json", "body", "x");
        assert_eq!(Outcome::of_refusal(&bad), Outcome::BadRequest);
    }
}
