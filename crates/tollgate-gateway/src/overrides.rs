//! Live changes made through the admin API, on top of the config file.
//!
//! **Precedence, field by field**: a tier's setting is the override's when
//! the admin API changed that field, else the file's; a client's tier is the
//! override's when the API moved the client, else the file's. So an edit of
//! the file to a field no override touches takes effect at the next start,
//! and one to a field an override touches does not until the override is
//! removed (`DELETE /admin/overrides/tiers/{name}` or
//! `/admin/overrides/clients/{id}`). A route's override is the whole route
//! (its rules), in place of the file's route of that name or beside the
//! file's routes (`DELETE /admin/overrides/routes/{name}` removes it). Every override carries the version of
//! the change that made it, is listed by `GET /admin/overrides`, and is
//! logged at start with the file's value it shadows. An override that no
//! longer fits the file (its tier or client is gone, or the result is
//! invalid) is skipped with a warning.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{Config, RouteConfig, TierConfig};

/// A field given explicitly, possibly as `null`: `Some(None)` is an explicit
/// null (remove the limit), `None` the field left out (unchanged).
fn explicit<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A field that, when given, must hold a value (`null` is refused).
fn value<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Changed fields of a tier (`PATCH /admin/tiers/{name}`'s body, and what an
/// override keeps). A field left out is unchanged. `rpm`, `tpm` and the
/// budgets may be `null`, which removes that limit (the only way to say
/// "unlimited": 0 is refused, as in the file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPatch {
    /// Requests per minute; `null` removes the limit.
    #[serde(
        default,
        deserialize_with = "explicit",
        skip_serializing_if = "Option::is_none"
    )]
    pub rpm: Option<Option<u64>>,
    /// Tokens per minute; `null` removes the limit.
    #[serde(
        default,
        deserialize_with = "explicit",
        skip_serializing_if = "Option::is_none"
    )]
    pub tpm: Option<Option<u64>>,
    /// Burst factor.
    #[serde(
        default,
        deserialize_with = "value",
        skip_serializing_if = "Option::is_none"
    )]
    pub burst: Option<f64>,
    /// Priority class.
    #[serde(
        default,
        deserialize_with = "value",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<u8>,
    /// Maximum wait, ms.
    #[serde(
        default,
        deserialize_with = "value",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait_ms: Option<u64>,
    /// Daily budget, USD; `null` removes it.
    #[serde(
        default,
        deserialize_with = "explicit",
        skip_serializing_if = "Option::is_none"
    )]
    pub daily_budget_usd: Option<Option<f64>>,
    /// Monthly budget, USD; `null` removes it.
    #[serde(
        default,
        deserialize_with = "explicit",
        skip_serializing_if = "Option::is_none"
    )]
    pub monthly_budget_usd: Option<Option<f64>>,
    /// Share of every provider model the tier is guaranteed (`floor`), only
    /// when the file's tiers share the models.
    #[serde(
        default,
        deserialize_with = "value",
        skip_serializing_if = "Option::is_none"
    )]
    pub floor: Option<f64>,
    /// Weight in the part of every provider model above the floors.
    #[serde(
        default,
        deserialize_with = "value",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight: Option<f64>,
    /// The part of the tier's lane others may borrow while it is idle.
    #[serde(
        default,
        deserialize_with = "value",
        skip_serializing_if = "Option::is_none"
    )]
    pub lendable: Option<f64>,
}

impl TierPatch {
    /// Whether it changes how the tiers share the provider models
    /// (`floor`, `weight` or `lendable`).
    pub fn changes_shares(&self) -> bool {
        self.floor.is_some() || self.weight.is_some() || self.lendable.is_some()
    }

    /// `base` with these fields changed.
    pub fn apply(&self, base: &TierConfig) -> TierConfig {
        let mut t = base.clone();
        if let Some(v) = self.rpm {
            t.rpm = v;
        }
        if let Some(v) = self.tpm {
            t.tpm = v;
        }
        if let Some(v) = self.burst {
            t.burst = v;
        }
        if let Some(v) = self.priority {
            t.priority = v;
        }
        if let Some(v) = self.max_wait_ms {
            t.max_wait_ms = v;
        }
        if let Some(v) = self.daily_budget_usd {
            t.daily_budget_usd = v;
        }
        if let Some(v) = self.monthly_budget_usd {
            t.monthly_budget_usd = v;
        }
        if let Some(v) = self.floor {
            t.floor = Some(v);
        }
        if let Some(v) = self.weight {
            t.weight = Some(v);
        }
        if let Some(v) = self.lendable {
            t.lendable = Some(v);
        }
        t
    }

