"""Which handoff owns a Teams conversation: `<prefix>links`, one row per Teams conversation.

A Teams 1:1 chat with the bot is one conversation for ever; the handoff most recently redeemed in it owns it.
PartitionKey is the SHA-256 of the Teams conversation id (never raw input), RowKey `link`. Changes are
conditional: created with If-None-Match (the first redemption in a chat), replaced with If-Match (a later one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.handoffs import Stale, answer_may_be_lost
from shared.storage import NO_CONTENT, storage_call

if TYPE_CHECKING:
    from azure.data.tables import TableClient

LINKS_TABLE = "links"
_ROW = "link"


def link_key(teams_conversation_id: str) -> str:
    return hashlib.sha256(teams_conversation_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Link:
    teams_conversation_id: str
    handoff_id: str
    etag: str | None = None


class LinkStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def find(self, teams_conversation_id: str) -> Link | None:
        from azure.core.exceptions import ResourceNotFoundError

        with storage_call("read a conversation link"):
            try:
                row = self._table.get_entity(link_key(teams_conversation_id), _ROW)
            except ResourceNotFoundError:
                return None
        return Link(teams_conversation_id, row["handoffId"], row.metadata.get("etag"))

    def create_if_new(self, teams_conversation_id: str, handoff_id: str) -> Link | None:
        """Link a chat that had no handoff yet. None: the chat is linked already (read it, then `replace`)."""
        from azure.core.exceptions import ResourceExistsError

        with storage_call("link a conversation"), answer_may_be_lost(handoff_id):
            try:
                meta = self._table.create_entity(
                    {"PartitionKey": link_key(teams_conversation_id), "RowKey": _ROW, "handoffId": handoff_id},
                    response_preference=NO_CONTENT,
                )
            except ResourceExistsError:
                return None
        return Link(teams_conversation_id, handoff_id, meta.get("etag"))

    def replace(self, link: Link, handoff_id: str) -> Link:
        """Give the chat to another handoff, if nobody changed the link since it was read (else `Stale`)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        with storage_call("link a conversation"):
            try:
                meta = self._table.update_entity(
                    {"PartitionKey": link_key(link.teams_conversation_id), "RowKey": _ROW, "handoffId": handoff_id},
                    mode=UpdateMode.REPLACE,
                    etag=link.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError) as exc:
                raise Stale(link.teams_conversation_id) from exc
        return Link(link.teams_conversation_id, handoff_id, meta.get("etag"))

    def delete_if_unchanged(self, link: Link) -> None:
        """Remove a link (a failed redemption undoing its own, or a purge), only if it is still as read."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        with storage_call("unlink a conversation"):
            try:
                self._table.delete_entity(
                    link_key(link.teams_conversation_id), _ROW, etag=link.etag, match_condition=MatchConditions.IfNotModified
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                pass
