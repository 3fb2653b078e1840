//! `GET /dashboard/api/clients`: one page of clients, filtered and sorted
//! on the server, so the page stays light with thousands of clients.
//!
//! Query parameters (all optional):
//!
//! - `q`: part of the client's id or tier name (case-insensitive);
//! - `tier`: only this tier;
//! - `sort`: `use` (the fullest dimension of the client's bucket, default),
//!   `spend` (today's), `refusals` (recent refusal rate), `requests`, `id`;
//!   numbers sort high first, ids A to Z;
//! - `limit` (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and `offset`.
//!
//! Sorting by `use` or `spend` reads every matched client's bucket or spend
//! from the store (at most [`STORE_CONCURRENCY`] calls at once); the other
//! orders read the store for the page's clients only.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{assets, overview, session};
use crate::activity::ClientActivity;
use crate::budget::{nano_to_usd, Spend};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::registry::Client;

/// Clients on a page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 25;
/// The most clients one page holds.
pub const MAX_LIMIT: usize = 200;
/// Store calls in flight at once while a page is built.
pub const STORE_CONCURRENCY: usize = 32;

/// The orders a page can be sorted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// The fullest dimension of the client's bucket, fullest first.
    Use,
    /// Today's spend, highest first.
    Spend,
    /// Recent refusal rate, highest first (then recent refusals).
    Refusals,
    /// Requests since the start, most first.
    Requests,
    /// Client id, A to Z.
    Id,
}

impl Sort {
    const NAMES: &'static [(&'static str, Sort)] = &[
        ("use", Sort::Use),
        ("spend", Sort::Spend),
        ("refusals", Sort::Refusals),
        ("requests", Sort::Requests),
        ("id", Sort::Id),
    ];

    fn parse(s: &str) -> Option<Sort> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }
}

/// A page's query, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Part of an id or tier name, lower-case.
    pub q: String,
    /// Only this tier.
    pub tier: Option<String>,
    /// The order.
    pub sort: Sort,
    /// Clients on the page.
    pub limit: usize,
    /// Clients skipped before the page.
    pub offset: usize,
}

fn bad(param: &'static str, message: String) -> ApiError {
    ApiError::invalid("invalid_query", param, message)
}

