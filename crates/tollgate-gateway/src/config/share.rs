//! Sharing every provider model between the tiers by floor and weight
//! (`floor`, `weight`, `lendable` on tiers, `floors` on models): the rules
//! and each model bucket's classes. See "Sharing one provider model between
//! tiers" in `docs/FAIRNESS.md`.
//!
//! When any tier sets `floor` or `weight`, each provider model's bucket has
//! one class per tier, in the order of the tiers' names, each with a lane of
//! its own (`tollgate::Builder::class_shares`). Otherwise the tiers share
//! the bucket by priority headroom alone, one class per `priority` value.

use std::collections::BTreeMap;

use tollgate::{ClassShare, PriorityClass, Shares, MAX_CLASSES};

use super::{invalid, Config, ConfigError, ModelConfig, TierConfig};

/// A model bucket's priority classes and, when the tiers share it, each
/// class's floor and weight.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelClasses {
    /// The priority classes, in class order.
    pub(crate) classes: Vec<PriorityClass>,
    /// One share per class (`None`: not shared).
    pub(crate) shares: Option<Vec<ClassShare>>,
}

impl Config {
    /// Whether the provider buckets are shared between the tiers by floor
    /// and weight (some tier sets `floor` or `weight`).
    pub fn shares_providers(&self) -> bool {
        self.tiers
            .values()
            .any(|t| t.floor.is_some() || t.weight.is_some())
    }

    /// The class of tier `name` (with settings `tier`) on every provider
    /// bucket: its place among the tiers when they share the buckets, else
    /// its priority.
    pub fn tier_class(&self, name: &str, tier: &TierConfig) -> u8 {
        if self.shares_providers() {
            // Within MAX_CLASSES (16): checked by `validate_shares`.
            self.tiers.keys().position(|n| n == name).unwrap_or(0) as u8
        } else {
            tier.priority
        }
    }

    /// The classes of model `m`'s bucket.
    pub(crate) fn model_classes(&self, m: &ModelConfig) -> ModelClasses {
        let headroom = &self.priority.headroom;
        let class = |priority: u8| PriorityClass {
            headroom: headroom[usize::from(priority).min(headroom.len() - 1)],
            max_wait: None,
        };
        if !self.shares_providers() {
            return ModelClasses {
                classes: (0..headroom.len() as u8).map(class).collect(),
                shares: None,
            };
        }
        let classes = self.tiers.values().map(|t| class(t.priority)).collect();
        ModelClasses {
            classes,
            shares: Some(tier_shares(&self.tiers, m)),
        }
    }

