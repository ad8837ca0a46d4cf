"""Each handoff's events for the hub, numbered and delivered in order: the outbox.

Staging: a change that causes events (`stage`) gives them the next `seq` numbers and writes them in the same
batch as the change itself (`HandoffStore.commit`), so an event exists exactly when its cause does. If the
handoff's delivery lease is free and its retry is not deferred, the same batch takes the lease: this request
then posts the events (`Outbox.drain`), in seq order, each only after every earlier one was delivered or failed
for good, and records how far it got in one more write that also gives the lease back.

Whoever holds the lease is the only sender; a request that finds it held stores its event behind the others and
leaves it to the holder (who sees the new events when its final write meets the 412 of the append, and goes
on) or, when the hub is down, to the sweeper at the handoff's next retry time (a row in the due index). A
holder that dies loses the lease after `LEASE`; the next change of the handoff, or the sweeper, takes over.

Retries back off per handoff: the first `HANDOFF_HUB_RETRY_SECONDS` after the failure, doubling, at most every
15 minutes; an event still undelivered `HANDOFF_HUB_RETRY_HOURS` after its first failed attempt is given up
(`failed`, ERROR log), and so is one the hub refuses for good (a 4xx); the next event starts afresh.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.errors import ServiceUnavailable
from shared.handoffs import Handoff, HandoffStore, OutcomeUnknown, Stale, StoredEvent, event_entity
from shared.hub import event_body, webhook_id
from shared.logsafe import clean
from shared.schedule import Due, Schedule
from shared.timeutil import to_iso, utcnow
from shared.vocabulary import Delivery, DueKind, EventType

if TYPE_CHECKING:
    from shared.hub import HubClient
    from shared.outbound import Deadline

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)
MAX_RETRY_DELAY = 900  # seconds: at most every 15 minutes
MIN_SECONDS_FOR_A_POST = 0.5
USER_EVENTS = frozenset({EventType.MESSAGE, EventType.MESSAGE_UPDATED, EventType.MESSAGE_DELETED})


@dataclass(frozen=True, slots=True)
class Draft:
    """An event about to be staged: its type and its own fields (everything but type, handoffId, seq, occurredAt)."""

    type: EventType
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Staged:
    """A change ready to commit: the record as it will be, the event rows it adds, and whether it takes the lease."""

    updated: Handoff
    events: tuple[StoredEvent, ...]
    sender_id: str | None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [event_entity(event) for event in self.events]


@dataclass(frozen=True, slots=True)
class RetryTimes:
    first_seconds: int
    give_up_after: timedelta

    def next_delay(self, previous: int) -> int:
        return self.first_seconds if previous <= 0 else min(MAX_RETRY_DELAY, previous * 2)


def stage(
    current: Handoff,
    updated: Handoff,
    drafts: Sequence[Draft],
    *,
    now: datetime,
    hub_configured: bool,
    activity: bool = True,
    may_send: bool = True,
) -> Staged:
    """Number `drafts` after the handoff's last event and decide whether this request will send them."""
    seq = current.next_seq
    events = tuple(
        StoredEvent(
            handoff_id=current.handoff_id,
            seq=seq + index,
            type=draft.type,
            occurred_at=now,
            payload=json.dumps(draft.fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
        )
        for index, draft in enumerate(drafts)
    )
    updated = replace(updated, next_seq=seq + len(events))
    if activity:
        updated = replace(updated, last_activity_at=now)
    sender_id = None
    if not hub_configured:
        # No hub: every event is settled as skipped at once, in the same write.
        updated = replace(updated, settled_seq=updated.next_seq - 1)
    elif may_send and (events or updated.unsettled) and lease_free(current, now) and retry_due(current, now):
        sender_id = secrets.token_hex(8)
        updated = replace(updated, sender_id=sender_id, sender_until=now + LEASE)
    return Staged(updated=updated, events=events, sender_id=sender_id)


def lease_free(handoff: Handoff, now: datetime) -> bool:
    return handoff.sender_until is None or handoff.sender_until <= now


def retry_due(handoff: Handoff, now: datetime) -> bool:
    return handoff.retry_at is None or handoff.retry_at <= now


RenderRequested = Callable[[Handoff, StoredEvent], bytes]
TellUser = Callable[[Handoff, "Deadline"], bool]


@dataclass(frozen=True, slots=True)
class DrainResult:
    handoff: Handoff | None  # the record after the final write (None: it vanished or another sender took over)
    delivered: int = 0
    failed: int = 0
    pending: bool = False


class Outbox:
    """Delivers a handoff's staged events while holding its lease; see the module docstring."""

    def __init__(
        self,
        *,
        store: HandoffStore,
        schedule: Schedule,
        hub: HubClient | None,
        retry: RetryTimes,
        render_requested: RenderRequested,
        tell_user_messages_lost: TellUser | None = None,
    ) -> None:
        self._store = store
        self._schedule = schedule
        self._hub = hub
        self._retry = retry
        self._render_requested = render_requested
        self._tell_user = tell_user_messages_lost

    @property
    def hub_configured(self) -> bool:
        return self._hub is not None

    def drain(
        self,
        handoff: Handoff,
        sender_id: str,
        *,
        deadline: Deadline,
        now: datetime,
        known: Sequence[StoredEvent] = (),
        bodies: dict[int, bytes] | None = None,
        also: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> DrainResult:
        """Post the handoff's unsettled events in seq order, then record the outcome and give the lease back.

        `known` are event rows this request wrote itself (no need to read them back); `bodies` pre-rendered
        bodies by seq (handoff.requested as initiate built it); `also` other record changes for the final write;
        `limit` the most events to settle (delivered or given up) in this call (the sweeper's batch): the rest
        is left due at once, as when time runs out, with no backoff.
        """
        assert self._hub is not None
        cache = {event.seq: event for event in known}
        delivered = failed = 0
        stored = current = handoff  # `stored`: the record as last read or written (ETag, diff base); `current`: our view
        failed_rows: dict[int, StoredEvent] = {}
        carried: dict[str, Any] = dict(also or {})  # record changes made by our posts, kept across a re-read
        posting = True
        while True:
            settled = current.settled_seq
            pending = False
            user_lost = False
            seq = settled + 1
            while posting and seq < current.next_seq:
                event = cache.get(seq)
                if event is None:
                    for row in self._store.events(current.handoff_id, seq, current.next_seq - 1):
                        cache[row.seq] = row
                    event = cache.get(seq)
                    if event is None:  # a gap cannot be filled: never block the events behind it
                        log.error("hub event missing: handoffId=%s seq=%d", current.handoff_id, seq)
                        settled, seq = seq, seq + 1
                        continue
                if event.failed:
                    settled, seq = seq, seq + 1
                    continue
                if limit is not None and delivered + failed >= limit:
                    break
                if deadline.remaining() < MIN_SECONDS_FOR_A_POST:
                    pending = True
                    break
                body = (bodies or {}).get(seq) or self._render(current, event)
                answer = self._hub.post(webhook_id(current.handoff_id, seq, event.type), body, deadline)
                outcome = answer.delivery
                if outcome is Delivery.PENDING:
                    failed_at = utcnow()  # the retry counts from the failure, not from the start of the request
                    since = current.pending_since or failed_at
                    if failed_at - since < self._retry.give_up_after:
                        log.info("hub event pending: handoffId=%s seq=%d (%s)", current.handoff_id, seq, clean(answer.detail))
                        pending = True
                        if seq == 1:
                            carried["requested_delivery"] = Delivery.PENDING
                        break
                    outcome = Delivery.FAILED
                    log.error(
                        "hub event given up after %s of retries: handoffId=%s seq=%d type=%s (%s)",
                        self._retry.give_up_after, current.handoff_id, seq, event.type.value, clean(answer.detail),
                    )
                elif outcome is Delivery.FAILED:
                    log.error(
                        "hub refused an event for good: handoffId=%s seq=%d type=%s HTTP %s",
                        current.handoff_id, seq, event.type.value, answer.http_status,
                    )
                if outcome is Delivery.FAILED:
                    failed += 1
                    failed_rows[seq] = cache[seq] = replace(event, failed=True)
                    user_lost = user_lost or event.type in USER_EVENTS
                    # the next event starts with a fresh backoff
                    carried.update(retry_delay=0, pending_since=None, retry_at=None)
                    current = replace(current, retry_delay=0, pending_since=None, retry_at=None)
                else:
                    delivered += 1
                    if current.pending_since is not None or current.retry_delay:
                        # the hub is back: the next event's first attempt is now, not when this one first failed
                        carried.update(retry_delay=0, pending_since=None, retry_at=None)
                        current = replace(current, retry_delay=0, pending_since=None, retry_at=None)
                if seq == 1:
                    carried["requested_delivery"] = outcome
                settled, seq = seq, seq + 1

            changes = dict(carried)
            if pending:
                delay = self._retry.next_delay(current.retry_delay)
                failed_at = utcnow()
                changes.update(
                    retry_delay=delay, retry_at=failed_at + timedelta(seconds=delay), pending_since=current.pending_since or failed_at
                )
            elif posting and settled >= current.next_seq - 1:
                changes.update(retry_delay=0, retry_at=None, pending_since=None)
            if user_lost and not current.user_told_of_failure and self._tell_user is not None and self._tell_user(current, deadline):
                carried["user_told_of_failure"] = changes["user_told_of_failure"] = True
            final = replace(current, settled_seq=settled, sender_id=None, sender_until=None, **changes)
            try:
                committed = self._store.commit(stored, final, upsert=[event_entity(row) for row in failed_rows.values()])
            except (ServiceUnavailable, OutcomeUnknown):
                # What was posted is posted; only the record of it is missing. The caller's own work stands (its
                # event is stored): no error for it. The sweeper goes on once our lease has lapsed (best effort:
                # storage may be down for that write too, and then the handoff's next change does).
                log.warning("hub deliveries of handoffId=%s could not be recorded; retried after the lease", current.handoff_id)
                self._schedule_retry(replace(current, retry_at=stored.sender_until or now + LEASE), now)
                return DrainResult(None, delivered, failed, pending)
            except Stale:
                # The record changed while we posted (most often another event was staged behind ours): read it
                # again, keep our progress, and go round: post what was added, unless the hub is down or time is up.
                fresh = self._store.find(current.handoff_id)
                if fresh is None or fresh.sender_id != sender_id:
                    return DrainResult(None, delivered, failed, pending)
                stored = fresh
                current = replace(fresh, settled_seq=max(settled, fresh.settled_seq), **carried)
                posting = not pending and deadline.remaining() >= MIN_SECONDS_FOR_A_POST
                if pending:
                    carried.update({k: changes[k] for k in ("retry_delay", "retry_at", "pending_since")})
                continue
            if committed.unsettled and committed.retry_at is not None:
                self._schedule_retry(committed, now)
            elif committed.unsettled and not pending:
                # out of time with events left: the sweeper goes on at once
                self._schedule_retry(replace(committed, retry_at=now), now)
            return DrainResult(committed, delivered, failed, pending)

    def resume(self, handoff: Handoff, *, deadline: Deadline, now: datetime, limit: int | None = None) -> DrainResult:
        """Deliver what a handoff still owes the hub, if its retry is due and nobody else is sending: take the
        lease (one conditional write), then drain. Otherwise leave it: the holder, or the sweeper, goes on."""
        if self._hub is None or not handoff.unsettled or not lease_free(handoff, now) or not retry_due(handoff, now):
            return DrainResult(handoff)
        staged = stage(handoff, handoff, [], now=now, hub_configured=True, activity=False)
        if staged.sender_id is None:
            return DrainResult(handoff)
        try:
            committed = self._store.commit(handoff, staged.updated)
        except Stale:
            return DrainResult(self._store.find(handoff.handoff_id))
        result = self.drain(committed, staged.sender_id, deadline=deadline, now=now, limit=limit)
        return result if result.handoff is not None else replace(result, handoff=committed)

    def _schedule_retry(self, handoff: Handoff, now: datetime) -> None:
        at = handoff.retry_at or now
        try:
            self._schedule.add(Due(at, DueKind.DELIVER, handoff.handoff_id))
        except Exception:  # noqa: BLE001 - the sweeper's purge/expiry rows and the next change still find it
            log.warning("could not schedule the hub retry of handoffId=%s", handoff.handoff_id)

    def _render(self, handoff: Handoff, event: StoredEvent) -> bytes:
        if event.type is EventType.REQUESTED:
            return self._render_requested(handoff, event)
        return event_body(
            type_=event.type,
            handoff_id=handoff.handoff_id,
            seq=event.seq,
            occurred_at=to_iso(event.occurred_at),
            fields=event.fields(),
        )
