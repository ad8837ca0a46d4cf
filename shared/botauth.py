"""Inbound Bot Framework authentication, as strict as the strictest reference SDK.

Two steps, in the contract's order: `verify_token` checks the JWT itself (signature with a key from the
OpenID metadata, RS256 only, issuer, audience, lifetime with 300 s leeway, `exp` required) before the body
is read; `authorize_activity` then checks its claims against the activity (`serviceurl`, the key's
channel endorsements, the allowed serviceUrl hosts). Every failure is `Unauthorized`; the reason goes to
the log only, never to the caller, and never includes the token.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.errors import ServiceUnavailable, Unauthorized

if TYPE_CHECKING:
    import httpx

    from shared.activities import Activity

log = logging.getLogger(__name__)

ISSUER = "https://api.botframework.com"
ALGORITHM = "RS256"
LEEWAY_SECONDS = 300
KEYS_MAX_AGE = 24 * 3600.0  # refreshed at least daily
UNKNOWN_KID_REFRESH_INTERVAL = 60.0  # an unknown kid triggers at most one refresh a minute
FETCH_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: Any  # a cryptography RSA public key
    endorsements: tuple[str, ...] | None  # None: the key lists no endorsements (accepted, as the service ships such keys)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: dict[str, Any]
    endorsements: tuple[str, ...] | None


class OpenIdKeys:
    """Signing keys from OpenID metadata -> `jwks_uri`, cached and refreshed by one thread at a time."""

    def __init__(
        self,
        metadata_url: str,
        *,
        client: httpx.Client,
        max_age: float = KEYS_MAX_AGE,
        unknown_kid_interval: float = UNKNOWN_KID_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metadata_url = metadata_url
        self._client = client
        self._max_age = max_age
        self._unknown_kid_interval = unknown_kid_interval
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful refresh
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._generation = 0
        self._lock = threading.Lock()

    def find(self, kid: str) -> SigningKey | None:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at > self._max_age:
            self._refresh(self._generation, required=not self._keys)
        key = self._keys.get(kid)
        if key is None and (self._attempted_at is None or self._clock() - self._attempted_at >= self._unknown_kid_interval):
            self._refresh(self._generation, required=False)
            key = self._keys.get(kid)
        return key

    def _refresh(self, seen_generation: int, *, required: bool) -> None:
        with self._lock:
            if self._generation != seen_generation:
                return  # another request refreshed while this one waited: share its result
            self._attempted_at = self._clock()
            try:
                keys = self._fetch()
            except Exception as exc:  # noqa: BLE001 - any failure to fetch keys is the same outage to us
                log.warning("Bot Framework OpenID keys could not be fetched: %s", type(exc).__name__)
                if required:
                    raise ServiceUnavailable(
                        "The Bot Framework signing keys could not be fetched; retry shortly.", code="keys_unavailable"
                    ) from exc
                return
            self._keys = keys
            self._fetched_at = self._attempted_at
            self._generation += 1

    def _fetch(self) -> dict[str, SigningKey]:
        import jwt

        metadata = self._client.get(self._metadata_url, timeout=FETCH_TIMEOUT)
        metadata.raise_for_status()
        jwks_uri = metadata.json()["jwks_uri"]
        response = self._client.get(jwks_uri, timeout=FETCH_TIMEOUT)
        response.raise_for_status()
        keys: dict[str, SigningKey] = {}
        for jwk in response.json().get("keys", []):
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
                continue
            try:
                public_key = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
            except jwt.PyJWKError:
                continue
            endorsements = jwk.get("endorsements")
            keys[jwk["kid"]] = SigningKey(
                key=public_key,
                endorsements=tuple(e for e in endorsements if isinstance(e, str)) if isinstance(endorsements, list) else None,
            )
        if not keys:
            raise ValueError("the JWKS document holds no usable RSA key")
        return keys


def verify_token(authorization: str | None, *, app_id: str, keys: OpenIdKeys) -> VerifiedToken:
    """The JWT itself: Bearer scheme, RS256, known key, signature, issuer, audience, lifetime."""
    import jwt

    if not authorization:
        raise Unauthorized("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization is not a Bearer token")
    if not app_id:
        raise Unauthorized("MicrosoftAppId is empty, so no audience can match")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("the bearer token is not a JWT") from exc
    if header.get("alg") != ALGORITHM:
        raise Unauthorized(f"JWT alg {str(header.get('alg'))[:16]!r} is not {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("JWT header has no kid")
    signing_key = keys.find(kid)
    if signing_key is None:
        raise Unauthorized("JWT signed with a key not in the Bot Framework OpenID metadata")
    try:
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=[ALGORITHM],
            audience=app_id,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud"], "verify_signature": True},
        )
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"JWT rejected ({type(exc).__name__})") from exc
    return VerifiedToken(claims=claims, endorsements=signing_key.endorsements)


def authorize_activity(token: VerifiedToken | None, activity: Activity, *, allowed_hosts: tuple[str, ...]) -> None:
    """The token's claims against the activity; `token` is None only when auth is disabled for development."""
    if token is not None:
        claimed = token.claims.get("serviceurl")
        if not isinstance(claimed, str) or not activity.service_url:
            raise Unauthorized("JWT has no serviceurl claim or the activity no serviceUrl")
        if claimed.rstrip("/") != activity.service_url.rstrip("/"):
            raise Unauthorized("JWT serviceurl claim does not match the activity's serviceUrl")
        if token.endorsements is not None and (not activity.channel_id or activity.channel_id not in token.endorsements):
            raise Unauthorized("the signing key does not endorse the activity's channel")
    check_service_url(activity.service_url, allowed_hosts)


def check_service_url(service_url: str | None, allowed_hosts: tuple[str, ...]) -> None:
    """Only allowed hosts ever receive a bot token: https, or http on a loopback host for local development."""
    if not service_url:
        raise Unauthorized("the activity has no serviceUrl")
    try:
        parts = urlsplit(service_url)
        host = (parts.hostname or "").lower()
        _ = parts.port
    except ValueError as exc:
        raise Unauthorized("the activity's serviceUrl is not a URL") from exc
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(host)):
        raise Unauthorized("the activity's serviceUrl is not https")
    if not any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts):
        raise Unauthorized("the activity's serviceUrl host is not in HANDOFF_ALLOWED_SERVICE_URL_HOSTS")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_keysets: dict[str, OpenIdKeys] = {}
_keysets_lock = threading.Lock()


def keys_for(metadata_url: str, *, client: httpx.Client) -> OpenIdKeys:
    """One key cache per metadata URL and process, shared by all requests."""
    keys = _keysets.get(metadata_url)
    if keys is None:
        with _keysets_lock:
            keys = _keysets.setdefault(metadata_url, OpenIdKeys(metadata_url, client=client))
    return keys
