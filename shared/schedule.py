"""The sweeper's due index: `<prefix>due`, one partition, RowKey `<due time>|<kind>|<handoffId>`.

The sweeper asks for rows with RowKey up to "now" in this one partition (a range query, never a scan), so a run
with nothing due costs one request however many handoffs are stored, and a run's cost grows with the work due.
Rows are written where work is scheduled: the expiry and the retention check of a new handoff (at initiate),
a delivery retry when the hub was down; a row that turns out to need nothing is simply deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from shared.storage import storage_call
from shared.vocabulary import DueKind

if TYPE_CHECKING:
    from azure.data.tables import TableClient

DUE_TABLE = "due"
PARTITION = "due"
_STAMP = "%Y%m%dT%H%M%SZ"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(_STAMP)


@dataclass(frozen=True, slots=True)
class Due:
    at: datetime
    kind: DueKind
    handoff_id: str

    @property
    def row_key(self) -> str:
        return f"{_stamp(self.at)}|{self.kind.value}|{self.handoff_id}"

    @classmethod
    def from_row_key(cls, row_key: str) -> Due | None:
        try:
            stamp, kind, handoff_id = row_key.split("|")
            return cls(datetime.strptime(stamp, _STAMP).replace(tzinfo=timezone.utc), DueKind(kind), handoff_id)
        except ValueError:
            return None


class Schedule:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def add(self, *items: Due) -> None:
        """Schedule work; several items go in one batch (one write). Adding an item twice is harmless."""
        if not items:
            return
        with storage_call("schedule work for the sweeper"):
            if len(items) == 1:
                self._table.upsert_entity(_entity(items[0]))
            else:
                self._table.submit_transaction([("upsert", _entity(item)) for item in items])

    def due(self, now: datetime, limit: int) -> list[Due]:
        """The oldest items due at `now`, at most `limit`: one range query on the index partition."""
        end = _stamp(now) + "|~"
        with storage_call("read the sweeper's due work"):
            pages = self._table.query_entities(
                "PartitionKey eq @pk and RowKey le @end",
                parameters={"pk": PARTITION, "end": end},
                select=["RowKey"],
                results_per_page=min(limit, 1000),
            ).by_page()
            rows = list(next(pages, []))
        items = [Due.from_row_key(row["RowKey"]) for row in rows[:limit]]
        return [item for item in items if item is not None]

    def done(self, item: Due) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with storage_call("clear the sweeper's done work"):
            try:
                self._table.delete_entity(PARTITION, item.row_key)
            except ResourceNotFoundError:
                pass


def _entity(item: Due) -> dict[str, str]:
    return {"PartitionKey": PARTITION, "RowKey": item.row_key, "handoffId": item.handoff_id, "kind": item.kind.value}