impl Query {
    /// Parses a query string; an unknown parameter or a bad value is an
    /// error that says what is allowed.
    pub fn parse(query: &str) -> Result<Query, ApiError> {
        let mut out = Query {
            q: String::new(),
            tier: None,
            sort: Sort::Use,
            limit: DEFAULT_LIMIT,
            offset: 0,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let number = |param: &'static str| {
                v.parse::<usize>()
                    .map_err(|_| bad(param, format!("{param}={v:?} is not a whole number ≥ 0.")))
            };
            match &*k {
                "q" => out.q = v.trim().to_lowercase(),
                "tier" => out.tier = Some(v.to_string()).filter(|t| !t.is_empty()),
                "sort" => {
                    out.sort = Sort::parse(&v).ok_or_else(|| {
                        let names: Vec<&str> = Sort::NAMES.iter().map(|(n, _)| *n).collect();
                        bad("sort", format!("sort={v:?} is not one of {names:?}."))
                    })?
                }
                "limit" => {
                    out.limit = number("limit")?;
                    if !(1..=MAX_LIMIT).contains(&out.limit) {
                        return Err(bad(
                            "limit",
                            format!("limit={} is outside 1 to {MAX_LIMIT}.", out.limit),
                        ));
                    }
                }
                "offset" => out.offset = number("offset")?,
                other => {
                    return Err(bad(
                        "query",
                        format!("Unknown parameter {other:?}; this endpoint takes q, tier, sort, limit and offset."),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn matches(&self, c: &Client) -> bool {
        self.tier.as_ref().is_none_or(|t| *t == c.tier.name)
            && (self.q.is_empty()
                || c.id.to_lowercase().contains(&self.q)
                || c.tier.name.to_lowercase().contains(&self.q))
    }
}

/// What the store says about one client: its bucket and its spend, each
/// `None` when the store could not answer.
#[derive(Debug, Default)]
pub(super) struct Stored {
    status: Option<tollgate::Status>,
    spend: Option<Spend>,
}

pub(super) async fn stored(
    gw: &Gateway,
    c: &Client,
    errors: &parking_lot::Mutex<Option<String>>,
) -> Stored {
    let (status, spend) = tokio::join!(c.limiter().status(), gw.budgets.spend(&c.id));
    let keep = |e: String| {
        errors.lock().get_or_insert(e);
    };
    Stored {
        status: status.map_err(|e| keep(e.to_string())).ok(),
        spend: spend.map_err(|e| keep(e.to_string())).ok(),
    }
}

/// One row of the page.
pub(super) fn row(c: &Client, a: &ClientActivity, s: &Stored) -> Value {
    let t = &c.tier.config;
    let spend = s.spend.map(|sp| {
        let used = |spent: i64, limit: Option<i64>| {
            limit.map(|l| overview::use_of(spent as f64, l as f64))
        };
        json!({
            "today_usd": nano_to_usd(sp.today),
            "month_usd": nano_to_usd(sp.month),
            "daily_budget_usd": t.daily_budget_usd,
            "monthly_budget_usd": t.monthly_budget_usd,
            "daily_used": used(sp.today, c.budget.daily),
            "monthly_used": used(sp.month, c.budget.monthly),
        })
    });
    json!({
        "id": c.id,
        "tier": c.tier.name,
        "class": t.priority,
        "rpm": t.rpm,
        "tpm": t.tpm,
        "bucket": s.status.as_ref().map(overview::bucket),
        "use": s.status.as_ref().map(overview::fullest),
        "spend": spend,
        "requests": a.total.requests,
        "refused": a.total.refused,
        "failed": a.total.failed,
        "refusal_rate": a.total.refusal_rate(),
        "recent": {
            "requests": a.recent.requests,
            "refused": a.recent.refused,
            "refusal_rate": a.recent.refusal_rate(),
        },
        "tokens": a.tokens,
    })
}

/// `GET /dashboard/api/clients`.
pub async fn handler(State(gw): State<Arc<Gateway>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(denied) = session::check(&gw, &headers) {
        return denied.json();
    }
    let query = match Query::parse(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let body = page(&gw, &query).await;
    (
        StatusCode::OK,
        assets::headers("application/json"),
        body.to_string(),
    )
        .into_response()
}

/// The page `query` asks for.
pub async fn page(gw: &Gateway, query: &Query) -> Value {
    let registry = gw.registry();
    let all = registry.clients();
    let matched: Vec<&Arc<Client>> = all.iter().filter(|c| query.matches(c)).collect();
    let activity = gw
        .metrics
        .activity()
        .clients(matched.iter().map(|c| c.id.as_str()));
    let errors = parking_lot::Mutex::new(None);
    let mut rows: Vec<(&Arc<Client>, ClientActivity, Option<Stored>)> = matched
        .iter()
        .zip(activity)
        .map(|(c, a)| (*c, a, None))
        .collect();
    let read_all = matches!(query.sort, Sort::Use | Sort::Spend);
    if read_all {
        fill(gw, &mut rows, &errors).await;
    }
    let number = |x: Option<f64>| x.unwrap_or(-1.0);
    match query.sort {
        Sort::Id => {}
        Sort::Use => rows.sort_by(|a, b| {
            let u = |r: &Option<Stored>| {
                number(
                    r.as_ref()
                        .and_then(|s| s.status.as_ref())
                        .map(overview::fullest),
                )
            };
            u(&b.2).total_cmp(&u(&a.2))
        }),
        Sort::Spend => rows.sort_by(|a, b| {
            let s = |r: &Option<Stored>| {
                number(r.as_ref().and_then(|s| s.spend).map(|s| s.today as f64))
            };
            s(&b.2).total_cmp(&s(&a.2))
        }),
        Sort::Refusals => rows.sort_by(|a, b| {
            (b.1.recent.refusal_rate(), b.1.recent.refused)
                .partial_cmp(&(a.1.recent.refusal_rate(), a.1.recent.refused))
                .unwrap_or(std::cmp::Ordering::Equal)
        }),
        Sort::Requests => rows.sort_by_key(|r| std::cmp::Reverse(r.1.total.requests)),
    }
    let mut shown: Vec<_> = rows
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .collect();
    if !read_all {
        fill(gw, &mut shown, &errors).await;
    }
    let clients: Vec<Value> = shown
        .iter()
        .map(|(c, a, s)| row(c, a, s.as_ref().unwrap_or(&Stored::default())))
        .collect();
    json!({
        "total": all.len(),
        "matched": matched.len(),
        "offset": query.offset,
        "limit": query.limit,
        "store_error": errors.into_inner(),
        "clients": clients,
    })
}

/// Reads the store for every row, [`STORE_CONCURRENCY`] at a time.
async fn fill(
    gw: &Gateway,
    rows: &mut [(&Arc<Client>, ClientActivity, Option<Stored>)],
    errors: &parking_lot::Mutex<Option<String>>,
) {
    let clients: Vec<Arc<Client>> = rows.iter().map(|(c, _, _)| Arc::clone(c)).collect();
    let read: Vec<Stored> = stream::iter(clients)
        .map(|c| async move { stored(gw, &c, errors).await })
        .buffered(STORE_CONCURRENCY)
        .collect()
        .await;
    for (r, s) in rows.iter_mut().zip(read) {
        r.2 = Some(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_validated() {
        let q = Query::parse("q=Acme&sort=spend&limit=10&offset=20&tier=pro").unwrap();
        assert_eq!(
            q,
            Query {
                q: "acme".into(),
                tier: Some("pro".into()),
                sort: Sort::Spend,
                limit: 10,
                offset: 20
            }
        );
        assert_eq!(Query::parse("").unwrap().limit, DEFAULT_LIMIT);
        for (bad, says) in [
            ("sort=cost", "not one of"),
            ("limit=0", "outside 1 to 200"),
            ("limit=201", "outside 1 to 200"),
            ("offset=-1", "whole number"),
            ("page=2", "Unknown parameter \"page\""),
        ] {
            let e = Query::parse(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }
}
