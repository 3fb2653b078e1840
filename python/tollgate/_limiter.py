"""The limiter: llmratelimiter's RateLimiter with tollgate underneath."""

from __future__ import annotations

import asyncio
import weakref
from asyncio import get_running_loop as _running_loop
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _native
from ._config import AcquireResult, RateLimitConfig, RateLimitStatus, RetryConfig
from ._connection import RedisConnectionManager, from_client, from_url
from ._errors import ConfigError, TokenError, TollgateError

# One bridge per event loop (see the native module's documentation).
_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()


_last: List[Any] = [None, None]  # the last loop and its bridge, checked first


def _bridge(loop: asyncio.AbstractEventLoop) -> Any:
    if _last[0] is loop:
        return _last[1]
    bridge = _bridges.get(loop)
    if bridge is None:
        bridge = _native.Bridge()
        loop.add_reader(bridge.fileno(), bridge.drain)
        _bridges[loop] = bridge
    _last[0], _last[1] = loop, bridge
    return bridge


def _release(native: Any, permit: Any) -> None:
    """Gives back a permit whose awaiting task was cancelled as it arrived."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    native.settle(_bridge(loop), fut, permit, cancel=True)


async def _call(native: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Runs one native call as a tokio task and awaits it; cancelling the
    awaiting task stops the call (a waiting acquire gives its place back)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    task = getattr(native, method)(_bridge(loop), fut, *args, **kwargs)
    try:
        return await fut
    except asyncio.CancelledError:
        task.cancel()
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            result = fut.result()
            if isinstance(result, _native.NativePermit):
                _release(native, result)
        raise


def _usage_of(response: Any) -> Tuple[Optional[int], Optional[int]]:
    """Input and output tokens of a response's usage: OpenAI's
    ``prompt_tokens``/``completion_tokens``, Anthropic's and Bedrock's
    ``input_tokens``/``output_tokens`` (attributes or dict keys), or the usage
    object itself."""
    usage = response
    for name in ("usage", "usage_metadata"):
        inner = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        if inner is not None:
            usage = inner
            break

    def get(*names: str) -> Optional[int]:
        for n in names:
            v = usage.get(n) if isinstance(usage, dict) else getattr(usage, n, None)
            if v is not None:
                return int(v)
        return None

    inp = get("prompt_tokens", "input_tokens", "inputTokens", "prompt_token_count")
    out = get("completion_tokens", "output_tokens", "outputTokens", "candidates_token_count")
    if inp is None and out is None:
        raise ConfigError(
            f"no token usage in {type(response).__name__}: pass a response with .usage "
            "(prompt_tokens/completion_tokens or input_tokens/output_tokens), or input_tokens=/output_tokens="
        )
    return inp or 0, out or 0


@dataclass
class Settlement:
    """What settling did, per dimension: units charged above the estimate and
    units given back (capped: capacity that has drained is not returned).

    Dimensions are ``requests``, ``tokens``, ``input_tokens`` and
    ``output_tokens``.
    """

    charged: Dict[str, float]
    refunded: Dict[str, float]

    @classmethod
    def _of(cls, pair: Tuple[Sequence[float], Sequence[float]]) -> "Settlement":
        return cls(charged=dict(zip(_DIMS, pair[0])), refunded=dict(zip(_DIMS, pair[1])))


_DIMS = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass
class DimensionStatus:
    """One limit of a key right now.

    Attributes:
        limit: Units per window.
        capacity: Most the bucket holds (``burst × limit``).
        in_use: Units charged and not yet refilled (queued reservations included).
        available: What could start at once (``capacity - in_use``, >= 0).
        full_in: Seconds until the bucket is full again if nothing more comes.
    """

    limit: int
    capacity: float
    in_use: float
    available: float
    full_in: float


@dataclass
class Status:
    """A key's state in the store: each limited dimension and the queue.

    Attributes:
        key: The limiter's key.
        queue_depth: Reservations waiting for their slot.
        dimensions: ``requests``, ``tokens``, ``input_tokens``,
            ``output_tokens``: those that are limited.
    """

    key: str
    queue_depth: int
    dimensions: Dict[str, DimensionStatus] = field(default_factory=dict)

    @classmethod
    def _of(cls, row: Tuple[str, int, List[tuple]]) -> "Status":
        key, depth, dims = row
        return cls(key=key, queue_depth=depth, dimensions={d[0]: DimensionStatus(*d[1:]) for d in dims})


class Permit(AcquireResult):
    """A granted slot: the call may run now. Settle it with the real usage
    afterwards (``limiter.settle(permit, …)``), or give it back unused
    (``limiter.cancel(permit)``); a permit left unsettled keeps its estimate
    charged. It is settled at most once.

    It has llmratelimiter's ``AcquireResult`` fields: ``slot_time``,
    ``wait_time``, ``queue_position`` and ``record_id``. Reading ``record_id``
    turns the permit into a token that any process sharing the Redis can
    settle once (``adjust``, ``settle``).
    """

    def __init__(self, native: Any, estimate: Tuple[int, int]) -> None:
        self._native = native
        self._estimate = estimate
        self._token: Optional[str] = None
        self._usage: Optional[Tuple[Optional[int], Optional[int], Optional[int]]] = None
        self.extra_wait = 0.0

    @property
    def slot_time(self) -> float:  # type: ignore[override]
        """When the slot began, Unix seconds on Redis's clock."""
        return self._native.slot

    @property
    def wait_time(self) -> float:  # type: ignore[override]
        """Seconds ``acquire`` waited for the slot."""
        return self._native.waited + self.extra_wait

    @property
    def queue_position(self) -> int:  # type: ignore[override]
        """Reservations of the same class queued ahead of this one."""
        return self._native.queue_position

    @property
    def record_id(self) -> str:  # type: ignore[override]
        """The permit as a token for ``adjust``/``settle`` from anywhere
        (reading it consumes the permit's in-process form)."""
        if self._token is None:
            token = self._native.token()
            self._token = f"{token}~{self._estimate[0]},{self._estimate[1]}"
        return self._token

    @property
    def id(self) -> int:
        """The reservation's id, unique within the key."""
        return self._native.id

    @property
    def source(self) -> str:
        """Who decided: ``"store"`` (Redis), or the outage policy
        (``"open"``: let through unlimited, ``"local"``: limited in process)."""
        return self._native.source

    @property
    def store_reachable(self) -> bool:
        """Whether Redis decided this permit."""
        return self._native.store_reachable

    @property
    def priority(self) -> int:
        """The priority class it was taken in (0 = top)."""
        return self._native.class_

    @property
    def estimate(self) -> Dict[str, float]:
        """The estimate charged per dimension."""
        return dict(zip(_DIMS, self._native.estimate))

    def record(
        self,
        response: Any = None,
        *,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
    ) -> None:
        """Records the call's real usage for ``limiter.limit(…)`` to settle
        with on leaving the block: from a response (its ``usage``), or given.
        """
        if response is not None:
            input_tokens, output_tokens = _usage_of(response)
        self._usage = (tokens, input_tokens, output_tokens)

    def __repr__(self) -> str:
        return (
            f"Permit(id={self.id}, source={self.source!r}, wait_time={self.wait_time:.3f}, "
            f"queue_position={self.queue_position})"
        )

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def _split_record_id(record_id: Union[str, Permit]) -> Tuple[Optional[Permit], str, Tuple[int, int]]:
    if isinstance(record_id, Permit):
        if record_id._token is None:
            return record_id, "", record_id._estimate
        record_id = record_id._token
    token, sep, est = str(record_id).rpartition("~")
    if not sep:
        raise TokenError(f"record id {record_id!r} is not one of tollgate's; pass AcquireResult.record_id")
    a, _, b = est.partition(",")
    return None, token, (int(a), int(b))


