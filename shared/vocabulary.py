"""The product's words, each said once: states, end reasons, hub event types, delivery outcomes, row kinds.

Stored values and wire values are these enums' values; call sites never repeat the literals.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    """The agent side of a handoff; it only moves forward, and `ended` is final."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    ENDED = "ended"


class EndReason(str, enum.Enum):
    COMPLETED = "completed"  # the hub ended it
    FAILED = "failed"  # the hub cannot serve it
    USER_ENDED = "user_ended"  # the user pressed End chat
    UNDELIVERABLE = "undeliverable"  # the bot was removed from the user's chat
    SUPERSEDED = "superseded"  # the user redeemed another handoff in the same chat
    EXPIRED = "expired"  # its links expired unused (the sweeper)


class EventType(str, enum.Enum):
    """Events this app sends to the engagement hub (app -> hub)."""

    REQUESTED = "handoff.requested"
    CONNECTED = "handoff.connected"
    MESSAGE = "handoff.message"
    MESSAGE_UPDATED = "handoff.message_updated"
    MESSAGE_DELETED = "handoff.message_deleted"
    ENDED = "handoff.ended"


class Delivery(str, enum.Enum):
    """Outcome of posting one event to the hub, as `handoff_initiate` reports it (`hub.status`)."""

    DELIVERED = "delivered"  # 2xx
    PENDING = "pending"  # 429, 5xx, timeout, connection error: retried
    FAILED = "failed"  # another 4xx: given up, the next event goes on
    SKIPPED = "skipped"  # no HANDOFF_HUB_URL


class DueKind(str, enum.Enum):
    """Work the sweeper finds in its due index."""

    DELIVER = "deliver"  # pending hub events whose retry is due
    EXPIRE = "expire"  # links expire: end the handoff if never connected
    PURGE = "purge"  # retention may be over: delete the handoff if nothing happened since


class HubEventType(str, enum.Enum):
    """What the engagement hub tells the app (hub -> app): the `type` of a `handoff_hub` call."""

    QUEUED = "queued"
    ACCEPTED = "accepted"
    MESSAGE = "message"
    TYPING = "typing"
    COMPLETED = "completed"
    FAILED = "failed"


class TextFormat(str, enum.Enum):
    """`textFormat` of an agent's message, as Teams takes it."""

    PLAIN = "plain"
    MARKDOWN = "markdown"


class RedemptionOutcome(str, enum.Enum):
    """What a `handoff/action` invoke's continuation token came to (logged, and what the user is told)."""

    REDEEMED = "redeemed"
    ALREADY_CONNECTED = "already_connected"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    ENDED = "ended"
    UNKNOWN = "unknown"
    REFUSED = "refused"  # bound to another user or tenant, or not a personal chat
