"""Continuation tokens: `<handoffId><secret>`, unguessable, stored only as their SHA-256 hash.

The handoff id (32 base32 characters) tells a redemption which partition to look in; the secret (256 bits from
`secrets`, 43 URL-safe characters) is what makes the token unguessable. The table keeps the row
`token.<sha256 of the whole token>` in the handoff's partition, never the token: a redemption costs one point
read of that row, and a purge of the handoff deletes its tokens with it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from shared.handoffs import TOKEN_PREFIX

SECRET_BYTES = 32  # 256 bits: 43 URL-safe characters
_SHAPE = re.compile(r"(?P<handoff>[a-z2-7]{32})[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class Continuation:
    """A well-formed continuation token, split into what it names and the key its row is stored under."""

    handoff_id: str
    row_key: str


def mint(handoff_id: str) -> str:
    return handoff_id + secrets.token_urlsafe(SECRET_BYTES)


def row_key(token: str) -> str:
    return TOKEN_PREFIX + hashlib.sha256(token.encode("ascii")).hexdigest()


def parse(token: str) -> Continuation | None:
    """None for garbled input: it is turned away before any storage call."""
    match = _SHAPE.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        return None
    return Continuation(handoff_id=match["handoff"], row_key=row_key(token))
