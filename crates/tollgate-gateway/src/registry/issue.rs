//! Clients and keys made through the admin API: a client row, and keys
//! issued by the gateway — random, `tg-` and 40 letters and digits, shown
//! once, kept as their SHA-256 only, listed by their prefix and last four
//! characters — with an optional name, expiry and list of allowed models;
//! rotated with an overlap (the old key expires that much later), revoked.

use rand::distr::{Alphanumeric, SampleString};

use super::db::{self, limits_json, ClientRow, Entity, THIS_VERSION};
use super::{Registry, RegistryError};
use crate::config::LimitsConfig;
use crate::ledger::row::now_ms;
use crate::ledger::store::sql::{Statement, Value};

/// What every issued key starts with.
pub const KEY_PREFIX: &str = "tg-";
/// Random letters and digits after the prefix (≈ 238 bits).
const KEY_CHARS: usize = 40;
/// The longest client id.
const MAX_ID: usize = crate::config::MAX_ID;

/// A new key's settings (`POST /admin/clients/{id}/keys`'s body).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A name for people ("ci", "new product").
    #[serde(default)]
    pub name: Option<String>,
    /// When it stops working, ms since 1970.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// When it stops working, seconds from now (instead of `expires_at_ms`).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// The models and routes it may ask for (all when left out).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Its own limits and budgets, inside its client's.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The request's `Idempotency-Key` (a header, not in the body).
    #[serde(skip)]
    pub idempotency: Option<super::idempotency::Idempotency>,
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyInfo {
    /// Its id.
    pub id: String,
    /// Its client.
    pub client: String,
    /// Its prefix and last characters, `tg-AbCd…wXyZ`.
    pub shown: String,
    /// Its name.
    pub name: Option<String>,
    /// The models and routes it may ask for (`None`: all).
    pub models: Option<Vec<String>>,
    /// When it stops working, ms since 1970.
    pub expires_at_ms: Option<i64>,
    /// When it was revoked, ms since 1970.
    pub revoked_at_ms: Option<i64>,
    /// When it was issued, ms since 1970.
    pub created_at_ms: i64,
    /// Its own limits and budgets, inside its client's.
    pub limits: LimitsConfig,
    /// The first key of the rotations it comes from: its bucket and its
    /// budget's spend are that key's, carried on (left out: a key issued
    /// anew).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
}

/// A key just issued: the only time the key itself is told.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    /// The key, to hand to the client; the gateway keeps only its hash.
    pub key: String,
    /// Everything else about it.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The change that made it.
    pub version: u64,
    /// Answered again to a retry with its `Idempotency-Key`.
    #[serde(skip)]
    pub replayed: bool,
}

/// What `POST /admin/clients` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new client, at this change.
    New(u64),
    /// The same client was there already (nothing changed).
    Existing(u64),
}

/// Why a client or key change was refused (each a 4xx).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// No such client or key.
    #[error("{0}")]
    NotFound(String),
    /// It clashes with what is there.
    #[error("{0}")]
    Conflict(String),
    /// The database (or the index) failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<crate::ledger::StoreError> for Refused {
    fn from(e: crate::ledger::StoreError) -> Refused {
        Refused::Registry(e.into())
    }
}

/// A new random key.
fn new_secret() -> String {
    let mut rng = rand::rng();
    format!(
        "{KEY_PREFIX}{}",
        Alphanumeric.sample_string(&mut rng, KEY_CHARS)
    )
}

/// How a key is shown: its prefix, four characters, an ellipsis, its last
/// four.
fn shown(secret: &str) -> String {
    let body = &secret[KEY_PREFIX.len()..];
    format!("{KEY_PREFIX}{}…{}", &body[..4], &body[body.len() - 4..])
}

