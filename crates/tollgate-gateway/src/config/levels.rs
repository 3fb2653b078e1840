//! The hierarchy's levels in the file: `[orgs.ID]` (organisations, each
//! with the clients it holds and its limits) and the limits a level may set
//! of its own ([`LimitsConfig`]: an organisation's, a key's, or a client's
//! over its tier's). Every level is optional, and every level's limits are
//! checked on each request (see `crate::registry`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tollgate::Limits;

use super::{invalid, Config, ConfigError, TierConfig};
use crate::budget::{usd_to_nano, BudgetLimits};

/// Rate limits and budgets of one level: an organisation, a key, or a
/// client over its tier's (each field left out: the level sets none, or
/// for a client, the tier's applies).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute (input + output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Daily budget in USD (UTC days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    /// Monthly budget in USD (UTC calendar months).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
}

impl LimitsConfig {
    /// Checks the fields by the tiers' rules (the same errors), naming
    /// them under `at`.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        super::validate_rates(at, self.rpm, self.tpm)?;
        super::validate_budgets(at, self.daily_budget_usd, self.monthly_budget_usd)
    }

    /// Whether it sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == LimitsConfig::default()
    }

    /// The budgets in nano-USD.
    pub fn budget(&self) -> BudgetLimits {
        BudgetLimits {
            daily: self.daily_budget_usd.map(usd_to_nano),
            monthly: self.monthly_budget_usd.map(usd_to_nano),
        }
    }

    /// The bucket of a level that sets rpm or tpm (burst 1), else `None`.
    pub fn bucket(&self) -> Option<Limits> {
        if self.rpm.is_none() && self.tpm.is_none() {
            return None;
        }
        let mut l = Limits::new();
        if let Some(n) = self.rpm {
            l = l.rpm(n);
        }
        if let Some(n) = self.tpm {
            l = l.tpm(n);
        }
        Some(l)
    }

    /// Tier `t` with these fields in its place (a client's override).
    pub fn over(&self, t: &TierConfig) -> TierConfig {
        let mut t = t.clone();
        t.rpm = self.rpm.or(t.rpm);
        t.tpm = self.tpm.or(t.tpm);
        t.daily_budget_usd = self.daily_budget_usd.or(t.daily_budget_usd);
        t.monthly_budget_usd = self.monthly_budget_usd.or(t.monthly_budget_usd);
        t
    }
}

/// `[orgs.ID]`: an organisation, the level above its clients.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The config file's clients it holds (a client belongs to at most one
    /// organisation).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Its limits and budgets, shared by all its clients.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// The longest id of a client or an organisation made through the API.
pub const MAX_ID: usize = 128;

/// Whether `id` may name a client or an organisation: 1 to [`MAX_ID`]
/// letters, digits, `-`, `_`, `.` or `@`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Checks an organisation's id (as a client's: [`is_valid_id`]).
pub fn check_org_id(at: &str, id: &str) -> Result<(), ConfigError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(invalid(
            at,
            format!("organisation id {id:?}: 1 to 128 letters, digits, '-', '_', '.' or '@'"),
        ))
    }
}

impl Config {
    /// `[orgs]`: ids, limits, and each client in at most one organisation
    /// and declared in `[[clients]]`.
    pub(super) fn validate_orgs(&self) -> Result<(), ConfigError> {
        let mut member: HashMap<&str, &str> = HashMap::new();
        for (id, o) in &self.orgs {
            let at = format!("orgs.{id}");
            check_org_id(&at, id)?;
            o.limits.validate(&format!("{at}.limits"))?;
            for (i, c) in o.clients.iter().enumerate() {
                let field = format!("{at}.clients[{i}]");
                if !self.clients.iter().any(|x| &x.id == c) {
                    return Err(invalid(
                        field,
                        format!("{c:?} is not a client of [[clients]]"),
                    ));
                }
                if let Some(other) = member.insert(c, id) {
                    return Err(invalid(
                        field,
                        format!("client {c:?} is already in organisation {other:?}; a client belongs to at most one"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The organisation the file puts client `id` in.
    pub fn org_of(&self, id: &str) -> Option<&str> {
        self.orgs
            .iter()
            .find(|(_, o)| o.clients.iter().any(|c| c == id))
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\n[providers.p.models.m]\nrpm = 1\n[tiers.t]\nrpm = 10\n[[clients]]\nid = \"a\"\ntier = \"t\"\nkey_sha256 = []\n[[clients]]\nid = \"b\"\ntier = \"t\"\nkey_sha256 = []\n";

    #[test]
    fn orgs_are_checked_like_the_rest_of_the_file() {
        let ok = Config::from_toml(&format!(
            "{BASE}[orgs.acme]\nname = \"Acme\"\nclients = [\"a\"]\nlimits = {{ daily_budget_usd = 5.0, rpm = 100 }}\n"
        ))
        .expect("valid");
        assert_eq!(ok.org_of("a"), Some("acme"));
        assert_eq!(ok.org_of("b"), None);
        assert_eq!(ok.orgs["acme"].limits.budget().daily, Some(5_000_000_000));
        for (bad, field) in [
            ("[orgs.acme]\nclients = [\"zed\"]\n", "orgs.acme.clients[0]"),
            (
                "[orgs.x]\nclients = [\"a\"]\n[orgs.y]\nclients = [\"a\"]\n",
                "orgs.y.clients[0]",
            ),
            ("[orgs.x]\nlimits = { rpm = 0 }\n", "orgs.x.limits.rpm"),
            (
                "[orgs.x]\nlimits = { monthly_budget_usd = -1.0 }\n",
                "orgs.x.limits.monthly_budget_usd",
            ),
            ("[orgs.\"a b\"]\n", "orgs.a b"),
        ] {
            let e = Config::from_toml(&format!("{BASE}{bad}")).expect_err(bad);
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn a_client_override_replaces_only_the_fields_it_sets() {
        let tier: TierConfig =
            toml::from_str("rpm = 10\ntpm = 1000\ndaily_budget_usd = 1.0").expect("tier");
        let o = LimitsConfig {
            rpm: Some(3),
            monthly_budget_usd: Some(9.0),
            ..Default::default()
        };
        let t = o.over(&tier);
        assert_eq!((t.rpm, t.tpm), (Some(3), Some(1000)));
        assert_eq!(
            (t.daily_budget_usd, t.monthly_budget_usd),
            (Some(1.0), Some(9.0))
        );
        assert!(LimitsConfig::default().bucket().is_none());
        assert!(o.bucket().is_some());
    }
}