    /// The sharing rules: each tier's `floor`, `weight` and `lendable` in
    /// range, the floors (of the tiers, and of each model with its
    /// `floors`) summing to at most 1, at most 16 tiers, and a model's
    /// `floors` naming tiers, only when the tiers share the buckets.
    pub(crate) fn validate_shares(&self) -> Result<(), ConfigError> {
        let shared = self.shares_providers();
        for (pname, p) in &self.providers {
            for (mname, m) in &p.models {
                let at = format!("providers.{pname}.models.{mname:?}.floors");
                if !shared && !m.floors.is_empty() {
                    return Err(invalid(
                        at,
                        "model floors apply only when the tiers share the provider models: set floor (or weight) on the tiers",
                    ));
                }
                for (tier, v) in &m.floors {
                    if !self.tiers.contains_key(tier) {
                        return Err(invalid(format!("{at}.{tier}"), "not a tier"));
                    }
                    check_unit(&format!("{at}.{tier}"), *v)?;
                }
            }
        }
        if !shared {
            return Ok(());
        }
        if self.tiers.len() > MAX_CLASSES {
            return Err(invalid(
                "tiers",
                format!(
                    "{} tiers, but provider models can be shared between at most {MAX_CLASSES} (tollgate::MAX_CLASSES)",
                    self.tiers.len()
                ),
            ));
        }
        for (name, t) in &self.tiers {
            let at = format!("tiers.{name}");
            if let Some(v) = t.floor {
                check_unit(&format!("{at}.floor"), v)?;
            }
            if let Some(v) = t.weight {
                if !(v.is_finite() && v > 0.0 && v <= 1e6) {
                    return Err(invalid(
                        format!("{at}.weight"),
                        format!("{v} must be a number above 0 (and at most 1000000)"),
                    ));
                }
            }
            if let Some(v) = t.lendable {
                check_unit(&format!("{at}.lendable"), v)?;
            }
        }
        let floors: f64 = self.tiers.values().map(|t| t.floor.unwrap_or(0.0)).sum();
        if floors > 1.0 + 1e-9 {
            return Err(invalid(
                "tiers.*.floor",
                format!(
                    "the tiers' floors sum to {floors}, more than the whole of a model; lower some ({})",
                    self.floor_list(|name, t| t.floor.map(|f| (name, f)))
                ),
            ));
        }
        for (pname, p) in &self.providers {
            for (mname, m) in &p.models {
                let at = format!("providers.{pname}.models.{mname:?}.floors");
                let classes = self.model_classes(m);
                let shares = classes.shares.unwrap_or_default();
                let sum: f64 = shares.iter().map(|s| s.floor).sum();
                if sum > 1.0 + 1e-9 {
                    return Err(invalid(
                        at,
                        format!(
                            "with these overrides the tiers' floors of this model sum to {sum}, more than 1; lower some ({})",
                            self.floor_list(|name, t| {
                                m.floors.get(name).copied().or(t.floor).map(|f| (name, f))
                            })
                        ),
                    ));
                }
                Shares::new(shares).map_err(|e| invalid(at, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// `name = floor, …` of the tiers `pick` gives a floor.
    fn floor_list<'a>(
        &'a self,
        pick: impl Fn(&'a str, &'a TierConfig) -> Option<(&'a str, f64)>,
    ) -> String {
        self.tiers
            .iter()
            .filter_map(|(n, t)| pick(n, t))
            .map(|(n, f)| format!("{n} = {f}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The shares of model `m` between `tiers` (the file's, or the file's with
/// the admin API's changes over them), one per tier in class order.
pub(crate) fn tier_shares(
    tiers: &BTreeMap<String, TierConfig>,
    m: &ModelConfig,
) -> Vec<ClassShare> {
    tiers
        .iter()
        .map(|(name, t)| tier_share(t, m.floors.get(name).copied()))
        .collect()
}

/// A tier's share of a model whose `floors` may override its floor.
fn tier_share(t: &TierConfig, floor: Option<f64>) -> ClassShare {
    ClassShare::new(floor.or(t.floor).unwrap_or(0.0), t.weight.unwrap_or(1.0))
        .lendable(t.lendable.unwrap_or(1.0))
}

fn check_unit(field: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v} must be a share of the model's limits, from 0 to 1"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\n[providers.p.models.m]\ntpm = 60000\n";

    fn tiers(body: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("{BASE}{body}"))
    }

    fn tier(name: &str, extra: &str) -> String {
        format!("[tiers.{name}]\nrpm = 10\n{extra}\n")
    }

    #[test]
    fn floors_and_weights_become_one_lane_per_tier() {
        let c = tiers(&format!(
            "{}{}{}",
            tier("a", "priority = 0\nfloor = 0.5\nweight = 3"),
            tier("b", "priority = 3\nfloor = 0.2"),
            tier("c", "priority = 1")
        ))
        .unwrap();
        assert!(c.shares_providers());
        let m = c.model_classes(&c.providers["p"].models["m"]);
        let shares = m.shares.expect("shared");
        assert_eq!(shares.len(), 3);
        assert_eq!((shares[0].floor, shares[0].weight), (0.5, 3.0));
        assert_eq!((shares[1].floor, shares[1].weight), (0.2, 1.0));
        assert_eq!((shares[2].floor, shares[2].weight), (0.0, 1.0));
        // Each tier's class has its priority's headroom.
        let h: Vec<f64> = m.classes.iter().map(|c| c.headroom).collect();
        assert_eq!(h, [1.0, 0.4, 0.8]);
        assert_eq!(c.tier_class("c", &c.tiers["c"]), 2);
        // Without floor or weight, the classes are the priorities.
        let plain = tiers(&tier("a", "priority = 2")).unwrap();
        assert!(!plain.shares_providers());
        assert_eq!(plain.tier_class("a", &plain.tiers["a"]), 2);
        assert!(plain
            .model_classes(&plain.providers["p"].models["m"])
            .shares
            .is_none());
    }

    #[test]
    fn a_models_floors_override_the_tiers() {
        let text = format!(
            "{BASE}floors = {{ b = 0.6 }}\n{}{}",
            tier("a", "floor = 0.3"),
            tier("b", "floor = 0.1")
        );
        let c = Config::from_toml(&text).unwrap();
        let shares = c
            .model_classes(&c.providers["p"].models["m"])
            .shares
            .unwrap();
        assert_eq!((shares[0].floor, shares[1].floor), (0.3, 0.6));
    }

    #[test]
    fn bad_shares_are_refused_naming_the_field() {
        for (body, field) in [
            (tier("a", "floor = 1.5"), "tiers.a.floor"),
            (tier("a", "floor = -0.1"), "tiers.a.floor"),
            (tier("a", "weight = 0"), "tiers.a.weight"),
            (tier("a", "weight = -2"), "tiers.a.weight"),
            (tier("a", "floor = 0.1\nlendable = 2"), "tiers.a.lendable"),
            (
                format!("{}{}", tier("a", "floor = 0.7"), tier("b", "floor = 0.5")),
                "tiers.*.floor",
            ),
        ] {
            let e = tiers(&body).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{body}: {e}");
        }
        let over = format!(
            "{BASE}floors = {{ b = 0.8 }}\n{}{}",
            tier("a", "floor = 0.3"),
            tier("b", "floor = 0.1")
        );
        let e = Config::from_toml(&over).unwrap_err().to_string();
        assert!(
            e.contains("models.\"m\".floors") && e.contains("1.1"),
            "{e}"
        );
        let unknown = format!("{BASE}floors = {{ x = 0.1 }}\n{}", tier("a", "floor = 0.3"));
        let e = Config::from_toml(&unknown).unwrap_err().to_string();
        assert!(e.contains("floors.x") && e.contains("not a tier"), "{e}");
        let unshared = format!("{BASE}floors = {{ a = 0.1 }}\n{}", tier("a", ""));
        let e = Config::from_toml(&unshared).unwrap_err().to_string();
        assert!(e.contains("set floor (or weight) on the tiers"), "{e}");
        let many: String = (0..17)
            .map(|i| tier(&format!("t{i:02}"), "weight = 1"))
            .collect();
        let e = tiers(&many).unwrap_err().to_string();
        assert!(e.contains("`tiers`") && e.contains("16"), "{e}");
        // Every floor at zero with a lane of no share is refused by the
        // library's rule, named on the model.
        let all = format!("{}{}", tier("a", "floor = 1.0"), tier("b", "floor = 0"));
        let e = tiers(&all).unwrap_err().to_string();
        assert!(e.contains("models.\"m\".floors"), "{e}");
    }
}
