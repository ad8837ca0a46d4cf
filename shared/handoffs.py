"""The durable handoff: one Table Storage partition per handoff holds every row of it.

Partition `handoffId` (base32 of a hash of the length-prefixed conversation id and activity id, never raw input):

| RowKey | what | written |
|---|---|---|
| `handoff` | the record: ids, binding, expiry, agent-side state, Teams conversation reference, the event outbox's counters and delivery lease | created with the handoff; every later change is a merge with If-Match |
| `document.NNNN`, `transcript.NNNN` | blobs, zlib-compressed, cut into 64,000-byte binary properties, 15 to a row | with the record, in its batch |
| `token.<sha256>` | one per continuation token (the token itself is never stored) | with the record, or alone on a repeat |
| `claim` | the redemption: present once a continuation token of this handoff was redeemed | in the redemption's batch |
| `event.<seq>` | one per hub event (the outbox), seq 1, 2, ... | in the batch of the change that caused it |
| `teams.<sha256>` | a Teams message id already relayed (a repeat is recognised by the conflict) | in the relay's batch |
| `key.<sha256>` | a hub call's idempotency record (its `webhook-id`) with the stored answer | by `handoff_hub` |

Every change to a handoff is ONE batch transaction in its partition: the record merged with If-Match on the
ETag it was read with, plus the rows the change adds. So of two concurrent changes exactly one commits, the
other learns it from the 412 and starts again from a fresh read (`Stale`), and an insert that meets an existing
row (a second redemption, a Teams message seen before) fails the whole batch (`RowExists`): first writer wins,
never read-then-write. A purged handoff cannot be resurrected: every write after creation is conditional on
the record's ETag, which no longer exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import PayloadTooLarge
from shared.storage import NO_CONTENT, storage_call
from shared.timeutil import from_iso, to_iso
from shared.vocabulary import Delivery, EndReason, EventType, State

if TYPE_CHECKING:
    from azure.data.tables import TableClient

RECORD = "handoff"
CLAIM = "claim"
TOKEN_PREFIX = "token."
EVENT_PREFIX = "event."
TEAMS_PREFIX = "teams."
KEY_PREFIX = "key."
PART_BYTES = 64_000
PARTS_PER_ROW = 15
# A batch transaction carries at most 4 MiB; binary goes over the wire as base64 (4/3), plus JSON framing.
MAX_BATCH_BINARY = 2_900_000
MAX_BATCH_OPERATIONS = 100


def handoff_id_for(conversation_id: str, activity_id: str) -> str:
    """Same conversation + activity -> same handoff: how a repeated callback is recognised.

    Each id is prefixed with its length, so no two different pairs hash the same input (a separator
    character could stand inside an id).
    """
    encoded = b"".join(f"{len(part)}:{part}".encode("utf-8") for part in (conversation_id, activity_id))
    digest = hashlib.sha256(encoded).digest()
    return base64.b32encode(digest[:20]).decode("ascii").lower()


_HANDOFF_ID = re.compile(r"[a-z2-7]{32}")


def is_handoff_id(value: str) -> bool:
    """The shape `handoff_id_for` makes: anything else names no handoff (and is never used as a key)."""
    return isinstance(value, str) and _HANDOFF_ID.fullmatch(value) is not None


def event_row_key(seq: int) -> str:
    return f"{EVENT_PREFIX}{seq:010d}"


def hashed_key(prefix: str, value: str) -> str:
    return prefix + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------------------------------
# What is stored


@dataclass(frozen=True, slots=True, kw_only=True)
class Reminder:
    """What the user is reminded of when the conversation continues in Teams (each field capped)."""

    bot_name: str | None = None
    last_topic: str | None = None
    last_phrase: str | None = None
    agent_message: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsConversation:
    """The Teams conversation a handoff is linked to: enough to write to the user without an inbound activity."""

    service_url: str
    conversation_id: str
    channel_id: str | None = None
    bot: dict[str, str] = field(default_factory=dict)  # id, name
    user: dict[str, str] = field(default_factory=dict)  # id, name, aadObjectId
    tenant_id: str | None = None
    locale: str | None = None

    @property
    def user_key(self) -> str:
        """"The same user": the Entra object id, or without one the channel account id."""
        return (self.user.get("aadObjectId") or self.user.get("id") or "").lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class Handoff:
    handoff_id: str
    conversation_id: str
    activity_id: str
    created_at: datetime
    expires_at: datetime
    user_id: str | None = None
    tenant_id: str | None = None
    reminder: Reminder = Reminder()
    requested_delivery: Delivery = Delivery.PENDING  # how handoff.requested (seq 1) went
    state: State = State.REQUESTED
    end_reason: EndReason | None = None
    claim_id: str | None = None  # set by the winning redemption
    claimed_at: datetime | None = None
    connected: bool = False  # the continuation reached the user
    teams: TeamsConversation | None = None
    queue_position: int | None = None
    wait_seconds: int | None = None
    agent_name: str | None = None
    last_activity_at: datetime | None = None
    # The outbox: events 1 .. next_seq-1 exist; every event <= settled_seq was delivered or failed for good.
    next_seq: int = 1
    settled_seq: int = 0
    sender_id: str | None = None  # the delivery lease: who may post this handoff's events now, and until when
    sender_until: datetime | None = None
    retry_at: datetime | None = None  # the hub was down: next attempt not before this
    retry_delay: int = 0
    pending_since: datetime | None = None  # first failed attempt of the oldest undelivered event
    user_told_of_failure: bool = False
    # Hub calls are passed to the user one at a time per handoff: the call holding this lease is sending.
    agent_call_id: str | None = None
    agent_call_until: datetime | None = None
    etag: str | None = None

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    @property
    def connecting(self) -> bool:
        """Claimed by a redemption that has not finished sending the continuation yet."""
        return self.claim_id is not None and not self.connected

    @property
    def last_activity(self) -> datetime:
        return self.last_activity_at or self.created_at

    @property
    def unsettled(self) -> bool:
        return self.settled_seq < self.next_seq - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    """One outbox row: an event for the hub, in seq order. `payload` holds the event's own fields (JSON text)."""

    handoff_id: str
    seq: int
    type: EventType
    occurred_at: datetime
    payload: str = "{}"
    failed: bool = False

    def fields(self) -> dict[str, Any]:
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyRecord:
    """A hub call (`webhook-id`) seen before: in progress until `locked_until`, or done with its stored answer."""

    body_sha256: str
    done: bool
    status: int | None = None
    answer: str | None = None
    locked_until: datetime | None = None
    etag: str | None = None


