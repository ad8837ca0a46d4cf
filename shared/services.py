"""The composition root: stores and clients built from settings, once per process and configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.storage import HANDOFFS_TABLE, TOKENS_TABLE, table_client

if TYPE_CHECKING:
    from shared.botauth import OpenIdKeys
    from shared.connector import BotConnector
    from shared.handoffs import HandoffStore
    from shared.hub import HubClient
    from shared.settings import Settings
    from shared.tokens import TokenStore


def handoff_store(settings: Settings) -> HandoffStore:
    from shared.handoffs import HandoffStore

    return HandoffStore(table_client(settings, HANDOFFS_TABLE))


def token_store(settings: Settings) -> TokenStore:
    from shared.tokens import TokenStore

    return TokenStore(table_client(settings, TOKENS_TABLE))


def hub_client(settings: Settings) -> HubClient | None:
    if not settings.hub_url:
        return None
    from shared.hub import HubClient
    from shared.outbound import shared_client

    return HubClient(url=settings.hub_url, secret=settings.hub_secret, client=shared_client("hub"))


def bot_connector(settings: Settings) -> BotConnector:
    from shared.connector import BotConnector, credentials_for
    from shared.outbound import shared_client

    client = shared_client("botframework")
    return BotConnector(credentials=credentials_for(settings, client=client), client=client)


def openid_keys(settings: Settings) -> OpenIdKeys:
    from shared.botauth import keys_for
    from shared.outbound import shared_client

    return keys_for(settings.openid_metadata_url, client=shared_client("botframework"))
