//! Clients and keys as the admin API reads, lists, changes and disables
//! them: the listing merges the file's clients with the database's (one
//! id once, the database's winning, as in the index), filtered and paged
//! by id; a disabled client stays listed and its keys are refused (it
//! leaves the index, on every instance as the change reaches it).

use super::db::{self, Entity, THIS_VERSION};
use super::issue::{info_from, KeyInfo, Refused, KEY_COLUMNS};
use super::{Client, Registry, State};
use crate::ledger::store::sql::{Statement, Value};

use std::collections::Bound;
use std::sync::Arc;

/// Most ids a page of [`Registry::client_page`] looks at under one hold of
/// the index's read lock.
pub const SCAN: usize = 512;

/// Two iterators of ids in order, merged in order (each id is in one of
/// them only).
fn merged<'a>(
    a: impl Iterator<Item = &'a String>,
    b: impl Iterator<Item = &'a String>,
) -> impl Iterator<Item = &'a String> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x <= y => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Where a client is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The config file.
    File,
    /// The admin API (the registry's database).
    Api,
}

/// A client as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientSummary {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: String,
    /// Its organisation.
    pub org: Option<String>,
    /// Disabled: its keys are refused.
    pub disabled: bool,
    /// Where it is declared.
    pub source: Source,
}

/// Which clients a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    /// Only those on this tier.
    pub tier: Option<String>,
    /// Only those of this organisation.
    pub org: Option<String>,
    /// Only the disabled ones (`Some(true)`) or the others (`Some(false)`).
    pub disabled: Option<bool>,
}

impl ClientFilter {
    fn keeps(&self, c: &ClientSummary) -> bool {
        self.tier.as_ref().is_none_or(|t| *t == c.tier)
            && self.org.as_ref().is_none_or(|o| c.org.as_ref() == Some(o))
            && self.disabled.is_none_or(|d| d == c.disabled)
    }
}

/// The changes `PATCH /admin/keys/{id}` makes (each optional).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// A new name (`null`: none).
    #[serde(default, with = "serde_with_null")]
    pub name: Option<Option<String>>,
    /// The models and routes it may ask for (`null`: all).
    #[serde(default, with = "serde_with_null")]
    pub models: Option<Option<Vec<String>>>,
}

/// `Some(None)` for an explicit `null`, `None` for a field left out.
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

impl Registry {
    /// Checks a key's list of models: each a model or a route of this
    /// gateway.
    pub(super) fn check_models(&self, models: &[String]) -> Result<(), Refused> {
        let routes = self.routes();
        for m in models {
            let known = self
                .file
                .config
                .providers
                .values()
                .any(|p| p.models.contains_key(m));
            if !known && !routes.contains_key(m) {
                return Err(Refused::Invalid(format!(
                    "models: {m:?} is no model or route of this gateway"
                )));
            }
        }
        Ok(())
    }

    /// Client `id` as listed, disabled or not.
    pub fn client_summary(&self, id: &str) -> Option<ClientSummary> {
        self.summary_in(&self.state.read(), id)
    }

    /// [`Registry::client_summary`] in index `st`.
    fn summary_in(&self, st: &State, id: &str) -> Option<ClientSummary> {
        if let Some(row) = st.api_clients.get(id) {
            return Some(ClientSummary {
                id: id.to_string(),
                tier: row.tier.clone(),
                org: row.org.clone(),
                disabled: row.disabled,
                source: Source::Api,
            });
        }
        let file_tier = self.file.clients.get(id)?;
        let tier = st
            .overrides
            .client_tiers
            .get(id)
            .map_or(file_tier, |o| &o.tier);
        Some(ClientSummary {
            id: id.to_string(),
            tier: tier.clone(),
            org: self.file.client_orgs.get(id).cloned(),
            disabled: false,
            source: Source::File,
        })
    }

    /// The clients `filter` keeps whose id sorts after `after`, by id, at
    /// most `limit`; and the cursor of the next page when there may be one.
    /// Both the file's clients and the API's are kept in the order of their
    /// ids, so a page walks them from `after` on, [`SCAN`] ids at a time
    /// under the index's read lock (a filter that keeps few never holds
    /// it over the whole index), and nothing is sorted.
    pub fn client_page(
        &self,
        filter: &ClientFilter,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ClientSummary>, Option<String>) {
        let mut page = Vec::with_capacity(limit.min(SCAN));
        if limit > 0 {
            self.walk(after, |st, id| {
                if let Some(c) = self.summary_in(st, id).filter(|c| filter.keeps(c)) {
                    page.push(c);
                }
                page.len() < limit
            });
        }
        let next = (page.len() == limit)
            .then(|| page.last().map(|c| c.id.clone()))
            .flatten();
        (page, next)
    }

