//! Organisations made or changed through the admin API, and the levels'
//! own limits: a client's organisation and limits over its tier's, a key's
//! limits inside its client's. Every change is validated by the file's
//! rules (the same errors) and written as one numbered change.
//!
//! An organisation of the config file may be changed too: the database
//! then holds the whole entry (the file's name and limits with the change
//! over them), which wins over the file's; its members stay the file's.

use super::db::{self, limits_json, Entity, OrgRow, THIS_VERSION};
use super::issue::{check_id, Created, Refused};
use super::{Org, Registry};
use crate::config::{check_org_id, validate_tier, LimitsConfig};
use crate::ledger::row::now_ms;
use crate::ledger::store::sql::{Statement, Value};

/// `POST /admin/orgs`'s body.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    /// Its id.
    pub id: String,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Its limits and budgets, shared by its clients.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `PATCH /admin/orgs/{id}`'s body: each field given replaces the one in
/// force (`limits` as a whole).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgPatch {
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// Its limits and budgets.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// Disabled: its clients are refused (401, as an unknown key).
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// An organisation as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrgInfo {
    /// Its id.
    pub id: String,
    /// A name for people.
    pub name: Option<String>,
    /// Its limits and budgets.
    pub limits: LimitsConfig,
    /// Whether its clients are refused.
    pub disabled: bool,
    /// `"file"` or `"database"` (made or changed through the API).
    pub source: &'static str,
    /// Its clients, by id.
    pub clients: Vec<String>,
}

fn check_name(name: Option<&String>) -> Result<(), Refused> {
    if name.is_some_and(|n| n.len() > 200) {
        return Err(Refused::Invalid("name: at most 200 characters".into()));
    }
    Ok(())
}

fn validate_limits(at: &str, limits: &LimitsConfig) -> Result<(), Refused> {
    limits.validate(at).map_err(|e| Refused::Registry(e.into()))
}

fn file_client(id: &str) -> Refused {
    Refused::Conflict(format!(
        "Client {id:?} is declared in the config file; set its organisation in [orgs.ID].clients and its limits in clients[].limits there."
    ))
}

impl Registry {
    /// Organisation `o` as shown, with its clients.
    pub fn org_info(&self, o: &Org) -> OrgInfo {
        let clients = self
            .clients()
            .iter()
            .filter(|c| c.org.as_ref().is_some_and(|x| x.id == o.id))
            .map(|c| c.id.clone())
            .collect();
        OrgInfo {
            id: o.id.clone(),
            name: o.name.clone(),
            limits: o.limits.clone(),
            disabled: o.disabled,
            source: o.source,
            clients,
        }
    }

    /// Creates an organisation; the same one again is no change.
    pub async fn create_org(&self, new: &NewOrg) -> Result<Created, Refused> {
        check_org_id("id", &new.id).map_err(|e| Refused::Invalid(e.to_string()))?;
        check_name(new.name.as_ref())?;
        validate_limits(&format!("orgs.{}.limits", new.id), &new.limits)?;
        if self.file_org(&new.id).is_some() {
            return Err(Refused::Conflict(format!(
                "Organisation {:?} is declared in the config file; change it with PATCH /admin/orgs/{}.",
                new.id, new.id
            )));
        }
        if let Some(row) = self.db_org(&new.id).await? {
            return if row.name == new.name && row.limits == new.limits {
                Ok(Created::Existing(row.version))
            } else {
                Err(Refused::Conflict(format!(
                    "Organisation {:?} exists with other settings; change it with PATCH /admin/orgs/{}.",
                    new.id, new.id
                )))
            };
        }
        let (version, answers) = db::write(
            self.db(),
            &Entity::Org(new.id.clone()),
            vec![Statement::new(
                format!(
                    "INSERT INTO registry_orgs (id, name, limits, disabled, created_at_ms, version) \
                     VALUES ($1, $2, $3, 0, $4, {THIS_VERSION}) \
                     ON CONFLICT (id) DO NOTHING RETURNING version"
                ),
                vec![
                    new.id.clone().into(),
                    new.name.clone().into(),
                    limits_json(&new.limits).into(),
                    Value::Int(now_ms()),
                ],
            )],
        )
        .await?;
        self.catch_up().await?;
        if answers[0].is_empty() {
            return match self.db_org(&new.id).await? {
                Some(row) if row.name == new.name && row.limits == new.limits => {
                    Ok(Created::Existing(row.version))
                }
                _ => Err(Refused::Conflict(format!(
                    "Organisation {:?} was just made with other settings.",
                    new.id
                ))),
            };
        }
        Ok(Created::New(version))
    }

