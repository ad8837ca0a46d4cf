"""Continuation tokens: random, URL-safe, stored only as their SHA-256 hash.

A token row (PartitionKey = SHA-256 of the token) says which handoff it continues, when it expires, whom
it is bound to, and carries the small context snapshot the continuation messages need, so that a
redemption costs one point read here plus the conditional claim in `handoffs`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.storage import NO_CONTENT, storage_call
from shared.timeutil import from_iso, to_iso

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.activities import HandoffContext

TOKEN_BYTES = 32  # 256 bits from `secrets`: 43 URL-safe characters
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
_ROW_KEY = "token"
_SNAPSHOT_FIELD_CHARS = 1000


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def well_formed(token: str) -> bool:
    """Garbled input is turned away before any storage call."""
    return _TOKEN_SHAPE.fullmatch(token) is not None


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ContinuationContext:
    """What the user is reminded of when the conversation continues (each field capped for the row)."""

    bot_name: str | None = None
    last_topic: str | None = None
    last_phrase: str | None = None
    agent_message: str | None = None
    language: str | None = None

    @classmethod
    def from_context(cls, context: HandoffContext) -> ContinuationContext:
        return cls(
            bot_name=_cap(context.bot_name),
            last_topic=_cap(context.last_topic),
            last_phrase=_cap(context.last_phrase),
            agent_message=_cap(context.agent_message),
            language=_cap(context.language),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What a token grants: continuing one handoff, until `expires_at`, for the bound user and tenant."""

    handoff_id: str
    expires_at: datetime
    user_id: str | None
    tenant_id: str | None
    context: ContinuationContext


class TokenStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def add(self, token: str, grant: Grant) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": token_key(token),
            "RowKey": _ROW_KEY,
            "handoffId": grant.handoff_id,
            "expiresAt": to_iso(grant.expires_at),
            "context": json.dumps(asdict(grant.context), ensure_ascii=False),
        }
        if grant.user_id:
            entity["boundUserId"] = grant.user_id
        if grant.tenant_id:
            entity["boundTenantId"] = grant.tenant_id
        with storage_call("record a continuation token"):
            self._table.create_entity(entity, response_preference=NO_CONTENT)

    def get(self, token: str) -> Grant | None:
        from azure.core.exceptions import ResourceNotFoundError

        with storage_call("look up a continuation token"):
            try:
                row = self._table.get_entity(token_key(token), _ROW_KEY)
            except ResourceNotFoundError:
                return None
        return Grant(
            handoff_id=row["handoffId"],
            expires_at=from_iso(row["expiresAt"]),
            user_id=row.get("boundUserId"),
            tenant_id=row.get("boundTenantId"),
            context=ContinuationContext(**json.loads(row["context"])),
        )


def _cap(text: str | None) -> str | None:
    if text is None or len(text) <= _SNAPSHOT_FIELD_CHARS:
        return text
    return text[: _SNAPSHOT_FIELD_CHARS - 1] + "…"
