"""Outbound Bot Connector calls: send activities to a conversation with a bot token.

Tokens come from client credentials (`scope https://api.botframework.com/.default`) at `BOT_TOKEN_URL`,
or from a user-assigned managed identity, and are cached until five minutes before they expire, shared
by all requests of the process. Retries follow `shared.outbound`; a 4xx other than 408/429 is final
(`UpstreamRefused`, 502), anything retryable that outlasts the deadline is `ServiceUnavailable` (503).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from shared.errors import InvalidConversationId, ServiceUnavailable, UpstreamRefused
from shared.logsafe import clean
from shared.outbound import Deadline, RetryPolicy, Unavailable, body_was_cut, json_body, send

if TYPE_CHECKING:
    import httpx

    from shared.settings import Settings

log = logging.getLogger(__name__)

SCOPE = "https://api.botframework.com/.default"
REFRESH_MARGIN = 300.0
MAX_TOKEN_LIFETIME = 24 * 3600.0  # Entra ID tokens live at most a day: a longer expires_in is not believed
DEFAULT_TOKEN_LIFETIME = 3600.0
MAX_CONVERSATION_ID_LENGTH = 1024
MAX_ACCESS_TOKEN_LENGTH = 16 * 1024
_ACCESS_TOKEN = re.compile(r"[\x21-\x7e]+")  # what may stand in an Authorization header
_EXPIRES_IN = re.compile(r"[0-9]{1,10}")
TOKEN_POLICY = RetryPolicy(attempts=3)
CONNECTOR_POLICY = RetryPolicy()


class AppCredentials:
    """The bot's outbound identity; `token()` is None when no app id is configured (local emulator use)."""

    def __init__(self, *, settings: Settings, client: httpx.Client, policy: RetryPolicy = TOKEN_POLICY) -> None:
        self._app_id = settings.app_id
        self._password = settings.app_password
        self._app_type = settings.app_type
        self._token_url = settings.token_url
        self._client = client
        self._policy = policy
        self._cached: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def token(self, deadline: Deadline) -> str | None:
        if not self._app_id:
            return None
        cached = self._cached
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        with self._lock:  # concurrent requests share one fetch
            cached = self._cached
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0]
            token, lifetime = self._fetch(deadline)
            self._cached = (token, time.monotonic() + max(0.0, lifetime - REFRESH_MARGIN))
            return token

    def _fetch(self, deadline: Deadline) -> tuple[str, float]:
        if self._app_type == "UserAssignedMSI":
            return self._managed_identity_token()
        form = {
            "grant_type": "client_credentials",
            "client_id": self._app_id,
            "client_secret": self._password,
            "scope": SCOPE,
        }
        response = _send_or_unavailable(
            self._client,
            lambda: self._client.build_request("POST", self._token_url, data=form),
            policy=self._policy,
            deadline=deadline,
            what="bot token endpoint",
            unavailable=("The bot's token endpoint is unavailable; retry shortly.", "token_endpoint_unavailable"),
        )
        if not response.is_success:
            log.error("The token endpoint refused the bot's credentials: HTTP %s", response.status_code)
            raise UpstreamRefused("The bot's credentials were refused by its token endpoint.", code="credentials_refused")
        return _token_answer(response)

    def _managed_identity_token(self) -> tuple[str, float]:
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.identity import CredentialUnavailableError, ManagedIdentityCredential  # heavy: only on this path

        # A fresh credential per fetch (once per token lifetime): an instance that failed once refuses for good,
        # and its default retries would outlast the invoke's deadline.
        identity = ManagedIdentityCredential(client_id=self._app_id, retry_total=1, retry_backoff_factor=0.2)
        try:
            access = identity.get_token(SCOPE)
        except AzureError as exc:
            # CredentialUnavailableError (endpoint unreachable) subclasses ClientAuthenticationError, but is an outage.
            if isinstance(exc, ClientAuthenticationError) and not isinstance(exc, CredentialUnavailableError):
                log.error("The managed identity %s could not get a Bot Framework token", self._app_id)
                raise UpstreamRefused("The bot's managed identity was refused a token.", code="credentials_refused") from exc
            log.warning("The managed identity endpoint is unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable("The bot's managed identity is unavailable; retry shortly.", code="identity_unavailable") from exc
        return access.token, access.expires_on - time.time()


def _token_answer(response: httpx.Response) -> tuple[str, float]:
    """(access_token, lifetime in seconds) from a 2xx token endpoint answer; anything else is the endpoint's fault.

    A slow or oversized body is an outage (503); a body that is not the documented JSON (an HTML page, no
    access_token, an expires_in that is not a non-negative number) is refused for good (502): retrying the
    same endpoint will not make it answer differently.
    """
    if body_was_cut(response):
        log.warning("The token endpoint's answer was too large or too slow (HTTP %s)", response.status_code)
        raise ServiceUnavailable("The bot's token endpoint is unavailable; retry shortly.", code="token_endpoint_unavailable")
    body = json_body(response)
    token = body.get("access_token") if isinstance(body, dict) else None
    lifetime = _lifetime(body.get("expires_in", DEFAULT_TOKEN_LIFETIME)) if isinstance(body, dict) else None
    if not isinstance(token, str) or len(token) > MAX_ACCESS_TOKEN_LENGTH or not _ACCESS_TOKEN.fullmatch(token) or lifetime is None:
        log.error(
            "The token endpoint answered HTTP %s without a usable token (Content-Type %s): check BOT_TOKEN_URL",
            response.status_code,
            clean(response.headers.get("content-type"), 80),
        )
        raise UpstreamRefused(
            "The bot's token endpoint did not answer with an access token; check BOT_TOKEN_URL.", code="token_endpoint_invalid"
        )
    return token, lifetime


def _lifetime(value: object) -> float | None:
    """`expires_in`: a finite non-negative number (or a string of digits, as some endpoints send), at most a day."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _EXPIRES_IN.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not isinstance(value, (int, float)) or value < 0:
        return None
    return float(min(value, MAX_TOKEN_LIFETIME))


def activities_url(service_url: str, conversation_id: str) -> str:
    """`{serviceUrl}/v3/conversations/{id}/activities`, the only URL the connector ever calls.

    The serviceUrl must pass `check_service_url`'s form checks (the allow-list is the caller's); the id must be
    non-empty, at most 1024 characters, without control characters, and not a dot segment (`.` / `..`, also
    percent-encoded), which `quote` leaves as it is and which would move the request to another path.
    """
    from shared.botauth import service_url_base

    if not isinstance(conversation_id, str) or not conversation_id:
        raise InvalidConversationId("The activity has no conversation.id, so the bot cannot answer it.")
    if len(conversation_id) > MAX_CONVERSATION_ID_LENGTH:
        raise InvalidConversationId(f"The activity's conversation.id is longer than {MAX_CONVERSATION_ID_LENGTH} characters.")
    if not conversation_id.isprintable():
        raise InvalidConversationId("The activity's conversation.id contains control characters.")
    if conversation_id in (".", "..") or unquote(conversation_id) in (".", ".."):
        raise InvalidConversationId("The activity's conversation.id is not a valid id (a dot segment).")
    base = service_url_base(service_url)
    url = f"{base}/v3/conversations/{quote(conversation_id, safe='')}/activities"
    # What httpx will request must be exactly this path: nothing normalised away, no other endpoint.
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidConversationId("The activity's conversation.id cannot be put in a URL.") from exc
    if parsed.raw_path.decode("ascii") != f"{urlsplit(base).path}/v3/conversations/{quote(conversation_id, safe='')}/activities":
        raise InvalidConversationId("The activity's conversation.id cannot be put in a URL.")
    return url


class BotConnector:
    def __init__(
        self,
        *,
        credentials: AppCredentials,
        client: httpx.Client,
        policy: RetryPolicy = CONNECTOR_POLICY,
        allowed_hosts: tuple[str, ...] | None = None,
    ) -> None:
        self._credentials = credentials
        self._client = client
        self._policy = policy
        self._allowed_hosts = allowed_hosts

    def send_activities(
        self, service_url: str, conversation_id: str, activities: list[dict[str, Any]], deadline: Deadline
    ) -> list[str | None]:
        """POST each activity in order to `{serviceUrl}/v3/conversations/{id}/activities`; the ids the connector gave.

        Refuses before any call (and before fetching a token): a serviceUrl that `check_service_url` refuses
        (`Unauthorized`; the allow-list too when this connector was given one) or a conversation id that is not a
        valid path segment (`InvalidConversationId`, a 400 for an inbound activity). Each returned id is the `id`
        of the connector's 2xx JSON answer, or None where it gave none (or not a string of at most 1024 characters).
        """
        if self._allowed_hosts is not None:
            from shared.botauth import check_service_url

            check_service_url(service_url, self._allowed_hosts)
        url = activities_url(service_url, conversation_id)
        ids: list[str | None] = []
        for activity in activities:
            token = self._credentials.token(deadline)
            headers = {"Authorization": f"Bearer {token}"} if token else {}

            def build(activity: dict[str, Any] = activity, headers: dict[str, str] = headers) -> httpx.Request:
                return self._client.build_request("POST", url, json=activity, headers=headers)

            response = _send_or_unavailable(
                self._client,
                build,
                policy=self._policy,
                deadline=deadline,
                what="Bot Connector",
                unavailable=("The Bot Connector is unavailable; nothing was consumed, retry shortly.", "connector_unavailable"),
            )
            if not response.is_success:
                log.error(
                    "The Bot Connector refused an activity: HTTP %s, X-Correlating-OperationId=%s",
                    response.status_code,
                    clean(response.headers.get("X-Correlating-OperationId"), 100),
                )
                raise UpstreamRefused(
                    f"The Bot Connector refused the continuation messages (HTTP {response.status_code}); "
                    "check that the bot is installed for this user.",
                    code="connector_refused",
                )
            ids.append(_activity_id(response))
        return ids


def _activity_id(response: httpx.Response) -> str | None:
    body = json_body(response)
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_CONVERSATION_ID_LENGTH else None


def _send_or_unavailable(
    client: httpx.Client,
    build: Callable[[], httpx.Request],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    what: str,
    unavailable: tuple[str, str],
) -> httpx.Response:
    """`send`, with retries exhausted turned into a 503 whose Retry-After passes the server's advice on (1-60 s)."""
    try:
        return send(client, build, policy=policy, deadline=deadline, what=what)
    except Unavailable as exc:
        message, code = unavailable
        retry_after = max(1, min(60, round(exc.retry_after))) if exc.retry_after else 5
        raise ServiceUnavailable(message, code=code, retry_after=retry_after) from exc


_credentials: dict[str, AppCredentials] = {}
_credentials_lock = threading.Lock()


def credentials_for(settings: Settings, *, client: httpx.Client) -> AppCredentials:
    """One credential (and token cache) per identity and process."""
    key = hashlib.sha256(
        "\x1f".join((settings.app_id, settings.app_password, settings.app_type, settings.token_url)).encode()
    ).hexdigest()
    credentials = _credentials.get(key)
    if credentials is None:
        with _credentials_lock:
            credentials = _credentials.setdefault(key, AppCredentials(settings=settings, client=client))
    return credentials
