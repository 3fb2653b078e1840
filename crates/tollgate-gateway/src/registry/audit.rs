//! The audit table (`registry_audit`, migration 4 of
//! [`crate::ledger::store::MIGRATIONS`]): one row per change of the
//! registry, written by [`super::db::write_all`] in the change's own
//! transaction, so there is never a change without its row nor a row
//! without its change.
//!
//! A row holds who (the admin token's name, never the token), what (the
//! admin request, `PATCH /admin/tiers/pro`, and the objects, `tier:pro`),
//! the objects before and after as JSON (their rows as the tables hold
//! them, read inside the transaction, a key's hash left out), and when. A
//! write that changes nothing (the same value again) leaves no row.
//!
//! Who and what come from the [`Actor`] the admin API's guard sets around
//! each request ([`with_actor`]); a change made outside a request (the
//! import of an earlier release's overrides at start) is the gateway's.

use std::future::Future;

use serde_json::{json, Map, Value as Json};

use super::db::Entity;
use crate::ledger::store::sql::{Rows, Statement, Value};
use crate::ledger::{Store, StoreError};

/// Who makes the changes of the current request, and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The admin token's name.
    pub token: String,
    /// The request: method and path, `POST /admin/clients`.
    pub action: String,
}

/// Who a change made outside an admin request is recorded as.
pub const GATEWAY_ACTOR: &str = "gateway";

tokio::task_local! {
    static ACTOR: Actor;
}

/// Runs `f` with every registry change it makes recorded as `actor`'s.
pub async fn with_actor<F: Future>(actor: Actor, f: F) -> F::Output {
    ACTOR.scope(actor, f).await
}

/// The actor of the changes made now.
pub(crate) fn current() -> Actor {
    ACTOR.try_with(Clone::clone).unwrap_or_else(|_| Actor {
        token: GATEWAY_ACTOR.into(),
        action: "internal".into(),
    })
}

/// An entity's table, its key column, and the columns the audit shows
/// (a key's hash is not among them). Columns marked JSON hold JSON text
/// and are shown as JSON.
fn shape(entity: &Entity) -> (&'static str, &'static str, &'static [(&'static str, bool)]) {
    match entity {
        Entity::Tier(_) => ("registry_tiers", "name", &[("fields", true)]),
        Entity::Assignment(_) => ("registry_tier_assignments", "client", &[("tier", false)]),
        Entity::Client(_) => (
            "registry_clients",
            "id",
            &[
                ("tier", false),
                ("org", false),
                ("limits", true),
                ("disabled", false),
                ("created_at_ms", false),
            ],
        ),
        Entity::Key(_) => (
            "registry_keys",
            "id",
            &[
                ("client", false),
                ("shown", false),
                ("name", false),
                ("models", true),
                ("limits", true),
                ("expires_at_ms", false),
                ("revoked_at_ms", false),
                ("created_at_ms", false),
            ],
        ),
        Entity::Org(_) => (
            "registry_orgs",
            "id",
            &[
                ("name", false),
                ("limits", true),
                ("disabled", false),
                ("created_at_ms", false),
            ],
        ),
        Entity::Route(_) => ("registry_routes", "name", &[("route", true)]),
    }
}

/// The statement that reads `entity`'s row as the audit shows it.
pub(crate) fn state_statement(entity: &Entity) -> Statement {
    let (table, key, columns) = shape(entity);
    let list: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    Statement::new(
        format!("SELECT {} FROM {table} WHERE {key} = $1", list.join(", ")),
        vec![entity.id().into()],
    )
}

/// `entity`'s row, as [`state_statement`] answered it (`null`: none).
fn state(entity: &Entity, rows: &Rows) -> Json {
    let (_, _, columns) = shape(entity);
    let Some(row) = rows.first() else {
        return Json::Null;
    };
    let mut out = Map::new();
    for ((name, is_json), v) in columns.iter().zip(row) {
        let shown = match v {
            Value::Null => Json::Null,
            Value::Int(i) => json!(i),
            Value::Text(t) if *is_json => serde_json::from_str(t).unwrap_or_else(|_| json!(t)),
            Value::Text(t) => json!(t),
        };
        out.insert((*name).to_string(), shown);
    }
    Json::Object(out)
}

