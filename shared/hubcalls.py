"""Hub -> user: one signed hub call (`handoff_hub`), acted on once per `webhook-id`, shown to the user in Teams.

Happy path (DESIGN "Storage budgets": 1 point read, 2 writes, the connector POSTs): read the record; one batch
creates the call's idempotency row (`key.<sha256(webhook-id)>`, in progress, with the SHA-256 of the body) and
merges the record's change with If-Match (queue position, agent, state, last activity); send to the user; then
the idempotency row is updated with the stored answer. A repeat meets the existing row (the batch fails with a
409): same body and done -> the stored answer, nothing sent again; another body -> 409
`idempotency_key_reused`; still in progress -> 409 `in_progress` (a row left in progress for 30 s by a crashed
instance is taken over). Concurrent calls of one handoff are serialised by the record's ETag: a `message` that
loses to a `completed` reads the record again and is refused as `handoff_ended`. If the Bot Connector fails,
the change and the idempotency row are undone (nothing recorded, a retry acts once), except that `completed`
and `failed` still end the handoff. `typing` is never recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import teams as say
from shared.errors import HandoffError, ServiceUnavailable, UpstreamRefused
from shared.handoffs import CONFLICT_ATTEMPTS, is_handoff_id, contention_pause, KEY_PREFIX, Handoff, IdempotencyRecord, OutcomeUnknown, RowExists, Stale, hashed_key, key_entity
from shared.redeem import STALE_CLAIM
from shared.timeutil import utcnow
from shared.vocabulary import EndReason, HubEventType, State

if TYPE_CHECKING:
    from shared.activities import HubEvent
    from shared.handoffs import HandoffStore
    from shared.outbound import Deadline
    from shared.teams import TeamsChat

log = logging.getLogger(__name__)

KEY_LOCK = timedelta(seconds=30)
CALL_LEASE = timedelta(seconds=12)  # longer than a call's 9-second budget: lapses only if its instance died
CALL_WAIT_SECONDS = 5.0
CONNECTING_WAIT_SECONDS = 5.0
_ATTEMPTS = CONFLICT_ATTEMPTS


class HubCallError(HandoffError):
    """A hub call refused for the handoff's state or its key (404 / 409 / 413)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.status = status


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