class _Base:
    """Construction and the parts shared by the async and the sync limiter."""

    def __init__(
        self,
        redis: Union[str, Any, RedisConnectionManager, None] = None,
        model: Optional[str] = None,
        config: Optional[RateLimitConfig] = None,
        *,
        tpm: int = 0,
        rpm: int = 0,
        input_tpm: int = 0,
        output_tpm: int = 0,
        window_seconds: int = 60,
        burst_multiplier: float = 1.0,
        burndown_rate: float = 1.0,
        smooth_requests: bool = True,
        rps: int = 0,
        smoothing_interval: float = 1.0,
        password: Optional[str] = None,
        db: int = 0,
        max_connections: int = 10,
        retry_config: Optional[RetryConfig] = None,
        redis_client: Any = None,
        model_name: Optional[str] = None,
        # tollgate's own settings
        window: Optional[float] = None,
        burst: float = 1.0,
        burndown: Optional[float] = None,
        max_wait: Optional[float] = None,
        max_queue: Optional[int] = None,
        outage: str = "open",
        local_share: float = 1.0,
        classes: Optional[Sequence[Union[float, Tuple[float, Optional[float]]]]] = None,
        lease: Optional[float] = 2.0,
        margin: float = 0.0,
        key_prefix: Optional[str] = None,
        ssl_ca_certs: Optional[str] = None,
        ssl_certfile: Optional[str] = None,
        ssl_keyfile: Optional[str] = None,
        ssl_cert_reqs: Any = None,
        connect_timeout: Optional[float] = None,
        response_timeout: Optional[float] = None,
        replace_stored_limits: bool = False,
    ) -> None:
        if redis_client is not None and redis is None:
            redis = redis_client
        if model_name is not None and model is None:
            model = model_name
        if redis is None:
            raise ValueError("redis parameter is required (URL string, Redis client, or RedisConnectionManager)")
        if model is None:
            raise ValueError("model parameter is required")
        if config is None:
            config = RateLimitConfig(
                tpm=tpm,
                rpm=rpm,
                input_tpm=input_tpm,
                output_tpm=output_tpm,
                window_seconds=window_seconds,
                burst_multiplier=burst_multiplier,
                burndown_rate=burndown_rate if burndown is None else burndown,
                smooth_requests=smooth_requests,
                rps=rps,
                smoothing_interval=smoothing_interval,
            )
        if isinstance(redis, str):
            url, tls = from_url(redis, password=password, db=db)
            retry = retry_config or RetryConfig()
            self._manager: Optional[RedisConnectionManager] = None
            self._url_given: Optional[str] = redis
        elif isinstance(redis, RedisConnectionManager):
            url, tls = redis._store()
            retry = redis.retry_config
            self._manager = redis
            self._url_given = None
        else:
            url, tls = from_client(redis)
            retry = retry_config or RetryConfig(max_retries=0)
            self._manager = None
            self._url_given = None
            self._client = redis
        tls.update(_tls_args(ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs))

        self.model_name = model
        self.window_seconds = config.window_seconds
        self.burst_multiplier = config.burst_multiplier
        self._burndown_rate = config.burndown_rate
        self._config = config
        mult = config.burst_multiplier
        self.rpm_limit = int(config.rpm * mult) if config.rpm > 0 else 0
        self.tpm_limit = int(config.tpm * mult) if config.tpm > 0 else 0
        self.input_tpm_limit = int(config.input_tpm * mult) if config.input_tpm > 0 else 0
        self.output_tpm_limit = int(config.output_tpm * mult) if config.output_tpm > 0 else 0
        native_classes = None
        if classes is not None:
            native_classes = [(c, None) if isinstance(c, (int, float)) else (float(c[0]), c[1]) for c in classes]
        common = dict(
            window=float(window if window is not None else config.window_seconds),
            max_wait=max_wait,
            max_queue=max_queue,
            outage=outage,
            local_share=local_share,
            retry=retry._native(),
            key_prefix=key_prefix,
            connect_timeout=connect_timeout,
            response_timeout=response_timeout,
            replace_stored_limits=replace_stored_limits,
            **tls,
        )
        self._native = _native.Limiter.connect(
            url,
            model,
            rpm=self.rpm_limit,
            tpm=self.tpm_limit,
            input_tpm=self.input_tpm_limit,
            output_tpm=self.output_tpm_limit,
            burst=burst,
            burndown=config.burndown_rate,
            classes=native_classes,
            lease=lease or 0.0,
            margin=margin,
            **common,
        )
        # Request spacing (llmratelimiter's RPS smoothing): a bucket of one
        # request refilled every smoothing_interval / rps seconds, on a key
        # of its own.
        self._spacing = None
        rps_limit = config.effective_rps
        if config.is_smoothing_enabled and rps_limit > 0:
            common["window"] = config.smoothing_interval / rps_limit
            common["max_wait"] = None
            # Each limiter spaces by its own rps, as llmratelimiter's do.
            common["replace_stored_limits"] = True
            self._spacing = _native.Limiter.connect(url, f"{model}:spacing", rpm=1, **common)
        state, _queue = self._native.redis_keys() or (f"memory:{model}", None)
        self.consumption_key = state

    @property
    def key(self) -> str:
        """The limiter's key (the model name)."""
        return self._native.key

    @property
    def is_split_mode(self) -> bool:
        """Whether input or output tokens have limits of their own."""
        return self._config.is_split_mode

    @property
    def has_combined_limit(self) -> bool:
        """Whether combined tokens have a limit."""
        return self._config.has_combined_limit

    @property
    def redis(self) -> Any:
        """A redis-py client on the limiter's Redis, for the application's
        own use (made on first use; needs ``pip install redis``)."""
        client = getattr(self, "_client", None)
        if client is None:
            if self._manager is None:
                self._manager = RedisConnectionManager(self._url_given)
            client = self._client = self._manager.client
        return client

    def stats(self) -> Dict[str, int]:
        """The limiter's counters: granted, waited, refused, store_errors,
        outages, outage_open/local/closed, cancelled, advanced, leases_lost,
        store_resets."""
        return self._native.stats()

    @staticmethod
    def _cost(
        tokens: Optional[int], input_tokens: Optional[int], output_tokens: Optional[int]
    ) -> Tuple[Dict[str, int], Tuple[int, int]]:
        """llmratelimiter's cost arguments: ``tokens`` counts as input tokens
        with nothing for output (burndown not applied), ``input_tokens`` and
        ``output_tokens`` charge ``input + burndown × output`` to ``tpm``."""
        if tokens is not None:
            if input_tokens is not None:
                raise ValueError("Cannot specify both tokens and input_tokens")
            return {"input_tokens": int(tokens), "output_tokens": 0}, (int(tokens), 0)
        if input_tokens is None:
            raise ValueError("Must specify either tokens or input_tokens")
        out = int(output_tokens or 0)
        return {"input_tokens": int(input_tokens), "output_tokens": out}, (int(input_tokens), out)

    def _status_of(self, st: Optional[Status]) -> RateLimitStatus:
        s = RateLimitStatus(
            model=self.model_name,
            window_seconds=self.window_seconds,
            tokens_limit=self.tpm_limit,
            input_tokens_limit=self.input_tpm_limit,
            output_tokens_limit=self.output_tpm_limit,
            requests_limit=self.rpm_limit,
        )
        if st is None:
            return s
        used = {name: int(round(d.in_use)) for name, d in st.dimensions.items()}
        s.input_tokens_used = used.get("input_tokens", 0)
        s.output_tokens_used = used.get("output_tokens", 0)
        s.tokens_used = used.get("tokens", s.input_tokens_used + s.output_tokens_used)
        s.requests_used = used.get("requests", 0)
        s.queue_depth = st.queue_depth
        return s

    def _usage_args(
        self,
        permit: Union[Permit, str],
        tokens: Optional[int],
        input_tokens: Optional[int],
        output_tokens: Optional[int],
    ) -> Tuple[Optional[Permit], str, Dict[str, Optional[int]]]:
        own, token, (est_in, est_out) = _split_record_id(permit)
        if tokens is not None:
            usage: Dict[str, Optional[int]] = {"input_tokens": int(tokens), "output_tokens": 0}
        else:
            usage = {
                "input_tokens": est_in if input_tokens is None else int(input_tokens),
                "output_tokens": est_out if output_tokens is None else int(output_tokens),
            }
        return own, token, usage