    /// Every client in the index, by id: walked in the order of their ids
    /// [`SCAN`] at a time under the index's read lock, so that a change
    /// waits for one such walk at most, never for the whole listing, and
    /// nothing is sorted. A client whose tier or organisation changed is
    /// rebuilt in its own entry as it is met (as any lookup does).
    pub fn clients(&self) -> Vec<Arc<Client>> {
        let mut all = Vec::new();
        self.walk(None, |st, id| {
            if let Some(slot) = st.clients.get(id) {
                all.push(self.fresh(st, slot));
            }
            true
        });
        all
    }

    /// Calls `f` with each client declared whose id sorts after `after`, in
    /// order, until it answers `false`: [`SCAN`] ids at a time under the
    /// index's read lock, so that a change waits for one such stretch at
    /// most, never for the whole walk.
    fn walk(&self, after: Option<&str>, mut f: impl FnMut(&State, &str) -> bool) {
        let mut from = after.map(str::to_string);
        loop {
            let st = self.state.read();
            let mut scanned = 0;
            let mut last = None;
            for id in self.ids_after(&st, from.as_deref()).take(SCAN) {
                scanned += 1;
                last = Some(id);
                if !f(&st, id) {
                    return;
                }
            }
            if scanned < SCAN {
                return;
            }
            from = last.cloned();
        }
    }

    /// The ids of every client declared (the file's and the API's, one id
    /// once) that sort after `after`, in order.
    fn ids_after<'a>(
        &'a self,
        st: &'a State,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a String> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let file = self
            .file
            .clients
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(id, _)| id)
            .filter(|id| !st.api_clients.contains_key(*id));
        let api = st
            .api_clients
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(id, _)| id);
        merged(file, api)
    }

    /// Disables client `id` (its keys refused) or enables it again;
    /// answers the change's number, `None` when it already was so. A
    /// client of the config file is changed in the file.
    pub async fn set_client_disabled(
        &self,
        id: &str,
        disabled: bool,
    ) -> Result<Option<u64>, Refused> {
        let Some(row) = self.db_client(id).await? else {
            return Err(match self.file_client_tier(id) {
                Some(_) => Refused::Conflict(format!(
                    "Client {id:?} is declared in the config file: remove it (or its keys) there to refuse it."
                )),
                None => Refused::NotFound(format!("No client {id:?}; GET /admin/clients lists them.")),
            });
        };
        if row.disabled == disabled {
            return Ok(None);
        }
        let (version, _) = db::write(
            self.db(),
            &Entity::Client(id.into()),
            vec![Statement::new(
                format!("UPDATE registry_clients SET disabled = $2, version = {THIS_VERSION} WHERE id = $1"),
                vec![id.into(), Value::Int(i64::from(disabled))],
            )],
        )
        .await?;
        self.catch_up().await?;
        Ok(Some(version))
    }

    /// Client `client`'s keys whose id sorts after `after` (ids grow with
    /// time: oldest first), at most `limit`.
    pub async fn key_page(
        &self,
        client: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<KeyInfo>, Refused> {
        let rows = self
            .db()
            .query(Statement::new(
                format!(
                    "SELECT {KEY_COLUMNS} FROM registry_keys WHERE client = $1 AND id > $2 \
                     ORDER BY id LIMIT $3"
                ),
                vec![
                    client.into(),
                    after.unwrap_or("").into(),
                    Value::Int(limit as i64),
                ],
            ))
            .await?;
        rows.iter().map(|r| info_from(r)).collect()
    }

    /// Changes key `id`'s name or models; answers it as it now is and the
    /// change's number (`None`: nothing to change).
    pub async fn update_key(
        &self,
        id: &str,
        patch: &KeyPatch,
    ) -> Result<(KeyInfo, Option<u64>), Refused> {
        let Some(info) = self.key_info(id).await? else {
            return Err(Refused::NotFound(format!("No key {id:?}.")));
        };
        if let Some(Some(models)) = &patch.models {
            self.check_models(models)?;
        }
        if patch
            .name
            .as_ref()
            .is_some_and(|n| n.as_ref().is_some_and(|n| n.len() > 200))
        {
            return Err(Refused::Invalid("name: at most 200 characters".into()));
        }
        let name = patch.name.clone().unwrap_or_else(|| info.name.clone());
        let models = patch.models.clone().unwrap_or_else(|| info.models.clone());
        if name == info.name && models == info.models {
            return Ok((info, None));
        }
        let models_json = models
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
        let (version, _) = db::write(
            self.db(),
            &Entity::Key(id.into()),
            vec![Statement::new(
                format!("UPDATE registry_keys SET name = $2, models = $3, version = {THIS_VERSION} WHERE id = $1"),
                vec![id.into(), name.into(), models_json.into()],
            )],
        )
        .await?;
        self.catch_up().await?;
        let info = self.key_info(id).await?.unwrap_or(info);
        Ok((info, Some(version)))
    }
}
