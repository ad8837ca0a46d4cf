"""Values from outside, made safe to put in a log line: no forged lines, no terminal escapes, bounded length.

Every identifier that arrives in a request or a dependency's answer (conversation ids, activity ids,
correlation ids, header values) goes through `clean` before it reaches a log call. Message text, tokens
and secrets are never logged at all: `clean` is for identifiers, not for content.
"""

from __future__ import annotations

DEFAULT_LIMIT = 200


def clean(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` as printable ASCII: control, non-ASCII and backslash characters escaped, cut at `limit` characters."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable() and "\\" not in text and len(text) <= limit:
        return text
    escaped = text[: limit + 1].encode("unicode_escape").decode("ascii").replace('"', '\\"')
    if len(escaped) > limit or len(text) > limit:
        return escaped[:limit] + "...(cut)"
    return escaped