class HubCalls:
    def __init__(self, *, handoffs: HandoffStore, chat: TeamsChat) -> None:
        self._handoffs = handoffs
        self._chat = chat

    def handle(self, handoff_id: str, webhook_id: str, body: bytes, event: HubEvent, *, deadline: Deadline, now: datetime) -> Answer:
        body_sha = hashlib.sha256(body).hexdigest()
        key_row = hashed_key(KEY_PREFIX, webhook_id)
        if not is_handoff_id(handoff_id):  # never a table key from raw input
            _gone()
        if event.type is HubEventType.TYPING:
            handoff = self._handoffs.find(handoff_id) or _gone()
            key = self._handoffs.find_key(handoff_id, key_row)  # never recorded, but a reused key is still refused
            if key is not None and key.body_sha256 != body_sha:
                raise _reused()
            return self._typing(handoff, deadline=deadline, now=now)
        handoff = self._handoffs.find(handoff_id) or _gone()

        for attempt in range(_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            handoff = self._wait_while_connecting(handoff, deadline=deadline, now=now)
            refusal = _refusal(handoff, event)
            if refusal is not None:
                # The repeat check comes before the state: a call answered before is answered the same.
                repeat = self._answer_repeat(handoff, key_row, body_sha, now=now)
                if repeat is not None:
                    return repeat
                raise refusal
            activities = self._activities(handoff, event) if handoff.connected else []
            if handoff.connected and _call_in_flight(handoff, utcnow()):
                # The repeat check comes first: a call answered before is answered now, not after another's wait.
                repeat = self._answer_repeat(handoff, key_row, body_sha, now=now)
                if repeat is not None:
                    return repeat
                handoff = self._wait_for_the_call_before(handoff, deadline=deadline)
                continue  # look again at what the earlier call left (it may have ended the handoff)
            call_id = secrets.token_hex(8)
            changed = _apply(handoff, event, now)
            if handoff.connected:
                changed = replace(changed, agent_call_id=call_id, agent_call_until=now + CALL_LEASE)
            lock = IdempotencyRecord(body_sha256=body_sha, done=not handoff.connected, locked_until=now + KEY_LOCK)
            if not handoff.connected:
                answer = Answer(202, _answer_body(changed, delivered=False))
                lock = replace(lock, status=answer.status, answer=json.dumps(answer.body))
            try:
                committed = self._handoffs.commit(handoff, changed, create=[key_entity(handoff_id, key_row, lock)])
            except RowExists:
                repeat = self._answer_repeat(handoff, key_row, body_sha, now=now)
                if repeat is not None:
                    return repeat
                handoff = self._handoffs.find(handoff_id) or _gone()
                continue  # an in-progress row left by a crashed instance was taken over: go again
            except (Stale, OutcomeUnknown):
                handoff = self._handoffs.find(handoff_id) or _gone()
                continue
            if not handoff.connected:
                log.info("hub %s recorded before the user connected: handoffId=%s", event.type.value, handoff_id)
                return answer
            return self._send(handoff, committed, key_row, lock, event, activities, deadline=deadline)
        raise ServiceUnavailable("The handoff is changing right now; nothing was recorded, retry shortly.", code="busy", retry_after=1)

    # ---- sending

    def _send(
        self, before: Handoff, committed: Handoff, key_row: str, lock: IdempotencyRecord, event: HubEvent,
        activities: list[dict[str, Any]], *, deadline: Deadline,
    ) -> Answer:
        assert committed.teams is not None
        try:
            ids = self._chat.send(committed.teams, activities, deadline)
        except (ServiceUnavailable, UpstreamRefused) as failure:
            self._undo(before, committed, key_row, keep_end=isinstance(failure, UpstreamRefused) and committed.ended)
            raise
        answer = Answer(200, {**_answer_body(committed, delivered=True), "activityIds": ids})
        done = replace(lock, done=True, status=200, answer=json.dumps(answer.body), locked_until=None)
        try:
            # One batch: the stored answer, and the call lease given back so that the handoff's next call may send.
            self._finish(committed, key_row, done)
        except (OutcomeUnknown, HandoffError):
            # The user has it; only the stored answer is missing. Write the key row alone (best effort): without it
            # a repeat after 30 s would send again, which the contract allows only for unknown connector outcomes.
            try:
                self._handoffs.put_key(committed.handoff_id, key_row, done)
            except HandoffError:
                log.warning("answer of a hub call could not be stored: handoffId=%s", committed.handoff_id)
        log.info("hub %s passed to the user: handoffId=%s", event.type.value, committed.handoff_id)
        return answer

    def _finish(self, committed: Handoff, key_row: str, done: IdempotencyRecord) -> None:
        current = committed
        for attempt in range(_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            if current.agent_call_id != committed.agent_call_id:  # our lease lapsed and was taken: the key alone
                self._handoffs.finish_key(committed.handoff_id, key_row, done)
                return
            released = replace(current, agent_call_id=None, agent_call_until=None)
            try:
                self._handoffs.commit(current, released, upsert=[key_entity(committed.handoff_id, key_row, done)])
                return
            except (Stale, OutcomeUnknown):
                fresh = self._handoffs.find(committed.handoff_id)
                if fresh is None:
                    log.info("hub call answered, but its handoff was deleted meanwhile: handoffId=%s", committed.handoff_id)
                    return
                current = fresh
        self._handoffs.finish_key(committed.handoff_id, key_row, done)

    def _wait_for_the_call_before(self, handoff: Handoff, *, deadline: Deadline) -> Handoff:
        """Calls of one handoff reach the user one at a time, in the order they commit: wait (bounded) while an
        earlier call is still sending, so that a `message` retried by the connector never lands after a later
        `completed`."""
        waited = 0.0
        while _call_in_flight(handoff, utcnow()) and waited < max(0.0, min(CALL_WAIT_SECONDS, deadline.remaining() - 3)):
            time.sleep(0.05)
            waited += 0.05
            handoff = self._handoffs.find(handoff.handoff_id) or _gone()
        if _call_in_flight(handoff, utcnow()):
            raise ServiceUnavailable(
                "An earlier call of this handoff is still being passed to the user; nothing was recorded, retry shortly.",
                code="busy",
                retry_after=1,
            )
        return handoff

    def _undo(self, before: Handoff, committed: Handoff, key_row: str, *, keep_end: bool) -> None:
        """Nothing recorded after a connector failure: this call's own changes and its key row go, conditionally.

        Only a field that still holds this call's value is put back, so a change made since by someone else (the
        user pressing End chat, say) is never undone; `completed`/`failed` refused for good keep their end."""
        current = committed
        for attempt in range(_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            restored = replace(current, agent_call_id=None, agent_call_until=None) if current.agent_call_id == committed.agent_call_id else current
            ours_end = (current.state, current.end_reason) == (committed.state, committed.end_reason)
            if ours_end and not keep_end and (before.state, before.end_reason) != (committed.state, committed.end_reason):
                restored = replace(restored, state=before.state, end_reason=before.end_reason)
            for name in ("queue_position", "wait_seconds", "agent_name", "last_activity_at"):
                if getattr(current, name) == getattr(committed, name) and getattr(before, name) != getattr(committed, name):
                    restored = replace(restored, **{name: getattr(before, name)})
            try:
                self._handoffs.commit(current, restored, delete=[(key_row, None)])
                return
            except (Stale, OutcomeUnknown):
                fresh = self._handoffs.find(committed.handoff_id)
                if fresh is None:
                    return
                current = fresh
            except HandoffError:
                break
        log.error("a failed hub call could not be undone: handoffId=%s (its key is released after %s)", committed.handoff_id, KEY_LOCK)

    def _typing(self, handoff: Handoff, *, deadline: Deadline, now: datetime) -> Answer:
        handoff = self._wait_while_connecting(handoff, deadline=deadline, now=now)
        if handoff.ended:
            raise _ended()
        if not handoff.connected or handoff.teams is None:
            raise _not_connected()
        ids = self._chat.send(handoff.teams, [say.typing(handoff.teams)], deadline)
        return Answer(200, {**_answer_body(handoff, delivered=True), "activityIds": ids})

    def _activities(self, handoff: Handoff, event: HubEvent) -> list[dict[str, Any]]:
        teams = handoff.teams
        assert teams is not None
        agent = event.agent.name if event.agent else None
        if event.type is HubEventType.MESSAGE:
            fields: dict[str, Any] = {}
            if event.text:
                fields["text"] = say.agent_message_text(event.text, agent)
                fields["textFormat"] = "markdown" if (agent or event.text_format.value == "markdown") else "plain"
            if event.attachments:
                fields["attachments"] = [dict(a) for a in event.attachments]
            activity = say.outgoing(teams, type="message", **fields)
            if len(json.dumps(activity, ensure_ascii=False).encode("utf-8")) > say.MAX_ACTIVITY_BYTES:
                raise HubCallError(413, "message_too_large", f"The message would exceed Teams' limit ({say.MAX_ACTIVITY_BYTES} bytes as an activity); shorten the text or the attachments.")
            return [activity]
        if event.type is HubEventType.QUEUED:
            message = event.message or say.queue_text(event.position, event.wait_seconds) or say.WAITING
        elif event.type is HubEventType.ACCEPTED:
            message = event.message or say.joined_text(agent or "An agent")
        elif event.type is HubEventType.COMPLETED:
            message = event.message or say.completed_text(handoff.agent_name)
        else:
            message = event.message or say.FAILED
        return [say.text(teams, message)]

    # ---- repeats and waiting

    def _answer_repeat(self, handoff: Handoff, key_row: str, body_sha: str, *, now: datetime) -> Answer | None:
        """The stored answer of a call seen before, or a 409; None when there is no usable key (act anew)."""
        record = self._handoffs.find_key(handoff.handoff_id, key_row)
        if record is None:
            return None
        if record.body_sha256 != body_sha:
            raise _reused()
        if record.done and record.status is not None and record.answer is not None:
            return Answer(record.status, json.loads(record.answer))
        if record.locked_until is not None and record.locked_until > now:
            wait = max(1, int((record.locked_until - now).total_seconds()))
            raise HubCallError(409, "in_progress", "A call with this webhook-id is being processed right now; retry after the given time.", retry_after=min(wait, 30))
        # Left in progress by an instance that died: take it over.
        self._handoffs.delete_key(handoff.handoff_id, key_row, record.etag)
        return None

    def _wait_while_connecting(self, handoff: Handoff, *, deadline: Deadline, now: datetime) -> Handoff:
        """A redemption is sending the continuation: what the hub says now is shown after it, never lost between."""
        waited = 0.0
        while _still_connecting(handoff, now) and waited < min(CONNECTING_WAIT_SECONDS, deadline.remaining() - 2):
            time.sleep(0.2)
            waited += 0.2
            handoff = self._handoffs.find(handoff.handoff_id) or _gone()
        if _still_connecting(handoff, now):
            raise ServiceUnavailable("The user is being connected right now; nothing was recorded, retry shortly.", code="in_progress", retry_after=2)
        if handoff.connecting:  # the redemption died or could not record `connected`: its messages went out
            handoff = replace(handoff, connected=True)
        return handoff


def _call_in_flight(handoff: Handoff, now: datetime) -> bool:
    return handoff.agent_call_id is not None and handoff.agent_call_until is not None and handoff.agent_call_until > now


def _still_connecting(handoff: Handoff, now: datetime) -> bool:
    return handoff.connecting and handoff.claimed_at is not None and handoff.claimed_at + STALE_CLAIM > now


def _refusal(handoff: Handoff, event: HubEvent) -> HubCallError | None:
    if handoff.ended:
        return _ended()
    if event.type is HubEventType.MESSAGE and not handoff.connected:
        return _not_connected()
    return None


def _apply(handoff: Handoff, event: HubEvent, now: datetime) -> Handoff:
    """The record after a status or message event: each fact only moves forward."""
    changed = replace(handoff, last_activity_at=now)
    if event.type is HubEventType.QUEUED:
        changed = replace(changed, queue_position=event.position, wait_seconds=event.wait_seconds)
    elif event.type is HubEventType.ACCEPTED:
        changed = replace(changed, state=State.ACCEPTED, agent_name=event.agent.name if event.agent else None, queue_position=None, wait_seconds=None)
    elif event.type is HubEventType.COMPLETED:
        changed = replace(changed, state=State.ENDED, end_reason=EndReason.COMPLETED)
    elif event.type is HubEventType.FAILED:
        changed = replace(changed, state=State.ENDED, end_reason=EndReason.FAILED)
    return changed


def _answer_body(handoff: Handoff, *, delivered: bool) -> dict[str, Any]:
    return {"handoffId": handoff.handoff_id, "state": handoff.state.value, "connected": handoff.connected, "delivered": delivered}


def _ended() -> HubCallError:
    return HubCallError(409, "handoff_ended", "The handoff has ended; nothing more can be sent to the user in it.")


def _not_connected() -> HubCallError:
    return HubCallError(409, "not_connected", "The user has not opened the link in Teams yet; send messages once the handoff.connected event arrived.")


def _reused() -> HubCallError:
    return HubCallError(409, "idempotency_key_reused", "This webhook-id was used before with a different body; use a new webhook-id for a new call.")


def _gone() -> Handoff:
    raise HubCallError(404, "handoff_not_found", "No such handoff: it was deleted after its retention period.")

