"""Inbound Bot Framework authentication, as strict as the strictest reference SDK.

Two steps, in the contract's order: `verify_token` checks the JWT itself (signature with a key from the
OpenID metadata, RS256 only, issuer, audience, lifetime with 300 s leeway, `exp` required) before the body
is read; `authorize_activity` then checks its claims against the activity (`serviceurl`, the key's
channel endorsements, the allowed serviceUrl hosts). Every failure is `Unauthorized`: its reason names the
check in fixed words and goes to the log (with what came from outside, escaped); the caller sees a generic
message, except while HANDOFF_AUTH_DISABLED=true, when a refused serviceUrl names its check in the answer.
Never the token, never input, in either.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import ServiceUnavailable, Unauthorized
from shared.logsafe import clean
from shared.outbound import Deadline, RetryPolicy

if TYPE_CHECKING:
    import httpx

    from shared.activities import Activity

log = logging.getLogger(__name__)

ISSUER = "https://api.botframework.com"
ALGORITHM = "RS256"
LEEWAY_SECONDS = 300
KEYS_MAX_AGE = 24 * 3600.0  # refreshed at least daily
UNKNOWN_KID_REFRESH_INTERVAL = 60.0  # an unknown kid triggers at most one refresh a minute
FETCH_BUDGET = 5.0  # metadata + JWKS, in total, per refresh
KEYS_WAIT = 6.0  # longest a request waits for keys it does not have (a cold instance, an unknown kid)
FAILURE_BACKOFF = (2.0, 60.0)  # after a failed refresh: first delay, cap (doubling in between)
MAX_SERVICE_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: Any  # a cryptography RSA public key
    # None: the key lists no endorsements (accepted, as the service ships such keys); a tuple: the channels it
    # endorses. An `endorsements` that is present but not a list endorses nothing (the empty tuple).
    endorsements: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: dict[str, Any]
    endorsements: tuple[str, ...] | None


class OpenIdKeys:
    """Signing keys from OpenID metadata -> `jwks_uri`, cached, refreshed by one fetch at a time.

    - A request whose key is cached never waits: if the keys are older than a day it starts a refresh in the
      background and goes on with the cached key.
    - A request whose key is not cached (a cold instance, a rotated key, a junk `kid`) starts a refresh when one
      is allowed (an unknown kid: at most once a minute) or joins the one running, and waits for its result at
      most until its deadline (and `KEYS_WAIT`): all waiters share one fetch and one result.
    - A failed refresh keeps the cached keys and is not retried before a backoff (2 s doubling to 60 s), so a
      hanging metadata endpoint costs one fetch per backoff period, not one per request. A cold instance with
      no keys answers 503 (`keys_unavailable`) meanwhile.
    - Every fetch is bounded in total time (`FETCH_BUDGET`) and size (`shared.outbound.send`).
    """

    def __init__(
        self,
        metadata_url: str,
        *,
        client: httpx.Client,
        max_age: float | None = None,
        unknown_kid_interval: float = UNKNOWN_KID_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metadata_url = metadata_url
        self._client = client
        self._max_age = KEYS_MAX_AGE if max_age is None else max_age
        self._unknown_kid_interval = unknown_kid_interval
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful refresh
        self._attempted_at: float | None = None  # start of the last attempt, successful or not
        self._failures = 0  # failed refreshes in a row
        self._retry_at: float | None = None  # no new attempt before this, after a failure
        self._running: threading.Event | None = None  # set when the refresh in flight is over
        self._lock = threading.Lock()  # guards the fields above; never held while fetching

    def find(self, kid: str, deadline: Deadline | None = None) -> SigningKey | None:
        """The key `kid` names, or None when the metadata does not publish it; ServiceUnavailable when no key
        is known at all and none could be fetched in time."""
        key = self._keys.get(kid)
        if key is not None:
            if self._stale():
                self._start(background=True)
            return key
        done = self._start(background=True, unknown_kid=bool(self._keys))
        if done is not None:
            wait = min(KEYS_WAIT, deadline.remaining() if deadline is not None else KEYS_WAIT)
            done.wait(max(0.0, wait))
        key = self._keys.get(kid)
        if key is None and not self._keys:
            retry_after = 5
            if self._retry_at is not None:
                retry_after = max(1, min(60, math.ceil(self._retry_at - self._clock())))
            raise ServiceUnavailable(
                "The Bot Framework signing keys could not be fetched; retry shortly.", code="keys_unavailable", retry_after=retry_after
            )
        return key

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at > self._max_age

    def _start(self, *, background: bool, unknown_kid: bool = False) -> threading.Event | None:
        """Start a refresh if one is due and allowed, or join the running one; the event to wait on, or None."""
        with self._lock:
            if self._running is not None:
                return self._running
            now = self._clock()
            if self._retry_at is not None and now < self._retry_at:
                return None  # backing off after a failure
            if unknown_kid and not self._stale() and self._attempted_at is not None and now - self._attempted_at < self._unknown_kid_interval:
                return None  # an unknown kid refreshes at most once a minute
            self._attempted_at = now
            done = self._running = threading.Event()
        thread = threading.Thread(target=self._refresh, args=(done,), name="openid-keys-refresh", daemon=True)
        thread.start()
        return done

    def _refresh(self, done: threading.Event) -> None:
        try:
            keys = self._fetch(Deadline(FETCH_BUDGET))
        except Exception as exc:  # noqa: BLE001 - any failure to fetch keys is the same outage to us
            with self._lock:
                self._failures += 1
                first, cap = FAILURE_BACKOFF
                self._retry_at = self._clock() + min(cap, first * 2 ** (self._failures - 1))
                self._running = None
            log.warning(
                "Bot Framework OpenID keys could not be fetched (%s, failure %d in a row); cached keys: %d",
                clean(type(exc).__name__, 60), self._failures, len(self._keys),
            )
        else:
            with self._lock:
                self._keys = keys
                self._fetched_at = self._attempted_at
                self._failures = 0
                self._retry_at = None
                self._running = None
        finally:
            done.set()

    def _fetch(self, deadline: Deadline) -> dict[str, SigningKey]:
        import jwt

        from shared.outbound import MAX_KEYS_RESPONSE_BYTES, Unavailable, body_was_cut, json_body, send

        def get(url: str, max_bytes: int) -> Any:
            try:
                response = send(self._client, lambda: self._client.build_request("GET", url), policy=KEYS_POLICY,
                                deadline=deadline, what="Bot Framework OpenID keys", max_bytes=max_bytes,
                                body_seconds=FETCH_BUDGET / 2)
            except Unavailable as exc:
                raise KeysUnavailable(exc.reason) from exc
            if not response.is_success or body_was_cut(response):
                raise KeysUnavailable(f"HTTP {response.status_code}{' (body cut)' if body_was_cut(response) else ''}")
            return json_body(response)

        metadata = get(self._metadata_url, MAX_METADATA_BYTES)
        jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise KeysUnavailable("the OpenID metadata has no jwks_uri")
        document = get(jwks_uri, MAX_KEYS_RESPONSE_BYTES)
        listed = document.get("keys") if isinstance(document, dict) else None
        keys: dict[str, SigningKey] = {}
        for jwk in listed if isinstance(listed, list) else ():
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
                continue
            try:
                public_key = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
            except (jwt.PyJWKError, ValueError, TypeError):
                continue
            endorsements = jwk.get("endorsements")
            if "endorsements" not in jwk or endorsements is None:
                listed_endorsements = None
            elif isinstance(endorsements, list):
                listed_endorsements = tuple(e for e in endorsements if isinstance(e, str))
            else:
                listed_endorsements = ()  # present but not a list: endorses nothing
            keys[jwk["kid"]] = SigningKey(key=public_key, endorsements=listed_endorsements)
        if not keys:
            raise KeysUnavailable("the JWKS document holds no usable RSA key")
        return keys


class KeysUnavailable(Exception):
    pass


MAX_METADATA_BYTES = 64 * 1024


KEYS_POLICY = RetryPolicy(attempts=2, attempt_timeout=FETCH_BUDGET / 2)


def verify_token(authorization: str | None, *, app_id: str, keys: OpenIdKeys, deadline: Deadline | None = None) -> VerifiedToken:
    """The JWT itself: Bearer scheme, RS256, known key, signature, issuer, audience, lifetime.

    `deadline` bounds how long a request may wait for signing keys it does not have (see `OpenIdKeys.find`).
    """
    import jwt

    if not authorization:
        raise Unauthorized("there is no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header is not a Bearer token")
    if not app_id:
        raise Unauthorized("MicrosoftAppId is empty, so no audience can match")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise Unauthorized("the bearer token is not a JWT", detail=type(exc).__name__) from exc
    if header.get("alg") != ALGORITHM:
        raise Unauthorized(f"the JWT's alg is not {ALGORITHM}", detail=f"alg={clean(header.get('alg'), 40)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("the JWT header has no kid")
    signing_key = keys.find(kid, deadline)
    if signing_key is None:
        raise Unauthorized("the JWT is signed with a key not in the Bot Framework OpenID metadata", detail=f"kid={clean(kid, 80)}")
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
        raise Unauthorized("the JWT was rejected (signature, issuer, audience or lifetime)", detail=type(exc).__name__) from exc
    if claims.get("aud") != app_id:  # PyJWT accepts a list that contains the audience; the contract says aud == app id
        raise Unauthorized("the JWT's aud is not exactly MicrosoftAppId")
    return VerifiedToken(claims=claims, endorsements=signing_key.endorsements)


def authorize_activity(token: VerifiedToken | None, activity: Activity, *, allowed_hosts: tuple[str, ...]) -> None:
    """The token's claims against the activity; `token` is None only when auth is disabled for development,
    and then a refusal names its check in the answer (`Unauthorized.explained`)."""
    if token is not None:
        claimed = token.claims.get("serviceurl")
        if not isinstance(claimed, str) or not activity.service_url:
            raise Unauthorized("the JWT has no serviceurl claim or the activity no serviceUrl")
        if claimed.rstrip("/") != activity.service_url.rstrip("/"):
            raise Unauthorized("the JWT's serviceurl claim does not match the activity's serviceUrl")
        if token.endorsements is not None and (not activity.channel_id or activity.channel_id not in token.endorsements):
            raise Unauthorized("the signing key does not endorse the activity's channel", detail=f"channelId={clean(activity.channel_id, 60)}")
    try:
        check_service_url(activity.service_url, allowed_hosts)
    except Unauthorized as refused:
        if token is None:
            raise refused.explained() from None
        raise


_HOST_PORT = re.compile(r"(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class _ServiceUrl:
    scheme: str
    host: str  # lowercase, as httpx will connect to it (IPv6 without brackets)
    netloc: str
    path: str  # without the trailing slash


def _parse_service_url(service_url: object) -> _ServiceUrl:
    """The form checks of a serviceUrl, the way httpx will use it; Unauthorized naming the first one that fails."""
    if not isinstance(service_url, str) or not service_url:
        raise Unauthorized("the activity has no serviceUrl")
    if len(service_url) > MAX_SERVICE_URL_LENGTH:
        raise Unauthorized(f"the serviceUrl is longer than {MAX_SERVICE_URL_LENGTH} characters")
    if not service_url.isascii() or not service_url.isprintable() or " " in service_url or "\\" in service_url:
        raise Unauthorized("the serviceUrl contains spaces, control, backslash or non-ASCII characters")
    if "?" in service_url or "#" in service_url:
        raise Unauthorized("the serviceUrl has a query or a fragment")
    scheme, sep, rest = service_url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("https", "http"):
        raise Unauthorized("the serviceUrl is not an https URL")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        raise Unauthorized("the serviceUrl has userinfo (user@host)")
    match = _HOST_PORT.fullmatch(netloc.lower())
    if match is None:
        raise Unauthorized("the serviceUrl's host or port is malformed")
    host = match["host"].strip("[]")
    port = int(match["port"]) if match["port"] else None
    if host.startswith("[") or not host:
        raise Unauthorized("the serviceUrl has no host")
    bracketed = match["host"].startswith("[")
    if not bracketed:
        if not _is_ip(host) and not all(_LABEL.fullmatch(label) and _idna_ok(label) for label in host.split(".")):
            raise Unauthorized("the serviceUrl's host is not a valid DNS name")
    elif not _is_ip(host):
        raise Unauthorized("the serviceUrl's host is not a valid IP address")
    loopback = _is_loopback(host)
    if scheme != "https" and not (scheme == "http" and loopback):
        raise Unauthorized("the serviceUrl is not https")
    if port is not None and not (1 <= port <= 65535 and (loopback or port == 443)):
        raise Unauthorized("the serviceUrl has a port other than 443")
    path = "/" + path if slash else ""
    segments = path.split("/")
    if any(seg in (".", "..") or seg.replace("%2e", ".").replace("%2E", ".") in (".", "..") for seg in segments):
        raise Unauthorized("the serviceUrl's path has dot segments")
    if _PERCENT.search(path):
        raise Unauthorized("the serviceUrl's path has a malformed percent-encoding")
    import httpx

    try:
        parsed = httpx.URL(service_url)
        connects_to = parsed.raw_host.decode("ascii").lower()
    except Exception as exc:  # noqa: BLE001 - httpx.InvalidURL, idna's errors, UnicodeError: all mean "not a URL"
        raise Unauthorized("httpx cannot use the serviceUrl", detail=type(exc).__name__) from exc
    default_port = 443 if scheme == "https" else 80
    if (
        connects_to != host
        or parsed.scheme != scheme
        or (parsed.port or default_port) != (port or default_port)
        or parsed.raw_path.decode("ascii") != (path or "/")
    ):
        raise Unauthorized("the serviceUrl reads differently to httpx")
    return _ServiceUrl(scheme=scheme, host=host, netloc=netloc.lower(), path=path.rstrip("/"))


def service_url_base(service_url: str) -> str:
    """The serviceUrl without its trailing slash, after the form checks of `check_service_url` (not the allow-list)."""
    parsed = _parse_service_url(service_url)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"


def check_service_url(service_url: str | None, allowed_hosts: tuple[str, ...]) -> str:
    """The one check of every serviceUrl before a bot token goes to it (from an activity or a stored reference):
    at most 2048 printable ASCII characters, `https` (or `http` on a loopback host for local development), no
    userinfo, query, fragment, dot segment or port other than 443, a host that httpx reads the same way and that
    is in the allow-list. Returns the URL without its trailing slash; Unauthorized naming the failed check."""
    parsed = _parse_service_url(service_url)
    if not any(parsed.host == allowed or parsed.host.endswith("." + allowed) for allowed in allowed_hosts):
        raise Unauthorized("the serviceUrl host is not in HANDOFF_ALLOWED_SERVICE_URL_HOSTS")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"


def _idna_ok(label: str) -> bool:
    """An ASCII label; an `xn--` one must be valid punycode of a valid IDNA label (httpx would refuse it, or worse)."""
    if not label.startswith("xn--"):
        return True
    import idna

    try:
        idna.decode(label)
    except Exception:  # noqa: BLE001 - idna.IDNAError, UnicodeError: all mean "not a host name"
        return False
    return True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
