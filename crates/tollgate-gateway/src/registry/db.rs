//! The registry's tables in the ledger's database (migration 2 of
//! [`crate::ledger::store::MIGRATIONS`]): what the admin API created or
//! changed over the config file, and `registry_changes`, one row per
//! change, numbered 1, 2, 3… without gaps (each write takes the database's
//! write lock, then the next number), naming the entity it touched. An
//! instance applies the changes after the last one it applied, in order,
//! each by re-reading that one entity: a change costs O(1), and applying
//! one twice is harmless.

use std::collections::BTreeMap;

use crate::config::{LimitsConfig, RouteConfig};
use crate::ledger::store::sql::{Rows, Statement, Value};
use crate::ledger::{Store, StoreError};
use crate::overrides::{ClientOverride, RouteOverride, TierOverride, TierPatch};

/// What one change touched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entity {
    /// A tier's fields over the file's (`registry_tiers`).
    Tier(String),
    /// A config-file client's tier (`registry_tier_assignments`).
    Assignment(String),
    /// A client made through the admin API (`registry_clients`).
    Client(String),
    /// An issued key, by its id (`registry_keys`).
    Key(String),
    /// An organisation (`registry_orgs`).
    Org(String),
    /// A route set through the admin API (`registry_routes`).
    Route(String),
}

impl Entity {
    /// The kind, as `registry_changes.kind` holds it.
    pub fn kind(&self) -> &'static str {
        match self {
            Entity::Tier(_) => "tier",
            Entity::Assignment(_) => "assignment",
            Entity::Client(_) => "client",
            Entity::Key(_) => "key",
            Entity::Org(_) => "org",
            Entity::Route(_) => "route",
        }
    }

    /// Its id (a tier's name, a client's or key's id).
    pub fn id(&self) -> &str {
        match self {
            Entity::Tier(id)
            | Entity::Assignment(id)
            | Entity::Client(id)
            | Entity::Key(id)
            | Entity::Org(id)
            | Entity::Route(id) => id,
        }
    }

    fn parse(kind: &str, id: String) -> Option<Entity> {
        Some(match kind {
            "tier" => Entity::Tier(id),
            "assignment" => Entity::Assignment(id),
            "client" => Entity::Client(id),
            "key" => Entity::Key(id),
            "org" => Entity::Org(id),
            "route" => Entity::Route(id),
            _ => return None,
        })
    }
}

/// A client made through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRow {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: String,
    /// Its organisation.
    pub org: Option<String>,
    /// Its limits over its tier's.
    pub limits: LimitsConfig,
    /// Disabled clients are refused.
    pub disabled: bool,
    /// The change that last touched it.
    pub version: u64,
}

/// An organisation made (or changed over the file's) through the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgRow {
    /// Its id.
    pub id: String,
    /// A name for people.
    pub name: Option<String>,
    /// Its limits and budgets.
    pub limits: LimitsConfig,
    /// Disabled: its clients are refused.
    pub disabled: bool,
    /// When it was made, ms since 1970.
    pub created_at_ms: i64,
    /// The change that last touched it.
    pub version: u64,
}

/// A key issued through the admin API (its hash only).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// Its id.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The client it belongs to.
    pub client: String,
    /// How it is shown: its prefix and last characters.
    pub shown: String,
    /// Its name.
    pub name: Option<String>,
    /// The models and routes it may ask for (`None`: all).
    pub models: Option<Vec<String>>,
    /// When it stops working (ms since 1970).
    pub expires_at_ms: Option<i64>,
    /// When it was revoked (ms since 1970).
    pub revoked_at_ms: Option<i64>,
    /// Its own limits and budgets (inside its client's).
    pub limits: LimitsConfig,
    /// The first key of the rotations it comes from, whose bucket and
    /// budget it carries on (`None`: a key issued anew).
    pub lineage: Option<String>,
    /// The change that last touched it.
    pub version: u64,
}

/// An entity as the database holds it now (`None`: not there, or removed).
#[derive(Debug, Clone, PartialEq)]
pub enum Current {
    /// A tier's override.
    Tier(String, Option<TierOverride>),
    /// A file client's tier.
    Assignment(String, Option<ClientOverride>),
    /// An API client.
    Client(String, Option<ClientRow>),
    /// An issued key.
    Key(String, Option<KeyRow>),
    /// An organisation.
    Org(String, Option<OrgRow>),
    /// A route's override.
    Route(String, Option<RouteOverride>),
}

