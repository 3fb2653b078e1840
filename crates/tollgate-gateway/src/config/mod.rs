//! The configuration: the file's types ([`types`]), loading with errors that
//! name the line or field, and validation (one place for every rule).

mod ledger;
mod levels;
mod routes;
mod share;
mod types;

pub use routes::{
    validate_route, ClassifierConfig, ClassifierRule, RouteConfig, RouteRule, TaskClass,
};

pub use types::{
    AdminConfig, AdminRole, AdminTokenConfig, ClientConfig, Config, LedgerConfig, MetricsConfig,
    ModelConfig, ModelKind, PriorityConfig, ProviderConfig, ServerConfig, StoreConfig, TierConfig,
    LEGACY_ADMIN_TOKEN,
};

pub use levels::{check_org_id, is_valid_id, LimitsConfig, OrgConfig, MAX_ID};
pub(crate) use share::{tier_shares, ModelClasses};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use tollgate::{Limits, OutagePolicy};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped field (the message
    /// names the line and column).
    #[error("config file is not valid: {0}")]
    Parse(String),
    /// A value is out of range or refers to something that does not exist.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// The field's path, e.g. `tiers.free.rpm`.
        field: String,
        /// What is wrong and what would be valid.
        message: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_toml(&text)?;
        config.ledger.base_dir = Some(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        );
        Ok(config)
    }

    /// Parses and validates a configuration from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule; the first broken one is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_store()?;
        self.validate_priority()?;
        self.validate_providers()?;
        for (name, t) in &self.tiers {
            validate_tier(&format!("tiers.{name}"), t, self.priority.headroom.len())?;
        }
        self.validate_shares()?;
        self.validate_routes()?;
        self.validate_clients()?;
        self.validate_orgs()
    }

    /// `[server]`.
    fn validate_server(&self) -> Result<(), ConfigError> {
        self.server.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:8080\"",
                    self.server.listen
                ),
            )
        })?;
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        for (field, secs) in [
            (
                "server.upstream_timeout_secs",
                self.server.upstream_timeout_secs,
            ),
            (
                "server.upstream_first_byte_timeout_secs",
                self.server.upstream_first_byte_timeout_secs,
            ),
            (
                "server.upstream_idle_timeout_secs",
                self.server.upstream_idle_timeout_secs,
            ),
        ] {
            if !(secs > 0.0 && secs <= 86_400.0) {
                return Err(invalid(field, "must be a number of seconds in (0, 86400]"));
            }
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.server.max_attempts) {
            return Err(invalid(
                "server.max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS} (1: no fallback)"),
            ));
        }
        let deadline = self.server.request_deadline_secs;
        if !(deadline > 0.0 && deadline <= 86_400.0) {
            return Err(invalid(
                "server.request_deadline_secs",
                "must be a number of seconds in (0, 86400]",
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1 (and below the process's file limit)",
            ));
        }
        for (field, v) in [
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            (
                "server.body_read_timeout_secs",
                self.server.body_read_timeout_secs,
            ),
        ] {
            if !(v > 0.0 && v <= 3_600.0) {
                return Err(invalid(field, "must be a number of seconds in (0, 3600]"));
            }
        }
        Ok(())
    }

    /// `[store]`, `[metrics]` and `[admin]`.
    fn validate_store(&self) -> Result<(), ConfigError> {
        let url = &self.store.url;
        if ![
            "memory://",
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|p| url.starts_with(p))
        {
            return Err(invalid(
                "store.url",
                format!(
                    "{url:?}: use \"memory://\", a \"redis://host:port\" / \"rediss://…\" URL, or \"redis+cluster://host:port,host:port\" for a Cluster"
                ),
            ));
        }
        self.outage_policy()?;
        if self.store.sync_interval_ms == 0 || self.store.sync_interval_ms > 60_000 {
            return Err(invalid(
                "store.sync_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(10..=60_000).contains(&self.store.timeout_ms) {
            return Err(invalid(
                "store.timeout_ms",
                "must be between 10 and 60000 milliseconds",
            ));
        }
        self.validate_ledger()?;
        if let Some(addr) = &self.metrics.listen {
            addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{addr:?} is not an address such as \"127.0.0.1:9464\""),
                )
            })?;
        }
        if let Some(h) = &self.admin.token_sha256 {
            check_hash("admin.token_sha256", h)?;
        }
        let mut names = HashSet::from([LEGACY_ADMIN_TOKEN]);
        for (i, t) in self.admin.tokens.iter().enumerate() {
            let at = format!("admin.tokens[{i}]");
            check_hash(&format!("{at}.sha256"), &t.sha256)?;
            let ok = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !ok {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "{:?}: 1 to 64 letters, digits, '-', '_', '.' or '@'",
                        t.name
                    ),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("{:?} is taken (\"{LEGACY_ADMIN_TOKEN}\" is admin.token_sha256's); give each token a name of its own", t.name),
                ));
            }
        }
        Ok(())
    }

    /// `[priority]`.
    fn validate_priority(&self) -> Result<(), ConfigError> {
        let classes = &self.priority.headroom;
        if classes.is_empty() || classes.len() > 16 {
            return Err(invalid(
                "priority.headroom",
                "give between 1 and 16 classes, e.g. [1.0, 0.8, 0.6, 0.4]",
            ));
        }
        for (i, h) in classes.iter().enumerate() {
            if !(*h > 0.0 && *h <= 1.0) || (i == 0 && *h != 1.0) {
                return Err(invalid(
                    format!("priority.headroom[{i}]"),
                    format!("{h} must be in (0, 1], and exactly 1.0 for class 0"),
                ));
            }
        }
        Ok(())
    }

    /// `[providers]` and their models.
    fn validate_providers(&self) -> Result<(), ConfigError> {
        let mut models = HashSet::new();
        for (pname, p) in &self.providers {
            let at = format!("providers.{pname}");
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(invalid(
                    format!("{at}.base_url"),
                    format!("{:?} must start with http:// or https://", p.base_url),
                ));
            }
            if let Some(env) = &p.api_key_env {
                if env.is_empty() || env.contains('=') {
                    return Err(invalid(
                        format!("{at}.api_key_env"),
                        "the name of an environment variable such as \"OPENAI_API_KEY\"",
                    ));
                }
            }
            for (mname, m) in &p.models {
                let at = format!("{at}.models.{mname:?}");
                if !models.insert(mname.as_str()) {
                    return Err(invalid(
                        at,
                        "this model name is served by two providers; names must be unique",
                    ));
                }
                validate_model(&at, m)?;
            }
        }
        self.validate_fallbacks()
    }

    /// Every model's `fallbacks`: other models of its kind, each once.
    fn validate_fallbacks(&self) -> Result<(), ConfigError> {
        let kinds: HashMap<&str, ModelKind> = self
            .providers
            .values()
            .flat_map(|p| p.models.iter().map(|(n, m)| (n.as_str(), m.kind)))
            .collect();
        for (pname, p) in &self.providers {
            for (mname, m) in &p.models {
                let at = format!("providers.{pname}.models.{mname:?}.fallbacks");
                let mut seen = HashSet::new();
                for f in &m.fallbacks {
                    let why = match kinds.get(f.as_str()) {
                        None => Some(format!("{f:?} is not a model of any provider")),
                        Some(k) if *k != m.kind => Some(format!(
                            "{f:?} is not a model of the same kind as {mname:?}"
                        )),
                        _ if f == mname => Some(format!("{mname:?} cannot fall back to itself")),
                        _ if !seen.insert(f.as_str()) => Some(format!("{f:?} is listed twice")),
                        _ => None,
                    };
                    if let Some(why) = why {
                        return Err(invalid(at, why));
                    }
                }
            }
        }
        Ok(())
    }

    /// `[[clients]]`.
    fn validate_clients(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut hashes: HashMap<String, &str> = HashMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            let at = format!("clients[{i}]");
            if c.id.is_empty() || !ids.insert(c.id.as_str()) {
                return Err(invalid(
                    format!("{at}.id"),
                    format!("{:?}: ids must be non-empty and unique", c.id),
                ));
            }
            if !self.tiers.contains_key(&c.tier) {
                return Err(invalid(
                    format!("{at}.tier"),
                    format!(
                        "{:?} is not a tier; known tiers: {}",
                        c.tier,
                        self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for (j, h) in c.key_sha256.iter().enumerate() {
                let field = format!("{at}.key_sha256[{j}]");
                check_hash(&field, h)?;
                if let Some(other) = hashes.insert(h.to_ascii_lowercase(), &c.id) {
                    return Err(invalid(
                        field,
                        format!("the same key is also given to client {other:?}"),
                    ));
                }
            }
            c.limits.validate(&format!("{at}.limits"))?;
        }
        Ok(())
    }

    /// The outage policy named by `store.outage`.
    pub fn outage_policy(&self) -> Result<OutagePolicy, ConfigError> {
        match self.store.outage.as_str() {
            "open" => Ok(OutagePolicy::Open),
            "closed" => Ok(OutagePolicy::Closed),
            "local" => {
                let share = self.store.local_share;
                if !(share > 0.0 && share <= 1.0) {
                    return Err(invalid(
                        "store.local_share",
                        format!("{share} must be in (0, 1]"),
                    ));
                }
                Ok(OutagePolicy::Local { share })
            }
            other => Err(invalid(
                "store.outage",
                format!("{other:?}: use \"open\", \"closed\" or \"local\""),
            )),
        }
    }
}

fn check_hash(field: &str, h: &str) -> Result<(), ConfigError> {
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            field,
            "must be 64 hex characters: run `tollgate hash-key KEY` and paste its output",
        ));
    }
    Ok(())
}

