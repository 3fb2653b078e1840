"""The exceptions tollgate raises. Every message says what to do."""

from __future__ import annotations

from typing import Any, Optional


class TollgateError(Exception):
    """Base class of every tollgate error."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        for name, value in attrs.items():
            setattr(self, name, value)


class RateLimited(TollgateError):
    """The slot lies further away than the allowed wait (``max_wait``);
    nothing was reserved.

    Attributes:
        retry_after: Seconds until the request could start.
        max_wait: The wait the caller allowed, seconds.
    """

    retry_after: float = 0.0
    max_wait: float = 0.0


class QueueFull(RateLimited):
    """The key's queue is at its cap (``max_queue``); nothing was reserved.
    ``retry_after`` says when the request could start."""


class TooLarge(TollgateError, ValueError):
    """The request can never fit the bucket (its cost exceeds ``burst × limit``);
    nothing was reserved. The message names the setting to raise."""


class StoreUnavailable(TollgateError):
    """Redis could not be reached after the retries.

    From ``acquire``: the outage policy ``closed`` refused the call
    (``policy == "closed"``). From ``settle``, ``cancel`` and ``status``, which
    no outage policy covers, whatever the policy (``policy is None``).
    """

    policy: Optional[str] = None


class LimitsConflict(TollgateError):
    """Another limiter recorded other limits for this key in the store; give
    every limiter of a key the same limits, or pass
    ``replace_stored_limits=True`` when changing them on purpose."""


class TokenError(TollgateError, ValueError):
    """A permit or record id that cannot be settled: settled already, expired
    (older than an hour), malformed, or of another key."""


class StoreError(TollgateError):
    """Redis answered with an error that retrying will not fix (a wrong
    password, a refused script)."""


class ConfigError(TollgateError, ValueError):
    """A setting or a cost that is not valid; the message names it."""


__all__ = [
    "ConfigError",
    "LimitsConflict",
    "QueueFull",
    "RateLimited",
    "StoreError",
    "StoreUnavailable",
    "TokenError",
    "TollgateError",
    "TooLarge",
]
