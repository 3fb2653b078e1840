//! `[routes.NAME]` and `[classifier]`: names a request may give as its
//! `model` ("auto", "chat-cheap", …) whose rules choose its candidate
//! models, and the task classifier those rules match on. Checked here, once,
//! for the file and for live changes through the admin API alike.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{invalid, Config, ConfigError, ModelKind};

/// What a request asks for, as the classifier tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskClass {
    /// Writing, reading or fixing code.
    Code,
    /// Shortening a text.
    Summarisation,
    /// Comparing, evaluating, reasoning about something.
    Analysis,
    /// A prompt larger than `classifier.long_context_tokens`.
    LongContext,
    /// Anything else.
    General,
}

impl TaskClass {
    /// The name used in the configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskClass::Code => "code",
            TaskClass::Summarisation => "summarisation",
            TaskClass::Analysis => "analysis",
            TaskClass::LongContext => "long_context",
            TaskClass::General => "general",
        }
    }
}

/// `[routes.NAME]`: a name requests may use as their `model`. Its rules are
/// tried in order; the first that matches the request gives the models to
/// try, in that order.
///
/// ```toml
/// [[routes.auto.rules]]
/// name = "code"
/// tiers = ["enterprise"]
/// tasks = ["code", "analysis"]
/// models = ["claude-opus-4", "gpt-4o"]
///
/// [[routes.auto.rules]]
/// models = ["gemini-2.0-flash"]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The rules, in the order they are tried (at least one).
    pub rules: Vec<RouteRule>,
}

/// One rule of a route: every condition given must hold (none given: it
/// matches every request).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Its name in `x-tollgate-route` (`ROUTE/NAME`) and the ledger's route.
    /// Default: its position, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The client's tier is one of these. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// The classifier's task class is one of these. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskClass>,
    /// The prompt holds at least this many tokens (4 bytes of text a token,
    /// the same for every model). Default: no minimum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_prompt_tokens: Option<u64>,
    /// The prompt holds at most this many tokens. Default: no maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u64>,
    /// The request's hint (header `x-tollgate-route`, or
    /// `metadata.tollgate_route`) is this. Default: any hint or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The models to try, in order (at least one, of one kind). Each is
    /// then skipped if its context window cannot hold the request, the
    /// client's budget cannot take it, or its provider bucket cannot start
    /// it within the tier's maximum wait.
    pub models: Vec<String>,
}

impl RouteRule {
    /// Its name: the one given, else its position from 1.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| (index + 1).to_string())
    }
}

/// `[classifier]`: how a request's task class is told, for the routes'
/// `tasks`. The configured rules are tried first, in order, then (unless
/// `defaults = false`) the built-in ones: long context (a prompt of at
/// least `long_context_tokens`), code, summarisation, analysis (by
/// keyword); a request no rule matches is `general`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Rules tried before the built-in ones.
    pub rules: Vec<ClassifierRule>,
    /// Whether the built-in rules follow the configured ones. Default true.
    pub defaults: bool,
    /// The built-in long-context rule's size, in prompt tokens. Default 16000.
    pub long_context_tokens: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            rules: Vec::new(),
            defaults: true,
            long_context_tokens: 16_000,
        }
    }
}

/// `[[classifier.rules]]`: a request whose prompt holds one of `keywords`
/// (any case; none given: any prompt) and whose size is within the bounds
/// given is of class `task`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierRule {
    /// The class it gives.
    pub task: TaskClass,
    /// Words or phrases, any of which makes the rule match.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Prompt tokens at least.
    #[serde(default)]
    pub min_prompt_tokens: Option<u64>,
    /// Prompt tokens at most.
    #[serde(default)]
    pub max_prompt_tokens: Option<u64>,
}