/// What the registry's tables hold but their clients and keys (which
/// [`Pages`] reads a page at a time), and the last change it includes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every change up to this one is included.
    pub version: u64,
    /// Tier overrides by name.
    pub tiers: BTreeMap<String, TierOverride>,
    /// File clients' tiers.
    pub assignments: BTreeMap<String, ClientOverride>,
    /// Routes set through the API, by name.
    pub routes: BTreeMap<String, RouteOverride>,
    /// Organisations made or changed through the API.
    pub orgs: Vec<OrgRow>,
}

fn version_of(v: &Value) -> u64 {
    v.int().unwrap_or(0).max(0) as u64
}

fn text(v: &Value) -> String {
    v.text().unwrap_or_default().to_string()
}

fn query_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Query(format!("registry: {what}: {e}"))
}

const TIER_SQL: &str = "SELECT name, fields, version FROM registry_tiers";
const ROUTE_SQL: &str = "SELECT name, route, version FROM registry_routes";
const ASSIGNMENT_SQL: &str = "SELECT client, tier, version FROM registry_tier_assignments";
const CLIENT_SQL: &str = "SELECT id, tier, org, disabled, version, limits FROM registry_clients";
const KEY_SQL: &str =
    "SELECT id, hash, client, shown, name, expires_at_ms, revoked_at_ms, version, models, limits, \
    lineage FROM registry_keys";
const ORG_SQL: &str =
    "SELECT id, name, limits, disabled, created_at_ms, version FROM registry_orgs";

/// A `limits` column: written by the gateway from a [`LimitsConfig`], so
/// readable; a hand edit that is not sets no limits, with a warning.
fn limits_of(v: &Value, what: &str) -> LimitsConfig {
    let text = v.text().unwrap_or("{}");
    // What most rows hold, read without the parser (one per client and
    // key at start).
    if text == "{}" {
        return LimitsConfig::default();
    }
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(what, error = %e, "registry: unreadable limits; none applied");
        LimitsConfig::default()
    })
}

/// A [`LimitsConfig`] as its column holds it.
pub fn limits_json(l: &LimitsConfig) -> String {
    serde_json::to_string(l).unwrap_or_else(|_| "{}".into())
}

fn org_from(r: &[Value]) -> OrgRow {
    OrgRow {
        id: text(&r[0]),
        name: r[1].text().map(str::to_string),
        limits: limits_of(&r[2], "organisation"),
        disabled: r[3].int().unwrap_or(0) != 0,
        created_at_ms: r[4].int().unwrap_or(0),
        version: version_of(&r[5]),
    }
}

fn tier_from(r: &[Value]) -> Result<(String, TierOverride), StoreError> {
    let name = text(&r[0]);
    let fields: TierPatch = serde_json::from_str(r[1].text().unwrap_or("{}"))
        .map_err(|e| query_err(&format!("tier {name:?}'s fields"), e))?;
    let version = version_of(&r[2]);
    Ok((name, TierOverride { fields, version }))
}

fn route_from(r: &[Value]) -> Result<(String, RouteOverride), StoreError> {
    let name = text(&r[0]);
    let route: RouteConfig = serde_json::from_str(r[1].text().unwrap_or("{}"))
        .map_err(|e| query_err(&format!("route {name:?}"), e))?;
    let version = version_of(&r[2]);
    Ok((name, RouteOverride { route, version }))
}

fn assignment_from(r: &[Value]) -> (String, ClientOverride) {
    (
        text(&r[0]),
        ClientOverride {
            tier: text(&r[1]),
            version: version_of(&r[2]),
        },
    )
}

fn client_from(r: &[Value]) -> ClientRow {
    ClientRow {
        id: text(&r[0]),
        tier: text(&r[1]),
        org: r[2].text().map(str::to_string),
        disabled: r[3].int().unwrap_or(0) != 0,
        version: version_of(&r[4]),
        limits: limits_of(&r[5], "client"),
    }
}

