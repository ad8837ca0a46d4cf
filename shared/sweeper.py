"""The sweeper (function `handoff_sweeper`, a timer): what is due, found without scanning, and done in time.

Work is found in the due index (`shared.schedule`): one range query on its one partition returns the rows due
now, oldest first, so a run with nothing due costs one storage request however many handoffs are stored, and a
run's cost grows with the work due. Each row names a handoff and a kind:

- `deliver`: the handoff owes the hub events and their retry is due: `Outbox.resume` takes the delivery lease
  (one conditional write) and posts them in `seq` order, with the outbox's backoff and give-up;
- `expire`: its links expire now: a handoff never redeemed ends as `expired` (one conditional batch that also
  stages `handoff.ended`, then delivered like any event); for a redeemed one the row keeps watch (10, 30, 70,
  ... minutes after creation, `watch_time`) until it has ended and owes the hub nothing, resuming events nobody
  is delivering (a request whose instance died holding the delivery lease, or whose last write failed, left no
  retry row);
- `purge`: its retention may be over: if `last activity + HANDOFF_RETENTION_DAYS` has passed, the chat's link is
  deleted if it still names the handoff, then every row of its partition (the record first, with If-Match, so no
  concurrent writer can bring it back); otherwise the check moves to the new due time.

A row is deleted once handled, never before, so a run that dies leaves its work to the next; handling one twice
is harmless, since every change is conditional on the record as read. That is also why two runs at once are
safe: of two sweeps on the same handoff one wins each conditional write (the delivery lease, the end, the
purge), the other re-reads and finds nothing left to do.

A run handles at most HANDOFF_SWEEP_BATCH items (events delivered or given up, handoffs expired or purged; rows
that needed nothing do not count) and starts nothing after WORK_SECONDS, so it ends within RUN_SECONDS. When the
hub has left HUB_DOWN_AFTER handoffs in a row pending, the run stops probing it: the other `deliver` rows move
HANDOFF_HUB_RETRY_SECONDS on (their handoffs' own backoff untouched), so that they neither hold the run up nor
crowd the expiries and purges due behind them out of the next run's page.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.errors import ConfigurationError, ServiceUnavailable
from shared.handoffs import OutcomeUnknown, RowExists, Stale
from shared.logsafe import clean
from shared.outbox import Draft, lease_free, retry_due, stage
from shared.redeem import STALE_CLAIM
from shared.schedule import Due
from shared.vocabulary import DueKind, EndReason, EventType, State

if TYPE_CHECKING:
    from shared.handoffs import Handoff, HandoffStore
    from shared.links import LinkStore
    from shared.outbound import Deadline
    from shared.outbox import DrainResult, Outbox
    from shared.schedule import Schedule
    from shared.settings import Settings

log = logging.getLogger(__name__)

RUN_SECONDS = 25.0  # the contract: a run stops within 25 s
WORK_SECONDS = 20.0  # no post or new item after this: the rest of RUN_SECONDS is for the last writes
MIN_SECONDS_FOR_AN_ITEM = 1.0
WATCH_FIRST = timedelta(minutes=10)  # an open conversation's expiry row looks for stranded events 10, 30, 70, ... min in


def watch_time(handoff: Handoff, now: datetime) -> datetime:
    """The next look of a handoff's watch: created_at + WATCH_FIRST x (2^k - 1), the first such time after now.

    Doubling keeps the cost of watching a long conversation small (about a dozen looks in a month), and the
    times depend only on the handoff, so duplicate watch rows (a repeated initiate's expiry row, two sweeps a
    second apart) land on the same index row and merge."""
    step, at = WATCH_FIRST, handoff.created_at + WATCH_FIRST
    while at <= now:
        step *= 2
        at += step
    return at
HUB_DOWN_AFTER = 2  # handoffs in a row left pending by the hub: stop probing it in this run
_ATTEMPTS = 4  # conditional writes lost to concurrent changes, per item


@dataclass
class SweepCounts:
    """What one run did; `items` is what counts against HANDOFF_SWEEP_BATCH."""

    delivered: int = 0
    still_pending: int = 0
    failed: int = 0
    expired: int = 0
    purged: int = 0

    @property
    def items(self) -> int:
        return self.delivered + self.failed + self.expired + self.purged

    def line(self, elapsed_ms: int) -> str:
        return (
            f"sweep: delivered={self.delivered} still_pending={self.still_pending} failed={self.failed} "
            f"expired={self.expired} purged={self.purged} in {elapsed_ms} ms"
        )


@dataclass(frozen=True, slots=True)
class SweepTools:
    """What a run needs once something is due (built lazily: an idle run touches only the due index)."""

    handoffs: HandoffStore
    links: LinkStore
    outbox: Outbox


class Handled(str, enum.Enum):
    DONE = "done"  # delete the index row
    KEEP = "keep"  # leave it due: the next run (or a later page of this one) takes it again


class Sweeper:
    def __init__(
        self,
        *,
        schedule: Callable[[], Schedule],
        tools: Callable[[], SweepTools],
        retention: timedelta,
        batch: int,
        hub_recheck: timedelta,
    ) -> None:
        """`schedule` and `tools` are factories, called inside the run (a storage outage there ends the run like any
        other), `tools` only once something is due."""
        self._open_schedule = schedule
        self._schedule_client: Schedule | None = None
        self._make_tools = tools
        self._tools: SweepTools | None = None
        self._retention = retention
        self._batch = batch
        self._hub_recheck = hub_recheck
        self._hub_pending_in_a_row = 0

    @property
    def _schedule(self) -> Schedule:
        if self._schedule_client is None:
            self._schedule_client = self._open_schedule()
        return self._schedule_client

    @property
    def tools(self) -> SweepTools:
        if self._tools is None:
            self._tools = self._make_tools()
        return self._tools

    def run(self, *, now: datetime, deadline: Deadline) -> SweepCounts:
        """One run: due rows, oldest first, page after page, until the batch, the time or the due work runs out.
        Logs the one summary line. Raises only `ConfigurationError`."""
        started = time.monotonic()
        counts = SweepCounts()
        seen: set[str] = set()
        self._hub_pending_in_a_row = 0
        try:
            while self._may_start(counts, deadline):
                page = self._schedule.due(now, self._batch)
                fresh = [item for item in page if item.row_key not in seen]
                for item in fresh:
                    if not self._may_start(counts, deadline):
                        break
                    seen.add(item.row_key)
                    self._handle_logged(item, counts, now=now, deadline=deadline)
                if not fresh or len(page) < self._batch:
                    break
        except ServiceUnavailable:
            log.warning("sweep stopped early: Table Storage is unavailable; what is left stays due for the next run")
        finally:
            log.info(counts.line(round((time.monotonic() - started) * 1000)))
        return counts

    def _may_start(self, counts: SweepCounts, deadline: Deadline) -> bool:
        return counts.items < self._batch and deadline.remaining() >= MIN_SECONDS_FOR_AN_ITEM

    def _handle_logged(self, item: Due, counts: SweepCounts, *, now: datetime, deadline: Deadline) -> None:
        try:
            handled = self._handle(item, counts, now=now, deadline=deadline)
        except (ServiceUnavailable, ConfigurationError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug with one row must not stop the others; the row stays due
            log.error(
                "sweep could not handle %s of handoffId=%s (%s); it stays due for the next run",
                item.kind.value, clean(item.handoff_id), type(exc).__name__,
            )
            return
        if handled is Handled.DONE:
            self._schedule.done(item)

    @property
    def _hub_down(self) -> bool:
        return self._hub_pending_in_a_row >= HUB_DOWN_AFTER

    def _handle(self, item: Due, counts: SweepCounts, *, now: datetime, deadline: Deadline) -> Handled:
        if item.kind is DueKind.DELIVER and self._hub_down:
            return self._later(item, now + self._hub_recheck)  # not even read: the hub is down in this run
        handoff = self.tools.handoffs.find(item.handoff_id)
        if item.kind is DueKind.PURGE:
            return self._purge(item, handoff, counts, now=now)
        if handoff is None:
            return Handled.DONE  # purged meanwhile: nothing left to do
        if item.kind is DueKind.EXPIRE:
            return self._expire(item, handoff, counts, now=now, deadline=deadline)
        return self._deliver(item, handoff, counts, now=now, deadline=deadline)

    def _later(self, item: Due, at: datetime) -> Handled:
        """Check again at `at` (a new index row); the row in hand is done, unless it is that very row."""
        later = Due(at, item.kind, item.handoff_id)
        self._schedule.add(later)
        return Handled.KEEP if later.row_key == item.row_key else Handled.DONE

    # ---- deliver

    def _deliver(self, item: Due, handoff: Handoff, counts: SweepCounts, *, now: datetime, deadline: Deadline) -> Handled:
        outbox = self.tools.outbox
        if not outbox.hub_configured or not handoff.unsettled:
            return Handled.DONE  # nothing owed (or no hub to owe it to any more: HANDOFF_HUB_URL was unset)
        if not lease_free(handoff, now):
            # another request or sweep is sending; if it dies, its lease runs out then and this row takes over
            return self._later(item, handoff.sender_until or now)
        if not retry_due(handoff, now):
            return self._later(item, handoff.retry_at or now)
        result = outbox.resume(handoff, deadline=deadline, now=now, limit=self._batch - counts.items)
        return self._after_drain(item, result, counts, now=now)

    def _after_drain(self, item: Due | None, result: DrainResult, counts: SweepCounts, *, now: datetime) -> Handled:
        counts.delivered += result.delivered
        counts.failed += result.failed
        after = result.handoff
        if result.pending:
            self._hub_pending_in_a_row += 1
        elif result.delivered or result.failed:
            self._hub_pending_in_a_row = 0
        if after is None or not after.unsettled:
            return Handled.DONE
        owed = after.next_seq - 1 - after.settled_seq
        if result.pending:
            counts.still_pending += owed
            return Handled.DONE  # the outbox scheduled the next attempt, after its backoff
        if item is None:
            return Handled.DONE
        if not lease_free(after, now):
            return self._later(item, after.sender_until or now)
        if not retry_due(after, now):
            return self._later(item, after.retry_at or now)
        counts.still_pending += owed
        return Handled.KEEP  # cut short by the batch or the time: still due now

    # ---- expire

    def _expire(self, item: Due, handoff: Handoff | None, counts: SweepCounts, *, now: datetime, deadline: Deadline) -> Handled:
        handoffs, outbox = self.tools.handoffs, self.tools.outbox
        for _ in range(_ATTEMPTS):
            if handoff is None:
                return Handled.DONE
            if handoff.ended:
                # Ended, but perhaps still owing the hub its last events (`handoff.ended` itself, most often): keep
                # watching until they are delivered or given up, then stop.
                if not (outbox.hub_configured and handoff.unsettled):
                    return Handled.DONE
                self._resume_stranded(handoff, counts, now=now, deadline=deadline)
                return self._later(item, watch_time(handoff, now))
            if handoff.claim_id is not None:
                if not handoff.connected and handoff.claimed_at is not None and handoff.claimed_at + STALE_CLAIM > now:
                    # a redemption is connecting right now: if it fails it releases the claim; look again then
                    return self._later(item, handoff.claimed_at + STALE_CLAIM)
                # Redeemed and open: the row keeps watch while the conversation lasts, so that events a request
                # could not hand on (its instance died holding the lease, or storage failed at its last write,
                # and so no retry row exists) are found at its next look, never left for ever.
                self._resume_stranded(handoff, counts, now=now, deadline=deadline)
                return self._later(item, watch_time(handoff, now))
            if handoff.expires_at > now:
                return self._later(item, handoff.expires_at)
            staged = stage(
                handoff,
                replace(handoff, state=State.ENDED, end_reason=EndReason.EXPIRED),
                [Draft(EventType.ENDED, {"reason": EndReason.EXPIRED.value})],
                now=now,
                hub_configured=outbox.hub_configured,
                activity=False,  # an expiry is not activity: the retention clock keeps running from the last one
                may_send=not self._hub_down,
            )
            try:
                committed = handoffs.commit(handoff, staged.updated, create=staged.rows)
            except (Stale, RowExists, OutcomeUnknown):
                handoff = handoffs.find(item.handoff_id)  # changed meanwhile (or our write's answer was lost): decide again
                continue
            counts.expired += 1
            log.info("handoff expired unused: handoffId=%s", committed.handoff_id)
            if staged.sender_id is not None:
                result = outbox.drain(
                    committed, staged.sender_id, deadline=deadline, now=now, known=staged.events, limit=self._batch - counts.items
                )
                self._after_drain(None, result, counts, now=now)
            elif committed.unsettled and outbox.hub_configured and lease_free(committed, now):
                # not sent now (the hub is down in this run, or its retry is not due yet): a delivery row for later
                later = now + self._hub_recheck if self._hub_down else committed.retry_at or now
                self._schedule.add(Due(later, DueKind.DELIVER, committed.handoff_id))
            return Handled.DONE
        log.warning("sweep: handoffId=%s kept changing while it was being expired; it stays due", item.handoff_id)
        return Handled.KEEP

    def _resume_stranded(self, handoff: Handoff, counts: SweepCounts, *, now: datetime, deadline: Deadline) -> None:
        outbox = self.tools.outbox
        if outbox.hub_configured and handoff.unsettled and lease_free(handoff, now) and retry_due(handoff, now) and not self._hub_down:
            result = outbox.resume(handoff, deadline=deadline, now=now, limit=self._batch - counts.items)
            self._after_drain(None, result, counts, now=now)

    # ---- purge

    def _purge(self, item: Due, handoff: Handoff | None, counts: SweepCounts, *, now: datetime) -> Handled:
        handoffs, links = self.tools.handoffs, self.tools.links
        unlinked = None
        for _ in range(_ATTEMPTS):
            if handoff is None:
                # purged already (by a run that stopped half-way, or one running now): make sure nothing is left
                if handoffs.purge_remains(item.handoff_id):
                    log.info("handoff remains deleted: handoffId=%s", item.handoff_id)
                return Handled.DONE
            due_at = handoff.last_activity + self._retention
            if due_at > now:
                if unlinked is not None and not handoff.ended:
                    links.create_if_new(unlinked.teams_conversation_id, handoff.handoff_id)  # it is alive after all
                return self._later(item, due_at)
            if handoff.teams is not None and unlinked is None:
                link = links.find(handoff.teams.conversation_id)
                if link is not None and link.handoff_id == handoff.handoff_id:
                    links.delete_if_unchanged(link)
                    unlinked = link
            try:
                rows = handoffs.purge(handoff)
            except Stale:
                handoff = handoffs.find(item.handoff_id)
                continue
            counts.purged += 1
            log.info("handoff purged after its retention period: handoffId=%s rows=%d", handoff.handoff_id, rows)
            return Handled.DONE
        log.warning("sweep: handoffId=%s kept changing while it was being purged; it stays due", item.handoff_id)
        return Handled.KEEP


def sweeper_for(settings: Settings) -> Sweeper:
    """The composition of a run from settings (the due index now, the rest when something is due)."""
    from shared import services

    return Sweeper(
        schedule=lambda: services.schedule(settings),
        tools=lambda: SweepTools(
            handoffs=services.handoff_store(settings),
            links=services.link_store(settings),
            outbox=services.outbox(settings),
        ),
        retention=timedelta(days=settings.retention_days),
        batch=settings.sweep_batch,
        hub_recheck=timedelta(seconds=settings.hub_retry_seconds),
    )