    /// These fields, then `later`'s on top.
    pub fn merged(&self, later: &TierPatch) -> TierPatch {
        TierPatch {
            rpm: later.rpm.or(self.rpm),
            tpm: later.tpm.or(self.tpm),
            burst: later.burst.or(self.burst),
            priority: later.priority.or(self.priority),
            max_wait_ms: later.max_wait_ms.or(self.max_wait_ms),
            daily_budget_usd: later.daily_budget_usd.or(self.daily_budget_usd),
            monthly_budget_usd: later.monthly_budget_usd.or(self.monthly_budget_usd),
            floor: later.floor.or(self.floor),
            weight: later.weight.or(self.weight),
            lendable: later.lendable.or(self.lendable),
        }
    }

    /// `field: override (file: value)` for each field set, against `file`.
    fn describe(&self, file: &TierConfig) -> Vec<String> {
        let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        let mut out = Vec::new();
        let mut field = |name: &str, set: bool, new: String, old: String| {
            if set {
                out.push(format!("{name} = {new} (file: {old})"));
            }
        };
        let num = |v: Option<u64>| show(v.map(|n| n.to_string()));
        let usd = |v: Option<f64>| show(v.map(|n| n.to_string()));
        field(
            "rpm",
            self.rpm.is_some(),
            num(self.rpm.flatten()),
            num(file.rpm),
        );
        field(
            "tpm",
            self.tpm.is_some(),
            num(self.tpm.flatten()),
            num(file.tpm),
        );
        field(
            "burst",
            self.burst.is_some(),
            self.burst.unwrap_or_default().to_string(),
            file.burst.to_string(),
        );
        field(
            "priority",
            self.priority.is_some(),
            self.priority.unwrap_or_default().to_string(),
            file.priority.to_string(),
        );
        field(
            "max_wait_ms",
            self.max_wait_ms.is_some(),
            self.max_wait_ms.unwrap_or_default().to_string(),
            file.max_wait_ms.to_string(),
        );
        field(
            "daily_budget_usd",
            self.daily_budget_usd.is_some(),
            usd(self.daily_budget_usd.flatten()),
            usd(file.daily_budget_usd),
        );
        field(
            "monthly_budget_usd",
            self.monthly_budget_usd.is_some(),
            usd(self.monthly_budget_usd.flatten()),
            usd(file.monthly_budget_usd),
        );
        for (name, new, old) in [
            ("floor", self.floor, file.floor),
            ("weight", self.weight, file.weight),
            ("lendable", self.lendable, file.lendable),
        ] {
            field(name, new.is_some(), usd(new), usd(old));
        }
        out
    }
}

/// A tier's override: the fields the admin API changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierOverride {
    /// The changed fields.
    pub fields: TierPatch,
    /// The version of the change that last touched it.
    pub version: u64,
}

/// A client's override: the tier the admin API moved it to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientOverride {
    /// The tier's name.
    pub tier: String,
    /// The version of the change that made it.
    pub version: u64,
}

/// A route's override: the whole route, as the admin API set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteOverride {
    /// The route.
    pub route: RouteConfig,
    /// The version of the change that made it.
    pub version: u64,
}

/// Every override in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    /// Tier fields that replace the file's, by tier name.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierOverride>,
    /// Client id → tier.
    #[serde(default)]
    pub client_tiers: BTreeMap<String, ClientOverride>,
    /// Routes that replace (or join) the file's, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteOverride>,
}

impl Overrides {
    /// No overrides at all.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty() && self.client_tiers.is_empty() && self.routes.is_empty()
    }

    /// One line per override, saying what it shadows in `config` (logged at
    /// start).
    pub fn describe(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for (name, o) in &self.tiers {
            match config.tiers.get(name) {
                Some(file) => out.push(format!(
                    "tier {name:?} (override v{}): {}",
                    o.version,
                    o.fields.describe(file).join(", ")
                )),
                None => out.push(format!(
                    "tier {name:?} (override v{}): not in the config file; ignored",
                    o.version
                )),
            }
        }
        for (id, o) in &self.client_tiers {
            let file = config.clients.iter().find(|c| &c.id == id);
            out.push(match file {
                Some(c) => format!(
                    "client {id:?} (override v{}): tier = {:?} (file: {:?})",
                    o.version, o.tier, c.tier
                ),
                None => format!(
                    "client {id:?} (override v{}): not in the config file; ignored",
                    o.version
                ),
            });
        }
        for (name, o) in &self.routes {
            let file = match config.routes.get(name) {
                Some(f) => format!("{} rules", f.rules.len()),
                None => "none".into(),
            };
            out.push(format!(
                "route {name:?} (override v{}): {} rules (file: {file})",
                o.version,
                o.route.rules.len()
            ));
        }
        out
    }
}

/// The overrides as the store holds them, in the format of today's release
/// or of the previous one.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Today's format ([`Overrides`]).
    Current(Overrides),
    /// The previous release's format (before overrides carried versions),
    /// read into today's: see [`Overrides::from_stored`].
    Previous(Overrides),
}

