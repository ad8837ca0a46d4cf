"""User -> hub: what the user does in the Teams chat after the link, passed to the handoff that owns the chat.

A `message` costs (DESIGN "Storage budgets") 2 point reads (the chat's link, the handoff), 2 writes (one batch
staging the `handoff.message` event with the Teams message id's row, so a message Teams delivers twice is
relayed once; one write recording the delivery), and the hub POST. The user's 200 comes once the event is
durably staged: delivered at once when the hub is up, or left, in order, to the sweeper when it is not. If even
staging fails, the answer is 503 and the user is told (best effort) to send the message again.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared import teams as say
from shared.activities import end_chat_of
from shared.errors import HandoffError, ServiceUnavailable
from shared.handoffs import CONFLICT_ATTEMPTS, TEAMS_PREFIX, contention_pause, Handoff, OutcomeUnknown, RowExists, Stale, teams_message_entity
from shared.logsafe import clean
from shared.outbox import Draft, Staged, stage
from shared.redeem import STALE_CLAIM, end_handoff, is_personal
from shared.teams import conversation_of
from shared.timeutil import to_iso
from shared.vocabulary import EndReason, EventType

if TYPE_CHECKING:
    from shared.activities import Activity
    from shared.handoffs import HandoffStore
    from shared.links import LinkStore
    from shared.outbound import Deadline
    from shared.outbox import Outbox
    from shared.teams import TeamsChat

log = logging.getLogger(__name__)

CONNECTING_WAIT_SECONDS = 4.0


class Relay:
    def __init__(self, *, open_stores: Callable[[], tuple[HandoffStore, LinkStore, Outbox]], chat: TeamsChat) -> None:
        """`open_stores` is called on first use, inside the request's error handling: a storage outage on a cold
        instance (creating the tables) is then a 503 the user is told about, like any other."""
        self._open_stores = open_stores
        self._stores: tuple[HandoffStore, LinkStore, Outbox] | None = None
        self._chat = chat

    def _open(self) -> tuple[HandoffStore, LinkStore, Outbox]:
        if self._stores is None:
            self._stores = self._open_stores()
        return self._stores

    @property
    def _handoffs(self) -> HandoffStore:
        return self._open()[0]

    @property
    def _links(self) -> LinkStore:
        return self._open()[1]

    @property
    def _outbox(self) -> Outbox:
        return self._open()[2]

    def handle(self, activity: Activity, *, deadline: Deadline, now: datetime) -> None:
        """Act on an authenticated non-invoke activity; the caller answers 200 unless this raises."""
        kind = activity.type
        if kind == "message":
            end = end_chat_of(activity)
            if end is not None:
                self._end_chat(activity, end.handoff_id, deadline=deadline, now=now)
            else:
                self._relay(activity, EventType.MESSAGE, deadline=deadline, now=now)
        elif kind == "messageUpdate":
            self._relay(activity, EventType.MESSAGE_UPDATED, deadline=deadline, now=now)
        elif kind == "messageDelete":
            self._relay(activity, EventType.MESSAGE_DELETED, deadline=deadline, now=now)
        elif kind == "installationUpdate" and (activity.action or "").lower() == "remove":
            self._removed(activity, deadline=deadline, now=now)

    # ---- the owning handoff

    def _owner(self, activity: Activity, *, deadline: Deadline, now: datetime) -> Handoff | None:
        """The open handoff that owns this chat, or None. Waits (bounded) while a redemption is still connecting."""
        if not is_personal(activity) or activity.conversation is None or not activity.conversation.id:
            return None
        link = self._links.find(activity.conversation.id)
        if link is None:
            return None
        handoff = self._handoffs.find(link.handoff_id)
        waited = 0.0
        while handoff is not None and _still_connecting(handoff, now) and waited < min(CONNECTING_WAIT_SECONDS, deadline.remaining() - 2):
            time.sleep(0.2)
            waited += 0.2
            handoff = self._handoffs.find(link.handoff_id)
        if handoff is None or handoff.ended:
            return None
        if _still_connecting(handoff, now):
            raise ServiceUnavailable("The conversation is being connected right now; retry shortly.", code="in_progress", retry_after=2)
        return handoff if handoff.connected or handoff.claim_id is not None else None

    # ---- message, messageUpdate, messageDelete

    def _relay(self, activity: Activity, type_: EventType, *, deadline: Deadline, now: datetime) -> None:
        conversation = conversation_of(activity)
        try:
            handoff = self._owner(activity, deadline=deadline, now=now)
        except ServiceUnavailable:
            if type_ is EventType.MESSAGE:
                self._tell(conversation, say.NOT_PASSED_ON, activity, deadline)
            raise
        if handoff is None:
            if type_ is EventType.MESSAGE:
                self._tell(conversation, say.NO_OPEN_CONVERSATION, activity, deadline, must=True)
            return
        fields = _event_fields(activity, type_, now)
        try:
            still_open = self._stage_and_send(handoff, type_, fields, activity, deadline=deadline, now=now)
        except ServiceUnavailable:
            if type_ is EventType.MESSAGE:
                self._tell(conversation, say.NOT_PASSED_ON, activity, deadline)
            raise
        if not still_open and type_ is EventType.MESSAGE:
            self._tell(conversation, say.NO_OPEN_CONVERSATION, activity, deadline, must=True)

    def _stage_and_send(
        self, handoff: Handoff, type_: EventType, fields: dict[str, Any], activity: Activity, *, deadline: Deadline, now: datetime
    ) -> bool:
        """Stage the event (and post it when this request takes the lease). False: the handoff ended meanwhile."""
        message_id = activity.id if type_ is EventType.MESSAGE else None
        current: Handoff | None = handoff
        for attempt in range(CONFLICT_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            if current is None or current.ended:
                return False  # ended (or deleted) meanwhile: nothing to relay to
            staged = stage(current, current, [Draft(type_, fields)], now=now, hub_configured=self._outbox.hub_configured)
            seen = [teams_message_entity(current.handoff_id, message_id, staged.events[0].seq)] if message_id else []
            try:
                committed = self._handoffs.commit(current, staged.updated, create=[*staged.rows, *seen])
            except RowExists as exc:
                if exc.row_key.startswith(TEAMS_PREFIX):
                    fresh = self._handoffs.find(current.handoff_id)
                    if fresh is not None and staged.sender_id is not None and fresh.sender_id == staged.sender_id:
                        committed = fresh  # our own batch landed and the SDK's retry met it
                    else:
                        log.info("Teams message relayed before, not again: handoffId=%s messageId=%s", current.handoff_id, clean(message_id))
                        return True
                else:
                    current = self._handoffs.find(current.handoff_id)
                    continue
            except Stale:
                current = self._handoffs.find(current.handoff_id)
                continue
            except OutcomeUnknown:
                fresh = self._handoffs.find(current.handoff_id)
                if fresh is None or fresh.next_seq < staged.updated.next_seq or not self._landed(fresh, staged):
                    current = fresh
                    continue
                committed = fresh
            log.info("relayed %s: handoffId=%s seq=%d", type_.value, current.handoff_id, staged.events[0].seq)
            if staged.sender_id is not None:
                self._outbox.drain(committed, staged.sender_id, deadline=deadline, now=now, known=staged.events)
            return True
        raise ServiceUnavailable("The conversation is busy; nothing was lost, retry shortly.", code="busy", retry_after=1)

    def _landed(self, fresh: Handoff, staged: Staged) -> bool:
        """Whether our staged event is the one stored at its seq (our batch landed although its answer was lost)."""
        events = self._handoffs.events(fresh.handoff_id, staged.events[0].seq, staged.events[0].seq)
        return bool(events) and events[0].payload == staged.events[0].payload

    # ---- End chat, bot removed

    def _end_chat(self, activity: Activity, handoff_id: str | None, *, deadline: Deadline, now: datetime) -> None:
        conversation = conversation_of(activity)
        owner = self._owner(activity, deadline=deadline, now=now)
        if owner is None or (handoff_id is not None and handoff_id != owner.handoff_id):
            self._tell(conversation, say.ALREADY_CLOSED, activity, deadline, must=True)
            return
        end_handoff(self._handoffs, self._outbox, owner.handoff_id, EndReason.USER_ENDED, deadline=deadline, now=now)
        log.info("handoff ended by the user: handoffId=%s", owner.handoff_id)
        self._tell(conversation, say.USER_ENDED, activity, deadline, must=True)

    def _removed(self, activity: Activity, *, deadline: Deadline, now: datetime) -> None:
        owner = self._owner(activity, deadline=deadline, now=now)
        if owner is not None:
            end_handoff(self._handoffs, self._outbox, owner.handoff_id, EndReason.UNDELIVERABLE, deadline=deadline, now=now)
            log.info("bot removed from the chat, handoff ended: handoffId=%s", owner.handoff_id)

    def _tell(self, conversation: Any, message: str, activity: Activity, deadline: Deadline, *, must: bool = False) -> None:
        try:
            self._chat.send(conversation, [say.text(conversation, message, reply_to=activity.id)], deadline)
        except HandoffError:
            if must:
                raise
            log.warning("could not tell the user in conversationId=%s", clean(conversation.conversation_id))


def _still_connecting(handoff: Handoff, now: datetime) -> bool:
    return handoff.connecting and handoff.claimed_at is not None and handoff.claimed_at + STALE_CLAIM > now


def _event_fields(activity: Activity, type_: EventType, now: datetime) -> dict[str, Any]:
    dump = {"by_alias": True, "exclude_none": True}
    user = activity.from_.model_dump(**dump) if activity.from_ else {}
    fields: dict[str, Any] = {"messageId": activity.id}
    if type_ is EventType.MESSAGE:
        fields.update(
            sentAt=activity.timestamp or to_iso(now),
            text=activity.text or "",
            textFormat=activity.text_format or "plain",
            attachments=[a.model_dump(**dump) for a in activity.attachments or ()],
            user={k: user[k] for k in ("id", "aadObjectId", "name") if k in user},
        )
    elif type_ is EventType.MESSAGE_UPDATED:
        fields.update(text=activity.text or "", attachments=[a.model_dump(**dump) for a in activity.attachments or ()])
    return fields