    /// Changes organisation `id` (the file's too: the database then holds
    /// its whole entry); answers the change's number.
    pub async fn patch_org(&self, id: &str, patch: &OrgPatch) -> Result<u64, Refused> {
        let (name, limits, disabled, created) = match self.db_org(id).await? {
            Some(row) => (row.name, row.limits, row.disabled, row.created_at_ms),
            None => match self.file_org(id) {
                Some(o) => (o.name.clone(), o.limits.clone(), false, now_ms()),
                None => {
                    return Err(Refused::NotFound(format!(
                        "No organisation {id:?}; GET /admin/orgs lists them."
                    )))
                }
            },
        };
        let name = patch.name.clone().or(name);
        let limits = patch.limits.clone().unwrap_or(limits);
        let disabled = patch.disabled.unwrap_or(disabled);
        check_name(name.as_ref())?;
        validate_limits(&format!("orgs.{id}.limits"), &limits)?;
        let (version, _) = db::write(
            self.db(),
            &Entity::Org(id.into()),
            vec![Statement::new(
                format!(
                    "INSERT INTO registry_orgs (id, name, limits, disabled, created_at_ms, version) \
                     VALUES ($1, $2, $3, $4, $5, {THIS_VERSION}) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, limits = excluded.limits, \
                     disabled = excluded.disabled, version = excluded.version"
                ),
                vec![
                    id.into(),
                    name.into(),
                    limits_json(&limits).into(),
                    Value::Int(i64::from(disabled)),
                    Value::Int(created),
                ],
            )],
        )
        .await?;
        self.catch_up().await?;
        Ok(version)
    }

    /// Organisation `id`'s row, when the API made or changed it.
    async fn db_org(&self, id: &str) -> Result<Option<OrgRow>, Refused> {
        match db::read(self.db(), &Entity::Org(id.into())).await? {
            db::Current::Org(_, row) => Ok(row),
            _ => Ok(None),
        }
    }

    /// Checks that organisation `org` exists (when one is named).
    pub(crate) fn check_org(&self, org: Option<&str>) -> Result<(), Refused> {
        match org {
            Some(o) if self.org(o).is_none() => Err(Refused::Invalid(format!(
                "org: no organisation {o:?}; GET /admin/orgs lists them"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks a client's own `limits` over `tier` as the file's would be.
    pub(crate) fn check_client_limits(
        &self,
        id: &str,
        tier: &str,
        limits: &LimitsConfig,
    ) -> Result<(), Refused> {
        let at = format!("clients.{id}.limits");
        validate_limits(&at, limits)?;
        if let Some(t) = self.tier(tier) {
            validate_tier(&at, &limits.over(&t.config), self.file.classes)
                .map_err(|e| Refused::Registry(e.into()))?;
        }
        Ok(())
    }

    /// Puts a client the API created in organisation `org` (`None`: in
    /// none); answers the change's number.
    pub async fn set_client_org(&self, id: &str, org: Option<&str>) -> Result<u64, Refused> {
        check_id(id)?;
        if self.file_client_tier(id).is_some() {
            return Err(file_client(id));
        }
        if self.db_client(id).await?.is_none() {
            return Err(Refused::NotFound(format!("No client {id:?}.")));
        }
        self.check_org(org)?;
        self.update_client(id, "org", org.map(str::to_string).into())
            .await
    }

    /// Sets the own limits of a client the API created (over its tier's);
    /// answers the change's number.
    pub async fn set_client_limits(&self, id: &str, limits: &LimitsConfig) -> Result<u64, Refused> {
        if self.file_client_tier(id).is_some() {
            return Err(file_client(id));
        }
        let Some(row) = self.db_client(id).await? else {
            return Err(Refused::NotFound(format!("No client {id:?}.")));
        };
        self.check_client_limits(id, &row.tier, limits)?;
        self.update_client(id, "limits", limits_json(limits).into())
            .await
    }

    async fn update_client(&self, id: &str, column: &str, value: Value) -> Result<u64, Refused> {
        let (version, _) = db::write(
            self.db(),
            &Entity::Client(id.into()),
            vec![Statement::new(
                format!(
                    "UPDATE registry_clients SET {column} = $2, version = {THIS_VERSION} WHERE id = $1"
                ),
                vec![id.into(), value],
            )],
        )
        .await?;
        self.catch_up().await?;
        Ok(version)
    }

    /// Sets issued key `id`'s own limits (inside its client's); answers the
    /// change's number.
    pub async fn set_key_limits(&self, id: &str, limits: &LimitsConfig) -> Result<u64, Refused> {
        validate_limits("limits", limits)?;
        let Some(info) = self.key_info(id).await? else {
            return Err(Refused::NotFound(format!("No key {id:?}.")));
        };
        if info.revoked_at_ms.is_some() {
            return Err(Refused::Conflict(format!("Key {id:?} is revoked.")));
        }
        let (version, _) = db::write(
            self.db(),
            &Entity::Key(id.into()),
            vec![Statement::new(
                format!(
                    "UPDATE registry_keys SET limits = $2, version = {THIS_VERSION} WHERE id = $1"
                ),
                vec![id.into(), limits_json(limits).into()],
            )],
        )
        .await?;
        self.catch_up().await?;
        Ok(version)
    }
}
