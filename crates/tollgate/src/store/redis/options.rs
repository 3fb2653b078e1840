//! Settings of the Redis store: timeouts, TLS, key names.

use std::path::PathBuf;
use std::time::Duration;

use crate::store::StoreError;

/// Connection settings for [`RedisStore`](super::RedisStore).
///
/// ```
/// use std::time::Duration;
/// use tollgate::store::RedisOptions;
///
/// let options = RedisOptions::default()
///     .response_timeout(Duration::from_millis(200))
///     .ca_cert("/etc/redis/ca.crt")
///     .key_prefix("myapp-limits");
/// assert_eq!(options.key_prefix, "myapp-limits");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// Longest wait for a TCP (and TLS) connection to be set up. Default 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to one command. Default 500 ms. A paused or
    /// overloaded Redis then fails the call (a transient error, retried and then
    /// handled by the outage policy) instead of hanging it. A call whose answer
    /// only waits in this process (behind a burst of others, or for a turn of
    /// a busy runtime) is not failed while Redis answers the store's probes
    /// (`PING` from a thread of the library's own, sent while calls wait
    /// past half this limit): it keeps waiting, up to `late_reply_timeout`.
    pub response_timeout: Duration,
    /// How long a reply is still awaited after its caller stopped waiting
    /// (the operation timeout passed, or the caller's future was dropped), so
    /// that what the call wrote can be undone: a reservation that comes back
    /// then is cancelled. Default 10 s. A server paused longer than this may
    /// keep reservations nobody owns until their slots have passed. It is also
    /// the connection's own response timeout (a connection silent this long
    /// is reconnected) and the longest a call waits while Redis answers the
    /// probes (see `response_timeout`).
    pub late_reply_timeout: Duration,
    /// First part of every Redis key: `<prefix>:{<limiter key>}:s` holds a key's
    /// state and `<prefix>:{<limiter key>}:q<class>` its queues. Default
    /// `tollgate`. Must not contain `{` or `}` (the hash tag is the limiter key).
    pub key_prefix: String,
    /// How long a key's state outlives its backlog once it falls idle. Default
    /// 60 s. Longer keeps refund bookkeeping for late settlements; shorter frees
    /// memory sooner.
    ///
    /// Exactly: each charge (a reservation, a settlement above the estimate)
    /// keeps the keys' expiry at least `idle_ttl` after the moment the backlog
    /// it leaves has drained, and when the expiry falls short moves it to twice
    /// `idle_ttl` after that moment (so a busy key is not re-expired on every
    /// call). An idle key therefore disappears between one and two `idle_ttl`
    /// after its last charge's backlog drained: with the default, between 60 s
    /// and 120 s, e.g. 121 s after one request on `rpm = 60`. Refunds do not
    /// bring the expiry closer.
    pub idle_ttl: Duration,
    /// Create the store without connecting; the first call connects. Default
    /// `false`: [`RedisStore::connect`](super::RedisStore::connect) fails at once
    /// when Redis is unreachable. Standalone Redis only.
    pub lazy: bool,
    /// TLS settings for `rediss://` URLs.
    pub tls: TlsOptions,
    /// What a key's bucket holds when the store is found to have lost its
    /// state (a Redis without persistence restarted empty, `FLUSHALL`).
    /// Default [`AfterReset::Drained`].
    pub after_reset: AfterReset,
}

/// How the buckets of a store that lost its state start.
///
/// The store keeps an epoch key (`<prefix>:epoch`; on a Cluster one per
/// limiter key). A key without state whose epoch is gone too, after this
/// process saw it, was lost with the rest of the store: the provider's own
/// buckets are as drained as they were, so trusting the empty store to be
/// full would send a burst the provider answers with 429s. Each reset is
/// logged once (`warn`) and counted in `StatsSnapshot::store_resets`.
///
/// A key that merely expired while idle is full either way: its epoch is
/// still there. A process that first meets a store after it lost its state
/// cannot tell it from a new store and trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AfterReset {
    /// As if the last window had been used in full: every key lost starts
    /// empty and refilling (TAT = reset time + tau), or as far ahead as this
    /// process's own reservations on it reached, if that is later.
    #[default]
    Drained,
    /// Full, as a new store: right only when nothing used the provider's
    /// limits in the last window.
    Full,
}

