//! Where a request goes: an ordered, non-empty list of candidate models,
//! tried in that order. A request goes to the model it names, then to that
//! model's `fallbacks` (those that serve the endpoint) when it fails before
//! the first byte of its answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::ModelKind;
use crate::model::{Endpoint, Model};

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
    /// The model named cannot serve the endpoint.
    WrongKind {
        /// The name asked.
        name: String,
        /// The model's kind.
        kind: ModelKind,
    },
}

/// The candidates of a request for `requested` at `endpoint`.
pub(crate) fn route(
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
        let c = route(&f.models, "chat", Endpoint::Chat).expect("routed");
        assert_eq!(c.first().name, "chat");
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["chat"]
        );
        let r = route(&f.models, "chat", Endpoint::Responses).expect("routed");
        assert_eq!(r.first().name, "chat");
        assert_eq!(
            route(&f.models, "nope", Endpoint::Chat).unwrap_err(),
            RouteError::NotFound("nope".into())
        );
        assert_eq!(
            route(&f.models, "embed", Endpoint::Chat).unwrap_err(),
            RouteError::WrongKind {
                name: "embed".into(),
                kind: ModelKind::Embeddings
            }
        );
        assert!(route(&f.models, "embed", Endpoint::Embeddings).is_ok());
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
        let c = route(&f.models, "a", Endpoint::Chat).expect("routed");
        let names: Vec<_> = c.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "b"]);
        // A fallback's own fallbacks are not followed: the list is the named model's.
        let b = route(&f.models, "b", Endpoint::Chat).expect("routed");
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
}
