"""The Teams deep link that resumes a handoff, and the Adaptive Card that offers it to the user."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from shared.errors import ConfigurationError

MAX_DEEP_LINK = 2048


def deep_link(bot_id: str, token: str) -> str:
    if not bot_id:
        raise ConfigurationError("HANDOFF_BOT_ID (or MicrosoftAppId) must be set: the Teams deep link names the bot.")
    link = f"https://teams.microsoft.com/l/chat/0/0?users=28:{quote(bot_id, safe='')}&continuation={quote(token, safe='')}"
    if len(link) > MAX_DEEP_LINK:
        raise ConfigurationError(f"HANDOFF_BOT_ID is too long: the deep link would exceed {MAX_DEEP_LINK} characters.")
    return link


def continue_card(link: str, *, bot_name: str | None, expires_at: str) -> dict[str, Any]:
    """An Adaptive Card (1.4, rendered by Web Chat and Teams alike) with one `Action.OpenUrl`."""
    who = bot_name or "the assistant"
    return {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": "Continue in Microsoft Teams", "weight": "Bolder", "size": "Medium", "wrap": True},
            {
                "type": "TextBlock",
                "text": f"Your conversation with {who} has been saved. Open it in Teams to carry on where you left off.",
                "wrap": True,
            },
            {
                "type": "TextBlock",
                "text": f"The link works once and expires at {expires_at} (UTC).",
                "wrap": True,
                "isSubtle": True,
                "size": "Small",
            },
        ],
        "actions": [{"type": "Action.OpenUrl", "title": "Continue in Teams", "url": link}],
    }