/// TLS settings for `rediss://` (and `rediss+cluster://`) URLs.
///
/// With nothing set, the server's certificate is checked against the system's
/// trusted roots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsOptions {
    /// PEM file of the certificate authority that signed the server's
    /// certificate (instead of the system's roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM file of a client certificate, for servers that require one (mutual
    /// TLS); needs `client_key` too.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. **Only for tests**: it makes TLS open to
    /// man-in-the-middle attacks.
    pub insecure_skip_verify: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(500),
            late_reply_timeout: Duration::from_secs(10),
            key_prefix: "tollgate".to_string(),
            idle_ttl: Duration::from_secs(60),
            lazy: false,
            tls: TlsOptions::default(),
            after_reset: AfterReset::Drained,
        }
    }
}

impl RedisOptions {
    /// Sets [`RedisOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`RedisOptions::response_timeout`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets [`RedisOptions::late_reply_timeout`].
    pub fn late_reply_timeout(mut self, timeout: Duration) -> Self {
        self.late_reply_timeout = timeout;
        self
    }

    /// Sets [`RedisOptions::key_prefix`].
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_string();
        self
    }

    /// Sets [`RedisOptions::idle_ttl`].
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Sets [`RedisOptions::lazy`].
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Sets [`RedisOptions::after_reset`].
    pub fn after_reset(mut self, after_reset: AfterReset) -> Self {
        self.after_reset = after_reset;
        self
    }

    /// Trusts the certificate authority in this PEM file ([`TlsOptions::ca_cert`]).
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_cert = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) to the server.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some(cert.into());
        self.tls.client_key = Some(key.into());
        self
    }

    /// Accepts any server certificate ([`TlsOptions::insecure_skip_verify`]);
    /// only for tests.
    pub fn insecure_skip_verify(mut self, skip: bool) -> Self {
        self.tls.insecure_skip_verify = skip;
        self
    }

    /// The longest one store operation may take before it fails as unavailable:
    /// a reconnection plus one answer.
    pub(crate) fn operation_timeout(&self) -> Duration {
        self.connect_timeout + self.response_timeout
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |field: &str, value: String, reason: &str| {
            Err(StoreError::Failed(format!(
                "invalid redis option {field} = {value}: {reason}"
            )))
        };
        if self.connect_timeout.is_zero() {
            return bad(
                "connect_timeout",
                format!("{:?}", self.connect_timeout),
                "must be longer than zero (default 1 s)",
            );
        }
        if self.response_timeout.is_zero() {
            return bad(
                "response_timeout",
                format!("{:?}", self.response_timeout),
                "must be longer than zero (default 500 ms)",
            );
        }
        if self.late_reply_timeout < self.operation_timeout() {
            return bad(
                "late_reply_timeout",
                format!("{:?}", self.late_reply_timeout),
                "at least connect_timeout + response_timeout (default 10 s)",
            );
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return bad(
                "key_prefix",
                format!("{:?}", self.key_prefix),
                "a non-empty name without '{' or '}' such as \"tollgate\"",
            );
        }
        if self.idle_ttl.is_zero() || self.idle_ttl > Duration::from_secs(30 * 24 * 3600) {
            return bad(
                "idle_ttl",
                format!("{:?}", self.idle_ttl),
                "between 1 ms and 30 days (default 60 s)",
            );
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return bad(
                "tls.client_cert",
                format!("{:?}", self.tls.client_cert),
                "give both tls.client_cert and tls.client_key, or neither",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(RedisOptions::default().validate().is_ok());
        let e = RedisOptions::default().key_prefix("a{b}").validate();
        assert!(format!("{e:?}").contains("key_prefix"), "{e:?}");
        let e = RedisOptions::default()
            .response_timeout(Duration::ZERO)
            .validate();
        assert!(format!("{e:?}").contains("response_timeout"), "{e:?}");
        let mut o = RedisOptions::default();
        o.tls.client_cert = Some("c.pem".into());
        assert!(format!("{:?}", o.validate()).contains("client_key"));
    }
}
