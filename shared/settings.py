"""App settings, read from the environment per the contract's table, typed and validated once.

An invalid value raises `ConfigurationError` naming the setting: the functions answer 500 with it,
because it is an operator's mistake, not the caller's.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigurationError

DEFAULT_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
DEFAULT_ALLOWED_HOSTS = (
    "botframework.com",
    "botframework.us",
    "smba.trafficmanager.net",
    "teams.microsoft.com",
    "teams.microsoft.us",
)
DEFAULT_TTL_SECONDS = 900
DEFAULT_MAX_BODY_BYTES = 4_000_000
# The Functions host talks to the Python worker over gRPC with a 4 MiB message cap (body, headers and framing):
# a larger request never reaches the app, so a cap the channel cannot carry is refused as a configuration error.
MAX_BODY_BYTES_CHANNEL = 4_000_000
DEFAULT_HUB_RETRY_SECONDS = 30
DEFAULT_HUB_RETRY_HOURS = 24.0
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_SWEEP_SCHEDULE = "0 */1 * * * *"
DEFAULT_SWEEP_BATCH = 500
APP_TYPES = ("MultiTenant", "SingleTenant", "UserAssignedMSI")
# The longest table suffix we append; Table Storage names are 3-63 alphanumerics starting with a letter.
_LONGEST_TABLE_SUFFIX = len("handoffs")
_TABLE_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_PLACEHOLDER_ID = re.compile(r"\{?0{8}-?0{4}-?0{4}-?0{4}-?0{12}\}?")

# Every variable the settings depend on: the cache below is keyed on their values.
ENV_NAMES = (
    "HANDOFF_STORAGE_CONNECTION",
    "AzureWebJobsStorage",
    "HANDOFF_TABLES_ENDPOINT",
    "HANDOFF_TABLE_PREFIX",
    "MicrosoftAppId",
    "MicrosoftAppPassword",
    "MicrosoftAppTenantId",
    "MicrosoftAppType",
    "HANDOFF_BOT_ID",
    "HANDOFF_TOKEN_TTL_SECONDS",
    "HANDOFF_HUB_URL",
    "HANDOFF_HUB_SECRET",
    "HANDOFF_HUB_SECRET_PREVIOUS",
    "HANDOFF_HUB_RETRY_SECONDS",
    "HANDOFF_HUB_RETRY_HOURS",
    "HANDOFF_RETENTION_DAYS",
    "HANDOFF_SWEEP_SCHEDULE",
    "HANDOFF_SWEEP_BATCH",
    "BOT_OPENID_METADATA_URL",
    "BOT_TOKEN_URL",
    "HANDOFF_ALLOWED_SERVICE_URL_HOSTS",
    "HANDOFF_AUTH_DISABLED",
    "HANDOFF_MAX_BODY_BYTES",
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    storage_connection: str
    tables_endpoint: str | None
    table_prefix: str
    app_id: str
    app_password: str
    app_tenant_id: str
    app_type: str
    bot_id: str
    token_ttl_seconds: int
    hub_url: str | None
    hub_secret: str | None
    hub_secret_previous: str | None
    hub_retry_seconds: int
    hub_retry_hours: float
    retention_days: float
    sweep_schedule: str
    sweep_batch: int
    openid_metadata_url: str
    token_url: str
    allowed_service_url_hosts: tuple[str, ...]
    auth_disabled: bool
    max_body_bytes: int

    def __repr__(self) -> str:  # never print secrets, even in a debugger or a log line
        return f"Settings(table_prefix={self.table_prefix!r}, app_id={self.app_id!r}, app_type={self.app_type!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def get(name: str) -> str:
            return (env.get(name) or "").strip()

        app_id = get("MicrosoftAppId")
        app_type = get("MicrosoftAppType") or "MultiTenant"
        if app_type not in APP_TYPES:
            raise ConfigurationError(f"MicrosoftAppType must be one of {', '.join(APP_TYPES)}.")
        tenant = get("MicrosoftAppTenantId")
        if app_type == "SingleTenant" and not tenant:
            raise ConfigurationError("MicrosoftAppTenantId is required when MicrosoftAppType is SingleTenant.")
        token_tenant = tenant if app_type == "SingleTenant" and tenant else "botframework.com"
        for name in ("MicrosoftAppId", "HANDOFF_BOT_ID"):
            if _PLACEHOLDER_ID.fullmatch(get(name)):  # a copied example value: impossible to miss
                logging.getLogger(__name__).warning(
                    "PLACEHOLDER: %s is the all-zero GUID: Teams deep links (and, for MicrosoftAppId, the JWT audience) "
                    "name a bot that does not exist; set the Teams bot's app id (HANDOFF_BOT_ID empty uses MicrosoftAppId).",
                    name,
                )

        prefix = get("HANDOFF_TABLE_PREFIX") or "handoff"
        if not _TABLE_PREFIX.fullmatch(prefix) or len(prefix) + _LONGEST_TABLE_SUFFIX > 63:
            raise ConfigurationError(
                "HANDOFF_TABLE_PREFIX must start with a letter, hold only letters and digits, "
                f"and be at most {63 - _LONGEST_TABLE_SUFFIX} characters long."
            )

        hosts = tuple(
            h.strip().lower().lstrip(".")
            for h in (get("HANDOFF_ALLOWED_SERVICE_URL_HOSTS") or ",".join(DEFAULT_ALLOWED_HOSTS)).split(",")
            if h.strip()
        )
        if not hosts:
            raise ConfigurationError("HANDOFF_ALLOWED_SERVICE_URL_HOSTS must name at least one host suffix.")

        return cls(
            storage_connection=get("HANDOFF_STORAGE_CONNECTION") or get("AzureWebJobsStorage") or "UseDevelopmentStorage=true",
            tables_endpoint=_url(env, "HANDOFF_TABLES_ENDPOINT", required=False),
            table_prefix=prefix,
            app_id=app_id,
            app_password=get("MicrosoftAppPassword"),
            app_tenant_id=tenant,
            app_type=app_type,
            bot_id=get("HANDOFF_BOT_ID") or app_id,
            token_ttl_seconds=_positive_int(env, "HANDOFF_TOKEN_TTL_SECONDS", DEFAULT_TTL_SECONDS),
            hub_url=_url(env, "HANDOFF_HUB_URL", required=False),
            hub_secret=_webhook_secret(env, "HANDOFF_HUB_SECRET"),
            hub_secret_previous=_webhook_secret(env, "HANDOFF_HUB_SECRET_PREVIOUS"),
            hub_retry_seconds=_positive_int(env, "HANDOFF_HUB_RETRY_SECONDS", DEFAULT_HUB_RETRY_SECONDS),
            hub_retry_hours=_positive_number(env, "HANDOFF_HUB_RETRY_HOURS", DEFAULT_HUB_RETRY_HOURS),
            retention_days=_positive_number(env, "HANDOFF_RETENTION_DAYS", DEFAULT_RETENTION_DAYS),
            sweep_schedule=_schedule(env, "HANDOFF_SWEEP_SCHEDULE", DEFAULT_SWEEP_SCHEDULE),
            sweep_batch=_positive_int(env, "HANDOFF_SWEEP_BATCH", DEFAULT_SWEEP_BATCH),
            openid_metadata_url=_url(env, "BOT_OPENID_METADATA_URL", default=DEFAULT_OPENID_METADATA_URL),
            token_url=_url(
                env,
                "BOT_TOKEN_URL",
                default=f"https://login.microsoftonline.com/{token_tenant}/oauth2/v2.0/token",
            ),
            allowed_service_url_hosts=hosts,
            auth_disabled=_bool(env, "HANDOFF_AUTH_DISABLED"),
            max_body_bytes=_max_body_bytes(env),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigurationError(f"{name} must be a positive whole number (got {raw[:20]!r}).")
    return int(raw)


def _max_body_bytes(env: Mapping[str, str]) -> int:
    value = _positive_int(env, "HANDOFF_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    if value > MAX_BODY_BYTES_CHANNEL:
        raise ConfigurationError(
            f"HANDOFF_MAX_BODY_BYTES must be at most {MAX_BODY_BYTES_CHANNEL}: the Functions host's channel to the "
            "Python worker carries at most 4 MiB per message, so a larger body would never reach the app."
        )
    return value


def _positive_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, fractions allowed (got {raw[:20]!r}).")
    return value


_WEBHOOK_SECRET_BYTES = 24


def _webhook_secret(env: Mapping[str, str], name: str) -> str | None:
    """A Standard Webhooks secret: `whsec_` + base64 of at least 24 random bytes. The value is never echoed."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.startswith("whsec_"):
        raise ConfigurationError(f"{name} must be a Standard Webhooks secret: 'whsec_' followed by base64 of at least {_WEBHOOK_SECRET_BYTES} random bytes.")
    try:
        key = base64.b64decode(raw[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < _WEBHOOK_SECRET_BYTES:
        raise ConfigurationError(f"{name} must be 'whsec_' followed by valid base64 of at least {_WEBHOOK_SECRET_BYTES} random bytes.")
    return raw


def _schedule(env: Mapping[str, str], name: str, default: str) -> str:
    """An NCRONTAB expression with six fields (second minute hour day month day-of-week), as the timer trigger takes."""
    raw = (env.get(name) or "").strip() or default
    fields = raw.split()
    if len(fields) != 6 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise ConfigurationError(f"{name} must be an NCRONTAB expression of six fields, e.g. {default!r}.")
    return raw


_CRON_FIELD = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*|[A-Za-z]{3}(-[A-Za-z]{3})?(,[A-Za-z]{3}(-[A-Za-z]{3})?)*")


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise ConfigurationError(f"{name} must be true or false.")


def _url(env: Mapping[str, str], name: str, *, default: str | None = None, required: bool = True) -> str | None:
    raw = (env.get(name) or "").strip() or default
    if raw is None:
        if required:
            raise ConfigurationError(f"{name} is required.")
        return None
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError on a port that is not a number in range
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        # The URL is not echoed: a webhook URL may carry a key in its query string.
        raise ConfigurationError(f"{name} must be an absolute http(s) URL.")
    return raw


_cache_lock = threading.Lock()
_cache: tuple[tuple[str | None, ...], Settings] | None = None


def current_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings for this process, parsed again only when one of the variables changed."""
    global _cache
    env = os.environ if env is None else env
    key = tuple(env.get(name) for name in ENV_NAMES)
    cached = _cache
    if cached is not None and cached[0] == key:
        return cached[1]
    settings = Settings.from_env(env)
    with _cache_lock:
        _cache = (key, settings)
    return settings
