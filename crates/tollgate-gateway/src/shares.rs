//! Each provider model's share per tier, as operators read it: in
//! `/metrics` (`tollgate_model_share*`, per model and tier) and in
//! `GET /admin/models` (per model, each tier's floor, share, use and
//! queue). Only models whose tiers share them by floor and weight have
//! shares (see `config::share`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tollgate::{Dimension, Error as LimitError, Status};

use crate::config::{Config, TierConfig};
use crate::metrics::{names, Metrics};
use crate::model::Model;

/// The name of a dimension in labels and JSON.
pub(crate) fn dimension_name(d: Dimension) -> &'static str {
    match d {
        Dimension::Requests => "requests",
        Dimension::Tokens => "tokens",
        Dimension::InputTokens => "input_tokens",
        Dimension::OutputTokens => "output_tokens",
    }
}

/// The name of the tier of class `class` (the tiers in name order, when they
/// share the provider models).
fn tier_of(config: &Config, class: u8) -> &str {
    config
        .tiers
        .keys()
        .nth(usize::from(class))
        .map(String::as_str)
        .unwrap_or("?")
}

/// Puts `tiers`' floors, weights and lendable parts (the file's with the
/// admin API's changes over them) in force on every model of `models` whose
/// tiers share it (`config`'s), from its next reservation on: see
/// [`tollgate::RateLimiter::set_class_shares`]. A model whose shares change
/// is logged; one whose new shares cannot be built (changes made at once
/// on two instances whose floors together pass 1) keeps those it had, with
/// a warning. Answers how many models changed.
pub(crate) fn reshare(
    config: &Config,
    tiers: &BTreeMap<String, TierConfig>,
    models: &BTreeMap<String, Arc<Model>>,
) -> usize {
    if !config.shares_providers() {
        return 0;
    }
    let mut changed = 0;
    for m in models.values() {
        let Some(mc) = config
            .providers
            .get(&m.provider)
            .and_then(|p| p.models.get(&m.name))
        else {
            continue;
        };
        let new = crate::config::tier_shares(tiers, mc);
        let mut now = m.shares.lock();
        if *now == new {
            continue;
        }
        match m.limiter.set_class_shares(new.clone()) {
            Ok(()) => {
                *now = new;
                changed += 1;
                tracing::info!(model = %m.name, shares = ?m.limiter.lane_shares(), "the tiers' shares of this model changed");
            }
            Err(e) => {
                tracing::warn!(model = %m.name, error = %e, "the tiers' shares of this model cannot change so; it keeps those it had")
            }
        }
    }
    changed
}

/// Each model's status, read once for a scrape or an admin answer.
pub(crate) async fn statuses<'a>(
    models: impl Iterator<Item = &'a Arc<Model>>,
) -> Vec<(Arc<Model>, Result<Status, LimitError>)> {
    let models: Vec<Arc<Model>> = models.cloned().collect();
    let answers = futures_util::future::join_all(models.iter().map(|m| m.limiter.status())).await;
    models.into_iter().zip(answers).collect()
}

/// Sets the share gauges from `statuses`: per model and tier its floor,
/// share and queue depth; per model, tier and dimension what its lane has
/// in use and holds. A model whose status could not be read keeps no
/// series (the store-up gauge says why).
pub(crate) fn publish(
    metrics: &Metrics,
    config: &Config,
    statuses: &[(Arc<Model>, Result<Status, LimitError>)],
) {
    let mut floor = Vec::new();
    let mut share = Vec::new();
    let mut queue = Vec::new();
    let mut in_use = Vec::new();
    let mut capacity = Vec::new();
    for (m, status) in statuses {
        let Ok(status) = status else { continue };
        for c in &status.classes {
            let labels = vec![
                ("model", m.name.as_str()),
                ("tier", tier_of(config, c.class)),
            ];
            floor.push((labels.clone(), c.floor));
            share.push((labels.clone(), c.share));
            queue.push((labels.clone(), c.queue_depth as f64));
            for d in &c.dimensions {
                let mut l = labels.clone();
                l.push(("dimension", dimension_name(d.dimension)));
                in_use.push((l.clone(), d.in_use));
                capacity.push((l, d.capacity));
            }
        }
    }
    metrics.gauge_replace(names::MODEL_SHARE_FLOOR, &floor);
    metrics.gauge_replace(names::MODEL_SHARE, &share);
    metrics.gauge_replace(names::MODEL_SHARE_QUEUE, &queue);
    metrics.gauge_replace(names::MODEL_SHARE_IN_USE, &in_use);
    metrics.gauge_replace(names::MODEL_SHARE_CAPACITY, &capacity);
}

/// One model's status as `GET /admin/models` shows it.
pub(crate) fn model_json(config: &Config, m: &Model, status: &Status) -> Value {
    let dims = |ds: &[tollgate::DimensionStatus]| -> serde_json::Map<String, Value> {
        ds.iter()
            .map(|d| {
                (
                    dimension_name(d.dimension).to_string(),
                    json!({"limit": d.limit, "capacity": d.capacity, "in_use": d.in_use, "available": d.available}),
                )
            })
            .collect()
    };
    let tiers: Vec<Value> = status
        .classes
        .iter()
        .map(|c| {
            json!({
                "tier": tier_of(config, c.class),
                "class": c.class,
                "floor": c.floor,
                "weight": c.weight,
                "share": c.share,
                "queue_depth": c.queue_depth,
                "usage": dims(&c.dimensions),
            })
        })
        .collect();
    json!({
        "name": m.name,
        "provider": m.provider,
        "queue_depth": status.queue_depth,
        "usage": dims(&status.dimensions),
        "shared": !status.classes.is_empty(),
        "tiers": tiers,
    })
}