fn validate_model(at: &str, m: &ModelConfig) -> Result<(), ConfigError> {
    model_limits(m).validate().map_err(|e| {
        invalid(
            at,
            format!("{e} (fields rpm, tpm, input_tpm, output_tpm, burst, burndown)"),
        )
    })?;
    for (name, v) in [
        ("input_usd_per_mtok", m.input_usd_per_mtok),
        ("output_usd_per_mtok", m.output_usd_per_mtok),
    ] {
        if !(0.0..=1e6).contains(&v) {
            return Err(invalid(
                format!("{at}.{name}"),
                format!("{v} must be a price in USD per million tokens, from 0 to 1000000"),
            ));
        }
    }
    if m.context_window == 0 || m.context_window > 100_000_000 {
        return Err(invalid(
            format!("{at}.context_window"),
            "must be between 1 and 100000000 tokens",
        ));
    }
    if m.default_max_tokens == 0 || m.default_max_tokens > m.context_window {
        return Err(invalid(
            format!("{at}.default_max_tokens"),
            "must be > 0 and at most context_window",
        ));
    }
    if let Some(t) = &m.tokenizer {
        if crate::tokenizer::Tokenizer::from_name(t).is_none() {
            return Err(invalid(
                format!("{at}.tokenizer"),
                format!("{t:?}: use \"o200k_base\", \"cl100k_base\" or \"approx\""),
            ));
        }
    }
    Ok(())
}