# --------------------------------------------------------------------------------------------------
# Errors of a conditional batch (the normal misses of optimistic concurrency)


class Stale(Exception):
    """The record changed since it was read (If-Match failed, or it is gone): read it again and start over."""


class RowExists(Exception):
    """A row the batch creates exists already: `row_key` says which (the first writer won)."""

    def __init__(self, row_key: str) -> None:
        super().__init__(row_key)
        self.row_key = row_key


def contention_pause(attempt: int) -> None:
    """A short, jittered pause before retrying a conditional write lost to a concurrent one."""
    import random
    import time

    time.sleep(random.uniform(0, min(0.2, 0.01 * (attempt + 1))))


CONFLICT_ATTEMPTS = 25  # conditional writes lost to concurrent ones are retried; each retry re-reads the record


class OutcomeUnknown(Exception):
    """The write may or may not have landed (a timeout or a dropped connection after sending it)."""


# --------------------------------------------------------------------------------------------------
# The store


class HandoffStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    # ---- creation

    def create(
        self, handoff: Handoff, blobs: Mapping[str, bytes], *, token_key: str, first_event: StoredEvent
    ) -> Handoff | None:
        """Record a new handoff with its blobs, first token and first event, atomically. None: recorded before."""
        from azure.data.tables import TableTransactionError

        entity = _record_entity(handoff)
        entity["RowKey"] = RECORD
        operations: list[tuple[Any, ...]] = [("create", entity)]
        binary = 0
        for name, data in blobs.items():
            rows, meta = _pack(handoff.handoff_id, name, data)
            entity.update(meta)
            operations.extend(("create", row) for row in rows)
            binary += meta[f"{name}StoredBytes"]
        if binary > MAX_BATCH_BINARY or len(operations) + 2 > MAX_BATCH_OPERATIONS:
            raise PayloadTooLarge(
                "The transcript is too large to store even compressed "
                f"({binary} bytes after compression; at most {MAX_BATCH_BINARY}).",
                code="transcript_too_large",
            )
        operations.append(("create", _token_entity(handoff, token_key)))
        operations.append(("create", event_entity(first_event)))
        with storage_call("record a handoff"):
            try:
                results = self._table.submit_transaction(operations)
            except TableTransactionError as exc:
                if exc.status_code == 409:
                    return None
                raise
        return replace(handoff, etag=results[0].get("etag") if results else None)

    def add_token(self, handoff: Handoff, token_key: str) -> None:
        with storage_call("record a continuation token"):
            self._table.create_entity(_token_entity(handoff, token_key), response_preference=NO_CONTENT)

    # ---- point reads

    def find(self, handoff_id: str) -> Handoff | None:
        row = self._point_read(handoff_id, RECORD, "read a handoff")
        return _record_from(row) if row is not None else None

    def has_token(self, handoff_id: str, token_key: str) -> bool:
        return self._point_read(handoff_id, token_key, "look up a continuation token", select=["PartitionKey"]) is not None

    def find_key(self, handoff_id: str, key_row: str) -> IdempotencyRecord | None:
        row = self._point_read(handoff_id, key_row, "read an idempotency key")
        return _key_from(row) if row is not None else None

    def _point_read(self, partition: str, row_key: str, what: str, *, select: list[str] | None = None) -> Any:
        """One entity, or None on the normal miss; an outage is a 503 (`storage_call`)."""
        from azure.core.exceptions import ResourceNotFoundError

        with storage_call(what):
            try:
                return self._table.get_entity(partition, row_key, select=select) if select else self._table.get_entity(partition, row_key)
            except ResourceNotFoundError:
                return None

    def put_key(self, handoff_id: str, key_row: str, record: IdempotencyRecord) -> None:
        """Store a hub call's answer on its own (when the batch that should have carried it failed)."""
        from azure.data.tables import UpdateMode

        with storage_call("store an idempotency key"):
            self._table.upsert_entity(key_entity(handoff_id, key_row, record), mode=UpdateMode.REPLACE)

    def finish_key(self, handoff_id: str, key_row: str, record: IdempotencyRecord) -> None:
        """Store a hub call's answer in the idempotency row its batch created: one replace, only while the row
        exists (If-Match *), so that a purge in between is not undone. `Stale` when the row is gone."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        with storage_call("store an idempotency key"), answer_may_be_lost(handoff_id):
            try:
                self._table.update_entity(key_entity(handoff_id, key_row, record), mode=UpdateMode.REPLACE)
            except ResourceNotFoundError as exc:
                raise Stale(handoff_id) from exc

    def delete_key(self, handoff_id: str, key_row: str, etag: str | None) -> None:
        """Drop an idempotency row left in progress by an instance that died (If-Match: only the row we read)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        with storage_call("release an idempotency key"):
            try:
                self._table.delete_entity(handoff_id, key_row, etag=etag, match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                pass

    def read_blob(self, handoff_id: str, name: str, record_row: Mapping[str, Any] | None = None) -> bytes | None:
        """A blob written by `create`, byte-identical, or None if the handoff has none by that name."""
        with storage_call("read a handoff"):
            rows = list(
                self._table.query_entities(
                    "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                    parameters={"pk": handoff_id, "lo": f"{name}.", "hi": f"{name}/"},
                )
            )
            if not rows:
                return None
            record = record_row if record_row is not None else self._table.get_entity(handoff_id, RECORD)
        return _unpack(name, record, sorted(rows, key=lambda row: row["RowKey"]))

    def events(self, handoff_id: str, first: int, last: int) -> list[StoredEvent]:
        """Outbox rows `first` .. `last` (inclusive), in seq order: one query pinned to the partition."""
        if last < first:
            return []
        with storage_call("read a handoff's events"):
            rows = list(
                self._table.query_entities(
                    "PartitionKey eq @pk and RowKey ge @lo and RowKey le @hi",
                    parameters={"pk": handoff_id, "lo": event_row_key(first), "hi": event_row_key(last)},
                )
            )
        return sorted((_event_from(row) for row in rows), key=lambda event: event.seq)

    # ---- the one way a handoff changes

    def commit(
        self,
        current: Handoff,
        updated: Handoff,
        *,
        create: Sequence[Mapping[str, Any]] = (),
        upsert: Sequence[Mapping[str, Any]] = (),
        delete: Sequence[tuple[str, str | None]] = (),
    ) -> Handoff:
        """Merge the record's changed fields (If-Match `current.etag`) and create/upsert/delete rows, atomically.

        Raises `Stale` when the record changed or vanished since `current` was read, `RowExists` when a created
        row exists already, `OutcomeUnknown` when the answer was lost (the batch may have landed).
        """
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        patch = _changed(current, updated)
        patch.update({"PartitionKey": current.handoff_id, "RowKey": RECORD})
        if not create and not upsert and not delete:
            return self._merge_record(current, updated, patch)
        operations: list[tuple[Any, ...]] = [
            ("update", patch, {"mode": UpdateMode.MERGE, "etag": current.etag, "match_condition": MatchConditions.IfNotModified})
        ]
        operations.extend(("create", dict(row)) for row in create)
        operations.extend(("upsert", dict(row), {"mode": UpdateMode.REPLACE}) for row in upsert)
        for row_key, etag in delete:
            row = {"PartitionKey": current.handoff_id, "RowKey": row_key}
            if etag:
                operations.append(("delete", row, {"etag": etag, "match_condition": MatchConditions.IfNotModified}))
            else:
                operations.append(("delete", row))
        with storage_call("change a handoff"), answer_may_be_lost(current.handoff_id):
            try:
                results = self._table.submit_transaction(operations)
            except TableTransactionError as exc:
                if exc.status_code in (404, 412) and exc.index == 0:
                    raise Stale(current.handoff_id) from exc
                if exc.status_code == 409 and 1 <= exc.index <= len(create):
                    raise RowExists(create[exc.index - 1]["RowKey"]) from exc
                if exc.status_code in (404, 412):
                    raise Stale(current.handoff_id) from exc
                raise
        return replace(updated, etag=results[0].get("etag") if results else None)

    def _merge_record(self, current: Handoff, updated: Handoff, patch: dict[str, Any]) -> Handoff:
        """A change that adds no rows: one conditional merge of the record, with the same errors as `commit`.
        (A one-operation batch is as atomic, but on Azurite it costs 2 to 4 times a plain merge.)"""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        with storage_call("change a handoff"), answer_may_be_lost(current.handoff_id):
            try:
                meta = self._table.update_entity(
                    patch, mode=UpdateMode.MERGE, etag=current.etag, match_condition=MatchConditions.IfNotModified
                )
            except (ResourceModifiedError, ResourceNotFoundError) as exc:
                raise Stale(current.handoff_id) from exc
        return replace(updated, etag=meta.get("etag"))

    # ---- retention

    def purge(self, handoff: Handoff) -> int:
        """Delete every row of the handoff, the record first (If-Match), so nothing can write to it again.

        Returns the rows deleted, the record included. `Stale` when the record changed since it was read, or is
        gone already (another purge got there first and deletes the rest): nothing is deleted then.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        with storage_call("delete a handoff"):
            try:
                self._table.delete_entity(
                    handoff.handoff_id, RECORD, etag=handoff.etag, match_condition=MatchConditions.IfNotModified
                )
            except (ResourceModifiedError, ResourceNotFoundError) as exc:
                raise Stale(handoff.handoff_id) from exc
        return 1 + self.purge_remains(handoff.handoff_id)

    def purge_remains(self, handoff_id: str) -> int:
        """Delete whatever rows the partition of a handoff whose record is gone still holds (a purge cut short,
        or one running concurrently: rows it deleted first are looked up again). Returns the rows deleted."""
        from azure.data.tables import TableTransactionError

        deleted = 0
        with storage_call("delete a handoff"):
            for _ in range(5):
                keys = [
                    row["RowKey"]
                    for row in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": handoff_id}, select=["RowKey"])
                ]
                if not keys:
                    break
                try:
                    for start in range(0, len(keys), MAX_BATCH_OPERATIONS):
                        chunk = keys[start : start + MAX_BATCH_OPERATIONS]
                        self._table.submit_transaction([("delete", {"PartitionKey": handoff_id, "RowKey": key}) for key in chunk])
                        deleted += len(chunk)
                except TableTransactionError as exc:
                    if exc.status_code != 404:
                        raise
        return deleted


@contextmanager
def answer_may_be_lost(handoff_id: str) -> Iterator[None]:
    """A write whose request went out but whose answer was lost (timeout, dropped connection) may have landed:
    `OutcomeUnknown`, for the caller to settle by reading back. One never sent is an outage like any other."""
    from azure.core.exceptions import AzureError, ServiceRequestError

    try:
        yield
    except ServiceRequestError:
        raise
    except AzureError as exc:
        if _answer_lost(exc):
            raise OutcomeUnknown(handoff_id) from exc
        raise


def _answer_lost(exc: Exception) -> bool:
    """A timeout or dropped connection after the request went out: the write may have landed."""
    from azure.core.exceptions import ServiceResponseError, ServiceResponseTimeoutError

    return isinstance(exc, (ServiceResponseError, ServiceResponseTimeoutError))


# --------------------------------------------------------------------------------------------------
# Rows


def teams_message_entity(handoff_id: str, message_id: str, seq: int) -> dict[str, Any]:
    return {"PartitionKey": handoff_id, "RowKey": hashed_key(TEAMS_PREFIX, message_id), "seq": seq}


def key_entity(handoff_id: str, key_row: str, record: IdempotencyRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": handoff_id,
        "RowKey": key_row,
        "bodySha256": record.body_sha256,
        "done": record.done,
        "lockedUntil": to_iso(record.locked_until) if record.locked_until else "",
    }
    if record.status is not None:
        entity["status"] = record.status
    if record.answer is not None:
        entity["answer"] = record.answer
    return entity


def claim_entity(handoff_id: str, claim_id: str, at: datetime) -> dict[str, Any]:
    return {"PartitionKey": handoff_id, "RowKey": CLAIM, "claimId": claim_id, "claimedAt": to_iso(at)}


def event_entity(event: StoredEvent) -> dict[str, Any]:
    return {
        "PartitionKey": event.handoff_id,
        "RowKey": event_row_key(event.seq),
        "type": event.type.value,
        "occurredAt": to_iso(event.occurred_at),
        "payload": event.payload,
        "failed": event.failed,
    }


def _event_from(row: Mapping[str, Any]) -> StoredEvent:
    return StoredEvent(
        handoff_id=row["PartitionKey"],
        seq=int(row["RowKey"][len(EVENT_PREFIX) :]),
        type=EventType(row["type"]),
        occurred_at=from_iso(row["occurredAt"]),
        payload=row.get("payload") or "{}",
        failed=bool(row.get("failed")),
    )


def _token_entity(handoff: Handoff, token_key: str) -> dict[str, Any]:
    return {"PartitionKey": handoff.handoff_id, "RowKey": token_key}


def _key_from(row: Mapping[str, Any]) -> IdempotencyRecord:
    locked = row.get("lockedUntil") or None
    return IdempotencyRecord(
        body_sha256=row["bodySha256"],
        done=bool(row.get("done")),
        status=row.get("status"),
        answer=row.get("answer"),
        locked_until=from_iso(locked) if locked else None,
        etag=row.metadata.get("etag") if hasattr(row, "metadata") else None,
    )


# The record's columns: dataclass field -> (column name, to stored, from stored)
_NONE = ""


def _dt_out(value: datetime | None) -> str:
    return to_iso(value) if value is not None else _NONE


def _dt_in(value: Any) -> datetime | None:
    return from_iso(value) if value else None


def _json_out(value: Any) -> str:
    if value is None:
        return _NONE
    if isinstance(value, (Reminder, TeamsConversation)):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _opt(value: Any) -> Any:
    return _NONE if value is None else value


def _opt_in(value: Any) -> Any:
    return None if value in (None, _NONE) else value


def _count_out(value: int | None) -> int:
    return -1 if value is None else value  # an int column either way: -1 stands for "not known"


def _count_in(value: Any) -> int | None:
    return None if value in (None, -1) else int(value)


_COLUMNS: dict[str, tuple[str, Any, Any]] = {
    "conversation_id": ("conversationId", str, str),
    "activity_id": ("activityId", str, str),
    "created_at": ("createdAt", _dt_out, _dt_in),
    "expires_at": ("expiresAt", _dt_out, _dt_in),
    "user_id": ("boundUserId", _opt, _opt_in),
    "tenant_id": ("boundTenantId", _opt, _opt_in),
    "reminder": ("reminder", _json_out, lambda v: Reminder(**json.loads(v)) if v else Reminder()),
    "requested_delivery": ("requestedDelivery", lambda v: v.value, Delivery),
    "state": ("state", lambda v: v.value, State),
    "end_reason": ("endReason", lambda v: v.value if v else _NONE, lambda v: EndReason(v) if v else None),
    "claim_id": ("claimId", _opt, _opt_in),
    "claimed_at": ("claimedAt", _dt_out, _dt_in),
    "connected": ("connected", bool, bool),
    "teams": ("teams", _json_out, lambda v: TeamsConversation(**json.loads(v)) if v else None),
    "queue_position": ("queuePosition", _count_out, _count_in),
    "wait_seconds": ("waitSeconds", _count_out, _count_in),
    "agent_name": ("agentName", _opt, _opt_in),
    "last_activity_at": ("lastActivityAt", _dt_out, _dt_in),
    "next_seq": ("nextSeq", int, int),
    "settled_seq": ("settledSeq", int, int),
    "sender_id": ("senderId", _opt, _opt_in),
    "sender_until": ("senderUntil", _dt_out, _dt_in),
    "retry_at": ("retryAt", _dt_out, _dt_in),
    "retry_delay": ("retryDelay", int, int),
    "pending_since": ("pendingSince", _dt_out, _dt_in),
    "user_told_of_failure": ("userToldOfFailure", bool, bool),
    "agent_call_id": ("agentCallId", _opt, _opt_in),
    "agent_call_until": ("agentCallUntil", _dt_out, _dt_in),
}


def _record_entity(handoff: Handoff) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": handoff.handoff_id}
    for name, (column, out, _) in _COLUMNS.items():
        entity[column] = out(getattr(handoff, name))
    return entity


def _changed(current: Handoff, updated: Handoff) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for name, (column, out, _) in _COLUMNS.items():
        value = getattr(updated, name)
        if value != getattr(current, name):
            patch[column] = out(value)
    return patch


def _record_from(row: Mapping[str, Any]) -> Handoff:
    values: dict[str, Any] = {"handoff_id": row["PartitionKey"]}
    for name, (column, _, into) in _COLUMNS.items():
        if column in row:
            values[name] = into(row[column])
    values["etag"] = row.metadata.get("etag") if hasattr(row, "metadata") else None
    return Handoff(**values)


def _pack(partition: str, name: str, data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stored = zlib.compress(data, 1)
    row_bytes = PART_BYTES * PARTS_PER_ROW
    rows = []
    for number, start in enumerate(range(0, max(len(stored), 1), row_bytes)):
        chunk = stored[start : start + row_bytes]
        row: dict[str, Any] = {"PartitionKey": partition, "RowKey": f"{name}.{number:04d}"}
        for index, offset in enumerate(range(0, len(chunk), PART_BYTES)):
            row[f"p{index:02d}"] = chunk[offset : offset + PART_BYTES]
        rows.append(row)
    meta = {
        f"{name}Rows": len(rows),
        f"{name}Bytes": len(data),
        f"{name}StoredBytes": len(stored),
        f"{name}Sha256": hashlib.sha256(data).hexdigest(),
    }
    return rows, meta


def _unpack(name: str, record: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> bytes:
    if len(rows) != record.get(f"{name}Rows"):
        raise ValueError(f"handoff blob {name!r}: {len(rows)} rows stored, {record.get(f'{name}Rows')} recorded")
    stored = b"".join(row[f"p{i:02d}"] for row in rows for i in range(PARTS_PER_ROW) if f"p{i:02d}" in row)
    data = zlib.decompress(stored)
    if hashlib.sha256(data).hexdigest() != record.get(f"{name}Sha256"):
        raise ValueError(f"handoff blob {name!r} does not match its recorded SHA-256")
    return data
