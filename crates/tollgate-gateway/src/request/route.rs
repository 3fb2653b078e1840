//! Where a request goes: an ordered, non-empty list of candidate models,
//! tried in that order. A request that names a model goes to it, then to
//! that model's `fallbacks` (those that serve the endpoint); one that names
//! a route (`[routes.NAME]`) goes to the models of the route's first rule
//! that matches it (see [`crate::routing`]). Admission then skips the
//! candidates that cannot take it: a context window too small, a budget
//! that only a cheaper model fits, a provider bucket that cannot start it
//! within the tier's wait.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{ModelKind, RouteConfig, TaskClass};
use crate::model::{Endpoint, Model};
use crate::routing::{Classifier, Facts, Prompt};

/// The models a request may go to, in the order to try them; never empty.
#[derive(Debug, Clone)]
pub(crate) struct Candidates {
    first: Arc<Model>,
    rest: Vec<Arc<Model>>,
}

impl Candidates {
    /// A list of one model.
    pub(crate) fn one(model: Arc<Model>) -> Candidates {
        Candidates {
            first: model,
            rest: Vec::new(),
        }
    }

    /// The list `models`, or `None` when it is empty.
    pub(crate) fn of(models: Vec<Arc<Model>>) -> Option<Candidates> {
        let mut it = models.into_iter();
        let first = it.next()?;
        Some(Candidates {
            first,
            rest: it.collect(),
        })
    }

    /// The model tried first.
    pub(crate) fn first(&self) -> &Arc<Model> {
        &self.first
    }

    /// Every candidate, in order (what fallback goes through).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    /// How many there are (at least 1).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        1 + self.rest.len()
    }
}

/// Why a request has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No model (or route) has the name asked.
    NotFound(String),
    /// The model (or route's models) named cannot serve the endpoint.
    WrongKind {
        /// The name asked.
        name: String,
        /// The model's kind.
        kind: ModelKind,
    },
    /// No rule of the route named matches the request.
    NoRule {
        /// The route.
        route: String,
        /// The client's tier.
        tier: String,
        /// The task class, if the rules read it.
        task: Option<TaskClass>,
        /// The prompt's size.
        prompt_tokens: u64,
        /// The request's hint.
        hint: Option<String>,
    },
}

/// What the route step reads: the models, the routes in force and the
/// classifier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table<'a> {
    /// Models by the name clients use.
    pub(crate) models: &'a BTreeMap<String, Arc<Model>>,
    /// Routes by name (the file's, with the live changes).
    pub(crate) routes: &'a BTreeMap<String, RouteConfig>,
    /// Tells a prompt's task class.
    pub(crate) classifier: &'a Classifier,
}

/// What is known of a request when it is routed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    /// The model or route its body names.
    pub(crate) name: &'a str,
    /// The endpoint it came to.
    pub(crate) endpoint: Endpoint,
    /// The client's tier.
    pub(crate) tier: &'a str,
    /// Its hint (header `x-tollgate-route`, else `metadata.tollgate_route`).
    pub(crate) hint: Option<&'a str>,
    /// Its body.
    pub(crate) body: &'a Map<String, Value>,
}

/// The hint of a request: its `x-tollgate-route` header, else its
/// `metadata.tollgate_route` (a gateway-only field, never sent upstream).
pub(crate) fn hint<'a>(
    headers: &'a axum::http::HeaderMap,
    body: &'a Map<String, Value>,
) -> Option<&'a str> {
    headers
        .get(super::ROUTE_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            body.get("metadata")
                .and_then(|m| m.get(HINT_METADATA))
                .and_then(Value::as_str)
        })
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

/// The key of `metadata` that carries a route hint.
pub(crate) const HINT_METADATA: &str = "tollgate_route";

/// A request's candidates and what the answer says of its route.
#[derive(Debug)]
pub(crate) struct Routed {
    /// The models to try.
    pub(crate) candidates: Candidates,
    /// `x-tollgate-route`: the model named, or `ROUTE/RULE` (the route and
    /// the name of its rule that matched).
    pub(crate) route: String,
    /// The task class the route's rules were matched on, if they read it.
    pub(crate) task: Option<TaskClass>,
}

/// The candidates of the request `asked`.
pub(crate) fn route(table: Table<'_>, asked: Asked<'_>) -> Result<Routed, RouteError> {
    match table.routes.get(asked.name) {
        Some(r) => by_route(table, asked, r),
        None => Ok(Routed {
            candidates: named(table.models, asked.name, asked.endpoint)?,
            route: asked.name.to_string(),
            task: None,
        }),
    }
}