/// Checks one tier (also used for live changes through the admin API).
pub fn validate_tier(at: &str, t: &TierConfig, classes: usize) -> Result<(), ConfigError> {
    validate_rates(at, t.rpm, t.tpm)?;
    if t.rpm.is_none() && t.tpm.is_none() {
        return Err(invalid(
            format!("{at}.rpm"),
            "give rpm or tpm (or both) greater than 0",
        ));
    }
    tier_limits(t)
        .validate()
        .map_err(|e| invalid(format!("{at}.burst"), e.to_string()))?;
    if usize::from(t.priority) >= classes {
        return Err(invalid(
            format!("{at}.priority"),
            format!(
                "{} but only classes 0..{} exist (see priority.headroom)",
                t.priority,
                classes.saturating_sub(1)
            ),
        ));
    }
    if t.max_wait_ms > 600_000 {
        return Err(invalid(
            format!("{at}.max_wait_ms"),
            "at most 600000 (10 minutes)",
        ));
    }
    validate_budgets(at, t.daily_budget_usd, t.monthly_budget_usd)
}

/// A level's `rpm` and `tpm` (a tier's, an organisation's, a key's): 0 is
/// refused, never taken for "unlimited".
pub(crate) fn validate_rates(
    at: &str,
    rpm: Option<u64>,
    tpm: Option<u64>,
) -> Result<(), ConfigError> {
    // 0 is never "unlimited": a limit is removed by leaving it out (in the
    // file) or setting it to null (in the admin API).
    for (name, v) in [("rpm", rpm), ("tpm", tpm)] {
        if v == Some(0) {
            return Err(invalid(
                format!("{at}.{name}"),
                "0 would refuse every request; give a limit above 0, or leave the field out (in the admin API: null) for no limit",
            ));
        }
    }
    Ok(())
}

/// A level's daily and monthly budgets, USD.
pub(crate) fn validate_budgets(
    at: &str,
    daily: Option<f64>,
    monthly: Option<f64>,
) -> Result<(), ConfigError> {
    for (name, v) in [("daily_budget_usd", daily), ("monthly_budget_usd", monthly)] {
        if let Some(v) = v {
            if !(0.0..1e9).contains(&v) {
                return Err(invalid(
                    format!("{at}.{name}"),
                    format!("{v} must be a number of USD >= 0"),
                ));
            }
        }
    }
    Ok(())
}

/// A tier's bucket limits.
pub fn tier_limits(t: &TierConfig) -> Limits {
    let mut l = Limits::new().burst(t.burst);
    if let Some(n) = t.rpm {
        l = l.rpm(n);
    }
    if let Some(n) = t.tpm {
        l = l.tpm(n);
    }
    l
}

