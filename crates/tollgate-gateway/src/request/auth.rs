//! The first step: the request's bearer key → its client (and so its tier),
//! looked up by the key's hash in the registry in force (one hash map
//! look-up; a revoked or expired key is unknown).

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::registry::{Client, Key, Registry};

/// Why a request has no client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `Authorization: Bearer` key.
    Missing,
    /// A key no client has.
    Unknown,
}

/// The client a request's bearer key belongs to.
pub(crate) fn authenticate(
    registry: &Registry,
    headers: &HeaderMap,
) -> Result<Arc<Client>, AuthError> {
    authenticate_key(registry, headers).map(|(c, _)| c)
}

/// [`authenticate`], with the key when the admin API issued it (its limits
/// on models apply).
pub(crate) fn authenticate_key(
    registry: &Registry,
    headers: &HeaderMap,
) -> Result<(Arc<Client>, Option<Arc<Key>>), AuthError> {
    let key = crate::auth::bearer(headers).ok_or(AuthError::Missing)?;
    registry.authenticate_key(key).ok_or(AuthError::Unknown)
}
