"""tollgate: keep LLM API traffic inside its limits.

A FIFO rate limiter shared through Redis by every process on the same key
(Python and Rust alike), with settlement of the real usage afterwards. It
takes llmratelimiter's calls unchanged apart from the import line::

    from tollgate import RateLimiter

    limiter = RateLimiter("redis://localhost:6379", "gpt-4", tpm=100_000, rpm=100)
    result = await limiter.acquire(input_tokens=3000, output_tokens=2000)
    response = await openai.chat.completions.create(...)
    await limiter.adjust(result.record_id, actual_output=response.usage.completion_tokens)

and adds tollgate's own::

    async with limiter.limit(input_tokens=3000, output_tokens=2000) as permit:
        response = await openai.chat.completions.create(...)
        permit.record(response)          # settled with response.usage on leaving

:class:`SyncRateLimiter` is the same for code without asyncio.
"""

from ._config import AcquireResult, RateLimitConfig, RateLimitStatus, RetryConfig, SplitRateLimitStatus
from ._connection import RedisConnectionManager
from ._errors import (
    ConfigError,
    LimitsConflict,
    QueueFull,
    RateLimited,
    StoreError,
    StoreUnavailable,
    TokenError,
    TollgateError,
    TooLarge,
)
from ._limiter import DimensionStatus, Permit, RateLimiter, Settlement, Status, SyncRateLimiter

__all__ = [
    "AcquireResult",
    "ConfigError",
    "DimensionStatus",
    "LimitsConflict",
    "Permit",
    "QueueFull",
    "RateLimitConfig",
    "RateLimitStatus",
    "RateLimited",
    "RateLimiter",
    "RedisConnectionManager",
    "RetryConfig",
    "Settlement",
    "SplitRateLimitStatus",
    "Status",
    "StoreError",
    "StoreUnavailable",
    "SyncRateLimiter",
    "TokenError",
    "TollgateError",
    "TooLarge",
]

__version__ = "0.1.0"