/// `kind:id`, how the audit names an object.
fn object_name(e: &Entity) -> String {
    format!("{}:{}", e.kind(), e.id())
}

/// The states of `entities`, one answer each: the one state when there is
/// one entity, else each by its object's name.
fn states(entities: &[Entity], answers: &[Rows]) -> Json {
    if let [one] = entities {
        return state(one, &answers[0]);
    }
    Json::Object(
        entities
            .iter()
            .zip(answers)
            .map(|(e, rows)| (object_name(e), state(e, rows)))
            .collect(),
    )
}

/// The audit row of a change of `entities` (made under the change number
/// [`super::db::THIS_VERSION`]) with the states read before and after it,
/// or none when it changed nothing.
pub(crate) fn row(
    actor: &Actor,
    entities: &[Entity],
    before: &[Rows],
    after: &[Rows],
) -> Result<Option<Statement>, StoreError> {
    let (before, after) = (states(entities, before), states(entities, after));
    if before == after {
        return Ok(None);
    }
    let object: Vec<String> = entities.iter().map(object_name).collect();
    let text = |j: &Json| (!j.is_null()).then(|| j.to_string());
    Ok(Some(Statement::new(
        format!(
            "INSERT INTO registry_audit (version, at_ms, token, action, object, before_state, after_state) \
             VALUES ({}, $1, $2, $3, $4, $5, $6)",
            super::db::THIS_VERSION
        ),
        vec![
            Value::Int(crate::ledger::row::now_ms()),
            actor.token.as_str().into(),
            actor.action.as_str().into(),
            object.join(",").into(),
            text(&before).into(),
            text(&after).into(),
        ],
    )))
}

/// One row of the audit table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// The change's number (the last one's, for a change of several
    /// objects); also the cursor of the listing.
    pub version: u64,
    /// When, ms since 1970.
    pub at_ms: i64,
    /// The admin token's name.
    pub token: String,
    /// The request, `POST /admin/clients`.
    pub action: String,
    /// The objects it changed, `kind:id`, comma-separated.
    pub object: String,
    /// The object before (`null`: it was not there).
    pub before: Json,
    /// The object after (`null`: it is gone).
    pub after: Json,
}

/// The most entries one page of the listing holds.
pub const MAX_PAGE: u64 = 1_000;

/// The entries older than change `before` (all when `None`), newest first,
/// at most `limit` (up to [`MAX_PAGE`]); only those of `object` when given.
pub async fn page(
    db: &Store,
    before: Option<u64>,
    object: Option<&str>,
    limit: u64,
) -> Result<Vec<Entry>, StoreError> {
    let mut sql = String::from(
        "SELECT version, at_ms, token, action, object, before_state, after_state \
         FROM registry_audit WHERE version < $1",
    );
    let mut params = vec![
        Value::Int(before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64)),
        Value::Int(limit.clamp(1, MAX_PAGE) as i64),
    ];
    if let Some(o) = object {
        sql.push_str(" AND object = $3");
        params.push(o.into());
    }
    sql.push_str(" ORDER BY version DESC LIMIT $2");
    let rows = db.query(Statement::new(sql, params)).await?;
    let parse = |v: &Value| {
        v.text()
            .map_or(Json::Null, |t| serde_json::from_str(t).unwrap_or(json!(t)))
    };
    Ok(rows
        .iter()
        .map(|r| Entry {
            version: r[0].int().unwrap_or(0).max(0) as u64,
            at_ms: r[1].int().unwrap_or(0),
            token: r[2].text().unwrap_or_default().into(),
            action: r[3].text().unwrap_or_default().into(),
            object: r[4].text().unwrap_or_default().into(),
            before: parse(&r[5]),
            after: parse(&r[6]),
        })
        .collect())
}