fn key_from(r: &[Value]) -> KeyRow {
    KeyRow {
        id: text(&r[0]),
        hash: text(&r[1]),
        client: text(&r[2]),
        shown: text(&r[3]),
        name: r[4].text().map(str::to_string),
        expires_at_ms: r[5].int(),
        revoked_at_ms: r[6].int(),
        version: version_of(&r[7]),
        // Written by the gateway from a list, so readable; a hand edit that
        // is not allows nothing rather than everything.
        models: r[8]
            .text()
            .map(|j| serde_json::from_str(j).unwrap_or_default()),
        limits: limits_of(&r[9], "key"),
        lineage: r[10].text().map(str::to_string),
    }
}

/// The last change's number (0 before the first).
pub async fn head(db: &Store) -> Result<u64, StoreError> {
    let rows = db
        .query(Statement::new(
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM registry_changes",
            vec![],
        ))
        .await?;
    Ok(rows.first().map_or(0, |r| version_of(&r[0])))
}

/// Everything but the clients and keys, with the last change it includes;
/// read the clients and keys after it with [`Pages`]. The head is read
/// first, so the tables are at least as new as it; a change in between is
/// applied again later, which is harmless.
pub async fn load(db: &Store) -> Result<Snapshot, StoreError> {
    let version = head(db).await?;
    let mut s = Snapshot {
        version,
        ..Snapshot::default()
    };
    for r in db.query(Statement::new(TIER_SQL, vec![])).await? {
        let (name, o) = tier_from(&r)?;
        s.tiers.insert(name, o);
    }
    for r in db.query(Statement::new(ROUTE_SQL, vec![])).await? {
        let (name, o) = route_from(&r)?;
        s.routes.insert(name, o);
    }
    for r in db.query(Statement::new(ASSIGNMENT_SQL, vec![])).await? {
        let (client, o) = assignment_from(&r);
        s.assignments.insert(client, o);
    }
    s.orgs = db
        .query(Statement::new(ORG_SQL, vec![]))
        .await?
        .iter()
        .map(|r| org_from(r))
        .collect();
    Ok(s)
}

/// Rows a [`Pages`] reads at once, so the rows in memory at start stay
/// this many whatever the table's size: each page goes into the index
/// before the next is read (200,000 keys read whole would be in memory
/// at once beside the index made of them, and the allocator keeps that
/// peak).
pub const LOAD_PAGE: usize = 5_000;

/// A table read [`LOAD_PAGE`] rows at a time in the order of their ids:
/// [`Pages::clients`], [`Pages::keys`].
#[derive(Debug)]
pub struct Pages<T> {
    /// Its query, whose first column is the table's `id` key.
    sql: &'static str,
    row: fn(&[Value]) -> T,
    /// The last id read (`None`: every row read).
    after: Option<String>,
}

impl Pages<ClientRow> {
    /// The API's clients.
    pub fn clients() -> Pages<ClientRow> {
        Pages::new(CLIENT_SQL, client_from)
    }
}

impl Pages<KeyRow> {
    /// The issued keys, revoked ones included.
    pub fn keys() -> Pages<KeyRow> {
        Pages::new(KEY_SQL, key_from)
    }
}

impl<T> Pages<T> {
    fn new(sql: &'static str, row: fn(&[Value]) -> T) -> Pages<T> {
        Pages {
            sql,
            row,
            after: Some(String::new()),
        }
    }

    /// The next page (`None`: none left).
    pub async fn next(&mut self, db: &Store) -> Result<Option<Vec<T>>, StoreError> {
        let Some(after) = self.after.take() else {
            return Ok(None);
        };
        let rows = db
            .query(Statement::new(
                format!("{} WHERE id > $1 ORDER BY id LIMIT {LOAD_PAGE}", self.sql),
                vec![after.as_str().into()],
            ))
            .await?;
        if rows.len() == LOAD_PAGE {
            self.after = rows.last().map(|last| text(&last[0]));
        }
        Ok((!rows.is_empty()).then(|| rows.iter().map(|r| (self.row)(r)).collect()))
    }
}

