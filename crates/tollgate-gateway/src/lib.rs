//! The multi-tenant OpenAI-compatible gateway of tollgate.
//!
//! A request goes one way through the `request` pipeline: auth (hashed API
//! key → client → tier) → parse → route (candidate models) → estimate its
//! tokens ([`tokenizer`]) → admit (the client's tier bucket, its [`budget`]
//! and the provider bucket of the model in the tier's priority class,
//! waiting up to the tier's maximum wait, or 429 with `Retry-After`) →
//! forward, streamed or not → settle the actual usage, which [`metrics`] and
//! the [`ledger`] record. [`server`] and [`admin`] are the only handlers that
//! see the whole [`Gateway`]; [`model`] holds the leaf types every step uses.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = tollgate_gateway::Config::load(std::path::Path::new("config/tollgate.example.toml"))?;
//! let running = tollgate_gateway::start(config).await?;
//! println!("listening on {}", running.url());
//! running.wait().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod activity;
pub mod admin;
pub mod admin_access;
pub mod admin_clients;
pub mod admin_keys;
pub mod admin_orgs;
pub mod auth;
pub mod budget;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod outcome;
pub mod overrides;
pub mod pause;
pub mod registry;
pub(crate) mod request;
pub mod request_id;
pub mod routing;
pub mod server;
pub(crate) mod shares;
pub mod sync;
pub mod tokenizer;
pub mod upstream_sim;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use gateway::{Gateway, StartError};
pub use outcome::Outcome;
pub use server::{router, start, RunningGateway};
