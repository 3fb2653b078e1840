//! The multi-tenant OpenAI-compatible gateway of tollgate.
//!
//! A request goes: [`auth`] (hashed API key → client → tier) → [`proxy`]
//! checks the body and [`estimate`]s its tokens → [`admission`] reserves the
//! client's tier bucket, its [`budget`] and the provider bucket of the model
//! in the tier's priority class (waiting up to the tier's maximum wait, or 429
//! with `Retry-After`) → the request is forwarded, streamed or not → the actual
//! usage is settled → [`metrics`] and the [`ledger`] record it.
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
pub mod admission;
pub mod auth;
pub mod budget;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod estimate;
pub mod gateway;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod outcome;
pub mod overrides;
pub mod proxy;
pub mod registry;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod sync;
pub mod upstream_sim;

pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use gateway::{Gateway, StartError};
pub use outcome::Outcome;
pub use server::{router, start, RunningGateway};
