//! The dashboard at `/dashboard`: one page, served by the gateway itself,
//! that a person reads at a glance. Every figure comes from what the gateway
//! already holds (its buckets, its spend store, its metrics); nothing is
//! loaded from elsewhere: the page, its script and its styles are built into
//! the binary ([`assets`]) and the Content-Security-Policy allows this origin
//! alone.
//!
//! - `GET /dashboard`: the page, or the sign-in form without the admin token;
//! - `POST /dashboard/login` (form field `token`): keeps the token in an
//!   HttpOnly, `SameSite=Strict` cookie scoped to `/dashboard`
//!   ([`session`]); `POST /dashboard/logout` drops it;
//! - `GET /dashboard/api/overview`: tiers (waits p50/p99), provider models
//!   (use per priority class), store and ledger health ([`overview`]);
//! - `GET /dashboard/api/clients?q=&tier=&sort=&limit=&offset=`: one page of
//!   clients, filtered and sorted on the server, so the page stays light with
//!   thousands of clients ([`clients`]);
//! - `GET /dashboard/clients/{id}`: one client's page, its keys, and a key
//!   issued (shown once) or revoked from it through the admin API's own
//!   handlers ([`client`]).
//!
//! The token also works as `Authorization: Bearer ADMIN_TOKEN`, as on the
//! admin API.

pub mod assets;
pub mod client;
pub mod clients;
pub mod overview;
pub mod session;

use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::gateway::Gateway;

/// The dashboard's routes, to merge into the gateway's router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/dashboard", get(session::page))
        .route("/dashboard/", get(session::page))
        .route("/dashboard/login", post(session::login))
        .route("/dashboard/logout", post(session::logout))
        .route("/dashboard/app.js", get(assets::script))
        .route("/dashboard/app.css", get(assets::style))
        .route("/dashboard/api/overview", get(overview::handler))
        .route("/dashboard/api/clients", get(clients::handler))
        .route("/dashboard/clients/{id}", get(client::page))
        .route("/dashboard/client.js", get(assets::client_script))
        .route("/dashboard/util.js", get(assets::util_script))
        .route("/dashboard/api/clients/{id}", get(client::handler))
        .route("/dashboard/api/clients/{id}/keys", post(client::issue_key))
        .route("/dashboard/api/keys/{id}", delete(client::revoke_key))
}
