"""Type stubs of the native module (Rust, pyo3). Applications use the
classes of ``tollgate`` itself; these are what they are built on."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

TOKEN_LIFETIME: float

_Settled = Tuple[List[float], List[float]]
_StatusRow = Tuple[str, int, List[Tuple[str, int, float, float, float, float]]]

class Bridge:
    """Hands outcomes of the runtime's tasks to one event loop's futures."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> None: ...

class Task:
    """A running call behind an asyncio future."""

    def cancel(self) -> None: ...

class NativePermit:
    """A granted permit."""

    id: int
    slot: float
    waited: float
    queue_position: int
    source: str
    class_: int
    estimate: List[float]
    @property
    def store_reachable(self) -> bool: ...
    @property
    def open(self) -> bool: ...
    def token(self) -> str: ...

class Limiter:
    """One limiter of one key."""

    @staticmethod
    def connect(
        url: str,
        key: str,
        *,
        rpm: int = 0,
        tpm: int = 0,
        input_tpm: int = 0,
        output_tpm: int = 0,
        window: float = 60.0,
        burst: float = 1.0,
        burndown: float = 1.0,
        max_wait: Optional[float] = None,
        max_queue: Optional[int] = None,
        outage: str = "open",
        local_share: float = 1.0,
        classes: Optional[Sequence[Tuple[float, Optional[float]]]] = None,
        retry: Optional[Tuple[int, float, float, float, float]] = None,
        lease: float = 2.0,
        margin: float = 0.0,
        ca_cert: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        insecure: bool = False,
        key_prefix: Optional[str] = None,
        connect_timeout: Optional[float] = None,
        response_timeout: Optional[float] = None,
        replace_stored_limits: bool = False,
    ) -> "Limiter": ...
    @property
    def key(self) -> str: ...
    def acquire(
        self,
        bridge: Bridge,
        fut: Any,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        priority: int = 0,
        max_wait: Optional[float] = None,
    ) -> Task: ...
    def acquire_blocking(
        self,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        priority: int = 0,
        max_wait: Optional[float] = None,
    ) -> NativePermit: ...
    def settle(
        self,
        bridge: Bridge,
        fut: Any,
        permit: NativePermit,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        cancel: bool = False,
    ) -> Task: ...
    def settle_blocking(
        self,
        permit: NativePermit,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        cancel: bool = False,
    ) -> _Settled: ...
    def settle_token(
        self,
        bridge: Bridge,
        fut: Any,
        token: str,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        cancel: bool = False,
    ) -> Task: ...
    def settle_token_blocking(
        self,
        token: str,
        tokens: Optional[int] = None,
        input_tokens: Optional[int] = None,
        output_tokens: Optional[int] = None,
        cancel: bool = False,
    ) -> _Settled: ...
    def status(self, bridge: Bridge, fut: Any) -> Task: ...
    def status_blocking(self) -> _StatusRow: ...
    def stats(self) -> Dict[str, int]: ...
    def redis_keys(self) -> Optional[List[str]]: ...