def _tls_args(ca: Optional[str], cert: Optional[str], key: Optional[str], reqs: Any) -> Dict[str, Any]:
    from ._connection import _tls

    return _tls({"ssl_ca_certs": ca, "ssl_certfile": cert, "ssl_keyfile": key, "ssl_cert_reqs": reqs})


class RateLimiter(_Base):
    """A FIFO rate limiter for one model, shared through Redis by every
    process (Python or Rust) that uses the same key.

    Takes llmratelimiter's arguments unchanged (a URL, a redis-py client or a
    :class:`RedisConnectionManager`; the model; limits as keywords or a
    :class:`RateLimitConfig`), and tollgate's own:

    Args:
        window: The window in seconds (default ``window_seconds``).
        burst: The bucket holds ``burst × limit`` (default 1: one window).
        burndown: Weight of output tokens in ``tpm`` (same as ``burndown_rate``).
        max_wait: Longest ``acquire`` waits, seconds; beyond it
            :class:`RateLimited` with ``retry_after`` and nothing reserved.
            Default: unbounded.
        max_queue: Most requests waiting in one class; beyond it :class:`QueueFull`.
        outage: What ``acquire`` does once Redis fails after the retries:
            ``"open"`` (default, as llmratelimiter: let it through),
            ``"closed"`` (raise :class:`StoreUnavailable`) or ``"local"`` (limit
            in this process with ``local_share`` of the limits).
        classes: Priority classes, top first: the share of the bucket each may
            fill (the first is 1.0), or ``(share, max_wait)`` pairs;
            ``acquire(priority=i)`` picks one.
        lease: Seconds a queued reservation survives its owner's silence (a
            killed process); ``None`` for no leases. Default 2.
        margin: Safety margin, seconds, for the network between slot and provider.
        key_prefix: First part of every Redis key (default ``tollgate``).
        ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs: TLS settings
            for ``rediss://``, as redis-py names them (also accepted as URL
            query parameters).
        connect_timeout, response_timeout: Redis timeouts, seconds (1 and 0.5).
        replace_stored_limits: Record these limits for the key even if another
            limiter recorded others (otherwise :class:`LimitsConflict`).

    The constructor connects to Redis (briefly blocking); when Redis is down
    it connects on first use and the outage policy decides until then.
    """

    async def acquire(
        self,
        *,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: int = 0,
        priority: int = 0,
        max_wait: Optional[float] = None,
    ) -> Permit:
        """Reserves a slot for the call and waits until it (FIFO per priority
        class), then returns the :class:`Permit`.

        ``tokens=`` counts as input tokens (burndown not applied);
        ``input_tokens=``/``output_tokens=`` charge ``input + burndown ×
        output`` to ``tpm`` and each to its own limit. Cancelling the task
        that awaits it gives its place in the queue back.

        Raises:
            TooLarge: the request can never fit.
            RateLimited: its slot is further away than ``max_wait``.
            QueueFull: the queue is at ``max_queue``.
            StoreUnavailable: Redis is down and the outage policy is ``closed``.
        """
        # The hot path, inlined: one native call and one future per acquire.
        if tokens is not None:
            if input_tokens is not None:
                raise ValueError("Cannot specify both tokens and input_tokens")
            estimate = (tokens, 0)
        elif input_tokens is None:
            raise ValueError("Must specify either tokens or input_tokens")
        else:
            estimate = (input_tokens, output_tokens or 0)
        loop = _running_loop()
        fut = loop.create_future()
        task = self._native.acquire(_bridge(loop), fut, None, estimate[0], estimate[1], priority, max_wait)
        try:
            native = await fut
        except asyncio.CancelledError:
            task.cancel()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                _release(self._native, fut.result())
            raise
        permit = Permit(native, estimate)
        if self._spacing is not None:
            try:
                spaced = await _call(self._spacing, "acquire")
            except BaseException:
                await asyncio.shield(self.cancel(permit))
                raise
            permit.extra_wait = spaced.waited
        return permit

    async def try_acquire(self, **kwargs: Any) -> Permit:
        """:meth:`acquire` that never waits: :class:`RateLimited` unless the
        call may start now."""
        return await self.acquire(max_wait=0.0, **kwargs)

    async def settle(
        self,
        permit: Union[Permit, str],
        *,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
    ) -> Settlement:
        """Settles a permit (or its ``record_id``) with the real usage: usage
        above the estimate is charged, below it refunded (never capacity that
        has drained). A count not given keeps its estimate."""
        own, token, usage = self._usage_args(permit, tokens, input_tokens, output_tokens)
        if own is not None:
            return Settlement._of(await _call(self._native, "settle", own._native, **usage))
        return Settlement._of(await _call(self._native, "settle_token", token, **usage))

    async def cancel(self, permit: Union[Permit, str]) -> Settlement:
        """Gives a permit back unused: its whole estimate is refunded and the
        reservations queued behind it may start earlier."""
        own, token, _ = _split_record_id(permit)
        if own is not None:
            return Settlement._of(await _call(self._native, "settle", own._native, cancel=True))
        return Settlement._of(await _call(self._native, "settle_token", token, cancel=True))

    async def adjust(
        self,
        record_id: Union[str, Permit],
        actual_output: Optional[int] = None,
        actual_input: Optional[int] = None,
    ) -> None:
        """llmratelimiter's ``adjust``: settles the reservation with the real
        output (and input) tokens; a count not given keeps its estimate.
        Unlike llmratelimiter, a record is adjusted once (a second adjust
        logs nothing and changes nothing, like an unknown record there);
        errors are not raised, as there."""
        try:
            await self.settle(record_id, input_tokens=actual_input, output_tokens=actual_output)
        except TollgateError:
            pass

    async def status(self) -> Status:
        """The key's state in Redis: every limited dimension and the queue depth.

        Raises:
            StoreUnavailable: Redis is down.
        """
        return Status._of(await _call(self._native, "status"))

    async def get_status(self) -> RateLimitStatus:
        """llmratelimiter's status fields (see :class:`RateLimitStatus` for
        what they mean on a token bucket); zeros when Redis is down, as there."""
        try:
            st: Optional[Status] = await self.status()
        except TollgateError:
            st = None
        return self._status_of(st)

    def limit(
        self,
        *,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: int = 0,
        priority: int = 0,
        max_wait: Optional[float] = None,
    ) -> "_Limit":
        """``async with limiter.limit(input_tokens=…, output_tokens=…) as permit:``
        acquires on entry; on leaving, settles with what ``permit.record(response)``
        recorded, cancels the permit when the block raised before recording
        anything, and keeps the estimate otherwise."""
        return _Limit(self, dict(tokens=tokens, input_tokens=input_tokens, output_tokens=output_tokens,
                                 priority=priority, max_wait=max_wait))


