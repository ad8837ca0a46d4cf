"""Outbound HTTP with bounded retries: capped exponential backoff, full jitter, `Retry-After` honoured.

Everything runs against a `Deadline`, so that a slow dependency turns into a timely 503 rather than
a request that outlives its caller (Teams gives up on an invoke after 15 seconds).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Deadline:
    """A point in time that every outbound call of one request must finish by."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 2.0
    attempt_timeout: float = 3.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class Unavailable(Exception):
    """Every attempt failed with a retryable outcome; `retry_after` is the server's advice, if it gave one."""

    def __init__(self, reason: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


def send(
    client: httpx.Client,
    build: Callable[[], httpx.Request],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    what: str,
) -> httpx.Response:
    """Send until a non-retryable answer (returned, 2xx or not) or the attempts/deadline run out (Unavailable)."""
    import httpx

    reason = "not attempted: no time left"
    retry_after: float | None = None
    status: int | None = None
    for attempt in range(policy.attempts):
        left = deadline.remaining()
        if left < 0.05:
            break
        timeout = min(policy.attempt_timeout, left)
        try:
            request = build()
            request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
            response = client.send(request)
        except httpx.TimeoutException:
            reason, retry_after, status = "timed out", None, None
        except httpx.TransportError as exc:
            reason, retry_after, status = f"connection failed ({type(exc).__name__})", None, None
        else:
            if response.status_code not in RETRYABLE_STATUS:
                return response
            status = response.status_code
            reason, retry_after = f"HTTP {status}", parse_retry_after(response.headers.get("retry-after"))
            response.close()
        if attempt + 1 == policy.attempts:
            break
        delay = max(policy.backoff(attempt), retry_after or 0.0)
        if delay >= deadline.remaining():
            break  # the server asks for more time than we have: give up now and pass its advice on
        log.info("%s: %s, retrying in %.2fs", what, reason, delay)
        time.sleep(delay)
    raise Unavailable(f"{what}: {reason}", retry_after=retry_after, status=status)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def shared_client(name: str) -> httpx.Client:
    """One pooled client per purpose and process: connections are reused across requests."""
    client = _clients.get(name)
    if client is None:
        import httpx

        client = httpx.Client(
            timeout=httpx.Timeout(3.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=False,
            trust_env=False,
        )
        with _clients_lock:
            client = _clients.setdefault(name, client)
    return client