/// Checks a client id: 1 to 128 letters, digits, `-`, `_`, `.` or `@`.
pub(crate) fn check_id(id: &str) -> Result<(), Refused> {
    if crate::config::is_valid_id(id) {
        Ok(())
    } else {
        Err(Refused::Invalid(format!(
            "client id {id:?}: 1 to {MAX_ID} letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

pub(super) const KEY_COLUMNS: &str =
    "id, hash, client, shown, name, models, limits, expires_at_ms, \
    revoked_at_ms, created_at_ms, version, lineage";

pub(super) fn info_from(r: &[Value]) -> Result<KeyInfo, Refused> {
    let models = match r[5].text() {
        Some(j) => Some(
            serde_json::from_str(j)
                .map_err(|e| Refused::Invalid(format!("stored models of key: {e}")))?,
        ),
        None => None,
    };
    Ok(KeyInfo {
        id: r[0].text().unwrap_or_default().into(),
        client: r[2].text().unwrap_or_default().into(),
        shown: r[3].text().unwrap_or_default().into(),
        name: r[4].text().map(str::to_string),
        models,
        expires_at_ms: r[7].int(),
        revoked_at_ms: r[8].int(),
        created_at_ms: r[9].int().unwrap_or(0),
        limits: serde_json::from_str(r[6].text().unwrap_or("{}")).unwrap_or_default(),
        lineage: r[11].text().map(str::to_string),
    })
}

impl Registry {
    /// Creates client `id` on `tier`; the same client again is no change.
    pub async fn create_client(&self, id: &str, tier: &str) -> Result<Created, Refused> {
        self.create_client_in(id, tier, None, &LimitsConfig::default())
            .await
    }

    /// [`Registry::create_client`] in organisation `org`, with its own
    /// `limits` over its tier's.
    pub async fn create_client_in(
        &self,
        id: &str,
        tier: &str,
        org: Option<&str>,
        limits: &LimitsConfig,
    ) -> Result<Created, Refused> {
        check_id(id)?;
        if !self.has_tier(tier) {
            let known: Vec<String> = self.tiers().iter().map(|t| t.name.clone()).collect();
            return Err(Refused::Invalid(format!(
                "No tier {tier:?}; known tiers: {known:?}."
            )));
        }
        if self.file_client_tier(id).is_some() {
            return Err(Refused::Conflict(format!(
                "Client {id:?} is declared in the config file; move it with PUT /admin/clients/{id}/tier."
            )));
        }
        self.check_org(org)?;
        self.check_client_limits(id, tier, limits)?;
        let same = |row: &ClientRow| {
            row.tier == tier && row.org.as_deref() == org && row.limits == *limits
        };
        let existing = self.db_client(id).await?;
        if let Some(row) = existing {
            return if same(&row) {
                Ok(Created::Existing(row.version))
            } else {
                Err(Refused::Conflict(format!(
                    "Client {id:?} exists on tier {:?} (organisation {:?}, limits {:?}); change it with PUT /admin/clients/{id}/tier, /org or /limits.",
                    row.tier, row.org, row.limits
                )))
            };
        }
        let (version, answers) = db::write(
            self.db(),
            &Entity::Client(id.into()),
            vec![Statement::new(
                format!(
                    "INSERT INTO registry_clients (id, tier, org, limits, disabled, created_at_ms, version) \
                     VALUES ($1, $2, $4, $5, 0, $3, {THIS_VERSION}) \
                     ON CONFLICT (id) DO NOTHING RETURNING version"
                ),
                vec![
                    id.into(),
                    tier.into(),
                    Value::Int(now_ms()),
                    org.map(str::to_string).into(),
                    limits_json(limits).into(),
                ],
            )],
        )
        .await?;
        self.catch_up().await?;
        if answers[0].is_empty() {
            // Made meanwhile by another admin: as if it had been there.
            return match self.db_client(id).await? {
                Some(row) if same(&row) => Ok(Created::Existing(row.version)),
                _ => Err(Refused::Conflict(format!(
                    "Client {id:?} was just made on another tier."
                ))),
            };
        }
        Ok(Created::New(version))
    }

    /// Moves a client the API created to `tier`.
    pub(crate) async fn move_api_client(&self, id: &str, tier: &str) -> Result<u64, RegistryError> {
        let (version, _) = db::write(
            self.db(),
            &Entity::Client(id.into()),
            vec![Statement::new(
                format!(
                    "UPDATE registry_clients SET tier = $2, version = {THIS_VERSION} WHERE id = $1"
                ),
                vec![id.into(), tier.into()],
            )],
        )
        .await?;
        self.catch_up().await?;
        Ok(version)
    }

    /// Client `id`'s row, when the API made it.
    pub(crate) async fn db_client(&self, id: &str) -> Result<Option<ClientRow>, Refused> {
        match db::read(self.db(), &Entity::Client(id.into())).await? {
            db::Current::Client(_, row) => Ok(row),
            _ => Ok(None),
        }
    }

    /// Issues a key for client `client`.
    pub async fn issue_key(&self, client: &str, new: &NewKey) -> Result<Issued, Refused> {
        if let Some(idem) = &new.idempotency {
            if let Some(issued) = self.replay(idem).await? {
                return Ok(issued);
            }
        }
        if self.client(client).is_none() {
            return Err(Refused::NotFound(format!(
                "No client {client:?}; GET /admin/clients lists them."
            )));
        }
        let now = now_ms();
        let expires = match (new.expires_at_ms, new.expires_in_secs) {
            (Some(_), Some(_)) => {
                return Err(Refused::Invalid(
                    "give expires_at_ms or expires_in_secs, not both".into(),
                ))
            }
            (Some(at), None) => Some(at),
            (None, Some(s)) => Some(now.saturating_add((s as i64).saturating_mul(1000))),
            (None, None) => None,
        };
        if expires.is_some_and(|at| at <= now) {
            return Err(Refused::Invalid("the expiry is in the past".into()));
        }
        if let Some(models) = &new.models {
            self.check_models(models)?;
        }
        if new.name.as_ref().is_some_and(|n| n.len() > 200) {
            return Err(Refused::Invalid("name: at most 200 characters".into()));
        }
        new.limits
            .validate("limits")
            .map_err(|e| Refused::Registry(e.into()))?;
        let (statement, info, secret) = key_insert(
            client,
            KeySettings {
                name: new.name.clone(),
                models: new.models.clone(),
                limits: new.limits.clone(),
                expires_at_ms: expires,
                lineage: None,
            },
            now,
        );
        let entities = [Entity::Key(info.id.clone())];
        self.write_issued(
            &entities,
            vec![statement],
            new.idempotency.as_ref(),
            info,
            secret,
        )
        .await
    }

    /// Writes a change that issues key `info` (`secret`), recording it as
    /// the answer to `idem`'s request; answers it, or, when another request
    /// with the same header won meanwhile (its row rolled this change
    /// back), that one's answer.
    async fn write_issued(
        &self,
        entities: &[Entity],
        mut statements: Vec<Statement>,
        idem: Option<&super::idempotency::Idempotency>,
        info: KeyInfo,
        secret: String,
    ) -> Result<Issued, Refused> {
        if let Some(idem) = idem {
            statements.extend(idem.record(&info.id, &secret));
        }
        let version = match (db::write_all(self.db(), entities, statements).await, idem) {
            (Ok((version, _)), _) => version,
            (Err(e), Some(idem)) => return self.replay(idem).await?.ok_or(e.into()),
            (Err(e), None) => return Err(e.into()),
        };
        self.catch_up().await?;
        Ok(Issued {
            key: secret,
            info,
            version,
            replayed: false,
        })
    }

    /// Key `id` as listed.
    pub async fn key_info(&self, id: &str) -> Result<Option<KeyInfo>, Refused> {
        let rows = self
            .db()
            .query(Statement::new(
                format!("SELECT {KEY_COLUMNS} FROM registry_keys WHERE id = $1"),
                vec![id.into()],
            ))
            .await?;
        rows.first().map(|r| info_from(r)).transpose()
    }

    /// Client `client`'s keys, oldest first.
    pub async fn keys_of(&self, client: &str) -> Result<Vec<KeyInfo>, Refused> {
        let rows = self
            .db()
            .query(Statement::new(
                format!("SELECT {KEY_COLUMNS} FROM registry_keys WHERE client = $1 ORDER BY created_at_ms, id"),
                vec![client.into()],
            ))
            .await?;
        rows.iter().map(|r| info_from(r)).collect()
    }

    /// Revokes key `id` (again: no change); answers it as it now is.
    pub async fn revoke_key(&self, id: &str) -> Result<(KeyInfo, Option<u64>), Refused> {
        let Some(info) = self.key_info(id).await? else {
            return Err(Refused::NotFound(format!("No key {id:?}.")));
        };
        if info.revoked_at_ms.is_some() {
            return Ok((info, None));
        }
        let (version, _) = db::write(
            self.db(),
            &Entity::Key(id.into()),
            vec![Statement::new(
                format!(
                    "UPDATE registry_keys SET revoked_at_ms = $2, version = {THIS_VERSION} \
                     WHERE id = $1 AND revoked_at_ms IS NULL"
                ),
                vec![id.into(), Value::Int(now_ms())],
            )],
        )
        .await?;
        self.catch_up().await?;
        let info = self.key_info(id).await?.unwrap_or(info);
        Ok((info, Some(version)))
    }

    /// Issues a key in place of key `id`, with its name, models and limits:
    /// both work for `overlap_secs`, then only the new one (the old one
    /// expires; sooner if it was to expire sooner). The new key carries on
    /// the old one's bucket and budget (its `lineage`: what it spent, the
    /// new one has spent). With `idem`, a retry answers the same new key
    /// and rotates nothing again.
    pub async fn rotate_key(
        &self,
        id: &str,
        overlap_secs: u64,
        idem: Option<&super::idempotency::Idempotency>,
    ) -> Result<Issued, Refused> {
        if let Some(idem) = idem {
            if let Some(issued) = self.replay(idem).await? {
                return Ok(issued);
            }
        }
        let Some(old) = self.key_info(id).await? else {
            return Err(Refused::NotFound(format!("No key {id:?}.")));
        };
        if old.revoked_at_ms.is_some() {
            return Err(Refused::Conflict(format!(
                "Key {id:?} is revoked; issue a new one."
            )));
        }
        let now = now_ms();
        let until = now.saturating_add((overlap_secs as i64).saturating_mul(1000));
        let until = old.expires_at_ms.map_or(until, |at| at.min(until));
        let (statement, info, secret) = key_insert(
            &old.client,
            KeySettings {
                name: old.name.clone(),
                models: old.models.clone(),
                limits: old.limits.clone(),
                expires_at_ms: old.expires_at_ms,
                lineage: Some(old.lineage.clone().unwrap_or(old.id.clone())),
            },
            now,
        );
        let shorten = Statement::new(
            format!(
                "UPDATE registry_keys SET expires_at_ms = $2, version = {THIS_VERSION} WHERE id = $1"
            ),
            vec![id.into(), Value::Int(until)],
        );
        // One transaction: the new key never without the old one's end.
        let entities = [Entity::Key(id.into()), Entity::Key(info.id.clone())];
        self.write_issued(&entities, vec![shorten, statement], idem, info, secret)
            .await
    }
}

/// What a new key is given.
struct KeySettings {
    name: Option<String>,
    models: Option<Vec<String>>,
    limits: LimitsConfig,
    expires_at_ms: Option<i64>,
    lineage: Option<String>,
}

/// The insert of a new key for `client`, the key as listed, and the key.
fn key_insert(client: &str, settings: KeySettings, now: i64) -> (Statement, KeyInfo, String) {
    let KeySettings {
        name,
        models,
        limits,
        expires_at_ms,
        lineage,
    } = settings;
    let secret = new_secret();
    let id = format!("key_{}", uuid::Uuid::now_v7().simple());
    let info = KeyInfo {
        id: id.clone(),
        client: client.to_string(),
        shown: shown(&secret),
        name,
        models,
        expires_at_ms,
        revoked_at_ms: None,
        created_at_ms: now,
        limits,
        lineage,
    };
    let models_json = info
        .models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
    let statement = Statement::new(
        format!(
            "INSERT INTO registry_keys ({KEY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $9, $7, NULL, $8, {THIS_VERSION}, $10)"
        ),
        vec![
            id.into(),
            crate::auth::hash_key(&secret).into(),
            client.into(),
            info.shown.clone().into(),
            info.name.clone().into(),
            models_json.into(),
            expires_at_ms.into(),
            Value::Int(now),
            limits_json(&info.limits).into(),
            info.lineage.clone().into(),
        ],
    );
    (statement, info, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_with_the_prefix_and_shown_by_their_ends() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("tg-") && a.len() == 3 + KEY_CHARS, "{a}");
        let s = shown(&a);
        assert!(
            s.starts_with(&a[..7]) && s.ends_with(&a[a.len() - 4..]),
            "{s}"
        );
        assert!(!s.contains(&a[7..a.len() - 4]));
        assert!(check_id("acme-ci.1").is_ok());
        for bad in ["", "a b", "x/y", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