impl Config {
    /// `[routes]` and `[classifier]`.
    pub(super) fn validate_routes(&self) -> Result<(), ConfigError> {
        for (name, r) in &self.routes {
            validate_route(self, name, r)?;
        }
        let c = &self.classifier;
        if c.long_context_tokens == 0 {
            return Err(invalid(
                "classifier.long_context_tokens",
                "must be at least 1",
            ));
        }
        for (i, r) in c.rules.iter().enumerate() {
            let at = format!("classifier.rules[{i}]");
            if r.keywords.is_empty()
                && r.min_prompt_tokens.is_none()
                && r.max_prompt_tokens.is_none()
            {
                return Err(invalid(
                    at,
                    "give keywords, min_prompt_tokens or max_prompt_tokens (a rule of none would match every request)",
                ));
            }
            if let Some(j) = r.keywords.iter().position(|k| k.trim().is_empty()) {
                return Err(invalid(format!("{at}.keywords[{j}]"), "must not be empty"));
            }
            check_bounds(&at, r.min_prompt_tokens, r.max_prompt_tokens)?;
        }
        Ok(())
    }
}

/// Checks the route `name` against `config` (its models and tiers): the
/// file's routes, and a live change through the admin API before it is
/// applied.
pub fn validate_route(config: &Config, name: &str, r: &RouteConfig) -> Result<(), ConfigError> {
    let at = format!("routes.{name}");
    let kinds: BTreeMap<&str, ModelKind> = config
        .providers
        .values()
        .flat_map(|p| p.models.iter().map(|(n, m)| (n.as_str(), m.kind)))
        .collect();
    if name.is_empty() || kinds.contains_key(name) {
        return Err(invalid(
            at,
            format!("{name:?} is a model's name (or empty); a route needs a name of its own"),
        ));
    }
    if r.rules.is_empty() {
        return Err(invalid(
            format!("{at}.rules"),
            "give at least one rule (its `models` at least)",
        ));
    }
    let mut labels = HashSet::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let at = format!("{at}.rules[{i}]");
        let label = rule.label(i);
        if label.is_empty() || label.contains(['/', ' ']) || !labels.insert(label.clone()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("{label:?}: rule names must be unique, non-empty, without spaces or '/'"),
            ));
        }
        check_models(&at, rule, &kinds)?;
        for (j, t) in rule.tiers.iter().enumerate() {
            if !config.tiers.contains_key(t) {
                let known: Vec<&str> = config.tiers.keys().map(String::as_str).collect();
                return Err(invalid(
                    format!("{at}.tiers[{j}]"),
                    format!("{t:?} is not a tier; known tiers: {}", known.join(", ")),
                ));
            }
        }
        if rule.hint.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err(invalid(format!("{at}.hint"), "must not be empty"));
        }
        check_bounds(&at, rule.min_prompt_tokens, rule.max_prompt_tokens)?;
    }
    Ok(())
}

/// A rule's `models`: at least one, each a model of a provider, all of one
/// kind, none twice.
fn check_models(
    at: &str,
    rule: &RouteRule,
    kinds: &BTreeMap<&str, ModelKind>,
) -> Result<(), ConfigError> {
    if rule.models.is_empty() {
        return Err(invalid(
            format!("{at}.models"),
            "give at least one model to try",
        ));
    }
    let mut seen = HashSet::new();
    let mut kind = None;
    for (j, m) in rule.models.iter().enumerate() {
        let why = match kinds.get(m.as_str()) {
            None => Some(format!("{m:?} is not a model of any provider")),
            Some(k) if kind.is_some_and(|first| first != *k) => Some(format!(
                "{m:?} is not of the same kind as the rule's first model"
            )),
            _ if !seen.insert(m.as_str()) => Some(format!("{m:?} is listed twice")),
            Some(k) => {
                kind = Some(*k);
                None
            }
        };
        if let Some(why) = why {
            return Err(invalid(format!("{at}.models[{j}]"), why));
        }
    }
    Ok(())
}

