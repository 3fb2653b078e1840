//! Which Redis errors are worth retrying.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::store::StoreError;

/// Maps a Redis error to a store error: [`StoreError::Unavailable`] for what a
/// retry may fix (I/O, refused or reset connections, timeouts, `LOADING`,
/// `BUSY`, `TRYAGAIN`, `MOVED`/`ASK` left over after the cluster client's own
/// redirections, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY` during a failover),
/// [`StoreError::Failed`] for everything else.
pub(crate) fn store_error(e: RedisError) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Failed(format!("redis: {e}{}", advice(&e)))
    }
}

fn is_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped() {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        )
        | ErrorKind::ClusterConnectionNotFound => true,
        _ => e.code() == Some("BUSY"),
    }
}

fn advice(e: &RedisError) -> &'static str {
    match e.kind() {
        ErrorKind::AuthenticationFailed => {
            " (check the password in the URL: redis://:password@host:port)"
        }
        ErrorKind::InvalidClientConfig => {
            " (check the URL: redis://[:password@]host:port[/db], rediss:// for TLS, redis+cluster://host:port,host:port)"
        }
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            " (the Redis user needs EVALSHA, SCRIPT LOAD and the hash and sorted-set commands on the key prefix)"
        }
        _ => "",
    }
}

/// The error of an operation that took longer than the options allow.
pub(crate) fn timed_out(what: &str, limit: std::time::Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "redis: {what} got no answer within {limit:?} (connect_timeout + response_timeout)"
    ))
}

/// The error of a call that got no answer after `waited`: its `limit`
/// (`response_timeout`) passed and Redis answered no probe meanwhile, or it
/// waited `late` (`late_reply_timeout`) in all (see `liveness`).
pub(crate) fn no_answer(
    what: &str,
    limit: std::time::Duration,
    waited: std::time::Duration,
    late: std::time::Duration,
) -> StoreError {
    StoreError::Unavailable(if waited >= late {
        format!("redis: {what} got no answer within {late:?} (late_reply_timeout), though Redis answered probes meanwhile")
    } else {
        format!("redis: {what} got no answer within {limit:?} (response_timeout), and Redis answered no probe meanwhile")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_permanent_errors() {
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert!(store_error(io).is_transient());
        let loading: RedisError =
            (ErrorKind::Server(ServerErrorKind::BusyLoading), "loading").into();
        assert!(store_error(loading).is_transient());
        let auth: RedisError = (ErrorKind::AuthenticationFailed, "bad password").into();
        let e = store_error(auth);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("password"), "{e}");
        let wrong: RedisError = (
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        )
            .into();
        assert!(!store_error(wrong).is_transient());
    }
}
