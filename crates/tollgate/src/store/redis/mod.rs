//! The Redis store (skeleton: being written).

use tollgate_core::{Policy, ReserveError, Settled};

use super::{Backend, KeySnapshot, ReserveCall, Reserved, SettleCall, StoreError};

/// Connection settings for [`RedisStore`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {}

/// The Redis store.
#[derive(Debug, Clone)]
pub struct RedisStore {}

impl RedisStore {
    /// Connects to Redis.
    pub async fn connect(_url: &str, _options: RedisOptions) -> Result<Self, StoreError> {
        Err(StoreError::Failed("redis store not built yet".into()))
    }
}

impl Backend for RedisStore {
    async fn reserve(
        &self,
        _call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        Err(StoreError::Failed("redis store not built yet".into()))
    }

    async fn settle(&self, _call: &SettleCall<'_>) -> Result<Settled, StoreError> {
        Err(StoreError::Failed("redis store not built yet".into()))
    }

    async fn snapshot(&self, _key: &str, _policy: &Policy) -> Result<KeySnapshot, StoreError> {
        Err(StoreError::Failed("redis store not built yet".into()))
    }
}
