"""The settings loader: the contract's defaults, and errors that name the setting."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError
from shared.settings import Settings, current_settings


def test_defaults() -> None:
    settings = Settings.from_env({"MicrosoftAppId": "app"})
    assert settings.storage_connection == "UseDevelopmentStorage=true"
    assert settings.tables_endpoint is None
    assert settings.table_prefix == "handoff"
    assert settings.bot_id == "app"
    assert settings.app_type == "MultiTenant"
    assert settings.token_ttl_seconds == 900
    assert settings.hub_url is None and settings.hub_secret is None
    assert settings.openid_metadata_url == "https://login.botframework.com/v1/.well-known/openidconfiguration"
    assert settings.token_url == "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
    assert settings.allowed_service_url_hosts == (
        "botframework.com", "botframework.us", "smba.trafficmanager.net", "teams.microsoft.com", "teams.microsoft.us"
    )
    assert settings.auth_disabled is False
    assert settings.max_body_bytes == 4_000_000


def test_storage_connection_falls_back_to_azure_web_jobs_storage() -> None:
    assert Settings.from_env({"AzureWebJobsStorage": "A"}).storage_connection == "A"
    assert Settings.from_env({"AzureWebJobsStorage": "A", "HANDOFF_STORAGE_CONNECTION": "B"}).storage_connection == "B"


def test_single_tenant_token_url_uses_the_tenant() -> None:
    settings = Settings.from_env({"MicrosoftAppType": "SingleTenant", "MicrosoftAppTenantId": "contoso.onmicrosoft.com"})
    assert settings.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"


def test_explicit_values() -> None:
    settings = Settings.from_env(
        {
            "HANDOFF_BOT_ID": "bot",
            "HANDOFF_TOKEN_TTL_SECONDS": "60",
            "HANDOFF_ALLOWED_SERVICE_URL_HOSTS": " Example.COM ,.contoso.net,",
            "HANDOFF_AUTH_DISABLED": "TRUE",
            "HANDOFF_MAX_BODY_BYTES": "1024",
            "HANDOFF_HUB_URL": "https://hub.example/hook",
        }
    )
    assert settings.bot_id == "bot"
    assert settings.token_ttl_seconds == 60
    assert settings.allowed_service_url_hosts == ("example.com", "contoso.net")
    assert settings.auth_disabled is True
    assert settings.max_body_bytes == 1024
    assert settings.hub_url == "https://hub.example/hook"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"HANDOFF_TOKEN_TTL_SECONDS": "0"}, "HANDOFF_TOKEN_TTL_SECONDS"),
        ({"HANDOFF_TOKEN_TTL_SECONDS": "-5"}, "HANDOFF_TOKEN_TTL_SECONDS"),
        ({"HANDOFF_TOKEN_TTL_SECONDS": "15m"}, "HANDOFF_TOKEN_TTL_SECONDS"),
        ({"HANDOFF_MAX_BODY_BYTES": "lots"}, "HANDOFF_MAX_BODY_BYTES"),
        ({"HANDOFF_TABLE_PREFIX": "1abc"}, "HANDOFF_TABLE_PREFIX"),
        ({"HANDOFF_TABLE_PREFIX": "hand-off"}, "HANDOFF_TABLE_PREFIX"),
        ({"HANDOFF_TABLE_PREFIX": "a" * 60}, "HANDOFF_TABLE_PREFIX"),
        ({"HANDOFF_HUB_URL": "not a url"}, "HANDOFF_HUB_URL"),
        ({"HANDOFF_HUB_URL": "ftp://hub.example/x"}, "HANDOFF_HUB_URL"),
        ({"BOT_OPENID_METADATA_URL": "https://"}, "BOT_OPENID_METADATA_URL"),
        ({"BOT_TOKEN_URL": "http://host:99999/x"}, "BOT_TOKEN_URL"),
        ({"HANDOFF_TABLES_ENDPOINT": "tables"}, "HANDOFF_TABLES_ENDPOINT"),
        ({"HANDOFF_AUTH_DISABLED": "maybe"}, "HANDOFF_AUTH_DISABLED"),
        ({"MicrosoftAppType": "Anything"}, "MicrosoftAppType"),
        ({"MicrosoftAppType": "SingleTenant"}, "MicrosoftAppTenantId"),
        ({"HANDOFF_ALLOWED_SERVICE_URL_HOSTS": " , "}, "HANDOFF_ALLOWED_SERVICE_URL_HOSTS"),
    ],
)
def test_invalid_settings_name_the_setting(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    assert names in caught.value.message
    assert caught.value.status == 500 and caught.value.code == "configuration_error"


def test_invalid_url_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"HANDOFF_HUB_URL": "hub.example/hook?code=s3cr3t"})
    assert "s3cr3t" not in caught.value.message


def test_repr_hides_secrets() -> None:
    secret = "whsec_aHViLXNpZ25pbmctc2VjcmV0LW9mLTI0LWJ5dGVzLWF0LWxlYXN0"
    settings = Settings.from_env({"MicrosoftAppPassword": "pw-123", "HANDOFF_HUB_SECRET": secret})
    assert "pw-123" not in repr(settings) and secret[6:] not in repr(settings)


def test_current_settings_reparses_only_on_change() -> None:
    env = {"HANDOFF_TOKEN_TTL_SECONDS": "30"}
    first = current_settings(env)
    assert current_settings(env) is first
    env["HANDOFF_TOKEN_TTL_SECONDS"] = "31"
    assert current_settings(env).token_ttl_seconds == 31