/// The models of the first rule of `route` that matches the request, those
/// that serve its endpoint.
fn by_route(table: Table<'_>, asked: Asked<'_>, route: &RouteConfig) -> Result<Routed, RouteError> {
    let prompt = Prompt::of(asked.body);
    let task = route
        .reads_task()
        .then(|| table.classifier.classify(&prompt));
    let facts = Facts {
        tier: asked.tier,
        task: task.unwrap_or(TaskClass::General),
        prompt_tokens: prompt.tokens(),
        hint: asked.hint,
    };
    let Some((i, rule)) = route.select(&facts) else {
        return Err(RouteError::NoRule {
            route: asked.name.to_string(),
            tier: asked.tier.to_string(),
            task,
            prompt_tokens: facts.prompt_tokens,
            hint: asked.hint.map(str::to_string),
        });
    };
    let models: Vec<Arc<Model>> = rule
        .models
        .iter()
        .filter_map(|name| table.models.get(name))
        .filter(|m| m.kind == asked.endpoint.kind())
        .cloned()
        .collect();
    let kind = rule
        .models
        .first()
        .and_then(|m| table.models.get(m))
        .map_or(ModelKind::Chat, |m| m.kind);
    let candidates = Candidates::of(models).ok_or_else(|| RouteError::WrongKind {
        name: asked.name.to_string(),
        kind,
    })?;
    Ok(Routed {
        candidates,
        route: format!("{}/{}", asked.name, rule.label(i)),
        task,
    })
}