/// A tier override as the previous release stored it: the whole tier, every
/// field (it replaced the file's tier). Its fields and defaults are frozen
/// here, apart from [`TierConfig`], so that the format read stays the one
/// that release wrote however the config grows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousTier {
    #[serde(default)]
    rpm: Option<u64>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default = "one")]
    burst: f64,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    max_wait_ms: u64,
    #[serde(default)]
    daily_budget_usd: Option<f64>,
    #[serde(default)]
    monthly_budget_usd: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// The previous release's overrides: whole tiers by name, and client id →
/// tier name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousOverrides {
    #[serde(default)]
    tiers: BTreeMap<String, PreviousTier>,
    #[serde(default)]
    client_tiers: BTreeMap<String, String>,
}

impl PreviousTier {
    /// Every field set, as the previous release enforced it: its API took
    /// `rpm`/`tpm` 0 as no limit, which today is said with `null`.
    fn into_patch(self) -> TierPatch {
        let limit = |v: Option<u64>| Some(v.filter(|&n| n > 0));
        TierPatch {
            rpm: limit(self.rpm),
            tpm: limit(self.tpm),
            burst: Some(self.burst),
            priority: Some(self.priority),
            max_wait_ms: Some(self.max_wait_ms),
            daily_budget_usd: Some(self.daily_budget_usd),
            monthly_budget_usd: Some(self.monthly_budget_usd),
            // That release had no shares.
            floor: None,
            weight: None,
            lendable: None,
        }
    }
}

impl Overrides {
    /// Reads the overrides stored at `version`: today's format, else the
    /// previous release's (whole tiers and bare client → tier names, no
    /// versions), read as overrides of every field of each tier it names,
    /// each with `version`, so they hold exactly as they did. The next change
    /// through the admin API stores them in today's format. The error is
    /// today's format's, when neither fits.
    pub fn from_stored(json: &str, version: u64) -> Result<Stored, serde_json::Error> {
        let current_error = match serde_json::from_str::<Overrides>(json) {
            Ok(o) => return Ok(Stored::Current(o)),
            Err(e) => e,
        };
        let Ok(previous) = serde_json::from_str::<PreviousOverrides>(json) else {
            return Err(current_error);
        };
        let tiers = previous.tiers.into_iter().map(|(name, t)| {
            let fields = t.into_patch();
            (name, TierOverride { fields, version })
        });
        let client_tiers = previous
            .client_tiers
            .into_iter()
            .map(|(id, tier)| (id, ClientOverride { tier, version }));
        Ok(Stored::Previous(Overrides {
            tiers: tiers.collect(),
            client_tiers: client_tiers.collect(),
            routes: BTreeMap::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_null_and_values_are_told_apart() {
        let p: TierPatch = serde_json::from_str(r#"{"rpm": null, "tpm": 5}"#).unwrap();
        assert_eq!(
            (p.rpm, p.tpm, p.daily_budget_usd),
            (Some(None), Some(Some(5)), None)
        );
        let back: TierPatch = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<TierPatch>(r#"{"burst": null}"#).is_err());
        assert!(serde_json::from_str::<TierPatch>(r#"{"rpn": 1}"#).is_err());
    }

    /// As the previous release wrote them: tier pro at rpm 20 and tpm 0
    /// (which it took as no limit), client free moved to pro.
    const PREVIOUS: &str = r#"{"tiers":{"pro":{"rpm":20,"tpm":0,"burst":1.0,"priority":0,"max_wait_ms":0,"daily_budget_usd":null,"monthly_budget_usd":null}},"client_tiers":{"free":"pro"}}"#;

    #[test]
    fn the_previous_format_is_read_as_every_field_of_the_tier() {
        let Ok(Stored::Previous(o)) = Overrides::from_stored(PREVIOUS, 7) else {
            panic!("not read as the previous format");
        };
        let pro = &o.tiers["pro"];
        assert_eq!(pro.version, 7);
        assert_eq!(
            (pro.fields.rpm, pro.fields.tpm, pro.fields.burst),
            (Some(Some(20)), Some(None), Some(1.0))
        );
        assert_eq!(pro.fields.daily_budget_usd, Some(None));
        assert_eq!(
            o.client_tiers["free"],
            ClientOverride {
                tier: "pro".into(),
                version: 7
            }
        );
        // Written back, it is today's format, read as such.
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(
            Overrides::from_stored(&json, 8).unwrap(),
            Stored::Current(o)
        );
    }

    #[test]
    fn neither_format_is_an_error_of_todays() {
        let e = Overrides::from_stored(r#"{"tiers": {"pro": {"rpn": 1}}}"#, 1).unwrap_err();
        assert!(e.to_string().contains("fields"), "{e}");
        assert!(Overrides::from_stored("not json", 1).is_err());
    }
}
