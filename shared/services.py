"""The composition root: stores, clients and use cases built from settings, once per process and configuration.

Process-wide state lives in the modules it belongs to (table clients in `storage`, HTTP clients in
`outbound`, key caches in `botauth`, bot credentials in `connector`); this module wires them together and
`reset()` clears all of it for tests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from shared.storage import HANDOFFS_TABLE, table_client

if TYPE_CHECKING:
    from shared.botauth import OpenIdKeys
    from shared.connector import BotConnector
    from shared.handoffs import HandoffStore
    from shared.hub import HubClient
    from shared.links import LinkStore
    from shared.outbox import Outbox
    from shared.redeem import Redemption
    from shared.relay import Relay
    from shared.hubcalls import HubCalls
    from shared.schedule import Schedule
    from shared.outbound import Deadline
    from shared.settings import Settings
    from shared.teams import TeamsChat


def handoff_store(settings: Settings) -> HandoffStore:
    from shared.handoffs import HandoffStore

    return HandoffStore(table_client(settings, HANDOFFS_TABLE))


def link_store(settings: Settings) -> LinkStore:
    from shared.links import LINKS_TABLE, LinkStore

    return LinkStore(table_client(settings, LINKS_TABLE))


def schedule(settings: Settings) -> Schedule:
    from shared.schedule import DUE_TABLE, Schedule

    return Schedule(table_client(settings, DUE_TABLE))


def hub_client(settings: Settings) -> HubClient | None:
    if not settings.hub_url:
        return None
    from shared.hub import HubClient
    from shared.outbound import shared_client
    from shared.webhooks import hub_secrets

    return HubClient(
        url=settings.hub_url,
        secrets=list(hub_secrets(settings.hub_secret, settings.hub_secret_previous)),
        client=shared_client("hub"),
    )


def bot_connector(settings: Settings) -> BotConnector:
    from shared.connector import BotConnector, credentials_for
    from shared.outbound import shared_client

    client = shared_client("botframework")
    return BotConnector(credentials=credentials_for(settings, client=client), client=client)


def teams_chat(settings: Settings) -> TeamsChat:
    from shared.teams import TeamsChat

    return TeamsChat(bot_connector(settings), settings.allowed_service_url_hosts)


def outbox(settings: Settings, *, chat: TeamsChat | None = None) -> Outbox:
    from shared.initiate import RequestedRenderer
    from shared.outbox import Outbox, RetryTimes
    from shared.timeutil import utcnow

    store = handoff_store(settings)
    notice = _messages_lost_notice(chat or teams_chat(settings))
    return Outbox(
        store=store,
        schedule=schedule(settings),
        hub=hub_client(settings),
        retry=RetryTimes(first_seconds=settings.hub_retry_seconds, give_up_after=timedelta(hours=settings.hub_retry_hours)),
        render_requested=RequestedRenderer(handoffs=store, bot_id=settings.bot_id, now=utcnow),
        tell_user_messages_lost=notice,
    )


def redemption(settings: Settings) -> Redemption:
    from shared.redeem import Redemption

    chat = teams_chat(settings)
    return Redemption(handoffs=handoff_store(settings), links=link_store(settings), outbox=outbox(settings, chat=chat), chat=chat)


def relay(settings: Settings) -> Relay:
    from shared.relay import Relay

    chat = teams_chat(settings)
    return Relay(open_stores=lambda: (handoff_store(settings), link_store(settings), outbox(settings, chat=chat)), chat=chat)


def hub_calls(settings: Settings) -> HubCalls:
    from shared.hubcalls import HubCalls

    return HubCalls(handoffs=handoff_store(settings), chat=teams_chat(settings))


def openid_keys(settings: Settings) -> OpenIdKeys:
    from shared.botauth import keys_for
    from shared.outbound import shared_client

    return keys_for(settings.openid_metadata_url, client=shared_client("botframework"))


def _messages_lost_notice(chat: TeamsChat):
    """Tell a connected user, once per handoff, that some of their messages could not be passed on."""
    import logging

    from shared import teams as say
    from shared.errors import HandoffError
    def tell(handoff, deadline: Deadline) -> bool:
        if handoff.teams is None or not handoff.connected or deadline.remaining() < 1.5:
            return False  # the answer's time budget comes first: with no time left the notice is skipped
        try:
            chat.send(handoff.teams, [say.text(handoff.teams, say.MESSAGES_LOST)], deadline)
        except HandoffError:
            logging.getLogger(__name__).warning("could not tell the user of handoffId=%s that messages were lost", handoff.handoff_id)
            return False
        return True

    return tell


def reset() -> None:
    """Forget every cached client, key set and credential (tests switch settings between cases)."""
    from shared import botauth, connector, outbound, settings, storage

    with storage._lock:
        storage._services.clear()
        storage._tables.clear()
    with outbound._clients_lock:
        for client in outbound._clients.values():
            client.close()
        outbound._clients.clear()
    with botauth._keysets_lock:
        botauth._keysets.clear()
    with connector._credentials_lock:
        connector._credentials.clear()
    with settings._cache_lock:
        settings._cache = None
