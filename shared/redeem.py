"""Redeem a continuation token exactly once, link the handoff to the user's Teams chat, and continue there.

Happy path (DESIGN "Storage budgets": 2 point reads, 3 writes, the connector POSTs, the handoff.connected POST):
1. read the record and the token row (two point reads in the handoff's partition);
2. claim: one batch in the partition: the record merged with If-Match (claim id, the Teams conversation, the
   next seq, the delivery lease), the `claim` row created, the `handoff.connected` event staged. Of any number
   of concurrent redemptions exactly one commits; the others see the 412/409 and read the winner's claim;
3. link the chat to the handoff (create the link row; a chat that had a handoff already is re-linked with
   If-Match, and that handoff ends as `superseded` once the continuation went out);
4. send the continuation messages; then post `handoff.connected` and record `connected` with the delivery
   outcome in one write.
If sending fails, the claim is released (record, claim row, event and link put back, conditionally), so the
user's retry works. If the claim's outcome is unknown (its answer was lost), the record is read back: our
random claim id there means the claim landed. A claim left `connecting` (sent but not recorded, or an
instance that died) counts as connected for the same user in the same chat after `STALE_CLAIM`, and is repaired.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import teams as say
from shared.errors import HandoffError, ServiceUnavailable
from shared.handoffs import CONFLICT_ATTEMPTS, CLAIM, Handoff, OutcomeUnknown, RowExists, Stale, claim_entity, contention_pause, event_entity, event_row_key
from shared.logsafe import clean
from shared.outbox import Draft, Staged, stage
from shared.teams import conversation_of, end_chat_card
from shared.tokens import parse
from shared.vocabulary import EndReason, EventType, RedemptionOutcome, State

if TYPE_CHECKING:
    from shared.activities import Activity
    from shared.handoffs import HandoffStore, TeamsConversation
    from shared.links import Link, LinkStore
    from shared.outbound import Deadline
    from shared.outbox import Outbox
    from shared.teams import TeamsChat

log = logging.getLogger(__name__)

STALE_CLAIM = timedelta(seconds=30)
_ATTEMPTS = CONFLICT_ATTEMPTS


def is_personal(activity: Activity) -> bool:
    kind = activity.conversation.conversation_type if activity.conversation else None
    return kind is None or kind == "personal"


def user_key(activity: Activity) -> str:
    account = activity.from_
    if account is None:
        return ""
    return (account.aad_object_id or account.id or "").lower()


class Redemption:
    def __init__(self, *, handoffs: HandoffStore, links: LinkStore, outbox: Outbox, chat: TeamsChat) -> None:
        self._handoffs = handoffs
        self._links = links
        self._outbox = outbox
        self._chat = chat

    def redeem(self, activity: Activity, token: str, *, deadline: Deadline, now: datetime) -> RedemptionOutcome:
        teams = conversation_of(activity)
        continuation = parse(token) if is_personal(activity) else None
        handoff = self._handoffs.find(continuation.handoff_id) if continuation else None
        known = handoff is not None and self._handoffs.has_token(handoff.handoff_id, continuation.row_key)  # type: ignore[union-attr]
        outcome = RedemptionOutcome.UNKNOWN
        for attempt in range(_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            outcome = _check(handoff if known else None, activity, teams, now=now)
            if outcome is RedemptionOutcome.ALREADY_CONNECTED and handoff is not None and handoff.connecting:
                # A stale claim of this user in this chat: only if the chat was linked to it did the continuation
                # (sent after the link) possibly go out. Never linked: nothing was sent, so the user takes it over.
                link = self._links.find(teams.conversation_id)
                if link is None or link.handoff_id != handoff.handoff_id:
                    outcome = RedemptionOutcome.REDEEMED
            if outcome is not RedemptionOutcome.REDEEMED:
                break
            assert handoff is not None
            claimed, handoff, staged = self._claim(handoff, activity, teams, now=now)
            if claimed is not None:
                self._continue(handoff, claimed, staged, activity, teams, deadline=deadline, now=now)
                break
            if handoff is None:
                outcome = RedemptionOutcome.UNKNOWN
                break
        else:
            raise ServiceUnavailable("The handoff is changing right now; retry shortly.", code="busy", retry_after=1)

        if outcome is RedemptionOutcome.ALREADY_CONNECTED:
            self._chat.send(teams, [say.text(teams, say.ALREADY_CONNECTED, reply_to=activity.id)], deadline)
            if handoff is not None and handoff.connecting:
                self._repair(handoff, deadline=deadline, now=now)
        elif outcome is not RedemptionOutcome.REDEEMED:
            self._chat.send(teams, [say.text(teams, say.CANNOT_CONTINUE, reply_to=activity.id)], deadline)
        log.info(
            "handoff action %s: handoffId=%s conversationId=%s",
            outcome.value, handoff.handoff_id if handoff and known else "-", clean(teams.conversation_id),
        )
        return outcome

    # ---- the claim

    def _claim(
        self, handoff: Handoff, activity: Activity, teams: TeamsConversation, *, now: datetime
    ) -> tuple[str | None, Handoff | None, Staged | None]:
        """(claim id, claimed record, what it staged) when this request won; (None, fresh record, None) when it must
        look again. `Staged.sender_id` is this redemption's own delivery lease, if it took it."""
        claim_id = secrets.token_hex(16)
        connected_fields = {
            "user": {k: teams.user[k] for k in ("id", "aadObjectId", "name") if k in teams.user},
            "tenantId": teams.tenant_id,
            "locale": teams.locale,
        }
        updated = replace(handoff, claim_id=claim_id, claimed_at=now, teams=teams)
        staged = stage(
            handoff, updated, [Draft(EventType.CONNECTED, connected_fields)], now=now, hub_configured=self._outbox.hub_configured
        )
        redemption = claim_entity(handoff.handoff_id, claim_id, now)
        taking_over = handoff.claim_id is not None  # a stale claim that never linked the chat: If-Match decides
        try:
            committed = self._handoffs.commit(
                handoff,
                staged.updated,
                create=staged.rows if taking_over else [redemption, *staged.rows],
                upsert=[redemption] if taking_over else (),
            )
        except (Stale, RowExists, OutcomeUnknown) as exc:
            # Lost to a concurrent change, or the answer was lost: the record says who holds the claim now.
            fresh = self._handoffs.find(handoff.handoff_id)
            if fresh is not None and fresh.claim_id == claim_id:
                log.info("redemption of handoffId=%s landed although its answer was lost (%s)", handoff.handoff_id, type(exc).__name__)
                return claim_id, fresh, staged
            return None, fresh, None
        return claim_id, committed, staged

    def _continue(
        self,
        handoff: Handoff,
        claim_id: str,
        staged: Staged,
        activity: Activity,
        teams: TeamsConversation,
        *,
        deadline: Deadline,
        now: datetime,
    ) -> None:
        link: Link | None = None
        previous: str | None = None
        created_link = False
        try:
            link, previous, created_link = self._link(teams.conversation_id, handoff.handoff_id)
            self._chat.send(teams, _continuation_messages(handoff, teams, reply_to=activity.id), deadline)
        except Exception:  # whatever failed, the user's retry must work: put everything back
            self._release(handoff, claim_id, staged, link, previous, created_link)
            log.warning(
                "handoff continuation failed, redemption released: handoffId=%s conversationId=%s",
                handoff.handoff_id, clean(teams.conversation_id),
            )
            raise
        if previous is not None:
            self._supersede(previous, deadline=deadline, now=now)
        self._connect(handoff, staged, deadline=deadline, now=now)

    def _link(self, conversation_id: str, handoff_id: str) -> tuple[Link, str | None, bool]:
        """(link, handoff it took the chat from, whether we created it)."""
        for attempt in range(_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            link = self._links.create_if_new(conversation_id, handoff_id)
            if link is not None:
                return link, None, True
            existing = self._links.find(conversation_id)
            if existing is None:
                continue
            if existing.handoff_id == handoff_id:
                return existing, None, False
            try:
                return self._links.replace(existing, handoff_id), existing.handoff_id, False
            except Stale:
                continue
        raise ServiceUnavailable("The conversation is changing right now; retry shortly.", code="busy", retry_after=1)

    def _connect(self, handoff: Handoff, staged: Staged, *, deadline: Deadline, now: datetime) -> None:
        """Post handoff.connected (when this request holds the delivery lease) and record `connected`, one write.

        The user has the continuation by now: a storage failure here is logged, not answered with a 503 (a retry
        would send the continuation again). The record then stays `connecting`, which hub calls and the relay
        treat as connected after `STALE_CLAIM`; the undelivered event waits for the next sender or the sweeper."""
        try:
            self._record_connected(handoff, staged, deadline=deadline, now=now)
        except HandoffError as exc:
            log.warning("handoffId=%s: the continuation went out but could not be recorded (%s)", handoff.handoff_id, exc.code)

    def _record_connected(self, handoff: Handoff, staged: Staged, *, deadline: Deadline, now: datetime) -> None:
        current = handoff
        for attempt in range(_ATTEMPTS):
            if attempt:
                contention_pause(attempt)
            ours = staged.sender_id is not None and current.sender_id == staged.sender_id
            if ours and current.sender_until is not None and current.sender_until > now and current.unsettled:
                result = self._outbox.drain(
                    current, current.sender_id, deadline=deadline, now=now, known=staged.events, also={"connected": True}
                )
                if result.handoff is not None:
                    return
                current = self._handoffs.find(handoff.handoff_id) or current
                if current.connected:
                    return
            try:
                self._handoffs.commit(current, replace(current, connected=True))
                return
            except Stale:
                fresh = self._handoffs.find(handoff.handoff_id)
                if fresh is None or fresh.connected:
                    return
                current = fresh
        log.warning("could not record handoffId=%s as connected; it counts as connected after %s", handoff.handoff_id, STALE_CLAIM)

    def _repair(self, handoff: Handoff, *, deadline: Deadline, now: datetime) -> None:
        """Record `connected` for a redemption whose instance could not, and deliver what it owed the hub."""
        try:
            repaired = self._handoffs.commit(handoff, replace(handoff, connected=True))
            self._outbox.resume(repaired, deadline=deadline, now=now)
        except (Stale, OutcomeUnknown, HandoffError):
            log.info("handoffId=%s: repairing a half-recorded redemption is left to the next request", handoff.handoff_id)

    def _supersede(self, handoff_id: str, *, deadline: Deadline, now: datetime) -> None:
        """The chat's previous handoff ends (`superseded`) and its hub is told."""
        try:
            end_handoff(self._handoffs, self._outbox, handoff_id, EndReason.SUPERSEDED, deadline=deadline, now=now)
        except HandoffError:
            log.warning("could not end the superseded handoffId=%s; it no longer owns the chat", handoff_id)

    def _release(
        self, handoff: Handoff, claim_id: str, staged: Staged, link: Link | None, previous: str | None, created_link: bool
    ) -> None:
        """Undo a claim whose continuation could not be sent: the link, then the record, the claim row and our
        `handoff.connected` (deleted if it is still the last event, else marked failed so that it is skipped)."""
        try:
            if link is not None:
                if created_link:
                    self._links.delete_if_unchanged(link)
                elif previous is not None:
                    self._links.replace(link, previous)
            for attempt in range(_ATTEMPTS):
                if attempt:
                    contention_pause(attempt)
                fresh = self._handoffs.find(handoff.handoff_id)
                if fresh is None or fresh.claim_id != claim_id:
                    return
                reverted = replace(fresh, claim_id=None, claimed_at=None, teams=None)
                if staged.sender_id is not None and fresh.sender_id == staged.sender_id:  # only our own lease
                    reverted = replace(reverted, sender_id=None, sender_until=None)
                deletes: list[tuple[str, str | None]] = [(CLAIM, None)]
                upserts = []
                for event in staged.events:
                    if event.seq == fresh.next_seq - 1 and len(staged.events) == 1:
                        reverted = replace(reverted, next_seq=event.seq)
                        deletes.append((event_row_key(event.seq), None))
                    else:  # something was staged behind it meanwhile: never send it, never leave a gap
                        upserts.append(event_entity(replace(event, failed=True)))
                try:
                    self._handoffs.commit(fresh, reverted, delete=deletes, upsert=upserts)
                    return
                except (Stale, OutcomeUnknown):
                    continue
        except (HandoffError, Stale):
            pass
        log.error("could not release the redemption of handoffId=%s: its link stays spent", handoff.handoff_id)


def end_handoff(
    handoffs: HandoffStore, outbox: Outbox, handoff_id: str, reason: EndReason, *, deadline: Deadline, now: datetime
) -> Handoff | None:
    """End a handoff (if it is not ended yet) and send `handoff.ended` to the hub. None: no such handoff."""
    for attempt in range(_ATTEMPTS):
        if attempt:
            contention_pause(attempt)
        current = handoffs.find(handoff_id)
        if current is None or current.ended:
            return current
        staged = stage(
            current,
            replace(current, state=State.ENDED, end_reason=reason),
            [Draft(EventType.ENDED, {"reason": reason.value})],
            now=now,
            hub_configured=outbox.hub_configured,
        )
        try:
            committed = handoffs.commit(current, staged.updated, create=staged.rows)
        except (Stale, RowExists):
            continue
        if staged.sender_id is not None:
            result = outbox.drain(committed, staged.sender_id, deadline=deadline, now=now, known=staged.events)
            return result.handoff or committed
        return committed
    raise ServiceUnavailable("The handoff is changing right now; retry shortly.", code="busy", retry_after=1)


def _check(handoff: Handoff | None, activity: Activity, teams: TeamsConversation, *, now: datetime) -> RedemptionOutcome:
    """What the token allows this activity, before any write: REDEEMED means "may claim"."""
    if handoff is None:
        return RedemptionOutcome.UNKNOWN
    if not is_personal(activity):
        return RedemptionOutcome.REFUSED
    same_chat = handoff.teams is not None and handoff.teams.conversation_id == teams.conversation_id
    same_user = handoff.teams is not None and handoff.teams.user_key == teams.user_key and bool(teams.user_key)
    if handoff.claim_id is not None and same_chat and same_user and not handoff.ended:
        if handoff.connected:
            return RedemptionOutcome.ALREADY_CONNECTED
        if handoff.claimed_at is not None and handoff.claimed_at + STALE_CLAIM <= now:
            # Claimed in this chat but `connected` never recorded: the continuation most likely went out (recording
            # it failed after sending), so the user is told to carry on rather than sent it twice; the record is
            # repaired. (An instance that died before sending leaves the user without the reminder, not stuck.)
            return RedemptionOutcome.ALREADY_CONNECTED
        raise ServiceUnavailable("This link is being opened right now; retry shortly.", code="in_progress", retry_after=2)
    if handoff.ended:
        return RedemptionOutcome.ENDED
    if handoff.expires_at <= now:
        return RedemptionOutcome.EXPIRED
    user = activity.from_.aad_object_id if activity.from_ is not None else None
    if handoff.user_id and (not user or user.lower() != handoff.user_id.lower()):
        return RedemptionOutcome.REFUSED
    tenant = activity.tenant_id
    if handoff.tenant_id and (not tenant or tenant.lower() != handoff.tenant_id.lower()):
        return RedemptionOutcome.REFUSED
    if handoff.claim_id is not None:
        return RedemptionOutcome.REPLAYED
    return RedemptionOutcome.REDEEMED


def _continuation_messages(handoff: Handoff, teams: TeamsConversation, *, reply_to: str | None) -> list[dict]:
    """That the conversation continues, a typing indicator, where the user left off, where the agent side stands."""
    first, reminder = say.continuation_texts(handoff.reminder)
    if handoff.state is State.ACCEPTED and handoff.agent_name:
        status = say.ready_text(handoff.agent_name)
    else:
        queue = say.queue_text(handoff.queue_position, handoff.wait_seconds)
        status = f"{say.WAITING} {queue}" if queue else say.WAITING
    return [
        say.text(teams, first, reply_to=reply_to),
        say.typing(teams, reply_to=reply_to),
        say.text(teams, reminder, reply_to=reply_to, textFormat="markdown"),
        say.text(teams, status, reply_to=reply_to, attachments=[end_chat_card(handoff.handoff_id)]),
    ]
