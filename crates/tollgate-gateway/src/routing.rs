//! Models and where a request goes.
//!
//! Today a request goes to the model it names. [`Route`] already holds an
//! ordered list of targets so that routing by task or budget and fallback
//! chains (next on the roadmap) can return several without changing callers.

use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate::RateLimiter;

use crate::budget::Price;
use crate::config::ModelKind;
use crate::estimate::Tokenizer;

/// An upstream model with its provider bucket.
pub struct Model {
    /// The name clients use.
    pub name: String,
    /// The provider's name.
    pub provider: String,
    /// Chat or embeddings.
    pub kind: ModelKind,
    /// The name sent upstream.
    pub upstream_name: String,
    /// The provider's base URL (ends without `/`).
    pub base_url: String,
    /// `base_url` + each [`Endpoint::ALL`](crate::proxy::Endpoint::ALL)'s
    /// path, parsed once.
    pub(crate) urls: [reqwest::Url; 3],
    /// The provider's API key (from its environment variable); never logged.
    pub(crate) api_key: Option<String>,
    /// The provider bucket, key `model:PROVIDER/NAME`, with the priority classes.
    pub limiter: RateLimiter,
    /// Prices.
    pub price: Price,
    /// Context window in tokens.
    pub context_window: u64,
    /// Output estimate without `max_tokens`.
    pub default_max_tokens: u64,
    /// How input is counted.
    pub tokenizer: Tokenizer,
    /// The pause an upstream's `Retry-After` asked for, shared through the store.
    pub hold: crate::proxy::Hold,
}

impl Model {
    /// Where requests for `endpoint` go upstream.
    pub fn url(&self, endpoint: crate::proxy::Endpoint) -> &reqwest::Url {
        use crate::proxy::Endpoint;
        match endpoint {
            Endpoint::Chat => &self.urls[0],
            Endpoint::Embeddings => &self.urls[1],
            Endpoint::Responses => &self.urls[2],
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The targets of a request, in the order to try them.
#[derive(Debug, Clone)]
pub struct Route {
    /// First the preferred model, then fallbacks.
    pub targets: Vec<Arc<Model>>,
}

impl Route {
    /// The model tried first.
    pub fn primary(&self) -> Option<&Arc<Model>> {
        self.targets.first()
    }
}

/// Resolves a requested model name to a route.
pub fn route(models: &BTreeMap<String, Arc<Model>>, requested: &str) -> Option<Route> {
    models.get(requested).map(|m| Route {
        targets: vec![m.clone()],
    })
}