class _Limit:
    def __init__(self, limiter: Any, args: Dict[str, Any]) -> None:
        self._limiter = limiter
        self._args = args
        self._permit: Optional[Permit] = None

    def _finish(self, failed: bool) -> Optional[Tuple[str, Dict[str, Any]]]:
        p = self._permit
        if p is None:
            return None
        if p._usage is not None:
            t, i, o = p._usage
            return "settle", dict(tokens=t, input_tokens=i, output_tokens=o)
        if failed:
            return "cancel", {}
        return None

    async def __aenter__(self) -> Permit:
        self._permit = await self._limiter.acquire(**self._args)
        return self._permit

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        todo = self._finish(exc_type is not None)
        if todo is not None:
            await getattr(self._limiter, todo[0])(self._permit, **todo[1])

    def __enter__(self) -> Permit:
        self._permit = self._limiter.acquire(**self._args)
        return self._permit

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        todo = self._finish(exc_type is not None)
        if todo is not None:
            getattr(self._limiter, todo[0])(self._permit, **todo[1])


class SyncRateLimiter(_Base):
    """:class:`RateLimiter` for code without asyncio: the same arguments and
    methods, which block (with the GIL released) instead of being awaited.
    Ctrl+C while ``acquire`` waits gives its place back."""

    def acquire(
        self,
        *,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: int = 0,
        priority: int = 0,
        max_wait: Optional[float] = None,
    ) -> Permit:
        """See :meth:`RateLimiter.acquire`."""
        args, estimate = self._cost(tokens, input_tokens, output_tokens)
        permit = Permit(self._native.acquire_blocking(priority=priority, max_wait=max_wait, **args), estimate)
        if self._spacing is not None:
            try:
                permit.extra_wait = self._spacing.acquire_blocking().waited
            except BaseException:
                self.cancel(permit)
                raise
        return permit

    def try_acquire(self, **kwargs: Any) -> Permit:
        """See :meth:`RateLimiter.try_acquire`."""
        return self.acquire(max_wait=0.0, **kwargs)

    def settle(
        self,
        permit: Union[Permit, str],
        *,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
    ) -> Settlement:
        """See :meth:`RateLimiter.settle`."""
        own, token, usage = self._usage_args(permit, tokens, input_tokens, output_tokens)
        if own is not None:
            return Settlement._of(self._native.settle_blocking(own._native, **usage))
        return Settlement._of(self._native.settle_token_blocking(token, **usage))

    def cancel(self, permit: Union[Permit, str]) -> Settlement:
        """See :meth:`RateLimiter.cancel`."""
        own, token, _ = _split_record_id(permit)
        if own is not None:
            return Settlement._of(self._native.settle_blocking(own._native, cancel=True))
        return Settlement._of(self._native.settle_token_blocking(token, cancel=True))

    def adjust(
        self, record_id: Union[str, Permit], actual_output: Optional[int] = None, actual_input: Optional[int] = None
    ) -> None:
        """See :meth:`RateLimiter.adjust`."""
        try:
            self.settle(record_id, input_tokens=actual_input, output_tokens=actual_output)
        except TollgateError:
            pass

    def status(self) -> Status:
        """See :meth:`RateLimiter.status`."""
        return Status._of(self._native.status_blocking())

    def get_status(self) -> RateLimitStatus:
        """See :meth:`RateLimiter.get_status`."""
        try:
            st: Optional[Status] = self.status()
        except TollgateError:
            st = None
        return self._status_of(st)

    def limit(self, **kwargs: Any) -> _Limit:
        """``with limiter.limit(…) as permit:``; see :meth:`RateLimiter.limit`."""
        return _Limit(self, kwargs)
