"""Redeem a continuation token exactly once and continue the conversation with the user.

One point read (the token row), then one conditional write (the handoff's claim row, first writer wins
across every token of the handoff and every instance). Only the winner sends the continuation; if the
Bot Connector fails, the claim is released with another conditional write so that the user's retry works.
Tokens that cannot be redeemed (unknown, expired, spent, bound to someone else) cost no write at all.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import HandoffError
from shared.tokens import ContinuationContext, well_formed

if TYPE_CHECKING:
    from shared.activities import Activity
    from shared.connector import BotConnector
    from shared.handoffs import Claim, HandoffStore
    from shared.outbound import Deadline
    from shared.tokens import Grant, TokenStore

log = logging.getLogger(__name__)

CANNOT_CONTINUE = (
    "Sorry, this handoff can't continue: the link has expired, was already used, or isn't meant for you. "
    "Please start a new conversation and we'll be glad to help."
)


class Outcome(enum.Enum):
    REDEEMED = "redeemed"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    REFUSED = "refused"  # bound to another user or tenant


def redeem(
    activity: Activity,
    continuation: str,
    *,
    tokens: TokenStore,
    handoffs: HandoffStore,
    connector: BotConnector,
    deadline: Deadline,
    now: datetime,
) -> Outcome:
    grant = tokens.get(continuation) if well_formed(continuation) else None
    outcome = _check(grant, activity, now=now)
    if grant is not None and outcome is Outcome.REDEEMED:
        claim = handoffs.claim(grant.handoff_id, at=now)
        if claim is None:
            outcome = Outcome.REPLAYED
        else:
            try:
                _send(connector, activity, continuation_messages(activity, grant.context), deadline)
            except Exception:  # whatever failed, nothing was sent for sure: the user's retry must work
                _release(handoffs, claim)
                log.warning("handoff continuation failed, token released: handoffId=%s conversationId=%s", grant.handoff_id, _conversation(activity))
                raise
    if outcome is not Outcome.REDEEMED:
        _send(connector, activity, [reply(activity, type="message", text=CANNOT_CONTINUE)], deadline)
    log.info("handoff action %s: handoffId=%s conversationId=%s", outcome.value, grant.handoff_id if grant else "-", _conversation(activity))
    return outcome


def _check(grant: Grant | None, activity: Activity, *, now: datetime) -> Outcome:
    """What the token allows this activity, before any write: REDEEMED means "may claim"."""
    if grant is None:
        return Outcome.UNKNOWN
    if grant.expires_at <= now:
        return Outcome.EXPIRED
    user = activity.from_.aad_object_id if activity.from_ is not None else None
    if grant.user_id and (not user or user.lower() != grant.user_id.lower()):
        return Outcome.REFUSED
    tenant = activity.tenant_id
    if grant.tenant_id and (not tenant or tenant.lower() != grant.tenant_id.lower()):
        return Outcome.REFUSED
    return Outcome.REDEEMED


def continuation_messages(activity: Activity, context: ContinuationContext) -> list[dict[str, Any]]:
    """What the user sees: that the conversation continues, a typing indicator, then where they left off."""
    who = context.bot_name or "our virtual assistant"
    lines = [f"Here's where you left off with {who}:"]
    if context.last_topic:
        lines.append(f"- **Topic:** {context.last_topic}")
    if context.last_phrase:
        lines.append(f"- **You said:** {context.last_phrase}")
    if context.agent_message:
        lines.append(f"- **{who}:** {context.agent_message}")
    return [
        reply(
            activity,
            type="message",
            text=f"You're continuing your earlier conversation with {who}. Nothing you said has been lost.",
        ),
        reply(activity, type="typing"),
        reply(activity, type="message", text="\n".join(lines), textFormat="markdown"),
    ]


def reply(activity: Activity, **fields: Any) -> dict[str, Any]:
    """An activity from the bot (the invoke's recipient) to the user (its sender), replying to the invoke."""
    dump = {"by_alias": True, "exclude_none": True}
    message: dict[str, Any] = {
        "from": activity.recipient.model_dump(**dump) if activity.recipient else None,
        "recipient": activity.from_.model_dump(**dump) if activity.from_ else None,
        "conversation": activity.conversation.model_dump(**dump) if activity.conversation else None,
        "channelId": activity.channel_id,
        "serviceUrl": activity.service_url,
        "replyToId": activity.id,
        "locale": activity.locale,
        **fields,
    }
    return {k: v for k, v in message.items() if v is not None}


def _send(connector: BotConnector, activity: Activity, messages: list[dict[str, Any]], deadline: Deadline) -> None:
    connector.send_activities(activity.service_url or "", _conversation(activity), messages, deadline)


def _release(handoffs: HandoffStore, claim: Claim) -> None:
    try:
        handoffs.release(claim)
    except HandoffError:
        log.error("could not release the claim on handoffId=%s: the user must start a new conversation", claim.handoff_id)


def _conversation(activity: Activity) -> str:
    return activity.conversation.id if activity.conversation and activity.conversation.id else ""
