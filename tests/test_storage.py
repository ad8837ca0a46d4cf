"""The storage layer against a real Azurite: one partition per handoff (record, blobs, token hashes, claim, outbox),
first-writer-wins conditional batches, the conversation links and the sweeper's due index."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from shared import services
from shared.errors import PayloadTooLarge, ServiceUnavailable
from shared.handoffs import (
    CLAIM,
    RECORD,
    Handoff,
    HandoffStore,
    Reminder,
    RowExists,
    Stale,
    StoredEvent,
    claim_entity,
    event_entity,
    handoff_id_for,
)
from shared.links import LinkStore, link_key
from shared.schedule import Due, Schedule
from shared.settings import current_settings
from shared.storage import CLIENT_OPTIONS, table_client
from shared.tokens import mint, parse, row_key
from shared.vocabulary import DueKind, EndReason, EventType, State
from devtools.loopback import Azurite, free_port
from tests.helpers import stored_rows

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
ODD_CONVERSATION = "conv/with#odd?chars\\"
HANDOFF_ID = handoff_id_for(ODD_CONVERSATION, "act|1")


def new_handoff(handoff_id: str = HANDOFF_ID) -> Handoff:
    return Handoff(
        handoff_id=handoff_id,
        conversation_id=ODD_CONVERSATION,
        activity_id="act|1",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
        user_id="user-1",
        reminder=Reminder(bot_name="Test501", last_topic="Store hours"),
        next_seq=2,
    )


def requested(handoff_id: str = HANDOFF_ID) -> StoredEvent:
    return StoredEvent(handoff_id=handoff_id, seq=1, type=EventType.REQUESTED, occurred_at=NOW)


def event(seq: int, handoff_id: str = HANDOFF_ID) -> StoredEvent:
    return StoredEvent(handoff_id=handoff_id, seq=seq, type=EventType.MESSAGE, occurred_at=NOW, payload=f'{{"text": "m{seq}"}}')


@pytest.fixture
def store(env) -> HandoffStore:
    return services.handoff_store(current_settings())


@pytest.fixture
def created(store: HandoffStore) -> Handoff:
    handoff = store.create(new_handoff(), {"document": b"{}"}, token_key=row_key(mint(HANDOFF_ID)), first_event=requested())
    assert handoff is not None
    return handoff


def claim_row_id(tables) -> str:
    """The claim id the `claim` row holds, read raw."""
    return tables.handoffs.get_entity(HANDOFF_ID, CLAIM)["claimId"]


def partition(tables, handoff_id: str = HANDOFF_ID) -> list[str]:
    return sorted(row["RowKey"] for row in stored_rows(tables.handoffs) if row["PartitionKey"] == handoff_id)


def test_tables_are_created_with_the_prefix(env) -> None:
    settings = current_settings()
    services.handoff_store(settings), services.link_store(settings), services.schedule(settings)
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(env["HANDOFF_STORAGE_CONNECTION"])
    prefix = env["HANDOFF_TABLE_PREFIX"]
    created = {t.name for t in service.list_tables() if t.name.startswith(prefix)}
    assert created == {prefix + "handoffs", prefix + "links", prefix + "due"}  # no tokens table any more


def test_handoff_ids_are_safe_keys() -> None:
    handoff_id = handoff_id_for("a/b\\c#d?e\x01", "x" * 1024)
    assert handoff_id.isalnum() and len(handoff_id) == 32
    assert handoff_id_for("c", "a") == handoff_id_for("c", "a") != handoff_id_for("c", "b")
    assert handoff_id_for("a", "bc") != handoff_id_for("ab", "c")


class TestCreate:
    def test_first_writer_wins_and_the_record_reads_back(self, store: HandoffStore, created: Handoff, tables) -> None:
        assert created.etag
        again = store.create(new_handoff(), {"document": b"{}"}, token_key=row_key(mint(HANDOFF_ID)), first_event=requested())
        assert again is None
        read = store.find(HANDOFF_ID)
        assert read is not None and read.etag == created.etag
        assert (read.conversation_id, read.activity_id, read.user_id, read.tenant_id) == (ODD_CONVERSATION, "act|1", "user-1", None)
        assert read.reminder == Reminder(bot_name="Test501", last_topic="Store hours")
        assert (read.created_at, read.expires_at, read.state, read.next_seq, read.settled_seq) == (
            NOW, NOW + timedelta(minutes=15), State.REQUESTED, 2, 0
        )
        assert store.find(handoff_id_for("never", "recorded")) is None
        # one partition holds it all: the record, the blob, the first token's hash, the first event
        rows = partition(tables)
        assert rows[0] == "document.0000" and RECORD in rows and "event.0000000001" in rows
        assert [key for key in rows if key.startswith("token.")] and len(rows) == 4

    @pytest.mark.parametrize("size", [0, 10, 2_000_000])
    def test_blobs_round_trip_byte_identical(self, store: HandoffStore, size: int) -> None:
        data = os.urandom(size // 2) + b"x" * (size - size // 2)
        store.create(new_handoff(), {"document": b'{"a": 1}', "transcript": data}, token_key=row_key(mint(HANDOFF_ID)), first_event=requested())
        assert store.read_blob(HANDOFF_ID, "transcript") == data
        assert store.read_blob(HANDOFF_ID, "document") == b'{"a": 1}'
        assert store.read_blob(HANDOFF_ID, "other") is None

    def test_incompressible_blob_over_the_batch_limit_is_refused_whole(self, store: HandoffStore, tables) -> None:
        with pytest.raises(PayloadTooLarge) as caught:
            store.create(new_handoff(), {"transcript": os.urandom(3_000_000)}, token_key=row_key(mint(HANDOFF_ID)), first_event=requested())
        assert caught.value.code == "transcript_too_large"
        assert store.find(HANDOFF_ID) is None and partition(tables) == []  # nothing half-written


class TestTokens:
    def test_shape_handoff_id_then_secret(self) -> None:
        token = mint(HANDOFF_ID)
        assert len(token) == 75 and token.startswith(HANDOFF_ID)
        assert token[32:].replace("-", "").replace("_", "").isalnum()
        continuation = parse(token)
        assert continuation is not None and continuation.handoff_id == HANDOFF_ID
        assert continuation.row_key == "token." + hashlib.sha256(token.encode()).hexdigest()
        assert mint(HANDOFF_ID) != token

    @pytest.mark.parametrize(
        "garbled", ["", "A" * 43, HANDOFF_ID, HANDOFF_ID + "x" * 42, HANDOFF_ID.upper() + "x" * 43, HANDOFF_ID + "x" * 42 + "!", None, 42]
    )
    def test_garbled_tokens_do_not_parse(self, garbled) -> None:
        assert parse(garbled) is None

    def test_tokens_are_stored_by_hash_only(self, store: HandoffStore, created: Handoff, tables) -> None:
        token = mint(HANDOFF_ID)
        store.add_token(created, row_key(token))
        assert store.has_token(HANDOFF_ID, parse(token).row_key)
        assert not store.has_token(HANDOFF_ID, parse(mint(HANDOFF_ID)).row_key)
        assert token not in repr(stored_rows(tables.handoffs, tables.links, tables.due))
        assert row_key(token) in partition(tables)


class TestCommit:
    def test_a_change_merges_the_record_and_adds_rows_atomically(self, store: HandoffStore, created: Handoff) -> None:
        updated = replace(created, state=State.ACCEPTED, agent_name="Dana", next_seq=4)
        committed = store.commit(created, updated, create=[event_entity(event(2)), event_entity(event(3))])
        assert committed.etag and committed.etag != created.etag
        read = store.find(HANDOFF_ID)
        assert (read.state, read.agent_name, read.next_seq, read.conversation_id) == (State.ACCEPTED, "Dana", 4, ODD_CONVERSATION)
        assert [e.seq for e in store.events(HANDOFF_ID, 1, 3)] == [1, 2, 3]
        assert store.events(HANDOFF_ID, 2, 3)[0].fields() == {"text": "m2"}

    def test_a_changed_etag_is_stale_and_changes_nothing(self, store: HandoffStore, created: Handoff) -> None:
        store.commit(created, replace(created, state=State.ACCEPTED, agent_name="Dana"))
        with pytest.raises(Stale):
            store.commit(created, replace(created, state=State.ENDED, end_reason=EndReason.FAILED), create=[event_entity(event(2))])
        read = store.find(HANDOFF_ID)
        assert (read.state, read.end_reason) == (State.ACCEPTED, None)
        assert store.events(HANDOFF_ID, 2, 2) == []  # the batch failed whole: its event row is not there

    def test_an_existing_row_is_row_exists_and_changes_nothing(self, store: HandoffStore, created: Handoff, tables) -> None:
        claimed = store.commit(created, replace(created, claim_id="first"), create=[claim_entity(HANDOFF_ID, "first", NOW)])
        with pytest.raises(RowExists) as caught:
            store.commit(claimed, replace(claimed, claim_id="second"), create=[claim_entity(HANDOFF_ID, "second", NOW)])
        assert caught.value.row_key == CLAIM
        assert store.find(HANDOFF_ID).claim_id == "first" and claim_row_id(tables) == "first"

    def test_event_rows_read_back_in_seq_order_past_nine(self, store: HandoffStore, created: Handoff) -> None:
        current = created
        for seq in range(2, 13):
            current = store.commit(current, replace(current, next_seq=seq + 1), create=[event_entity(event(seq))])
        assert [e.seq for e in store.events(HANDOFF_ID, 1, 12)] == list(range(1, 13))
        assert [e.seq for e in store.events(HANDOFF_ID, 9, 11)] == [9, 10, 11]
        assert store.events(HANDOFF_ID, 5, 4) == []

    def test_twenty_concurrent_claims_one_winner(self, store: HandoffStore, created: Handoff, tables) -> None:
        barrier = threading.Barrier(20)
        outcomes: list[str] = []

        def claim(number: int) -> None:
            current = store.find(HANDOFF_ID)
            barrier.wait()
            try:
                store.commit(current, replace(current, claim_id=f"c{number}"), create=[claim_entity(HANDOFF_ID, f"c{number}", NOW)])
                outcomes.append(f"c{number}")
            except (Stale, RowExists) as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if o.startswith("c")]
        assert len(outcomes) == 20 and len(winners) == 1
        assert store.find(HANDOFF_ID).claim_id == winners[0] == claim_row_id(tables)


class TestPurge:
    def test_purge_deletes_every_row_and_nothing_resurrects_it(self, store: HandoffStore, created: Handoff, tables) -> None:
        claimed = store.commit(
            created, replace(created, claim_id="c", next_seq=3), create=[claim_entity(HANDOFF_ID, "c", NOW), event_entity(event(2))]
        )
        store.add_token(claimed, row_key(mint(HANDOFF_ID)))
        other = store.create(new_handoff("b" * 32), {"document": b"{}"}, token_key=row_key(mint("b" * 32)), first_event=requested("b" * 32))
        assert len(partition(tables)) == 7
        assert store.purge(claimed) >= 7
        assert partition(tables) == [] and store.find(HANDOFF_ID) is None
        assert len(partition(tables, other.handoff_id)) == 4  # another handoff is untouched
        with pytest.raises(Stale):  # a writer that read the record before the purge cannot bring it back
            store.commit(claimed, replace(claimed, state=State.ENDED, end_reason=EndReason.COMPLETED), create=[event_entity(event(3))])
        assert partition(tables) == []

    def test_purge_of_a_record_changed_since_it_was_read_is_stale_and_deletes_nothing(self, store: HandoffStore, created: Handoff, tables) -> None:
        store.commit(created, replace(created, last_activity_at=NOW + timedelta(days=1)))
        with pytest.raises(Stale):
            store.purge(created)
        assert len(partition(tables)) == 4 and store.find(HANDOFF_ID) is not None


class TestLinks:
    CHAT = "a:1/odd#chat?id\\"

    @pytest.fixture
    def links(self, env) -> LinkStore:
        return services.link_store(current_settings())

    def test_first_link_wins_and_the_key_is_hashed(self, links: LinkStore, tables) -> None:
        link = links.create_if_new(self.CHAT, "h" * 32)
        assert link is not None and link.etag and link.handoff_id == "h" * 32
        assert links.create_if_new(self.CHAT, "i" * 32) is None
        assert links.find(self.CHAT).handoff_id == "h" * 32
        assert links.find("a:another-chat") is None
        [row] = stored_rows(tables.links)
        assert row["PartitionKey"] == link_key(self.CHAT) == hashlib.sha256(self.CHAT.encode()).hexdigest()

    def test_replace_is_conditional(self, links: LinkStore) -> None:
        first = links.create_if_new(self.CHAT, "h" * 32)
        second = links.replace(first, "i" * 32)
        assert second.handoff_id == "i" * 32 and links.find(self.CHAT).handoff_id == "i" * 32
        with pytest.raises(Stale):
            links.replace(first, "j" * 32)  # read before the change
        assert links.find(self.CHAT).handoff_id == "i" * 32

    def test_delete_only_if_unchanged(self, links: LinkStore) -> None:
        first = links.create_if_new(self.CHAT, "h" * 32)
        second = links.replace(first, "i" * 32)
        links.delete_if_unchanged(first)  # stale: the chat belongs to another handoff now
        assert links.find(self.CHAT).handoff_id == "i" * 32
        links.delete_if_unchanged(second)
        assert links.find(self.CHAT) is None
        links.delete_if_unchanged(second)  # gone already: harmless


class TestSchedule:
    @pytest.fixture
    def schedule(self, env) -> Schedule:
        return services.schedule(current_settings())

    def test_due_returns_what_is_due_oldest_first_up_to_the_limit(self, schedule: Schedule, tables) -> None:
        later = Due(NOW + timedelta(hours=1), DueKind.PURGE, "a" * 32)
        items = [Due(NOW - timedelta(minutes=m), DueKind.DELIVER, f"{m:032d}") for m in (5, 1, 3)]
        schedule.add(later, *items)  # one batch
        schedule.add(items[0])  # twice is harmless
        assert len(stored_rows(tables.due)) == 4
        assert schedule.due(NOW, 10) == sorted(items, key=lambda d: d.at)
        assert schedule.due(NOW, 2) == [items[0], items[2]]
        assert schedule.due(NOW + timedelta(hours=1), 10)[-1] == later
        schedule.done(items[0])
        schedule.done(items[0])  # done twice is harmless
        assert schedule.due(NOW, 10) == [items[2], items[1]]

    def test_row_keys_round_trip_and_garbage_is_ignored(self) -> None:
        item = Due(NOW, DueKind.EXPIRE, HANDOFF_ID)
        assert Due.from_row_key(item.row_key) == item
        assert item.row_key == f"20261123T120000Z|expire|{HANDOFF_ID}"
        for garbage in ("", "x|y|z", "20261123T120000Z|nope|h", "20261123T120000Z|expire"):
            assert Due.from_row_key(garbage) is None


def test_storage_down_is_service_unavailable(env, monkeypatch) -> None:
    monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", Azurite(port=free_port()).connection_string)  # nothing listens
    with pytest.raises(ServiceUnavailable) as caught:
        table_client(current_settings(), "handoffs")
    assert caught.value.retry_after and caught.value.code == "storage_unavailable"


def test_storage_down_mid_change_is_service_unavailable(env, created: Handoff) -> None:
    from azure.data.tables import TableClient

    down = Azurite(port=free_port()).connection_string
    store = HandoffStore(TableClient.from_connection_string(down, table_name=env["HANDOFF_TABLE_PREFIX"] + "handoffs", **CLIENT_OPTIONS))
    for attempt in (lambda: store.find(HANDOFF_ID), lambda: store.commit(created, replace(created, agent_name="Dana"))):
        with pytest.raises(ServiceUnavailable) as caught:
            attempt()
        assert caught.value.code == "storage_unavailable"


def test_managed_identity_endpoint_builds_a_credential_client(monkeypatch, env) -> None:
    monkeypatch.setenv("HANDOFF_TABLES_ENDPOINT", "https://account.table.core.windows.net")
    from shared.storage import service_client

    client = service_client(current_settings())
    assert client.url.startswith("https://account.table.core.windows.net")
    assert type(client.credential).__name__ == "DefaultAzureCredential"
