"""The storage layer against a real Azurite: tables, atomic records with chunked blobs, claims, tokens."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from shared import services
from shared.errors import PayloadTooLarge, ServiceUnavailable
from shared.handoffs import PENDING, SENDING, HandoffRecord, HandoffStore, handoff_id_for
from shared.settings import current_settings
from shared.storage import table_client
from shared.tokens import ContinuationContext, Grant, new_token, token_key, well_formed
from devtools.loopback import Azurite, free_port

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def record(handoff_id: str = "h1") -> HandoffRecord:
    return HandoffRecord(
        handoff_id=handoff_id,
        conversation_id="conv/with#odd?chars\\",
        activity_id="act|1",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
        user_id="user-1",
        tenant_id=None,
        hub_status=PENDING,
    )


@pytest.fixture
def store(env) -> HandoffStore:
    return services.handoff_store(current_settings())


def test_tables_are_created_with_the_prefix(env) -> None:
    services.handoff_store(current_settings())
    services.token_store(current_settings())
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(env["HANDOFF_STORAGE_CONNECTION"])
    created = {t.name for t in service.list_tables()}
    assert {env["HANDOFF_TABLE_PREFIX"] + "handoffs", env["HANDOFF_TABLE_PREFIX"] + "tokens"} <= created


def test_handoff_ids_are_safe_keys() -> None:
    handoff_id = handoff_id_for("a/b\\c#d?e\x01", "x" * 1024)
    assert handoff_id.isalnum() and len(handoff_id) == 32
    assert handoff_id_for("c", "a") == handoff_id_for("c", "a") != handoff_id_for("c", "b")
    assert handoff_id_for("a", "bc") != handoff_id_for("ab", "c")


def test_create_is_first_writer_wins(store: HandoffStore) -> None:
    created = store.create(record(), {"document": b"{}"})
    assert created is not None and created.etag
    assert store.create(record(), {"document": b"{}"}) is None
    read = store.get("h1")
    assert read.conversation_id == "conv/with#odd?chars\\" and read.user_id == "user-1" and read.hub_status == PENDING
    assert store.get("nope") is None


@pytest.mark.parametrize("size", [0, 10, 2_000_000])
def test_blobs_round_trip_byte_identical(store: HandoffStore, size: int) -> None:
    data = os.urandom(size // 2) + b"x" * (size - size // 2)
    store.create(record(), {"document": b'{"a": 1}', "transcript": data})
    assert store.read_blob("h1", "transcript") == data
    assert store.read_blob("h1", "document") == b'{"a": 1}'
    assert store.read_blob("h1", "other") is None


def test_incompressible_blob_over_the_batch_limit_is_refused(store: HandoffStore) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        store.create(record(), {"transcript": os.urandom(3_000_000)})
    assert caught.value.code == "transcript_too_large"
    assert store.get("h1") is None  # nothing half-written


def test_update_hub_is_conditional(store: HandoffStore) -> None:
    created = store.create(record(), {})
    leased = store.update_hub(created, hub_status=SENDING, hub_lease_until=NOW, hub_attempts=1)
    assert leased is not None and leased.hub_status == SENDING
    assert store.update_hub(created, hub_status="delivered") is None  # stale ETag loses
    assert store.get("h1").hub_status == SENDING and store.get("h1").hub_attempts == 1


def test_claim_exactly_once_under_threads(store: HandoffStore) -> None:
    store.create(record(), {})
    barrier = threading.Barrier(20)
    claims = []

    def claim() -> None:
        barrier.wait()
        claims.append(store.claim("h1", at=NOW))

    threads = [threading.Thread(target=claim) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [c for c in claims if c is not None]
    assert len(claims) == 20 and len(winners) == 1
    store.release(winners[0])
    assert store.claim("h1", at=NOW) is not None


def test_tokens_are_stored_by_hash_only(env, tables) -> None:
    tokens = services.token_store(current_settings())
    token = new_token()
    assert well_formed(token) and len(token) == 43
    grant = Grant(handoff_id="h1", expires_at=NOW, user_id="u", tenant_id="t", context=ContinuationContext(bot_name="Bot"))
    tokens.add(token, grant)
    assert tokens.get(token) == grant
    assert tokens.get(new_token()) is None
    rows = list(tables.tokens.list_entities())
    assert [row["PartitionKey"] for row in rows] == [token_key(token)]
    assert token not in repr(rows)


def test_storage_down_is_service_unavailable(env, monkeypatch) -> None:
    monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", Azurite(port=free_port()).connection_string)  # nothing listens
    with pytest.raises(ServiceUnavailable) as caught:
        table_client(current_settings(), "handoffs")
    assert caught.value.retry_after and caught.value.code == "storage_unavailable"


def test_managed_identity_endpoint_builds_a_credential_client(monkeypatch, env) -> None:
    monkeypatch.setenv("HANDOFF_TABLES_ENDPOINT", "https://account.table.core.windows.net")
    from shared.storage import service_client

    client = service_client(current_settings())
    assert client.url.startswith("https://account.table.core.windows.net")
    assert type(client.credential).__name__ == "DefaultAzureCredential"
