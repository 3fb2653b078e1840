"""Configuration and result classes with llmratelimiter's names and fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryConfig:
    """How transient Redis errors are retried before the outage policy applies.

    The delay before retry ``n`` (1-based) is
    ``min(max_delay, base_delay × exponential_base^(n-1))``, spread by
    ``± jitter × delay`` at random. While an outage lasts, one call per
    100 ms tries Redis; the others go to the outage policy at once.

    Args:
        max_retries: Retries after the first attempt (0 = none).
        base_delay: Delay before the first retry, seconds.
        max_delay: Longest delay between two attempts, seconds.
        exponential_base: Growth of the delay, >= 1.
        jitter: Random spread, 0 to 1, as a fraction of the delay.
    """

    max_retries: int = 3
    base_delay: float = 0.1
    max_delay: float = 5.0
    exponential_base: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.base_delay <= 0:
            raise ValueError("base_delay must be > 0")
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be >= base_delay")
        if self.exponential_base < 1:
            raise ValueError("exponential_base must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def _native(self) -> tuple:
        return (self.max_retries, self.base_delay, self.max_delay, self.exponential_base, self.jitter)


@dataclass(frozen=True)
class RateLimitConfig:
    """The limits of one model, as llmratelimiter takes them.

    Set a limit to 0 to leave it out; a request must fit every limit given.

    Args:
        rpm: Requests per window (per minute with the default window).
        tpm: Combined tokens per window: ``input + burndown_rate × output``.
        input_tpm: Input tokens per window.
        output_tpm: Output tokens per window.
        window_seconds: The window, seconds. tollgate's buckets refill at
            ``limit / window_seconds`` per second and hold one window's worth.
        burst_multiplier: Multiplies every limit (as llmratelimiter does: the
            sustained rate rises with it). For a bucket that holds more than
            one window at the same rate, use tollgate's ``burst=``.
        burndown_rate: Weight of output tokens in ``tpm`` (AWS Bedrock: 5.0).
        smooth_requests: Space requests at least ``smoothing_interval / rps``
            apart, where ``rps`` defaults to ``rpm / 60``.
        rps: Requests per second for that spacing (0: from ``rpm``); setting
            it turns spacing on.
        smoothing_interval: See ``smooth_requests``, seconds.
    """

    rpm: int
    tpm: int = 0
    input_tpm: int = 0
    output_tpm: int = 0
    window_seconds: int = 60
    burst_multiplier: float = 1.0
    burndown_rate: float = 1.0
    smooth_requests: bool = True
    rps: int = 0
    smoothing_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.burndown_rate < 0:
            raise ValueError("burndown_rate must be >= 0")
        if self.rps is not None and self.rps < 0:
            raise ValueError("rps must be >= 0")
        if self.smoothing_interval <= 0:
            raise ValueError("smoothing_interval must be > 0")

    @property
    def is_split_mode(self) -> bool:
        """Whether input or output tokens have limits of their own."""
        return self.input_tpm > 0 or self.output_tpm > 0

    @property
    def has_combined_limit(self) -> bool:
        """Whether combined tokens have a limit."""
        return self.tpm > 0

    @property
    def is_smoothing_enabled(self) -> bool:
        """Whether requests are spaced (``smooth_requests`` or ``rps > 0``)."""
        return (self.rps or 0) > 0 or self.smooth_requests

    @property
    def effective_rps(self) -> float:
        """The requests per second of the spacing, 0 when it is off."""
        if (self.rps or 0) > 0:
            return float(self.rps)
        if self.smooth_requests and self.rpm > 0:
            return self.rpm / 60.0
        return 0.0


@dataclass
class AcquireResult:
    """What ``acquire`` returns (tollgate returns a :class:`tollgate.Permit`,
    a subclass with these fields).

    Attributes:
        slot_time: When the request was scheduled to start (Unix seconds, on
            Redis's clock).
        wait_time: Seconds the caller waited for it.
        queue_position: Requests of its class queued ahead of it (0 if none).
        record_id: Identifies the reservation for ``adjust``; any process
            sharing the Redis can adjust it, once.
    """

    slot_time: float
    wait_time: float
    queue_position: int
    record_id: str


@dataclass
class RateLimitStatus:
    """A key's usage and limits, as llmratelimiter's ``get_status`` gives them.

    tollgate keeps a token bucket per limit, not a log of the window's
    requests, so each ``*_used`` is what the bucket holds charged right now:
    the charges of the last window less what has refilled since, including
    the reservations queued for later slots. It falls continuously as time
    passes (a sliding log drops each request whole once it is one window
    old). ``limit - used`` is what could start at once. Where ``tpm`` is set,
    ``tokens_used`` counts ``input + burndown × output`` (llmratelimiter
    counts ``input + output``); without it, the sum of the input and output
    buckets. ``queue_depth`` counts reservations waiting for their slot.
    Limits left out are 0.
    """

    model: str
    window_seconds: int
    tokens_used: int = 0
    tokens_limit: int = 0
    input_tokens_used: int = 0
    input_tokens_limit: int = 0
    output_tokens_used: int = 0
    output_tokens_limit: int = 0
    requests_used: int = 0
    requests_limit: int = 0
    queue_depth: int = 0


SplitRateLimitStatus = RateLimitStatus