fn check_bounds(at: &str, min: Option<u64>, max: Option<u64>) -> Result<(), ConfigError> {
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            return Err(invalid(
                format!("{at}.min_prompt_tokens"),
                format!("{lo} is above max_prompt_tokens ({hi})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\n[providers.p.models.a]\nrpm = 1\n[providers.p.models.b]\nrpm = 1\n[providers.p.models.e]\nrpm = 1\nkind = \"embeddings\"\n[tiers.pro]\nrpm = 1\n";

    #[test]
    fn routes_are_read_in_order_with_their_conditions() {
        let text = format!(
            "{BASE}[[routes.auto.rules]]\nname = \"code\"\ntiers = [\"pro\"]\ntasks = [\"code\", \"long_context\"]\nmin_prompt_tokens = 10\nhint = \"best\"\nmodels = [\"b\", \"a\"]\n[[routes.auto.rules]]\nmodels = [\"a\"]\n[classifier]\nlong_context_tokens = 100\n[[classifier.rules]]\ntask = \"analysis\"\nkeywords = [\"audit\"]\n"
        );
        let c = Config::from_toml(&text).unwrap();
        let auto = &c.routes["auto"];
        assert_eq!(auto.rules.len(), 2);
        assert_eq!(
            auto.rules[0].tasks,
            [TaskClass::Code, TaskClass::LongContext]
        );
        assert_eq!(auto.rules[0].models, ["b", "a"]);
        assert_eq!(auto.rules[0].label(0), "code");
        assert_eq!(auto.rules[1].label(1), "2");
        assert_eq!(c.classifier.long_context_tokens, 100);
        assert!(c.classifier.defaults);
        assert_eq!(c.classifier.rules[0].task, TaskClass::Analysis);
    }

    #[test]
    fn a_bad_route_is_refused_naming_its_field() {
        let rule = |body: &str| format!("{BASE}[[routes.auto.rules]]\n{body}\n");
        for (body, field, says) in [
            (
                "models = [\"x\"]",
                "routes.auto.rules[0].models[0]",
                "not a model",
            ),
            ("models = []", "routes.auto.rules[0].models", "at least one"),
            (
                "models = [\"a\", \"e\"]",
                "routes.auto.rules[0].models[1]",
                "same kind",
            ),
            (
                "models = [\"a\", \"a\"]",
                "routes.auto.rules[0].models[1]",
                "twice",
            ),
            (
                "models = [\"a\"]\ntiers = [\"gold\"]",
                "routes.auto.rules[0].tiers[0]",
                "not a tier",
            ),
            (
                "models = [\"a\"]\nhint = \"\"",
                "routes.auto.rules[0].hint",
                "empty",
            ),
            (
                "models = [\"a\"]\nmin_prompt_tokens = 5\nmax_prompt_tokens = 4",
                "routes.auto.rules[0].min_prompt_tokens",
                "above",
            ),
            (
                "models = [\"a\"]\ntasks = [\"poetry\"]",
                "tasks",
                "unknown variant",
            ),
        ] {
            let e = Config::from_toml(&rule(body)).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(says), "{body}: {e}");
        }
        let two = format!("{BASE}[[routes.auto.rules]]\nname = \"x\"\nmodels = [\"a\"]\n[[routes.auto.rules]]\nname = \"x\"\nmodels = [\"b\"]\n");
        let e = Config::from_toml(&two).unwrap_err().to_string();
        assert!(e.contains("routes.auto.rules[1].name"), "{e}");
        let e = Config::from_toml(&format!("{BASE}[routes.auto]\nrules = []\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes.auto.rules"), "{e}");
        let e = Config::from_toml(&format!("{BASE}[[routes.a.rules]]\nmodels = [\"b\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes.a") && e.contains("model's name"), "{e}");
        let e = Config::from_toml(&format!("{BASE}[[classifier.rules]]\ntask = \"code\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("classifier.rules[0]"), "{e}");
        let e = Config::from_toml(&format!("{BASE}[classifier]\nlong_context_tokens = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("classifier.long_context_tokens"), "{e}");
    }
}
