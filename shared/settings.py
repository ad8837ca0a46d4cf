"""App settings, read from the environment per the contract's table, typed and validated once.

An invalid value raises `ConfigurationError` naming the setting: the functions answer 500 with it,
because it is an operator's mistake, not the caller's.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ConfigurationError

DEFAULT_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
DEFAULT_ALLOWED_HOSTS = ("botframework.com", "botframework.us", "trafficmanager.net", "teams.microsoft.com")
DEFAULT_TTL_SECONDS = 900
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
APP_TYPES = ("MultiTenant", "SingleTenant", "UserAssignedMSI")
# The longest table suffix we append; Table Storage names are 3-63 alphanumerics starting with a letter.
_LONGEST_TABLE_SUFFIX = len("handoffs")
_TABLE_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]*")

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
            hub_secret=get("HANDOFF_HUB_SECRET") or None,
            openid_metadata_url=_url(env, "BOT_OPENID_METADATA_URL", default=DEFAULT_OPENID_METADATA_URL),
            token_url=_url(
                env,
                "BOT_TOKEN_URL",
                default=f"https://login.microsoftonline.com/{token_tenant}/oauth2/v2.0/token",
            ),
            allowed_service_url_hosts=hosts,
            auth_disabled=_bool(env, "HANDOFF_AUTH_DISABLED"),
            max_body_bytes=_positive_int(env, "HANDOFF_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigurationError(f"{name} must be a positive whole number (got {raw[:20]!r}).")
    return int(raw)


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
