"""Where the limiter's Redis is: a URL, a redis-py client, or a
:class:`RedisConnectionManager`, turned into the URL and TLS settings of the
Rust store (which keeps one multiplexed connection of its own)."""

from __future__ import annotations

import ssl
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from ._config import RetryConfig
from ._errors import ConfigError

# TLS settings redis-py takes, as URL query parameters or keyword arguments.
_TLS_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def _tls(settings: Dict[str, Any]) -> Dict[str, Any]:
    """The Rust store's TLS options from redis-py's ssl_* settings."""
    out: Dict[str, Any] = {}
    if settings.get("ssl_ca_certs"):
        out["ca_cert"] = str(settings["ssl_ca_certs"])
    if settings.get("ssl_certfile"):
        out["client_cert"] = str(settings["ssl_certfile"])
    if settings.get("ssl_keyfile"):
        out["client_key"] = str(settings["ssl_keyfile"])
    reqs = settings.get("ssl_cert_reqs")
    if reqs in ("none", "CERT_NONE", ssl.CERT_NONE):
        out["insecure"] = True
    return out


def from_url(url: str, *, password: Optional[str] = None, db: int = 0) -> Tuple[str, Dict[str, Any]]:
    """A URL as redis-py takes it (with ``?ssl_ca_certs=…`` and the like)
    turned into the store URL and its TLS options."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster", "memory"):
        raise ConfigError(
            f"store URL {parts.scheme}://…: give redis://host:port[/db], rediss://… for TLS, "
            "redis+cluster://host:port,host:port or memory://"
        )
    if parts.scheme == "memory":
        return url, {}
    query = dict(parse_qsl(parts.query))
    tls = _tls(query)
    unknown = sorted(set(query) - set(_TLS_KEYS) - {"db", "password"})
    if unknown:
        raise ConfigError(f"URL parameters {unknown} are not supported; only {list(_TLS_KEYS)}, db, password")
    netloc, path = parts.netloc, parts.path
    password = password if password is not None else query.get("password")
    if password is not None:
        host = netloc.rsplit("@", 1)[-1]
        user = parts.username or ""
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    db = int(query.get("db", db) or 0)
    if db:
        path = f"/{db}"
    return urlunsplit((parts.scheme, netloc, path, "", "")), tls


def _from_settings(kw: Dict[str, Any], tls: bool) -> Tuple[str, Dict[str, Any]]:
    if kw.get("path"):
        raise ConfigError("a Unix-socket Redis is not supported: give a redis://host:port URL")
    host = kw.get("host") or "localhost"
    port = int(kw.get("port") or 6379)
    auth = ""
    if kw.get("password") is not None:
        auth = f"{quote(kw.get('username') or '', safe='')}:{quote(str(kw['password']), safe='')}@"
    db = int(kw.get("db") or 0)
    scheme = "rediss" if tls else "redis"
    url = f"{scheme}://{auth}{host}:{port}" + (f"/{db}" if db else "")
    return url, (_tls(kw) if tls else {})


def from_client(client: Any) -> Tuple[str, Dict[str, Any]]:
    """The store URL of a redis-py client (``redis.Redis`` or
    ``redis.asyncio.Redis``): its host, port, db, username, password and TLS
    settings. A cluster client or a Unix socket cannot be carried over."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "connection_kwargs"):
        raise ConfigError(
            f"cannot take the connection settings of {type(client).__name__}: give a redis:// URL, "
            "a redis-py Redis client or a RedisConnectionManager (for a cluster: redis+cluster://host:port,…)"
        )
    kw = dict(pool.connection_kwargs)
    tls = "SSL" in getattr(pool, "connection_class", type(None)).__name__ or bool(kw.get("ssl"))
    return _from_settings(kw, tls)


class RedisConnectionManager:
    """Connection settings for limiters, as llmratelimiter's manager takes them.

    The limiter reads the URL (or host, port, db, password) and
    ``retry_config`` from it; its Rust store keeps one multiplexed connection
    of its own, so ``max_connections`` has no effect on it. ``client`` makes a
    redis-py client with the same settings for the application's own use
    (needs ``pip install redis``).

    Example:
        >>> manager = RedisConnectionManager("redis://localhost:6379",
        ...                                  retry_config=RetryConfig(max_retries=3, base_delay=0.1))
        >>> limiter = RateLimiter(manager, "gpt-4", tpm=100_000, rpm=100)
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: Optional[str] = None,
        max_connections: int = 10,
        retry_config: Optional[RetryConfig] = None,
        decode_responses: bool = True,
        **redis_kwargs: Any,
    ) -> None:
        self._url = url
        self._host = host
        self._port = port
        self._db = db
        self._password = password
        self._max_connections = max_connections
        self._retry_config = retry_config or RetryConfig()
        self._decode_responses = decode_responses
        self._redis_kwargs = redis_kwargs
        self._client: Any = None

    @property
    def retry_config(self) -> RetryConfig:
        """The retry settings limiters made from this manager use."""
        return self._retry_config

    def _store(self) -> Tuple[str, Dict[str, Any]]:
        """The store URL and TLS options of these settings."""
        if self._url is not None:
            url, tls = from_url(self._url, password=self._password, db=self._db)
            tls.update(_tls(self._redis_kwargs))
            return url, tls
        kw = dict(self._redis_kwargs, host=self._host, port=self._port, db=self._db, password=self._password)
        return _from_settings(kw, bool(self._redis_kwargs.get("ssl")))

    @property
    def client(self) -> Any:
        """A ``redis.asyncio.Redis`` client with these settings (made once)."""
        if self._client is None:
            try:
                from redis.asyncio import ConnectionPool, Redis
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ConfigError("RedisConnectionManager.client needs redis-py: pip install redis") from e
            kwargs: Dict[str, Any] = dict(
                max_connections=self._max_connections, decode_responses=self._decode_responses, **self._redis_kwargs
            )
            if self._url is not None:
                if self._db:
                    kwargs["db"] = self._db
                if self._password is not None:
                    kwargs["password"] = self._password
                pool = ConnectionPool.from_url(self._url, **kwargs)
            else:
                pool = ConnectionPool(host=self._host, port=self._port, db=self._db, password=self._password, **kwargs)
            self._client = Redis(connection_pool=pool)
        return self._client

    async def close(self) -> None:
        """Closes the redis-py client, if one was made."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> "RedisConnectionManager":
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()
