//! The leaf types every step of the request path may use: an upstream
//! [`Model`] with its provider bucket, the [`Endpoint`] a request came to,
//! and a model's [`Price`]. Nothing here knows about requests or the
//! gateway.

use tollgate::RateLimiter;

use crate::config::ModelKind;
use crate::pause::Hold;
use crate::tokenizer::Tokenizer;

/// The endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses` (OpenAI's Responses API), served by chat models.
    Responses,
}

impl Endpoint {
    /// Path below the provider's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
        }
    }

    /// Every endpoint, in the order of [`Model`]'s upstream URLs.
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Embeddings, Endpoint::Responses];

    /// The kind of model that serves this endpoint.
    pub fn kind(self) -> ModelKind {
        match self {
            Endpoint::Chat | Endpoint::Responses => ModelKind::Chat,
            Endpoint::Embeddings => ModelKind::Embeddings,
        }
    }
}

/// A model's prices.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// USD per million input tokens.
    pub input_usd_per_mtok: f64,
    /// USD per million output tokens.
    pub output_usd_per_mtok: f64,
}

impl Price {
    /// The cost of a call in nano-USD (rounded up).
    pub fn cost_nano(&self, input: u64, output: u64) -> i64 {
        // USD per Mtok × tokens = µUSD; × 1000 = nano-USD.
        (input as f64 * self.input_usd_per_mtok * 1000.0
            + output as f64 * self.output_usd_per_mtok * 1000.0)
            .ceil() as i64
    }
}

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
    /// `base_url` + each [`Endpoint::ALL`]'s path, parsed once.
    pub(crate) urls: [reqwest::Url; 3],
    /// The provider's API key (from its environment variable); never logged.
    pub(crate) api_key: Option<String>,
    /// The provider bucket, key `model:PROVIDER/NAME`, with the priority classes.
    pub limiter: RateLimiter,
    /// Each tier's floor, weight and lendable part of the bucket in force,
    /// in class order, when the tiers share the model (empty otherwise):
    /// the file's, then the admin API's changes (see `crate::shares::reshare`).
    pub(crate) shares: parking_lot::Mutex<Vec<tollgate::ClassShare>>,
    /// Prices.
    pub price: Price,
    /// Context window in tokens.
    pub context_window: u64,
    /// Output estimate without `max_tokens`.
    pub default_max_tokens: u64,
    /// How input is counted.
    pub tokenizer: Tokenizer,
    /// The pause an upstream's `Retry-After` asked for, shared through the store.
    pub hold: Hold,
    /// The models to try after this one when it fails before its answer's
    /// first byte, in order (`fallbacks` in its config).
    pub fallbacks: Vec<String>,
}

impl Model {
    /// Where requests for `endpoint` go upstream.
    pub fn url(&self, endpoint: Endpoint) -> &reqwest::Url {
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
