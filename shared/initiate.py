"""Record a Copilot Studio handoff, mint its continuation token, and deliver it to the engagement hub.

Data flow: a validated `HandoffRequest` in; one batch transaction records the handoff with its blobs
(first writer wins, so a repeat is recognised by the conflict); a token row is added for a new token;
the hub delivery is claimed with a lease (If-Match) so that concurrent repeats deliver once; the outcome
comes back as an `InitiateResult`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.cards import continue_card, deep_link
from shared.errors import ServiceUnavailable
from shared.handoffs import PENDING, SENDING, SKIPPED, HandoffRecord, handoff_id_for
from shared.hub import event_body
from shared.timeutil import to_iso
from shared.tokens import ContinuationContext, Grant, new_token

if TYPE_CHECKING:
    from shared.activities import HandoffRequest
    from shared.handoffs import HandoffStore
    from shared.hub import HubClient
    from shared.tokens import TokenStore

log = logging.getLogger(__name__)

# How long one caller owns a hub delivery; past it (the owner died), a repeated callback takes over.
HUB_LEASE = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Binding:
    """Who may redeem the link: the user's Entra object id and tenant, both optional."""

    user_id: str | None = None
    tenant_id: str | None = None


@dataclass(frozen=True, slots=True)
class InitiateResult:
    created: bool
    record: HandoffRecord
    token: str
    deep_link: str
    card: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "handoffId": self.record.handoff_id,
            "conversationId": self.record.conversation_id,
            "continuationToken": self.token,
            "deepLink": self.deep_link,
            "expiresAt": to_iso(self.record.expires_at),
            "hub": {"status": self.record.public_hub_status},
            "card": self.card,
        }


def initiate(
    request: HandoffRequest,
    binding: Binding,
    *,
    handoffs: HandoffStore,
    tokens: TokenStore,
    hub: HubClient | None,
    bot_id: str,
    ttl_seconds: int,
    now: datetime,
) -> InitiateResult:
    handoff_id = handoff_id_for(request.conversation_id, request.activity_id)
    token = new_token()
    link = deep_link(bot_id, token)  # a configuration error surfaces before anything is written
    fresh = HandoffRecord(
        handoff_id=handoff_id,
        conversation_id=request.conversation_id,
        activity_id=request.activity_id,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
        user_id=binding.user_id,
        tenant_id=binding.tenant_id,
        hub_status=PENDING if hub is not None else SKIPPED,
    )
    document = _document(request, created_at=to_iso(now))
    blobs = {"document": json.dumps(document, ensure_ascii=False).encode("utf-8")}
    transcript = request.transcript
    inline = transcript.json_bytes if transcript is not None else None
    if inline is not None:
        blobs["transcript"] = inline

    record = handoffs.create(fresh, blobs)
    created = record is not None
    if record is None:
        record = handoffs.get(handoff_id)
        if record is None:  # cannot happen while records are only ever created whole
            raise ServiceUnavailable("The handoff record could not be read back; retry shortly.", code="storage_unavailable")
        document["createdAt"] = to_iso(record.created_at)

    # The binding and expiry belong to the handoff as first recorded; every token of it shares them.
    tokens.add(
        token,
        Grant(
            handoff_id=handoff_id,
            expires_at=record.expires_at,
            user_id=record.user_id,
            tenant_id=record.tenant_id,
            context=ContinuationContext.from_context(request.context),
        ),
    )

    if hub is not None and _deliverable(record, now):
        body = event_body(
            handoff_id=handoff_id,
            document=document,
            transcript_json=inline,
            deep_link=link,
        )
        record = _deliver(record, hub, handoffs, body=body, now=now)

    log.info(
        "handoff %s: handoffId=%s conversationId=%s hub=%s",
        "recorded" if created else "repeated",
        handoff_id,
        request.conversation_id,
        record.public_hub_status,
    )
    card = continue_card(link, bot_name=request.context.bot_name, expires_at=to_iso(record.expires_at))
    return InitiateResult(created=created, record=record, token=token, deep_link=link, card=card)


def _document(request: HandoffRequest, *, created_at: str) -> dict[str, Any]:
    """Conversation, context and transcript reference as they are recorded and sent to the hub."""
    event = request.event
    reference = event.relates_to
    dump = {"by_alias": True, "exclude_none": True}
    conversation: dict[str, Any] = {
        "id": request.conversation_id,
        "activityId": request.activity_id,
        "channelId": event.channel_id or (reference.channel_id if reference else None),
        "serviceUrl": event.service_url or (reference.service_url if reference else None),
    }
    if reference is not None and reference.user is not None:
        conversation["user"] = reference.user.model_dump(**dump)
    bot = reference.bot if reference is not None and reference.bot is not None else event.from_
    if bot is not None:
        conversation["bot"] = bot.model_dump(**dump)
    transcript = request.transcript
    return {
        "conversation": {k: v for k, v in conversation.items() if v is not None},
        "context": request.context_values,
        "createdAt": created_at,
        "transcriptReference": (
            {"contentUrl": transcript.content_url, "contentType": transcript.content_type}
            if transcript is not None and not transcript.is_inline
            else None
        ),
    }


def _deliverable(record: HandoffRecord, now: datetime) -> bool:
    if record.hub_status == PENDING:
        return True
    return record.hub_status == SENDING and (record.hub_lease_until is None or record.hub_lease_until <= now)


def _deliver(record: HandoffRecord, hub: HubClient, handoffs: HandoffStore, *, body: bytes, now: datetime) -> HandoffRecord:
    leased = handoffs.update_hub(record, hub_status=SENDING, hub_lease_until=now + HUB_LEASE, hub_attempts=record.hub_attempts + 1)
    if leased is None:
        # Another caller is delivering this handoff right now: it will record the outcome.
        return record if record.hub_status == SENDING else _with_status(record, SENDING)
    result = hub.deliver(record.handoff_id, body)
    log.info("hub delivery of handoffId=%s: %s (%s)", record.handoff_id, result.status, result.detail)
    try:
        final = handoffs.update_hub(leased, hub_status=result.status, hub_lease_until=None)
    except ServiceUnavailable:
        # Delivered (or not) but not recorded: the lease lapses and a repeated callback re-attempts with the
        # same Idempotency-Key, which the hub uses to drop the duplicate.
        log.warning("hub outcome of handoffId=%s could not be recorded; a repeat will re-attempt it", record.handoff_id)
        return _with_status(leased, result.status)
    return final if final is not None else _with_status(leased, result.status)


def _with_status(record: HandoffRecord, status: str) -> HandoffRecord:
    return replace(record, hub_status=status)
