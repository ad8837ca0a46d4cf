"""Record a Copilot Studio handoff, mint its continuation token, and deliver it to the engagement hub.

Data flow: a validated `HandoffRequest` in; the sweeper's expiry and retention rows are scheduled; one batch
transaction records the handoff with its blobs, its first token and its first event, `handoff.requested`
(first writer wins, so a repeat is recognised by the conflict), taking the delivery lease; the event is
posted through the outbox (`shared.outbox`), so that concurrent repeats deliver once and a hub outage leaves
it to the sweeper; the outcome comes back as an `InitiateResult`. A repeat adds a token row and resumes a
delivery that is due.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.cards import continue_card, deep_link
from shared.errors import ServiceUnavailable
from shared.handoffs import Handoff, Reminder, StoredEvent, handoff_id_for
from shared.hub import event_body
from shared.outbox import LEASE, Outbox
from shared.schedule import Due
from shared.timeutil import to_iso
from shared.tokens import mint, row_key
from shared.vocabulary import Delivery, DueKind, EventType

if TYPE_CHECKING:
    from shared.activities import HandoffContext, HandoffRequest
    from shared.handoffs import HandoffStore
    from shared.outbound import Deadline
    from shared.schedule import Schedule

log = logging.getLogger(__name__)

_REMINDER_FIELD_CHARS = 1000
SAFETY_NET_DELAY = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Binding:
    """Who may redeem the link: the user's Entra object id and tenant, both optional."""

    user_id: str | None = None
    tenant_id: str | None = None


@dataclass(frozen=True, slots=True)
class InitiateResult:
    created: bool
    handoff: Handoff
    token: str
    deep_link: str
    card: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "handoffId": self.handoff.handoff_id,
            "conversationId": self.handoff.conversation_id,
            "continuationToken": self.token,
            "deepLink": self.deep_link,
            "expiresAt": to_iso(self.handoff.expires_at),
            "hub": {"status": self.handoff.requested_delivery.value},
            "card": self.card,
        }


def initiate(
    request: HandoffRequest,
    binding: Binding,
    *,
    handoffs: HandoffStore,
    schedule: Schedule,
    outbox: Outbox,
    bot_id: str,
    ttl_seconds: int,
    retention: timedelta,
    deadline: Deadline,
    now: datetime,
) -> InitiateResult:
    handoff_id = handoff_id_for(request.conversation_id, request.activity_id)
    token = mint(handoff_id)
    link = deep_link(bot_id, token)  # a configuration error surfaces before anything is written
    hub = outbox.hub_configured
    sender_id = secrets.token_hex(8) if hub else None
    fresh = Handoff(
        handoff_id=handoff_id,
        conversation_id=request.conversation_id,
        activity_id=request.activity_id,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
        user_id=binding.user_id,
        tenant_id=binding.tenant_id,
        reminder=_reminder(request.context),
        requested_delivery=Delivery.PENDING if hub else Delivery.SKIPPED,
        last_activity_at=now,
        next_seq=2,
        settled_seq=0 if hub else 1,
        sender_id=sender_id,
        sender_until=now + LEASE if hub else None,
    )
    document = _document(request, created_at=to_iso(now))
    blobs = {"document": json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")}
    transcript = request.transcript
    inline = transcript.json_bytes if transcript is not None else None
    if inline is not None:
        blobs["transcript"] = inline
    requested = StoredEvent(handoff_id=handoff_id, seq=1, type=EventType.REQUESTED, occurred_at=now)

    # The sweeper's work is scheduled first: an index row that turns out to need nothing is harmless, a handoff
    # the sweeper could never find would be kept for ever.
    work = [Due(fresh.expires_at, DueKind.EXPIRE, handoff_id), Due(now + retention, DueKind.PURGE, handoff_id)]
    if hub:
        # A safety net in the same write: should this instance die while it holds the delivery lease, the sweeper
        # finds handoff.requested undelivered once the lease has lapsed (normally it finds nothing to do).
        work.append(Due(now + LEASE + SAFETY_NET_DELAY, DueKind.DELIVER, handoff_id))
    schedule.add(*work)
    handoff = handoffs.create(fresh, blobs, token_key=row_key(token), first_event=requested)
    created = handoff is not None
    if handoff is not None:
        if sender_id is not None:
            body = requested_body(handoff, requested, document=document, transcript_json=inline, deep_link=link)
            result = outbox.drain(handoff, sender_id, deadline=deadline, now=now, known=[requested], bodies={1: body})
            handoff = result.handoff or handoff
    else:
        handoff = handoffs.find(handoff_id)
        if handoff is None:  # cannot happen while records are only ever created whole
            raise ServiceUnavailable("The handoff record could not be read back; retry shortly.", code="storage_unavailable")
        # The binding and expiry belong to the handoff as first recorded; every token of it shares them.
        handoffs.add_token(handoff, row_key(token))
        handoff = outbox.resume(handoff, deadline=deadline, now=now).handoff or handoff

    log.info(
        "handoff %s: handoffId=%s hub=%s",
        "recorded" if created else "repeated",
        handoff_id,
        handoff.requested_delivery.value,
    )
    card = continue_card(link, bot_name=request.context.bot_name, expires_at=to_iso(handoff.expires_at))
    return InitiateResult(created=created, handoff=handoff, token=token, deep_link=link, card=card)


def requested_body(
    handoff: Handoff, event: StoredEvent, *, document: dict[str, Any], transcript_json: bytes | None, deep_link: str | None
) -> bytes:
    """`handoff.requested`: conversation, context, createdAt as recorded, a deep link, the transcript as received."""
    transcript = transcript_json if transcript_json is not None else json.dumps(document.get("transcriptReference")).encode()
    return event_body(
        type_=EventType.REQUESTED,
        handoff_id=handoff.handoff_id,
        seq=event.seq,
        occurred_at=to_iso(event.occurred_at),
        fields={
            "conversation": document["conversation"],
            "context": document["context"],
            "deepLink": deep_link,
            "expiresAt": to_iso(handoff.expires_at),
            "createdAt": document["createdAt"],
        },
        raw_tail=("transcript", transcript),
    )


class RequestedRenderer:
    """Renders a re-delivered `handoff.requested`: the recorded blobs, and a freshly minted link of the same
    handoff while it has not expired (tokens are never stored in plaintext, so the first one cannot be re-sent)."""

    def __init__(self, *, handoffs: HandoffStore, bot_id: str, now: Callable[[], datetime]) -> None:
        self._handoffs = handoffs
        self._bot_id = bot_id
        self._now = now

    def __call__(self, handoff: Handoff, event: StoredEvent) -> bytes:
        document = json.loads(self._handoffs.read_blob(handoff.handoff_id, "document") or b"{}")
        transcript = self._handoffs.read_blob(handoff.handoff_id, "transcript")
        link = None
        if handoff.expires_at > self._now() and handoff.claim_id is None and self._bot_id:
            token = mint(handoff.handoff_id)
            self._handoffs.add_token(handoff, row_key(token))
            link = deep_link(self._bot_id, token)
        return requested_body(handoff, event, document=document, transcript_json=transcript, deep_link=link)


def _reminder(context: HandoffContext) -> Reminder:
    return Reminder(
        bot_name=_cap(context.bot_name),
        last_topic=_cap(context.last_topic),
        last_phrase=_cap(context.last_phrase),
        agent_message=_cap(context.agent_message),
        language=_cap(context.language),
    )


def _cap(text: str | None) -> str | None:
    if text is None or len(text) <= _REMINDER_FIELD_CHARS:
        return text
    return text[: _REMINDER_FIELD_CHARS - 1] + "…"


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
