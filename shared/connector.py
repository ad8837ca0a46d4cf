"""Outbound Bot Connector calls: send activities to a conversation with a bot token.

Tokens come from client credentials (`scope https://api.botframework.com/.default`) at `BOT_TOKEN_URL`,
or from a user-assigned managed identity, and are cached until five minutes before they expire, shared
by all requests of the process. Retries follow `shared.outbound`; a 4xx other than 408/429 is final
(`UpstreamRefused`, 502), anything retryable that outlasts the deadline is `ServiceUnavailable` (503).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from shared.errors import ServiceUnavailable, UpstreamRefused
from shared.outbound import Deadline, RetryPolicy, Unavailable, send

if TYPE_CHECKING:
    import httpx

    from shared.settings import Settings

log = logging.getLogger(__name__)

SCOPE = "https://api.botframework.com/.default"
REFRESH_MARGIN = 300.0
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
        body = response.json()
        return body["access_token"], float(body.get("expires_in", 3600))

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


class BotConnector:
    def __init__(self, *, credentials: AppCredentials, client: httpx.Client, policy: RetryPolicy = CONNECTOR_POLICY) -> None:
        self._credentials = credentials
        self._client = client
        self._policy = policy

    def send_activities(self, service_url: str, conversation_id: str, activities: list[dict[str, Any]], deadline: Deadline) -> None:
        """POST each activity in order to `{serviceUrl}/v3/conversations/{id}/activities`."""
        url = f"{service_url.rstrip('/')}/v3/conversations/{quote(conversation_id, safe='')}/activities"
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
                    response.headers.get("X-Correlating-OperationId", "-"),
                )
                raise UpstreamRefused(
                    f"The Bot Connector refused the continuation messages (HTTP {response.status_code}); "
                    "check that the bot is installed for this user.",
                    code="connector_refused",
                )


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
