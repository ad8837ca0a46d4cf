"""Outbound HTTP with bounded retries: capped exponential backoff, full jitter, `Retry-After` honoured.

Everything runs against a `Deadline`, so that a slow dependency turns into a timely 503 rather than
a request that outlives its caller (Teams gives up on an invoke after 15 seconds).

Every outbound response is bounded in total time and in size, not per read: httpx's timeouts apply to
each socket operation, so a server that drips its headers or body one byte a second would never time out.
`send` sets a per-thread end time that the transport of `shared_client` clamps every connect, TLS handshake,
write and read to, and it reads the body itself, stopping past `max_bytes`. What it returns is an
`httpx.Response` whose body is already in memory (at most `max_bytes`; see `body_was_cut`).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Connector, token endpoint and hub answers are small JSON documents; a JWKS document is larger.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_KEYS_RESPONSE_BYTES = 1024 * 1024
# Once the headers are in, a small JSON body follows at once; one that takes longer is not waited for (a 2xx
# still counts: the server has acted), so a dripping server costs a second per call, not the whole deadline.
BODY_SECONDS = 1.0
RETRY_AFTER_MAX_SECONDS = 3600.0
_CHUNK = 16 * 1024
_CUT = "handoff.body_cut"  # response extension: the body was not read whole (too large, too slow, or encoded)


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
    max_bytes: int = MAX_RESPONSE_BYTES,
    body_seconds: float = BODY_SECONDS,
) -> httpx.Response:
    """Send until a non-retryable answer (returned, 2xx or not) or the attempts/deadline run out (Unavailable).

    Each attempt, from connecting to the last byte of the body, ends by min(attempt_timeout, the deadline),
    and the body must follow the headers within `body_seconds`. A non-retryable answer whose body is too large
    or too slow is returned with an empty body (`body_was_cut`): its status stands, since the server has decided.
    """
    import httpx

    reason = "not attempted: no time left"
    retry_after: float | None = None
    status: int | None = None
    for attempt in range(policy.attempts):
        left = deadline.remaining()
        if left < 0.05:
            break
        budget = min(policy.attempt_timeout, left)
        try:
            request = build()
            request.headers["Accept-Encoding"] = "identity"  # no decompression bombs: we read bytes as sent
            request.extensions["timeout"] = httpx.Timeout(budget).as_dict()
            response = _attempt(client, request, budget, max_bytes, body_seconds)
        except httpx.TimeoutException:
            reason, retry_after, status = "timed out", None, None
        except httpx.TransportError as exc:
            reason, retry_after, status = f"connection failed ({type(exc).__name__})", None, None
        else:
            if response.status_code not in RETRYABLE_STATUS:
                return response
            status = response.status_code
            reason, retry_after = f"HTTP {status}", parse_retry_after(response.headers.get("retry-after"))
        if attempt + 1 == policy.attempts:
            break
        delay = max(policy.backoff(attempt), retry_after or 0.0)
        if delay >= deadline.remaining():
            break  # the server asks for more time than we have: give up now and pass its advice on
        log.info("%s: %s, retrying in %.2fs", what, reason, delay)
        time.sleep(delay)
    raise Unavailable(f"{what}: {reason}", retry_after=retry_after, status=status)


def _attempt(client: httpx.Client, request: httpx.Request, budget: float, max_bytes: int, body_seconds: float) -> httpx.Response:
    """One exchange within `budget` seconds in total; the body read in memory, at most `max_bytes` of it."""
    import httpx

    end = time.monotonic() + budget
    previous = getattr(_bound, "end", None)
    _bound.end = end if previous is None else min(end, previous)
    try:
        streamed = client.send(request, stream=True)
        try:
            if streamed.status_code in RETRYABLE_STATUS:
                body, cut = b"", True  # retried or given up: its body is not needed
            else:
                body_end = min(end, time.monotonic() + body_seconds)
                _bound.end = body_end if previous is None else min(body_end, previous)
                body, cut = _read_bounded(streamed, body_end, max_bytes)
        finally:
            streamed.close()
    finally:
        _bound.end = previous
    headers = [(k, v) for k, v in streamed.headers.raw if k.lower() not in (b"content-encoding", b"transfer-encoding", b"content-length")]
    return httpx.Response(streamed.status_code, headers=headers, content=body, request=request, extensions={_CUT: cut})


def _read_bounded(response: httpx.Response, end: float, max_bytes: int) -> tuple[bytes, bool]:
    import httpx

    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return b"", True  # we asked for identity; an encoded body is not read (its decoded size is unknown)
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > max_bytes):
        return b"", True
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_raw(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                return b"", True
            chunks.append(chunk)
            if time.monotonic() >= end:
                return b"", True
    except httpx.TimeoutException:
        return b"", True
    except httpx.TransportError:
        return b"", True
    return b"".join(chunks), False


def body_was_cut(response: httpx.Response) -> bool:
    """True when `send` did not read the body whole: larger than its cap, slower than the deadline, or encoded."""
    return bool(response.extensions.get(_CUT))


def json_body(response: httpx.Response) -> Any:
    """The response's JSON document, or None when the body was cut, empty, or not JSON (HTML, garbage...)."""
    from pydantic_core import from_json

    if body_was_cut(response) or not response.content:
        return None
    try:
        return from_json(response.content, allow_inf_nan=False)
    except ValueError:
        return None


