"""What the user sees in Teams: every text in one place, and the one builder of outgoing activities.

Outgoing activities are built from a stored `TeamsConversation` (the reference a redemption recorded), from the
bot to the user, so that the hub's messages and the sweeper's notices reach the user without an inbound
activity. `TeamsChat.send` checks the stored `serviceUrl` against the allow-list again before a bot token goes
there, and returns the activity ids the Bot Connector answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.botauth import check_service_url
from shared.errors import Unauthorized, UpstreamRefused
from shared.handoffs import Reminder, TeamsConversation

if TYPE_CHECKING:
    from shared.activities import Activity
    from shared.connector import BotConnector
    from shared.outbound import Deadline

CANNOT_CONTINUE = (
    "Sorry, this handoff can't continue: the link has expired, was already used, or isn't meant for you. "
    "Please start a new conversation and we'll be glad to help."
)
ALREADY_CONNECTED = "You're already connected: carry on here."
NO_OPEN_CONVERSATION = (
    "There's no open conversation with an agent here. "
    "To talk to someone, start a new conversation with the assistant."
)
USER_ENDED = "You've ended the conversation with the agent."
ALREADY_CLOSED = "That conversation is already closed."
NOT_PASSED_ON = "Sorry, your last message could not be passed on to the agent. Please send it again."
MESSAGES_LOST = (
    "Sorry, some of your messages could not be passed on to the agent. "
    "If the agent doesn't answer them, please send them again or start a new conversation with the assistant."
)
WAITING = "An agent will join shortly; you can type your question now."
FAILED = "Sorry, no agent can take this conversation right now. Please start a new conversation with the assistant later."
END_CHAT_TITLE = "End chat"
MAX_ACTIVITY_BYTES = 80_000  # Teams refuses activities over about 100 KB


def queue_text(position: int | None, wait_seconds: int | None) -> str | None:
    parts = []
    if position is not None:
        parts.append(f"You're number {position} in line.")
    if wait_seconds is not None:
        minutes = max(1, round(wait_seconds / 60))
        parts.append(f"Expected wait: about {minutes} minute{'s' if minutes != 1 else ''}.")
    return " ".join(parts) or None


def joined_text(agent: str) -> str:
    return f"{agent} has joined the conversation."


def ready_text(agent: str) -> str:
    return f"{agent} is ready for you."


def completed_text(agent: str | None) -> str:
    return (
        f"{agent or 'The agent'} has ended the conversation. "
        "If you need anything else, start a new conversation with the assistant."
    )


def agent_message_text(text: str, agent: str | None) -> str:
    return f"**{agent}:** {text}" if agent else text


def continuation_texts(reminder: Reminder) -> tuple[str, str]:
    """The first message and the reminder of where the user left off."""
    who = reminder.bot_name or "our virtual assistant"
    lines = [f"Here's where you left off with {who}:"]
    if reminder.last_topic:
        lines.append(f"- **Topic:** {reminder.last_topic}")
    if reminder.last_phrase:
        lines.append(f"- **You said:** {reminder.last_phrase}")
    if reminder.agent_message:
        lines.append(f"- **{who}:** {reminder.agent_message}")
    return f"You're continuing your earlier conversation with {who}. Nothing you said has been lost.", "\n".join(lines)


def end_chat_card(handoff_id: str) -> dict[str, Any]:
    """An Adaptive Card attachment with the End chat button; its data comes back as a message `value`."""
    return {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {
            "type": "AdaptiveCard",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": "1.4",
            "body": [{"type": "TextBlock", "text": "When you're done, you can end the chat with the agent.", "wrap": True, "isSubtle": True}],
            "actions": [{"type": "Action.Submit", "title": END_CHAT_TITLE, "data": {"handoff": "end", "handoffId": handoff_id}}],
        },
    }


def conversation_of(activity: Activity) -> TeamsConversation:
    """The reference to store from an inbound Teams activity: its chat, the bot (recipient) and the user (from)."""
    dump = {"by_alias": True, "exclude_none": True}
    bot = activity.recipient.model_dump(**dump) if activity.recipient else {}
    user = activity.from_.model_dump(**dump) if activity.from_ else {}
    return TeamsConversation(
        service_url=activity.service_url or "",
        conversation_id=activity.conversation.id if activity.conversation and activity.conversation.id else "",
        channel_id=activity.channel_id,
        bot={k: str(v) for k, v in bot.items() if k in ("id", "name") and isinstance(v, str)},
        user={k: str(v) for k, v in user.items() if k in ("id", "name", "aadObjectId") and isinstance(v, str)},
        tenant_id=activity.tenant_id,
        locale=activity.locale,
    )


def outgoing(conversation: TeamsConversation, *, reply_to: str | None = None, **fields: Any) -> dict[str, Any]:
    """An activity from the bot to the user of `conversation`."""
    message: dict[str, Any] = {
        "from": conversation.bot or None,
        "recipient": conversation.user or None,
        "conversation": {"id": conversation.conversation_id, **({"tenantId": conversation.tenant_id} if conversation.tenant_id else {})},
        "channelId": conversation.channel_id,
        "serviceUrl": conversation.service_url,
        "replyToId": reply_to,
        "locale": conversation.locale,
        **fields,
    }
    return {k: v for k, v in message.items() if v is not None}


def text(conversation: TeamsConversation, body: str, *, reply_to: str | None = None, **fields: Any) -> dict[str, Any]:
    return outgoing(conversation, reply_to=reply_to, type="message", text=body, **fields)


def typing(conversation: TeamsConversation, *, reply_to: str | None = None) -> dict[str, Any]:
    return outgoing(conversation, reply_to=reply_to, type="typing")


class TeamsChat:
    """Sends activities to one stored Teams conversation through the Bot Connector."""

    def __init__(self, connector: BotConnector, allowed_hosts: tuple[str, ...]) -> None:
        self._connector = connector
        self._allowed_hosts = allowed_hosts

    def send(self, conversation: TeamsConversation, activities: Sequence[dict[str, Any]], deadline: Deadline) -> list[str | None]:
        try:
            check_service_url(conversation.service_url, self._allowed_hosts)
        except Unauthorized as exc:
            raise UpstreamRefused(
                "The Teams conversation's stored serviceUrl is not allowed by HANDOFF_ALLOWED_SERVICE_URL_HOSTS; "
                "nothing was sent.",
                code="service_url_not_allowed",
            ) from exc
        ids = self._connector.send_activities(conversation.service_url, conversation.conversation_id, list(activities), deadline)
        return list(ids) if ids else []