impl<T: Send + 'static> Pages<T> {
    /// Its pages, read in a task of their own at most `ahead` pages before
    /// the one in use: the database answers the next page while this one
    /// goes into the index (at start, the two share the machine's cores
    /// instead of taking turns). A failure is the last item.
    pub fn read_ahead(
        mut self,
        db: &Store,
        ahead: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<T>, StoreError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        let db = db.clone();
        tokio::spawn(async move {
            while let Some(page) = self.next(&db).await.transpose() {
                let failed = page.is_err();
                // Nobody reading (the build gave up): stop.
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }
}

/// The changes after `version`, in order, at most `limit`.
pub async fn changes_since(
    db: &Store,
    version: u64,
    limit: u64,
) -> Result<Vec<(u64, Entity)>, StoreError> {
    let rows = db
        .query(Statement::new(
            "SELECT version, kind, id FROM registry_changes WHERE version > $1 \
             ORDER BY version LIMIT $2",
            vec![Value::Int(version as i64), Value::Int(limit as i64)],
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let kind = text(&r[1]);
            let entity = Entity::parse(&kind, text(&r[2]));
            if entity.is_none() {
                tracing::warn!(
                    kind,
                    "registry change of an unknown kind (a newer release's?); skipped"
                );
            }
            Some((version_of(&r[0]), entity?))
        })
        .collect())
}

/// `entity` as the database holds it now.
pub async fn read(db: &Store, entity: &Entity) -> Result<Current, StoreError> {
    let by_id = |sql: &str, column: &str| {
        Statement::new(
            format!("{sql} WHERE {column} = $1"),
            vec![entity.id().into()],
        )
    };
    let id = entity.id().to_string();
    Ok(match entity {
        Entity::Tier(_) => {
            let rows = db.query(by_id(TIER_SQL, "name")).await?;
            let o = rows.first().map(|r| tier_from(r)).transpose()?;
            Current::Tier(id, o.map(|(_, o)| o))
        }
        Entity::Assignment(_) => {
            let rows = db.query(by_id(ASSIGNMENT_SQL, "client")).await?;
            Current::Assignment(id, rows.first().map(|r| assignment_from(r).1))
        }
        Entity::Client(_) => {
            let rows = db.query(by_id(CLIENT_SQL, "id")).await?;
            Current::Client(id, rows.first().map(|r| client_from(r)))
        }
        Entity::Key(_) => {
            let rows = db.query(by_id(KEY_SQL, "id")).await?;
            Current::Key(id, rows.first().map(|r| key_from(r)))
        }
        Entity::Org(_) => {
            let rows = db.query(by_id(ORG_SQL, "id")).await?;
            Current::Org(id, rows.first().map(|r| org_from(r)))
        }
        Entity::Route(_) => {
            let rows = db.query(by_id(ROUTE_SQL, "name")).await?;
            let o = rows.first().map(|r| route_from(r)).transpose()?;
            Current::Route(id, o.map(|(_, o)| o))
        }
    })
}

/// The statement that numbers a change: the next number after the last,
/// under the write lock [`Store::transaction`] holds. The statements after
/// it read the number as [`THIS_VERSION`].
fn numbered(entity: &Entity) -> Statement {
    Statement::new(
        "INSERT INTO registry_changes (version, kind, id, at_ms) \
         SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3 FROM registry_changes \
         RETURNING version",
        vec![
            entity.kind().into(),
            entity.id().into(),
            Value::Int(crate::ledger::row::now_ms()),
        ],
    )
}

/// The number of the change being written, inside its transaction.
pub const THIS_VERSION: &str = "(SELECT MAX(version) FROM registry_changes)";

/// Writes one change: numbers it, then runs `statements` (which may use
/// [`THIS_VERSION`]), in one transaction. Answers the change's number and
/// each statement's rows.
pub async fn write(
    db: &Store,
    entity: &Entity,
    statements: Vec<Statement>,
) -> Result<(u64, Vec<Rows>), StoreError> {
    write_all(db, std::slice::from_ref(entity), statements).await
}

/// [`write`] of a change that touches several entities: one number each,
/// in order, then `statements` ([`THIS_VERSION`] is the last number). The
/// entities are read before and after `statements` in the same
/// transaction, and the audit row ([`super::audit`]) of the change goes
/// with it.
pub async fn write_all(
    db: &Store,
    entities: &[Entity],
    statements: Vec<Statement>,
) -> Result<(u64, Vec<Rows>), StoreError> {
    let (n, k) = (entities.len(), statements.len());
    let mut all = Vec::with_capacity(k + 3 * n);
    all.extend(entities.iter().map(numbered));
    all.extend(entities.iter().map(super::audit::state_statement));
    all.extend(statements);
    all.extend(entities.iter().map(super::audit::state_statement));
    let actor = super::audit::current();
    let touched = entities.to_vec();
    let mut answers = db
        .transaction_then(all, move |answers: &[Rows]| {
            let (before, after) = (&answers[n..2 * n], &answers[2 * n + k..]);
            Ok(super::audit::row(&actor, &touched, before, after)?
                .into_iter()
                .collect())
        })
        .await?;
    let version = answers
        .get(n.saturating_sub(1))
        .and_then(|rows| rows.first())
        .map(|r| version_of(&r[0]))
        .ok_or_else(|| query_err("numbering a change", "no number came back"))?;
    answers.truncate(2 * n + k);
    answers.drain(..2 * n);
    Ok((version, answers))
}

/// Sets a tier's override to `fields` when it is still at `expected`
/// (`None`: no override); answers the change's number, or `None` when
/// another change came first (read it and try again).
pub async fn set_tier(
    db: &Store,
    name: &str,
    fields: &TierPatch,
    expected: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    let json = serde_json::to_string(fields).map_err(|e| query_err("tier fields", e))?;
    let entity = Entity::Tier(name.to_string());
    let (version, answers) = write(
        db,
        &entity,
        vec![Statement::new(
            format!(
                "INSERT INTO registry_tiers (name, fields, version) VALUES ($1, $2, {THIS_VERSION}) \
                 ON CONFLICT (name) DO UPDATE SET fields = excluded.fields, version = excluded.version \
                 WHERE registry_tiers.version = $3 RETURNING version"
            ),
            vec![
                name.into(),
                json.into(),
                Value::Int(expected.map_or(-1, |v| v as i64)),
            ],
        )],
    )
    .await?;
    // A row answers when it was inserted or updated; none when another
    // change holds the tier at another version. The change's number is
    // then spent on nothing: instances re-read the tier, harmlessly.
    Ok((!answers[0].is_empty()).then_some(version))
}

/// Moves a file client to `tier`; answers the change's number.
pub async fn set_assignment(db: &Store, client: &str, tier: &str) -> Result<u64, StoreError> {
    let entity = Entity::Assignment(client.to_string());
    let (version, _) = write(
        db,
        &entity,
        vec![Statement::new(
            format!(
                "INSERT INTO registry_tier_assignments (client, tier, version) \
                 VALUES ($1, $2, {THIS_VERSION}) ON CONFLICT (client) DO UPDATE \
                 SET tier = excluded.tier, version = excluded.version"
            ),
            vec![client.into(), tier.into()],
        )],
    )
    .await?;
    Ok(version)
}

/// Sets route `name` (the whole route); answers the change's number.
pub async fn set_route(db: &Store, name: &str, route: &RouteConfig) -> Result<u64, StoreError> {
    let json = serde_json::to_string(route).map_err(|e| query_err("route", e))?;
    let entity = Entity::Route(name.to_string());
    let (version, _) = write(
        db,
        &entity,
        vec![Statement::new(
            format!(
                "INSERT INTO registry_routes (name, route, version) VALUES ($1, $2, {THIS_VERSION}) \
                 ON CONFLICT (name) DO UPDATE SET route = excluded.route, version = excluded.version"
            ),
            vec![name.into(), json.into()],
        )],
    )
    .await?;
    Ok(version)
}

/// Removes a tier's override (`Entity::Tier`), a file client's tier
/// (`Entity::Assignment`) or a route (`Entity::Route`); answers the change's number, or `None` when there
/// was none (then nothing is written).
pub async fn remove_override(db: &Store, entity: &Entity) -> Result<Option<u64>, StoreError> {
    let (table, column) = match entity {
        Entity::Tier(_) => ("registry_tiers", "name"),
        Entity::Assignment(_) => ("registry_tier_assignments", "client"),
        Entity::Route(_) => ("registry_routes", "name"),
        other => {
            return Err(query_err(
                "removing an override",
                format!("{} is not an override", other.kind()),
            ))
        }
    };
    let present = db
        .query(Statement::new(
            format!("SELECT 1 FROM {table} WHERE {column} = $1"),
            vec![entity.id().into()],
        ))
        .await?;
    if present.is_empty() {
        return Ok(None);
    }
    let (version, _) = write(
        db,
        entity,
        vec![Statement::new(
            format!("DELETE FROM {table} WHERE {column} = $1"),
            vec![entity.id().into()],
        )],
    )
    .await?;
    Ok(Some(version))
}