/// A model's provider-bucket limits.
pub fn model_limits(m: &ModelConfig) -> Limits {
    let mut l = Limits::new().burst(m.burst).burndown(m.burndown);
    if let Some(n) = m.rpm {
        l = l.rpm(n);
    }
    if let Some(n) = m.tpm {
        l = l.tpm(n);
    }
    if let Some(n) = m.input_tpm {
        l = l.input_tpm(n);
    }
    if let Some(n) = m.output_tpm {
        l = l.output_tpm(n);
    }
    l
}

/// The most upstream calls `server.max_attempts` may allow one request.
pub const MAX_ATTEMPTS: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_and_attempts_are_checked() {
        let base = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\n[providers.p.models.a]\nrpm = 1\n[providers.p.models.b]\nrpm = 1\n[providers.p.models.e]\nrpm = 1\nkind = \"embeddings\"\n";
        let with = |fallbacks: &str| {
            format!("{base}[providers.p.models.c]\nrpm = 1\nfallbacks = {fallbacks}\n")
        };
        let c = Config::from_toml(&with("[\"b\", \"a\"]")).unwrap();
        assert_eq!(c.providers["p"].models["c"].fallbacks, ["b", "a"]);
        assert_eq!(
            (c.server.max_attempts, c.server.request_deadline_secs),
            (3, 600.0)
        );
        for (bad, says) in [
            ("[\"x\"]", "not a model"),
            ("[\"e\"]", "same kind"),
            ("[\"c\"]", "itself"),
            ("[\"a\", \"a\"]", "twice"),
        ] {
            let e = Config::from_toml(&with(bad)).unwrap_err().to_string();
            assert!(
                e.contains("models.\"c\".fallbacks") && e.contains(says),
                "{bad}: {e}"
            );
        }
        for bad in [
            "max_attempts = 0",
            "max_attempts = 11",
            "request_deadline_secs = 0",
            "request_deadline_secs = -1",
        ] {
            let e = Config::from_toml(&format!("[server]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn admin_tokens_have_a_hash_a_role_and_a_name_of_their_own() {
        let h = "a".repeat(64);
        let token = |name: &str, hash: &str, role: &str| {
            format!("[[admin.tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nrole = \"{role}\"\n")
        };
        let c = Config::from_toml(&token("ops", &h, "read_only")).unwrap();
        assert_eq!(c.admin.tokens[0].role, AdminRole::ReadOnly);
        for (bad, says) in [
            (token("ops", "abc", "read_only"), "admin.tokens[0].sha256"),
            (token("ops", &h, "owner"), "unknown variant"),
            (token("a b", &h, "read_write"), "admin.tokens[0].name"),
            (token("admin", &h, "read_write"), "is taken"),
            (
                format!(
                    "{}{}",
                    token("ops", &h, "read_write"),
                    token("ops", &h, "read_only")
                ),
                "admin.tokens[1].name",
            ),
        ] {
            let e = Config::from_toml(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../../config/tollgate.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.tiers.len(), 4);
        assert!(
            c.shares_providers(),
            "the example shares its models by floor and weight"
        );
        let premium = &c.providers["anthropic"].models["claude-opus-4"];
        assert_eq!(premium.fallbacks, ["gpt-4o", "gemini-2.0-flash"]);
        let auto = &c.routes["auto"];
        let names: Vec<_> = auto.rules.iter().map(|r| r.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("hint-cheap"),
                Some("long-context"),
                Some("premium"),
                Some("balanced"),
                Some("cheap")
            ]
        );
        assert_eq!(c.classifier.long_context_tokens, 16_000);
    }

    #[test]
    fn errors_name_the_line_or_field() {
        let e = Config::from_toml("[server]\nlisten = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::from_toml("[tiers.free]\nrpm = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tiers.free.rpm"), "{e}");
        let e = Config::from_toml("[[clients]]\nid = \"a\"\ntier = \"x\"\nkey_sha256 = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("clients[0].tier"), "{e}");
    }

    #[test]
    fn upstream_timeouts_are_positive_seconds() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            (
                c.server.upstream_first_byte_timeout_secs,
                c.server.upstream_idle_timeout_secs,
                c.server.upstream_timeout_secs
            ),
            (120.0, 60.0, 600.0)
        );
        for field in [
            "upstream_first_byte_timeout_secs",
            "upstream_idle_timeout_secs",
        ] {
            let e = Config::from_toml(&format!("[server]\n{field} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("server.{field}")), "{e}");
        }
    }
}
