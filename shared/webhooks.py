"""Standard Webhooks (v1) signing, both ways: our events to the hub, and the hub's calls to `handoff_hub`.

https://www.standardwebhooks.com/ : the signed content is `<webhook-id>.<webhook-timestamp>.<raw body>`, the
signature HMAC-SHA256 with the secret's bytes, base64, sent as `v1,<base64>`; several signatures may stand in
one header, separated by spaces (we sign with the current secret and, during a rotation, the previous one).
A hub signs and verifies with the Standard Webhooks library of its own language; the tests prove both
directions against the `standardwebhooks` package.

The app does its own signing with the standard library (no dependency at run time). Stdlib only, no storage
or HTTP: cheap to import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
TOLERANCE_SECONDS = 300
MAX_WEBHOOK_ID_LENGTH = 200
# Unix seconds have 10 digits until the year 2286; 12 leaves room and keeps `int()` trivially cheap.
_MAX_TIMESTAMP_DIGITS = 12
_SIGNATURE_VERSION = "v1"
# base64 of a 32-byte HMAC-SHA256 digest, padded: anything else cannot match and is skipped before decoding.
_SIGNATURE_B64_LENGTH = 44

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class WebhookSecret:
    """The key bytes of a `whsec_...` secret. Its repr and str never show them."""

    __slots__ = ("_key",)

    def __init__(self, value: str) -> None:
        """`value` is `whsec_` + base64 of at least 24 bytes; ValueError otherwise (the value is not echoed)."""
        if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
            raise ValueError(f"A webhook secret must be '{SECRET_PREFIX}' followed by base64 of at least {MIN_SECRET_BYTES} bytes.")
        try:
            key = base64.b64decode(value[len(SECRET_PREFIX) :].strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"A webhook secret must be '{SECRET_PREFIX}' followed by valid base64 of at least {MIN_SECRET_BYTES} bytes.")
        self._key = key

    @property
    def key(self) -> bytes:
        return self._key

    def digest(self, signed_content: bytes) -> bytes:
        return hmac.new(self._key, signed_content, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "WebhookSecret(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WebhookSecret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash((WebhookSecret, hashlib.sha256(self._key).digest()))


def hub_secrets(current: str | None, previous: str | None = None) -> tuple[WebhookSecret, ...]:
    """The secrets of the settings `HANDOFF_HUB_SECRET` and `HANDOFF_HUB_SECRET_PREVIOUS`: current first."""
    return tuple(WebhookSecret(value) for value in (current, previous) if value)


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """A call whose signature matched: `id` is its `webhook-id` (not yet checked for format), `timestamp` unix s."""

    id: str
    timestamp: int


class WebhookRejected(Exception):
    """The call is not signed as it must be. `reason` is for the log (it never contains a secret or a
    signature); the caller is answered 401 with a generic message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _signed_content(webhook_id: str, timestamp: str, body: bytes) -> bytes:
    return b"%s.%s.%s" % (webhook_id.encode("utf-8"), timestamp.encode("ascii"), body)


def sign(secrets: Sequence[WebhookSecret], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64>` per secret, space-separated, in the given order."""
    if not secrets:
        raise ValueError("sign() needs at least one secret.")
    content = _signed_content(webhook_id, str(int(timestamp)), body)
    return " ".join(f"{_SIGNATURE_VERSION},{base64.b64encode(secret.digest(content)).decode('ascii')}" for secret in secrets)


def outbound_headers(secrets: Sequence[WebhookSecret], webhook_id: str, body: bytes, *, now: float) -> dict[str, str]:
    """Headers of one delivery attempt: a fresh timestamp, the signature only when a secret is configured."""
    timestamp = int(now)
    headers = {
        HEADER_ID: webhook_id,
        HEADER_TIMESTAMP: str(timestamp),
        "Content-Type": "application/json",
    }
    if secrets:
        headers[HEADER_SIGNATURE] = sign(secrets, webhook_id, timestamp, body)
    return headers


def valid_webhook_id(value: object) -> bool:
    """The contract's `webhook-id` format: 1 to 200 printable ASCII characters, no space."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_WEBHOOK_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def verify(secrets: Sequence[WebhookSecret], headers: Mapping[str, str], body: bytes, *, now: float) -> VerifiedWebhook:
    """Check a signed call; raises `WebhookRejected` and nothing else, whatever the headers and body are."""
    try:
        return _verify(secrets, headers, body, now)
    except WebhookRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: bad input is refused, never a 500
        raise WebhookRejected(f"unreadable signature headers ({type(exc).__name__})") from None


def _verify(secrets: Sequence[WebhookSecret], headers: Mapping[str, str], body: bytes, now: float) -> VerifiedWebhook:
    if not secrets:
        raise WebhookRejected("no webhook secret is configured")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise WebhookRejected("the body is not bytes")
    found = _headers(headers)
    webhook_id = found.get(HEADER_ID)
    timestamp_text = found.get(HEADER_TIMESTAMP)
    signature_header = found.get(HEADER_SIGNATURE)
    for name, value in ((HEADER_ID, webhook_id), (HEADER_TIMESTAMP, timestamp_text), (HEADER_SIGNATURE, signature_header)):
        if not value:
            raise WebhookRejected(f"the {name} header is missing or empty")
    assert webhook_id is not None and timestamp_text is not None and signature_header is not None

    # str.isdigit() accepts other scripts' digits (e.g. Arabic-Indic); only ASCII 0-9 is an integer here.
    if not (len(timestamp_text) <= _MAX_TIMESTAMP_DIGITS and timestamp_text.isascii() and timestamp_text.isdigit()):
        raise WebhookRejected("the webhook-timestamp header is not an integer number of unix seconds")
    timestamp = int(timestamp_text)
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        direction = "old" if timestamp < now else "far in the future"
        raise WebhookRejected(f"the webhook-timestamp is too {direction} ({int(now - timestamp)} s from now; at most {TOLERANCE_SECONDS} s)")

    try:
        content = _signed_content(webhook_id, timestamp_text, bytes(body))
    except UnicodeEncodeError:
        raise WebhookRejected("the webhook-id header cannot be encoded as UTF-8") from None
    expected = [secret.digest(content) for secret in secrets]
    matched = False
    for entry in signature_header.split(" "):
        version, comma, encoded = entry.partition(",")
        if not comma or version != _SIGNATURE_VERSION or len(encoded) != _SIGNATURE_B64_LENGTH:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        for digest in expected:
            # Every candidate is compared with every secret, so the time taken says nothing about which matched.
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise WebhookRejected("no v1 signature in webhook-signature matches a configured secret")
    return VerifiedWebhook(id=webhook_id, timestamp=timestamp)


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The three Standard Webhooks headers, looked up case-insensitively; values that are not strings count as absent."""
    wanted = (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)
    found: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(key, str) and isinstance(value, str):
            name = key.lower()
            if name in wanted:
                found[name] = value
    return found
