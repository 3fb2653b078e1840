//! `GET /dashboard/api/overview`: everything on the dashboard but the
//! client table. Tiers with their waits (p50/p99 of
//! `tollgate_queue_wait_seconds`, as Prometheus' `histogram_quantile` would
//! compute them), provider models with their bucket use and their requests
//! per priority class, the store's and the ledger's health, the registry's
//! index (its last change, how often it was built whole, changes applied
//! one entry at a time), and totals.
//! Request counts are this instance's since it started.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tollgate::Status;

use super::{assets, session};
use crate::activity::Counts;
use crate::gateway::Gateway;
use crate::metrics::names;

/// A bucket's status as the page shows it: per dimension its limit per
/// window, what is in use now and the share of its capacity that is.
pub(crate) fn bucket(status: &Status) -> Value {
    let mut out = serde_json::Map::new();
    for d in &status.dimensions {
        // requests, tokens, input_tokens, output_tokens: as in /admin/clients.
        let name = d.dimension.unit().replace(' ', "_");
        out.insert(
            name,
            json!({"limit": d.limit, "in_use": d.in_use.round(), "use": use_of(d.in_use, d.capacity)}),
        );
    }
    Value::Object(out)
}

/// The share of `capacity` that `in_use` is (0 to 1).
pub(crate) fn use_of(in_use: f64, capacity: f64) -> f64 {
    if capacity > 0.0 {
        (in_use / capacity).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The fullest dimension of a bucket (0 to 1).
pub(crate) fn fullest(status: &Status) -> f64 {
    status
        .dimensions
        .iter()
        .map(|d| use_of(d.in_use, d.capacity))
        .fold(0.0, f64::max)
}

fn counts_json(c: Counts) -> Value {
    json!({"requests": c.requests, "refused": c.refused, "failed": c.failed, "refusal_rate": c.refusal_rate()})
}

fn sum(a: Counts, b: Counts) -> Counts {
    Counts {
        requests: a.requests + b.requests,
        refused: a.refused + b.refused,
        failed: a.failed + b.failed,
    }
}

/// `GET /dashboard/api/overview`.
pub async fn handler(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(denied) = session::check(&gw, &headers) {
        return denied.json();
    }
    let body = overview(&gw).await;
    (assets::headers("application/json"), body.to_string()).into_response()
}

/// The overview's JSON.
pub async fn overview(gw: &Gateway) -> Value {
    let m = &gw.metrics;
    let registry = gw.registry();
    let all_tiers = registry.tiers();
    let all_clients = registry.clients();
    let by_model_tier = m.activity().models();
    let tokens = m.activity().model_tokens();
    let mut tier_counts: BTreeMap<&str, Counts> = BTreeMap::new();
    for ((_, tier), c) in &by_model_tier {
        let e = tier_counts.entry(tier.as_str()).or_default();
        *e = sum(*e, *c);
    }
    let total = tier_counts
        .values()
        .fold(Counts::default(), |a, c| sum(a, *c));

    let tiers: Vec<Value> = all_tiers
        .iter()
        .map(|t| {
            let pairs = [("tier", t.name.as_str())];
            let clients = registry.tier_client_count(&t.name);
            json!({
                "name": t.name,
                "class": t.config.priority,
                "clients": clients,
                "rpm": t.config.rpm,
                "tpm": t.config.tpm,
                "max_wait_ms": t.config.max_wait_ms,
                "daily_budget_usd": t.config.daily_budget_usd,
                "monthly_budget_usd": t.config.monthly_budget_usd,
                "counts": counts_json(tier_counts.get(t.name.as_str()).copied().unwrap_or_default()),
                "wait": {
                    "observations": m.observations(names::QUEUE_WAIT, &pairs),
                    "p50_s": m.quantile(names::QUEUE_WAIT, &pairs, 0.5),
                    "p99_s": m.quantile(names::QUEUE_WAIT, &pairs, 0.99),
                },
            })
        })
        .collect();

    let mut store_error = None;
    let mut models = Vec::new();
    // Every model's bucket at once: with the store down, each waits its
    // retries out.
    let statuses =
        futures_util::future::join_all(gw.models.values().map(|m| m.limiter.status())).await;
    for (model, status) in gw.models.values().zip(statuses) {
        let status = match status {
            Ok(s) => Some(s),
            Err(e) => {
                store_error.get_or_insert_with(|| e.to_string());
                None
            }
        };
        let classes: Vec<Value> = gw
            .config
            .priority
            .headroom
            .iter()
            .enumerate()
            .map(|(class, headroom)| {
                let class_label = class.to_string();
                let in_class: Vec<&str> = all_tiers
                    .iter()
                    .filter(|t| usize::from(t.config.priority) == class)
                    .map(|t| t.name.as_str())
                    .collect();
                let counts = in_class
                    .iter()
                    .filter_map(|t| by_model_tier.get(&(model.name.clone(), t.to_string())))
                    .fold(Counts::default(), |a, c| sum(a, *c));
                json!({
                    "class": class,
                    "headroom": headroom,
                    "tiers": in_class,
                    "counts": counts_json(counts),
                    "queued": m.gauge(names::QUEUE_DEPTH, &[("model", &model.name), ("class", &class_label)]),
                })
            })
            .collect();
        models.push(json!({
            "name": model.name,
            "provider": model.provider,
            "kind": model.kind,
            "bucket": status.as_ref().map(bucket),
            "use": status.as_ref().map(fullest),
            "queue_depth": status.as_ref().map(|s| s.queue_depth),
            "tokens": tokens.get(&model.name).copied().unwrap_or(0),
            "classes": classes,
        }));
    }

    let ping = gw.sync.ping().await;
    let mut limiter_errors = 0;
    let mut outage_decisions = 0;
    for s in gw.models.values().map(|m| m.limiter.stats()).chain(
        all_clients
            .iter()
            .filter_map(|c| c.built_limiter().map(|l| l.stats())),
    ) {
        limiter_errors += s.store_errors;
        outage_decisions += s.outage_open + s.outage_closed + s.outage_local;
    }
    let errors: serde_json::Map<String, Value> = ["limiter", "budget", "sync"]
        .into_iter()
        .map(|component| {
            let n = m.counter(names::STORE_ERRORS, &[("component", component)]);
            (component.to_string(), json!(n as u64))
        })
        .collect();
    let store_up = ping.is_ok() && store_error.is_none();
    let c = &gw.connections;
    json!({
        "generated_at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        "store": {
            "kind": if gw.store.is_memory() { "memory" } else { "redis" },
            "up": store_up,
            "error": ping.err().or(store_error),
            "errors": errors,
            "limiter_errors": limiter_errors,
            "outage_policy": gw.outage.name(),
            "outage_decisions": outage_decisions,
        },
        "ledger": ledger(gw),
        "registry": registry.stats(),
        "totals": {
            "clients": all_clients.len(),
            "counts": counts_json(total),
            "in_flight": c.requests_in_flight.load(Relaxed),
            "connections_open": c.open.load(Relaxed),
        },
        "tiers": tiers,
        "models": models,
    })
}

/// The ledger's health: its database, whether the last write went in, the
/// rows queued and spooled (what `/metrics` says as `tollgate_ledger_*`).
fn ledger(gw: &Gateway) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(l) = &gw.ledger else {
        return json!({
            "enabled": false,
            "kind": "off",
            "detail": "The usage ledger is off (ledger.url = \"off\"): no rows are kept.",
        });
    };
    let s = l.stats();
    let healthy = s.database_up.load(Relaxed);
    let (backlog, spooled) = (s.backlog.load(Relaxed), l.spooled());
    json!({
        "enabled": true,
        "kind": l.store().kind(),
        "healthy": healthy,
        "backlog": backlog,
        "spool_rows": spooled,
        "written": s.written.load(Relaxed),
        "lost": s.lost.load(Relaxed),
        "detail": format!(
            "{backlog} rows queued, {spooled} in the spool, {} written, {} lost{}",
            s.written.load(Relaxed),
            s.lost.load(Relaxed),
            if healthy { "" } else { "; the database is unreachable: rows wait in the spool" }
        ),
    })
}