_RETRY_AFTER_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), clamped to 0..3600; None when absent or malformed.

    Strict: ASCII digits only (`²` and other Unicode digits are not numbers here), no sign, no fraction,
    and a date must parse as one; nothing from the header can raise.
    """
    if not value or not isinstance(value, str):
        return None
    value = value.strip()
    if _RETRY_AFTER_SECONDS.fullmatch(value):
        digits = value.lstrip("0")
        return RETRY_AFTER_MAX_SECONDS if len(digits) > 6 else min(float(digits or "0"), RETRY_AFTER_MAX_SECONDS)
    if len(value) > 64 or not value.isascii() or not value.isprintable():
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
        seconds = moment.timestamp() - time.time()
    except (TypeError, ValueError, OverflowError, IndexError, AttributeError):
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_SECONDS)


# --------------------------------------------------------------------------------------------------
# The transport: every socket operation clamped to the end time `send` set for this thread.

_bound = threading.local()


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    end = getattr(_bound, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the response did not arrive within the deadline")
    return left if timeout is None else min(timeout, left)


def _bounded_backend() -> Any:
    import httpcore

    class BoundedStream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream) -> None:
            self._inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self._inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
            return BoundedStream(self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)))

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    class BoundedBackend(httpcore.NetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore.SyncBackend()

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                        socket_options: Any = None) -> httpcore.NetworkStream:
            stream = self._inner.connect_tcp(host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options)
            return BoundedStream(stream)

        def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
            return BoundedStream(self._inner.connect_unix_socket(path, _clamp(timeout, httpcore.ConnectTimeout), socket_options))

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    return BoundedBackend()


def _bounded_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's transport with a connection pool whose network backend honours `send`'s end time."""
    import ssl

    import certifi
    import httpcore
    import httpx

    transport = httpx.HTTPTransport(limits=limits, trust_env=False)
    if hasattr(transport, "_pool"):  # httpx 0.27 / 0.28: the pool is the one place a network backend plugs in
        transport._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_bounded_backend(),
        )
    return transport


_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def shared_client(name: str) -> httpx.Client:
    """One pooled client per purpose and process: connections are reused across requests."""
    client = _clients.get(name)
    if client is None:
        import httpx

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        client = httpx.Client(
            timeout=httpx.Timeout(3.0),
            limits=limits,
            transport=_bounded_transport(limits),
            follow_redirects=False,
            trust_env=False,
        )
        with _clients_lock:
            client = _clients.setdefault(name, client)
    return client
