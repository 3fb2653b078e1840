//! Choosing where a request goes when it names a route (`model: "auto"`,
//! `"chat-cheap"`, …) rather than a model: what the request is
//! ([`Prompt`], [`Classifier`]) and which rule of the route it meets
//! ([`Facts`], [`RouteConfig::select`]). Pure functions of the request and
//! the configuration, no I/O; the request path's route step
//! (`request/route.rs`) turns the models chosen into candidates, which
//! admission then filters by context window, budget and congestion.
//!
//! ```
//! use tollgate_gateway::config::{ClassifierConfig, TaskClass};
//! use tollgate_gateway::routing::{Classifier, Prompt};
//!
//! let body = serde_json::json!({"messages": [{"role": "user", "content": "Summarise this thread"}]});
//! let prompt = Prompt::of(body.as_object().unwrap());
//! let classifier = Classifier::new(&ClassifierConfig::default());
//! assert_eq!(classifier.classify(&prompt), TaskClass::Summarisation);
//! ```

mod classify;
mod rules;

pub use crate::config::{RouteConfig, RouteRule, TaskClass};
pub use classify::{Classifier, Prompt, DEFAULT_KEYWORDS};
pub use rules::Facts;
