//! Connecting to Redis: standalone (plain or TLS) through a self-healing
//! multiplexed connection, or a Cluster from its seed nodes.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, ClientTlsConfig, Cmd, Pipeline, RedisFuture, TlsCertificates, TlsMode, Value};

use super::error::{store_error, timed_out};
use super::options::RedisOptions;
use crate::store::StoreError;

/// An async, multiplexed connection the Redis store runs its scripts over.
/// Cheap to clone: clones share the connection.
///
/// Build one from an existing connection of the `redis` crate with `From`:
/// a [`ConnectionManager`] (reconnects by itself: the best choice), a
/// [`MultiplexedConnection`] (does not reconnect) or a Cluster
/// [`ClusterConnection`].
#[derive(Clone)]
pub enum RedisConnection {
    /// A standalone server behind a connection manager.
    Manager(ConnectionManager),
    /// A standalone server on one multiplexed connection.
    Multiplexed(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Manager(_) => "RedisConnection::Manager",
            RedisConnection::Multiplexed(_) => "RedisConnection::Multiplexed",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(c: ConnectionManager) -> Self {
        RedisConnection::Manager(c)
    }
}

impl From<MultiplexedConnection> for RedisConnection {
    fn from(c: MultiplexedConnection) -> Self {
        RedisConnection::Multiplexed(c)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(c: ClusterConnection) -> Self {
        RedisConnection::Cluster(c)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Manager(c) => c.req_packed_command(cmd),
            RedisConnection::Multiplexed(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Manager(c) => c.get_db(),
            RedisConnection::Multiplexed(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// What a URL asks for.
#[derive(Debug, PartialEq)]
enum Target {
    /// `redis://` or `rediss://`: the URL as the `redis` crate reads it.
    Standalone(String),
    /// `redis+cluster://` or `rediss+cluster://`: one URL per seed node.
    Cluster(Vec<String>),
}

const URL_FORMS: &str = "redis://[:password@]host:port[/db], rediss://… for TLS, or redis+cluster://[:password@]host:port,host:port for a Cluster";

fn parse(url: &str) -> Result<Target, StoreError> {
    let bad = |why: &str| {
        StoreError::Failed(format!(
            "invalid redis URL {:?}: {why}; expected {URL_FORMS}",
            redact(url)
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let node_scheme = match scheme {
        "redis" | "rediss" => return Ok(Target::Standalone(url.to_string())),
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return Err(bad("unknown scheme")),
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, db) = hosts.split_once('/').unwrap_or((hosts, ""));
    if !(db.is_empty() || db == "0") {
        return Err(bad("a Cluster has only database 0"));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.trim().is_empty())
        .map(|h| format!("{node_scheme}://{auth}{}", h.trim()))
        .collect();
    if nodes.is_empty() {
        return Err(bad("no seed node"));
    }
    Ok(Target::Cluster(nodes))
}

/// The URL with its password replaced, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Connects to the server or Cluster a URL names.
pub(crate) async fn connect_url(
    url: &str,
    options: &RedisOptions,
) -> Result<RedisConnection, StoreError> {
    match parse(url)? {
        Target::Standalone(url) => connect_standalone(&url, options).await,
        Target::Cluster(nodes) => connect_cluster(&nodes, options).await,
    }
}

fn certificates(options: &RedisOptions) -> Result<Option<TlsCertificates>, StoreError> {
    let tls = &options.tls;
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StoreError::Failed(format!(
                "cannot read the TLS {what} file {}: {e}",
                path.display()
            ))
        })
    };
    let root_cert = tls
        .ca_cert
        .as_deref()
        .map(|p| read("CA certificate", p))
        .transpose()?;
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("client certificate", cert)?,
            client_key: read("client key", key)?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// rustls needs one process-wide crypto provider; install ring's unless the
/// application already chose one.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn with_insecure_fragment(url: &str, options: &RedisOptions) -> String {
    if options.tls.insecure_skip_verify && url.starts_with("rediss") && !url.contains('#') {
        format!("{url}#insecure")
    } else {
        url.to_string()
    }
}

async fn connect_standalone(
    url: &str,
    options: &RedisOptions,
) -> Result<RedisConnection, StoreError> {
    let tls = url.starts_with("rediss://");
    if tls {
        install_crypto_provider();
    }
    let url = with_insecure_fragment(url, options);
    let certs = if tls { certificates(options)? } else { None };
    let client = match certs {
        Some(certs) => Client::build_with_tls(url.as_str(), certs),
        None => Client::open(url.as_str()),
    }
    .map_err(store_error)?;
    // Reconnect quickly and only once per call: the limiter retries with its
    // own backoff and then applies the outage policy.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.late_reply_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    if options.lazy {
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(store_error)?;
        return Ok(RedisConnection::Manager(manager));
    }
    let limit = options.operation_timeout() * 2;
    let connecting = ConnectionManager::new_with_config(client, config);
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(manager)) => Ok(RedisConnection::Manager(manager)),
        Ok(Err(e)) if tls && cut_short(&e) => Err(no_tls_handshake(&url, store_error(e))),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) if tls => Err(no_tls_handshake(&url, timed_out("connecting", limit))),
        Err(_) => Err(timed_out("connecting", limit)),
    }
}

/// Whether a connection attempt timed out or was cut off, as a TLS handshake
/// with a server that speaks plain text is (it reads the handshake as a
/// command and waits for the rest, or answers with an error in plain text).
fn cut_short(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.is_timeout()
        || e.is_connection_dropped()
        || text.contains("timed out")
        || text.contains("InvalidContentType")
        || text.contains("corrupt message")
}

/// The error of a `rediss://` connection whose TLS handshake did not
/// complete: says so, and what is most often the cause.
fn no_tls_handshake(url: &str, cause: StoreError) -> StoreError {
    let (StoreError::Unavailable(cause) | StoreError::Failed(cause) | StoreError::Pending(cause)) =
        cause;
    StoreError::Unavailable(format!(
        "the TLS handshake with {} did not complete ({cause}): the server may not speak TLS; \
         use redis:// for a plain-text server, or check that the port is its TLS port",
        redact(url).trim_end_matches("#insecure")
    ))
}

/// Connects to a Redis Cluster from seed node URLs (`redis://host:port` or
/// `rediss://host:port`, all alike).
pub(crate) async fn connect_cluster(
    nodes: &[String],
    options: &RedisOptions,
) -> Result<RedisConnection, StoreError> {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|n| {
            if n.contains("://") {
                n.clone()
            } else {
                format!("redis://{n}")
            }
        })
        .collect();
    let tls = nodes.iter().any(|n| n.starts_with("rediss://"));
    let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(options.connect_timeout)
        .response_timeout(options.late_reply_timeout)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200);
    if tls {
        install_crypto_provider();
        if options.tls.insecure_skip_verify {
            builder = builder.tls(TlsMode::Insecure);
        }
        if let Some(certs) = certificates(options)? {
            builder = builder.certs(certs);
        }
    }
    let client = builder.build().map_err(store_error)?;
    let connecting = client.get_async_connection();
    let limit = options.operation_timeout() * 2;
    let seeds = nodes.join(",");
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(conn)) => Ok(RedisConnection::Cluster(conn)),
        Ok(Err(e)) if tls && cut_short(&e) => Err(no_tls_handshake(&seeds, store_error(e))),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) if tls => Err(no_tls_handshake(
            &seeds,
            timed_out("connecting to the cluster", limit),
        )),
        Err(_) => Err(timed_out("connecting to the cluster", limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_url_forms() {
        assert_eq!(
            parse("redis://:pw@h:1/2").unwrap(),
            Target::Standalone("redis://:pw@h:1/2".into())
        );
        assert_eq!(
            parse("redis+cluster://:pw@a:1, b:2/").unwrap(),
            Target::Cluster(vec!["redis://:pw@a:1".into(), "redis://:pw@b:2".into()])
        );
        assert_eq!(
            parse("rediss+cluster://a:1").unwrap(),
            Target::Cluster(vec!["rediss://a:1".into()])
        );
        let e = parse("http://:secret@a:1").unwrap_err().to_string();
        assert!(e.contains("unknown scheme") && !e.contains("secret"), "{e}");
        assert!(parse("redis+cluster://a:1/3").is_err());
        assert!(parse("localhost:6379").is_err());
    }
}