/// The model named `requested`, then its fallbacks, that serve `endpoint`.
fn named(
    models: &BTreeMap<String, Arc<Model>>,
    requested: &str,
    endpoint: Endpoint,
) -> Result<Candidates, RouteError> {
    let model = models
        .get(requested)
        .ok_or_else(|| RouteError::NotFound(requested.to_string()))?;
    if model.kind != endpoint.kind() {
        return Err(RouteError::WrongKind {
            name: requested.to_string(),
            kind: model.kind,
        });
    }
    let fallbacks = model
        .fallbacks
        .iter()
        .filter_map(|name| models.get(name))
        .filter(|m| m.kind == endpoint.kind());
    let list = std::iter::once(model).chain(fallbacks).cloned().collect();
    Ok(Candidates::of(list).unwrap_or_else(|| Candidates::one(model.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::fixture::{model, tier, Fixture};

    #[tokio::test]
    async fn a_named_model_is_the_only_candidate_and_must_serve_the_endpoint() {
        let mut embed = model(10, 1000);
        embed.kind = ModelKind::Embeddings;
        let f = Fixture::new(
            &[("chat", model(10, 1000)), ("embed", embed)],
            &[("pro", tier(10, 1000, 0))],
        )
        .await;
        let c = named(&f.models, "chat", Endpoint::Chat).expect("routed");
        assert_eq!(c.first().name, "chat");
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["chat"]
        );
        let r = named(&f.models, "chat", Endpoint::Responses).expect("routed");
        assert_eq!(r.first().name, "chat");
        assert_eq!(
            named(&f.models, "nope", Endpoint::Chat).unwrap_err(),
            RouteError::NotFound("nope".into())
        );
        assert_eq!(
            named(&f.models, "embed", Endpoint::Chat).unwrap_err(),
            RouteError::WrongKind {
                name: "embed".into(),
                kind: ModelKind::Embeddings
            }
        );
        assert!(named(&f.models, "embed", Endpoint::Embeddings).is_ok());
    }

    #[tokio::test]
    async fn a_model_is_followed_by_its_fallbacks_in_their_order() {
        let mut first = model(10, 1000);
        first.fallbacks = vec!["c".into(), "b".into()];
        let f = Fixture::new(
            &[("a", first), ("b", model(10, 1000)), ("c", model(10, 1000))],
            &[("pro", tier(10, 1000, 0))],
        )
        .await;
        let c = named(&f.models, "a", Endpoint::Chat).expect("routed");
        let names: Vec<_> = c.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "b"]);
        // A fallback's own fallbacks are not followed: the list is the named model's.
        let b = named(&f.models, "b", Endpoint::Chat).expect("routed");
        assert_eq!(b.len(), 1);
    }

    #[tokio::test]
    async fn candidates_keep_their_order_and_are_never_empty() {
        let f = Fixture::new(
            &[("a", model(10, 1000)), ("b", model(10, 1000))],
            &[("pro", tier(10, 1000, 0))],
        )
        .await;
        assert!(Candidates::of(Vec::new()).is_none());
        let c = Candidates::of(vec![f.model("b"), f.model("a")]).expect("two");
        assert_eq!(c.len(), 2);
        assert_eq!(c.first().name, "b");
        let names: Vec<_> = c.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
    }

    fn auto() -> BTreeMap<String, RouteConfig> {
        let text = r#"
            [[rules]]
            name = "hinted"
            hint = "cheap"
            models = ["c"]
            [[rules]]
            name = "pro-code"
            tiers = ["pro"]
            tasks = ["code"]
            models = ["a", "embed", "b"]
            [[rules]]
            name = "long"
            min_prompt_tokens = 1000
            models = ["c", "a"]
            [[rules]]
            name = "embed-only"
            tiers = ["free"]
            tasks = ["analysis"]
            models = ["embed"]
            [[rules]]
            tiers = ["pro", "free"]
            models = ["b"]
        "#;
        BTreeMap::from([("auto".to_string(), toml::from_str(text).expect("route"))])
    }

    #[tokio::test]
    async fn a_route_gives_the_models_of_its_first_matching_rule() {
        let mut embed = model(10, 1000);
        embed.kind = ModelKind::Embeddings;
        let f = Fixture::new(
            &[
                ("a", model(10, 1000)),
                ("b", model(10, 1000)),
                ("c", model(10, 1000)),
                ("embed", embed),
            ],
            &[
                ("pro", tier(10, 1000, 0)),
                ("free", tier(10, 1000, 0)),
                ("x", tier(10, 1000, 0)),
            ],
        )
        .await;
        let routes = auto();
        let classifier = Classifier::default();
        let table = Table {
            models: &f.models,
            routes: &routes,
            classifier: &classifier,
        };
        let body = |text: &str| {
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]})
                .as_object()
                .cloned()
                .unwrap()
        };
        let long = "word ".repeat(900);
        for (tier, text, hint, want_route, want) in [
            (
                "pro",
                "fix this bug",
                None,
                "auto/pro-code",
                &["a", "b"][..],
            ),
            ("pro", "fix this bug", Some("cheap"), "auto/hinted", &["c"]),
            ("pro", "hello", None, "auto/5", &["b"]),
            ("free", "fix this bug", None, "auto/5", &["b"]),
            ("free", long.as_str(), None, "auto/long", &["c", "a"]),
        ] {
            let b = body(text);
            let asked = Asked {
                name: "auto",
                endpoint: Endpoint::Chat,
                tier,
                hint,
                body: &b,
            };
            let r = route(table, asked).expect("routed");
            let names: Vec<_> = r.candidates.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(
                (r.route.as_str(), names.as_slice()),
                (want_route, want),
                "{tier} {text:.20} {hint:?}"
            );
        }
        let b = body("analyse this");
        let asked = |tier| Asked {
            name: "auto",
            endpoint: Endpoint::Chat,
            tier,
            hint: None,
            body: &b,
        };
        // A rule whose models cannot serve the endpoint.
        assert_eq!(
            route(table, asked("free")).unwrap_err(),
            RouteError::WrongKind {
                name: "auto".into(),
                kind: ModelKind::Embeddings
            }
        );
        // No rule for this tier.
        let e = route(table, asked("x")).unwrap_err();
        assert!(
            matches!(&e, RouteError::NoRule { route, tier, task: Some(TaskClass::Analysis), .. } if route == "auto" && tier == "x"),
            "{e:?}"
        );
        // A model's name is not a route's.
        let named = route(
            table,
            Asked {
                name: "a",
                ..asked("pro")
            },
        )
        .expect("named");
        assert_eq!((named.route.as_str(), named.task), ("a", None));
    }

    #[test]
    fn the_hint_is_the_header_else_the_metadata() {
        let mut h = axum::http::HeaderMap::new();
        let body = serde_json::json!({"metadata": {"tollgate_route": " fast ", "user": "u"}});
        let body = body.as_object().unwrap();
        assert_eq!(hint(&h, body), Some("fast"));
        h.insert(super::super::ROUTE_HEADER, "cheap".parse().unwrap());
        assert_eq!(hint(&h, body), Some("cheap"));
        let empty = serde_json::Map::new();
        assert_eq!(hint(&axum::http::HeaderMap::new(), &empty), None);
    }
}
