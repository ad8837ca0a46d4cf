"""The durable handoff record, in one Table Storage partition per handoff.

Partition `handoffId` (a hash of conversation id + activity id, never raw input) holds:
- `handoff`: the record (ids, binding, expiry, hub delivery status and lease);
- `document.NNNN`, `transcript.NNNN`: blobs, zlib-compressed and cut into 64,000-byte binary properties
  (Table Storage caps a property at 64 KiB and an entity at 1 MiB), 15 to a row;
- `claim`: present once a continuation token of this handoff has been redeemed.

The record and its blobs are created in one batch transaction: either all exist or none, and a repeated
callback finds out that it is a repeat from the conflict (first writer wins), never by reading first.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import PayloadTooLarge
from shared.storage import NO_CONTENT, storage_call
from shared.timeutil import from_iso, to_iso

if TYPE_CHECKING:
    from azure.data.tables import TableClient

RECORD = "handoff"
CLAIM = "claim"
PART_BYTES = 64_000
PARTS_PER_ROW = 15
# A batch transaction carries at most 4 MiB; binary goes over the wire as base64 (4/3), plus JSON framing.
MAX_BATCH_BINARY = 2_900_000

# hub delivery states as stored; "sending" is shown to callers as "pending"
DELIVERED, PENDING, FAILED, SKIPPED, SENDING = "delivered", "pending", "failed", "skipped", "sending"


def handoff_id_for(conversation_id: str, activity_id: str) -> str:
    """Same conversation + activity -> same handoff: how a repeated callback is recognised."""
    digest = hashlib.sha256(f"{conversation_id}\x1f{activity_id}".encode("utf-8")).digest()
    return base64.b32encode(digest[:20]).decode("ascii").lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffRecord:
    handoff_id: str
    conversation_id: str
    activity_id: str
    created_at: datetime
    expires_at: datetime
    user_id: str | None
    tenant_id: str | None
    hub_status: str
    hub_lease_until: datetime | None = None
    hub_attempts: int = 0
    etag: str | None = None

    @property
    def public_hub_status(self) -> str:
        return PENDING if self.hub_status == SENDING else self.hub_status


@dataclass(frozen=True, slots=True)
class Claim:
    handoff_id: str
    etag: str


class HandoffStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def create(self, record: HandoffRecord, blobs: Mapping[str, bytes]) -> HandoffRecord | None:
        """Record a new handoff with its blobs, atomically. None if this handoff was recorded before."""
        from azure.data.tables import TableTransactionError

        entity = _record_entity(record)
        operations: list[tuple[str, dict[str, Any]]] = [("create", entity)]
        binary = 0
        for name, data in blobs.items():
            rows, meta = _pack(record.handoff_id, name, data)
            entity.update(meta)
            operations.extend(("create", row) for row in rows)
            binary += meta[f"{name}StoredBytes"]
        if binary > MAX_BATCH_BINARY:
            raise PayloadTooLarge(
                "The transcript is too large to store even compressed "
                f"({binary} bytes after compression; at most {MAX_BATCH_BINARY}).",
                code="transcript_too_large",
            )
        with storage_call("record a handoff"):
            try:
                results = self._table.submit_transaction(operations)
            except TableTransactionError as exc:
                if exc.status_code == 409:
                    return None
                raise
        etag = results[0].get("etag") if results else None
        return replace(record, etag=etag)

    def get(self, handoff_id: str) -> HandoffRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        with storage_call("read a handoff"):
            try:
                row = self._table.get_entity(handoff_id, RECORD)
            except ResourceNotFoundError:
                return None
        return _record_from(row)

    def read_blob(self, handoff_id: str, name: str) -> bytes | None:
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
            record = self._table.get_entity(handoff_id, RECORD)
        return _unpack(name, record, sorted(rows, key=lambda row: row["RowKey"]))

    def update_hub(self, record: HandoffRecord, **fields: Any) -> HandoffRecord | None:
        """Change the hub delivery fields if nobody else changed the record since `record` was read (If-Match)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        updated = replace(record, **fields)
        patch = {
            "PartitionKey": record.handoff_id,
            "RowKey": RECORD,
            "hubStatus": updated.hub_status,
            "hubAttempts": updated.hub_attempts,
            "hubLeaseUntil": to_iso(updated.hub_lease_until) if updated.hub_lease_until else "",
        }
        with storage_call("update a handoff's delivery status"):
            try:
                meta = self._table.update_entity(
                    patch, mode=UpdateMode.MERGE, etag=record.etag, match_condition=MatchConditions.IfNotModified
                )
            except ResourceModifiedError:
                return None
        return replace(updated, etag=meta.get("etag"))

    def claim(self, handoff_id: str, *, at: datetime) -> Claim | None:
        """Claim the handoff for one redemption: first writer wins across all its tokens and all instances."""
        from azure.core.exceptions import ResourceExistsError

        with storage_call("redeem a continuation token"):
            try:
                meta = self._table.create_entity(
                    {"PartitionKey": handoff_id, "RowKey": CLAIM, "claimedAt": to_iso(at)}, response_preference=NO_CONTENT
                )
            except ResourceExistsError:
                return None
        return Claim(handoff_id=handoff_id, etag=meta["etag"])

    def release(self, claim: Claim) -> None:
        """Undo our own claim (If-Match), so that the user's retry can redeem the handoff."""
        from azure.core import MatchConditions

        with storage_call("release a redemption"):
            self._table.delete_entity(
                claim.handoff_id, CLAIM, etag=claim.etag, match_condition=MatchConditions.IfNotModified
            )


def _record_entity(record: HandoffRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": record.handoff_id,
        "RowKey": RECORD,
        "conversationId": record.conversation_id,
        "activityId": record.activity_id,
        "createdAt": to_iso(record.created_at),
        "expiresAt": to_iso(record.expires_at),
        "hubStatus": record.hub_status,
        "hubAttempts": record.hub_attempts,
        "hubLeaseUntil": to_iso(record.hub_lease_until) if record.hub_lease_until else "",
    }
    if record.user_id:
        entity["boundUserId"] = record.user_id
    if record.tenant_id:
        entity["boundTenantId"] = record.tenant_id
    return entity


def _record_from(row: Mapping[str, Any]) -> HandoffRecord:
    lease = row.get("hubLeaseUntil") or None
    return HandoffRecord(
        handoff_id=row["PartitionKey"],
        conversation_id=row["conversationId"],
        activity_id=row["activityId"],
        created_at=from_iso(row["createdAt"]),
        expires_at=from_iso(row["expiresAt"]),
        user_id=row.get("boundUserId"),
        tenant_id=row.get("boundTenantId"),
        hub_status=row["hubStatus"],
        hub_lease_until=from_iso(lease) if lease else None,
        hub_attempts=int(row.get("hubAttempts") or 0),
        etag=row.metadata.get("etag") if hasattr(row, "metadata") else None,
    )


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
