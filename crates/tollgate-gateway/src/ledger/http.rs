//! `GET /admin/usage?from=&to=&group_by=`: a report as JSON, or as CSV for
//! `Accept: text/csv`; and the ledger's figures in `/metrics`.

use std::sync::atomic::Ordering::Relaxed;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{UsageLedger, UsageQuery};
use crate::error::ApiError;
use crate::metrics::{names, Metrics};

/// The query string of `/admin/usage`.
#[derive(Debug, Default, Deserialize)]
pub struct UsageParams {
    /// Start: a UTC date, time or ms since the epoch (default: all).
    pub from: Option<String>,
    /// End, exclusive (default: now and later).
    pub to: Option<String>,
    /// `client` (default), `tier`, `model`, `route` or `day`.
    pub group_by: Option<String>,
}

/// The report `params` ask for, in the format `headers` accept.
pub async fn usage_response(
    ledger: Option<&UsageLedger>,
    params: &UsageParams,
    headers: &HeaderMap,
) -> Response {
    let Some(ledger) = ledger else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "ledger_off",
            "The usage ledger is off (ledger.url = \"off\"): there is nothing to report.",
        )
        .into_response();
    };
    let query = match UsageQuery::parse(
        params.from.as_deref(),
        params.to.as_deref(),
        params.group_by.as_deref(),
    ) {
        Ok(q) => q,
        Err(e) => return ApiError::invalid("invalid_usage_query", "query", e).into_response(),
    };
    let report = match ledger.report(query).await {
        Ok(r) => r,
        Err(e) => {
            return ApiError::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                format!("The usage ledger cannot be read ({e}); retry shortly."),
            )
            .into_response()
        }
    };
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.to_csv(),
        )
            .into_response()
    } else {
        axum::Json(report).into_response()
    }
}

/// Sets the ledger's gauges and counters for a scrape.
pub fn publish_metrics(m: &Metrics, ledger: &UsageLedger) {
    let s = ledger.stats();
    for (name, v) in [
        (names::LEDGER_BACKLOG, s.backlog.load(Relaxed)),
        (names::LEDGER_SPOOL_ROWS, ledger.spooled()),
        (names::LEDGER_UP, u64::from(s.database_up.load(Relaxed))),
        (names::LEDGER_WRITTEN, s.written.load(Relaxed)),
        (names::LEDGER_DUPLICATES, s.duplicates.load(Relaxed)),
        (names::LEDGER_OVERFLOW, s.overflowed.load(Relaxed)),
        (names::LEDGER_SPOOLED, s.spooled.load(Relaxed)),
        (names::LEDGER_REPLAYED, s.replayed.load(Relaxed)),
        (names::LEDGER_WRITE_ERRORS, s.write_errors.load(Relaxed)),
        (names::LEDGER_LOST, s.lost.load(Relaxed)),
        (names::LEDGER_SPOOL_CORRUPT, ledger.spool_corrupt()),
    ] {
        m.gauge_set(name, &[], v as f64);
    }
}
