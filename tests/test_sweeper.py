"""The sweeper (DESIGN "The sweeper"): `handoff_sweeper.main` called with a real `func.TimerRequest`, against
Azurite, the loopback Bot Framework and a loopback hub that goes down and comes back.

Time is real: expiry and retention are made short with the settings (HANDOFF_TOKEN_TTL_SECONDS,
HANDOFF_RETENTION_DAYS, HANDOFF_HUB_RETRY_SECONDS, HANDOFF_HUB_RETRY_HOURS), never with a mocked clock.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import azure.functions as func
import pytest

from devtools.botframework import BotFramework
from devtools.loopback import HANG, Answer, LoopbackServer
from devtools.storagecount import StorageCounter
from shared import services
from shared import teams as say
from shared.handoffs import Handoff, handoff_id_for
from shared.links import link_key
from shared.outbound import Deadline
from shared.schedule import Due
from shared.settings import current_settings
from shared.sweeper import sweeper_for
from shared.timeutil import to_iso, utcnow
from shared.vocabulary import Delivery, DueKind, EndReason, State
from tests.conftest import HUB_PATH, HUB_SECRET
from tests.helpers import (
    INVOKE,
    action,
    body_json,
    connect_user,
    fixture,
    handoff_event,
    hub_call,
    initiate,
    invoke,
    run_concurrently,
    stored_rows,
    user_message,
    verified_hub_events,
)

PROJECT = Path(__file__).resolve().parent.parent
SWEEP_LINE = re.compile(
    r"sweep: delivered=(\d+) still_pending=(\d+) failed=(\d+) expired=(\d+) purged=(\d+) in (\d+) ms"
)
FIELDS = ("delivered", "still_pending", "failed", "expired", "purged", "ms")


class _ThisThread(logging.Handler):
    """The records one thread logs (two sweeps at once each see only their own line)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.records.append(record)


def timer_request(*, past_due: bool = False) -> func.TimerRequest:
    """The TimerRequest the Python worker builds from the host's timer payload (its own converter decodes it)."""
    from azure.functions import meta
    from azure.functions.timer import TimerRequestConverter

    payload = {
        "Schedule": {"AdjustForDST": True},
        "ScheduleStatus": {"Last": "2026-11-24T10:00:00+00:00", "Next": "2026-11-24T10:01:00+00:00"},
        "IsPastDue": past_due,
    }
    request = TimerRequestConverter.decode(meta.Datum(json.dumps(payload), "json"), trigger_metadata={})
    assert isinstance(request, func.TimerRequest) and request.past_due is past_due
    return request


def sweep() -> dict[str, int]:
    """One run of the timer function as the host calls it; the figures of its one summary line."""
    import handoff_sweeper

    handler = _ThisThread()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        assert handoff_sweeper.main(timer_request()) is None
    finally:
        root.removeHandler(handler)
    lines = [r for r in handler.records if r.getMessage().startswith("sweep: ")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.INFO
    match = SWEEP_LINE.fullmatch(lines[0].getMessage())
    assert match, lines[0].getMessage()
    return dict(zip(FIELDS, map(int, match.groups())))


def sweep_until(done, *, seconds: float = 15.0, pause: float = 0.3) -> list[dict[str, int]]:
    """Sweep, as the timer would, until `done()` holds (or fail after `seconds`); returns every run's figures."""
    runs = []
    end = time.monotonic() + seconds
    while True:
        runs.append(sweep())
        if done():
            return runs
        assert time.monotonic() < end, f"not done after {len(runs)} sweeps: {runs}"
        time.sleep(pause)


def total(runs: list[dict[str, int]], field: str) -> int:
    return sum(run[field] for run in runs)


def record(handoff_id: str) -> Handoff | None:
    return services.handoff_store(current_settings()).find(handoff_id)


def settled(*handoff_ids: str):
    def check() -> bool:
        records = [record(h) for h in handoff_ids]
        return all(r is not None and not r.unsettled for r in records)

    return check


def due_rows(table_prefix: str, azurite) -> list[Due]:
    from azure.data.tables import TableServiceClient

    table = TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"{table_prefix}due")
    return [Due.from_row_key(row["RowKey"]) for row in stored_rows(table)]


def raw_table(azurite, table_prefix: str, name: str):
    from azure.data.tables import TableServiceClient

    return TableServiceClient.from_connection_string(azurite.connection_string).get_table_client(f"{table_prefix}{name}")


def partition(azurite, table_prefix: str, handoff_id: str) -> list[dict]:
    return [row for row in stored_rows(raw_table(azurite, table_prefix, "handoffs")) if row["PartitionKey"] == handoff_id]


def accepted_ids(hub: LoopbackServer) -> list[str]:
    """webhook-ids of the events the hub accepted (2xx), in the order they arrived, each verified as a hub would."""
    return [webhook_id for webhook_id, _ in verified_hub_events(hub, HUB_PATH, HUB_SECRET)]


def assert_each_once_in_order(hub: LoopbackServer) -> None:
    """Every event reached the hub once, and per handoff in seq order, never one while an earlier was undelivered."""
    delivered: dict[str, int] = {}
    for request in hub.requests_to(HUB_PATH, "POST"):
        event = request.json()
        handoff_id, seq = event["handoffId"], event["seq"]
        last = delivered.get(handoff_id, 0)
        assert seq == last + 1, f"{handoff_id}: seq {seq} posted while {last + 1} was not delivered yet"
        if request.status is not None and 200 <= request.status < 300:
            delivered[handoff_id] = seq
    ids = accepted_ids(hub)
    assert len(ids) == len(set(ids)), "an event was delivered twice"


class Switch:
    """The hub stand-in's answer, switched by the test: up (202) or down (503)."""

    def __init__(self, hub: LoopbackServer) -> None:
        self.up = True
        self.delay = 0.0
        self.during: list = []  # callables run (once each) while the hub handles its next request
        hub.route(HUB_PATH, self)

    def __call__(self, request) -> Answer:
        while self.during:
            self.during.pop(0)()
        if self.delay:
            time.sleep(self.delay)
        return Answer(202, {}) if self.up else Answer(503, {"down": True})


@pytest.fixture
def hub(hub_env: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> Switch:
    monkeypatch.setenv("HANDOFF_HUB_RETRY_SECONDS", "1")
    return Switch(hub_env)


def chat(name: str) -> dict:
    return {**fixture(INVOKE)["conversation"], "id": f"a:{name}"}


def say_in(botframework: BotFramework, text: str, chat_id: str) -> None:
    response = action(user_message(text, service_url=botframework.service_url, conversation_id=f"a:{chat_id}"), jwt=botframework.jwt())
    assert response.status_code == 200, response.get_body()


# --------------------------------------------------------------------------------------------------


class TestTheFunction:
    def test_function_json_is_a_timer_on_the_schedule_setting(self) -> None:
        spec = json.loads((PROJECT / "handoff_sweeper" / "function.json").read_text())
        assert spec["scriptFile"] == "__init__.py"
        [binding] = spec["bindings"]
        assert binding == {
            "name": "timer",
            "type": "timerTrigger",
            "direction": "in",
            "schedule": "%HANDOFF_SWEEP_SCHEDULE%",
            "runOnStartup": False,
        }

    def test_main_takes_a_real_timer_request_annotation(self) -> None:
        import inspect

        import handoff_sweeper

        source = (PROJECT / "handoff_sweeper" / "__init__.py").read_text()
        assert "\nfrom __future__ import annotations" not in source  # the worker reads the annotations as types
        signature = inspect.signature(handoff_sweeper.main)
        assert list(signature.parameters) == ["timer"]
        assert signature.parameters["timer"].annotation is func.TimerRequest
        assert signature.return_annotation is None

    def test_nothing_due_logs_one_line_of_zeros(self, env) -> None:
        figures = sweep()
        assert {k: v for k, v in figures.items() if k != "ms"} == dict.fromkeys(FIELDS[:-1], 0)

    @pytest.mark.parametrize(
        ("name", "value"),
        [("HANDOFF_SWEEP_BATCH", "lots"), ("HANDOFF_RETENTION_DAYS", "-1"), ("HANDOFF_HUB_RETRY_HOURS", "nan"), ("HANDOFF_SWEEP_SCHEDULE", "every minute")],
    )
    def test_a_settings_error_is_logged_at_error_naming_the_setting_and_nothing_runs(
        self, env, monkeypatch, caplog, name: str, value: str
    ) -> None:
        import handoff_sweeper

        monkeypatch.setenv(name, value)
        with caplog.at_level(logging.INFO):
            assert handoff_sweeper.main(timer_request(past_due=True)) is None
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "configuration_error" in errors[0] and name in errors[0], errors
        assert not [r for r in caplog.records if r.getMessage().startswith("sweep: ")]

    def test_storage_down_ends_the_run_with_a_warning_and_its_line(self, env, monkeypatch, azurite, caplog) -> None:
        from devtools.loopback import free_port

        services.reset()
        monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", azurite.connection_string.replace(str(azurite.port), str(free_port())))
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            figures = sweep()
        assert time.monotonic() - started < 10
        assert figures["delivered"] == figures["purged"] == 0
        assert any(r.levelno == logging.WARNING and "Table Storage is unavailable" in r.getMessage() for r in caplog.records)


class TestDelivery:
    def test_a_burst_while_the_hub_is_down_is_delivered_once_in_order_through_sweeps(
        self, hub, hub_env, botframework, azurite, table_prefix
    ) -> None:
        handoff_id = connect_user(botframework, conversation_id="a:burst")
        hub.up = False
        for i in range(6):
            say_in(botframework, f"m{i}", "burst")
        assert record(handoff_id).settled_seq == 2  # requested and connected went out; the burst waits, stored

        hub.up = True
        time.sleep(1.1)  # the handoff's retry (HANDOFF_HUB_RETRY_SECONDS=1) is due
        runs = sweep_until(settled(handoff_id))

        assert total(runs, "delivered") == 6 and total(runs, "failed") == 0
        messages = [(e["seq"], e["text"]) for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET) if e["type"] == "handoff.message"]
        assert messages == [(3 + i, f"m{i}") for i in range(6)]
        assert_each_once_in_order(hub_env)
        # delivered, the handoff needs nothing more from the sweeper: a later run does nothing
        assert not [d for d in due_rows(table_prefix, azurite) if d.kind is DueKind.DELIVER and d.at <= utcnow()]
        assert sweep()["delivered"] == 0

    def test_handoff_requested_re_delivered_by_the_sweeper_carries_a_fresh_link(self, hub, hub_env, botframework) -> None:
        hub.up = False
        created = body_json(initiate(handoff_event(id="requested-later")))
        assert created["hub"]["status"] == Delivery.PENDING.value
        hub.up = True
        time.sleep(1.1)
        runs = sweep_until(settled(created["handoffId"]))
        assert total(runs, "delivered") == 1
        [(webhook_id, event)] = verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)
        assert webhook_id == created["handoffId"] and event["type"] == "handoff.requested" and event["seq"] == 1
        assert event["deepLink"] and event["deepLink"] != created["deepLink"]  # minted anew: tokens are stored hashed
        from urllib.parse import parse_qs, urlsplit

        [fresh] = parse_qs(urlsplit(event["deepLink"]).query)["continuation"]
        assert action(invoke(fresh, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
        assert record(created["handoffId"]).connected  # the re-delivered link works for the user

    def test_still_down_backs_off_and_counts_pending(self, hub, hub_env) -> None:
        hub.up = False
        created = body_json(initiate(handoff_event(id="stays-down")))
        time.sleep(1.1)
        first = sweep()
        assert first["delivered"] == 0 and first["still_pending"] == 1
        after = record(created["handoffId"])
        assert after.retry_delay == 2 and after.unsettled  # doubled from HANDOFF_HUB_RETRY_SECONDS=1
        assert sweep()["still_pending"] == 0  # not due again yet: not even looked at
        hub.up = True
        time.sleep(2.1)
        assert total(sweep_until(settled(created["handoffId"])), "delivered") == 1

    def test_the_hub_given_up_on_after_retry_hours_and_the_user_told_once(self, hub, hub_env, botframework, monkeypatch, caplog) -> None:
        monkeypatch.setenv("HANDOFF_HUB_RETRY_HOURS", "0.0003")  # about a second
        handoff_id = connect_user(botframework, conversation_id="a:lost")
        botframework.connector.clear()
        hub.up = False
        say_in(botframework, "first", "lost")
        say_in(botframework, "second", "lost")
        time.sleep(1.2)
        with caplog.at_level(logging.INFO):
            runs = sweep_until(settled(handoff_id), pause=1.2)

        assert total(runs, "failed") == 2 and total(runs, "delivered") == 0
        given_up = [r for r in caplog.records if r.levelno == logging.ERROR and "given up" in r.getMessage()]
        assert len(given_up) == 2 and all(handoff_id in r.getMessage() for r in given_up)
        assert [a.get("text") for a in botframework.sent_activities()] == [say.MESSAGES_LOST]  # once, for both
        assert record(handoff_id).user_told_of_failure

        hub.up = True  # the next message goes on, with a fresh backoff
        say_in(botframework, "third", "lost")
        assert [e["text"] for e in (e for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)) if e["type"] == "handoff.message"] == ["third"]
        assert [a.get("text") for a in botframework.sent_activities()] == [say.MESSAGES_LOST]


class TestExpiry:
    def test_links_expired_unused_end_the_handoff_and_the_hub_is_told(self, hub, hub_env, botframework, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_TOKEN_TTL_SECONDS", "2")
        unused = body_json(initiate(handoff_event(id="never-opened")))
        used = connect_user(botframework, event=handoff_event(id="opened"), conversation_id="a:opened")
        time.sleep(2.2)
        first = sweep()
        assert first["expired"] == 1 and first["delivered"] == 1

        ended = record(unused["handoffId"])
        assert ended.state is State.ENDED and ended.end_reason is EndReason.EXPIRED and not ended.unsettled
        events = [e for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET) if e["handoffId"] == unused["handoffId"]]
        assert [(e["type"], e["seq"]) for e in events] == [("handoff.requested", 1), ("handoff.ended", 2)]
        assert events[1]["reason"] == "expired"
        kept = record(used)
        assert kept.state is State.REQUESTED and kept.connected  # redeemed in time: not expired
        assert sweep()["expired"] == 0  # done once

        botframework.connector.clear()
        assert action(invoke(unused["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
        assert [a.get("text") for a in botframework.sent_activities()] == [say.CANNOT_CONTINUE]

    def test_an_expiry_while_the_hub_is_down_is_told_once_it_is_back(self, hub, hub_env, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_TOKEN_TTL_SECONDS", "1")
        hub.up = False
        created = body_json(initiate(handoff_event(id="expires-in-an-outage")))
        time.sleep(1.2)
        runs = [sweep()]
        assert runs[0]["expired"] == 1 and record(created["handoffId"]).unsettled
        hub.up = True
        time.sleep(1.1)
        runs += sweep_until(settled(created["handoffId"]))
        assert total(runs, "expired") == 1
        assert [(e["type"], e["seq"]) for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)] == [
            ("handoff.requested", 1), ("handoff.ended", 2)
        ]
        assert_each_once_in_order(hub_env)


class TestRetention:
    def test_old_handoffs_lose_every_row_young_ones_are_kept(self, hub, hub_env, botframework, monkeypatch, azurite, table_prefix) -> None:
        retention = timedelta(days=0.00005)  # 4.32 s
        monkeypatch.setenv("HANDOFF_RETENTION_DAYS", "0.00005")
        old = connect_user(botframework, event=handoff_event(id="old"), conversation_id="a:old-chat")
        old_token = body_json(initiate(handoff_event(id="old")))["continuationToken"]  # a second link of the same handoff
        say_in(botframework, "a message with a row of its own", "old-chat")
        assert hub_call(old, {"type": "queued", "position": 1}, secret=HUB_SECRET, webhook_id="msg_old_1").status_code == 200
        young = body_json(initiate(handoff_event(id="young")))
        kinds = {row["RowKey"].split(".")[0] for row in partition(azurite, table_prefix, old)}
        assert {"handoff", "document", "transcript", "token", "claim", "event", "teams", "key"} <= kinds
        links = raw_table(azurite, table_prefix, "links")
        assert [row["handoffId"] for row in stored_rows(links) if row["PartitionKey"] == link_key("a:old-chat")] == [old]

        sweep_at = record(old).last_activity + retention + timedelta(seconds=1.2)
        time.sleep(max(0.0, (sweep_at - timedelta(seconds=1.5) - utcnow()).total_seconds()))
        # the young handoff's hub says something: activity, so its retention starts again
        assert hub_call(young["handoffId"], {"type": "queued", "position": 4}, secret=HUB_SECRET).status_code == 202
        young_rows = len(partition(azurite, table_prefix, young["handoffId"]))
        time.sleep(max(0.0, (sweep_at - utcnow()).total_seconds()) + 0.2)

        figures = sweep()
        assert figures["purged"] == 1
        assert partition(azurite, table_prefix, old) == []
        assert not [row for row in stored_rows(links) if row["handoffId"] == old]
        assert len(partition(azurite, table_prefix, young["handoffId"])) == young_rows  # intact
        later = [d for d in due_rows(table_prefix, azurite) if d.handoff_id == young["handoffId"] and d.kind is DueKind.PURGE]
        assert [d.at for d in later] == [(record(young["handoffId"]).last_activity + retention).replace(microsecond=0)]
        assert not [d for d in due_rows(table_prefix, azurite) if d.handoff_id == old and d.kind is DueKind.PURGE]

        # what is left of the old handoff for anyone who still holds a piece of it
        botframework.connector.clear()
        assert action(invoke(old_token, service_url=botframework.service_url, conversation=chat("elsewhere")), jwt=botframework.jwt()).status_code == 200
        say_in(botframework, "anyone there?", "old-chat")
        assert [a.get("text") for a in botframework.sent_activities()] == [say.CANNOT_CONTINUE, say.NO_OPEN_CONVERSATION]
        assert hub_call(old, {"type": "queued", "position": 1}, secret=HUB_SECRET).status_code == 404

    def test_a_link_taken_over_by_a_newer_handoff_is_left_to_it(self, hub, hub_env, botframework, monkeypatch, azurite, table_prefix) -> None:
        monkeypatch.setenv("HANDOFF_RETENTION_DAYS", "0.00005")  # 4.32 s
        old = connect_user(botframework, event=handoff_event(id="first-in-chat"), conversation_id="a:shared-chat")
        newer = connect_user(botframework, event=handoff_event(id="second-in-chat"), conversation_id="a:shared-chat")
        assert record(old).end_reason is EndReason.SUPERSEDED
        last = record(old).last_activity  # (whole seconds, as every stored time)
        time.sleep(max(0.0, (last + timedelta(seconds=2.1) - utcnow()).total_seconds()))
        say_in(botframework, "keeps the newer one alive", "shared-chat")
        time.sleep(max(0.0, (last + timedelta(seconds=5.1) - utcnow()).total_seconds()))
        runs = [sweep()]  # the old one's retention is over (4.32 s), the newer one's is not (2+ s ago)
        assert record(old) is None and record(newer) is not None
        links = raw_table(azurite, table_prefix, "links")
        assert [row["handoffId"] for row in stored_rows(links)] == [newer]
        say_in(botframework, "still here", "shared-chat")  # the newer handoff still owns the chat
        assert [e["text"] for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET) if e["type"] == "handoff.message"] == [
            "keeps the newer one alive", "still here"
        ]
        assert total(runs, "purged") == 1


class TestNoScan:
    def test_an_idle_sweep_over_three_thousand_handoffs_costs_one_query(self, env, azurite, monkeypatch, table_prefix) -> None:
        """Three thousand handoffs, written directly as rows (their records, and their retention checks due in 30
        days in the index): the sweep's only request is the one range query on the index."""
        count = 3000
        now = utcnow()
        prefix = uuid.uuid4().hex
        handoffs, due = raw_table(azurite, table_prefix, "handoffs"), raw_table(azurite, table_prefix, "due")
        handoffs.create_table()
        due.create_table()

        def stored(index: int) -> str:
            handoff_id = handoff_id_for(f"idle-{prefix}", str(index))
            handoffs.create_entity({
                "PartitionKey": handoff_id, "RowKey": "handoff", "conversationId": f"idle-{prefix}", "activityId": str(index),
                "createdAt": to_iso(now), "expiresAt": to_iso(now + timedelta(minutes=15)), "lastActivityAt": to_iso(now),
                "state": State.REQUESTED.value, "requestedDelivery": Delivery.SKIPPED.value, "nextSeq": 2, "settledSeq": 1,
            })
            return handoff_id

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(stored, range(count)))
        rows = [Due(now + timedelta(days=30), DueKind.PURGE, handoff_id) for handoff_id in ids]
        for start in range(0, count, 100):
            due.submit_transaction([("create", {"PartitionKey": "due", "RowKey": row.row_key}) for row in rows[start : start + 100]])
        assert len(due_rows(table_prefix, azurite)) == count

        counter = StorageCounter(azurite.port)
        try:
            monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", counter.connection_string)
            cold = sweep()  # a fresh process: creates its table client through the proxy
            cold_requests = counter.counts()
            counter.reset()
            idle = sweep()
            counts = counter.counts()
            assert idle["delivered"] == idle["expired"] == idle["purged"] == 0 and cold["purged"] == 0
            assert counts == {"read": 0, "query": 1, "write": 0, "table": 0, "scan": 0}, counts
            assert sum(cold_requests[k] for k in ("read", "query", "write", "table")) <= 3, cold_requests
            [request] = counter.taken()
            assert f"{table_prefix}due" in request.path

            # and a run's cost grows with the work due: three rows due now that turn out to need nothing
            services.schedule(current_settings()).add(*(Due(utcnow(), DueKind.EXPIRE, handoff_id) for handoff_id in ids[:3]))
            counter.reset()
            busy = sweep()
            counts = counter.counts()
            assert busy["expired"] == 0 and counts["scan"] == 0
            # the query, then per row: the handoff read, its expiry put back at its time, the row deleted
            assert counts == {"read": 3, "query": 1, "write": 6, "table": counts["table"], "scan": 0}, counts
            assert counts["table"] <= 2  # the handoff and link tables' first use in this process
        finally:
            counter.stop()


class TestLimits:
    def test_a_sweep_handles_at_most_the_batch(self, hub, hub_env, botframework, monkeypatch, azurite, table_prefix) -> None:
        monkeypatch.setenv("HANDOFF_SWEEP_BATCH", "2")
        handoff_id = connect_user(botframework, conversation_id="a:batch")
        hub.up = False
        for i in range(5):
            say_in(botframework, f"b{i}", "batch")
        others = [body_json(initiate(handoff_event(id=f"batch-{i}")))["handoffId"] for i in range(2)]
        hub.up = True
        time.sleep(1.1)
        runs = sweep_until(settled(handoff_id, *others), pause=0.0)
        assert [run["delivered"] for run in runs] == [2, 2, 2, 1], runs  # 7 events, at most 2 a run, none twice
        assert any(run["still_pending"] for run in runs[:-1])  # cut short by the batch, with events left for the next run
        messages = [e["text"] for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET) if e["type"] == "handoff.message"]
        assert messages == [f"b{i}" for i in range(5)]
        assert_each_once_in_order(hub_env)

    def test_a_hub_that_is_down_is_probed_for_two_handoffs_a_run_and_the_rest_wait(self, hub, hub_env, azurite, table_prefix) -> None:
        hub.up = False
        ids = [body_json(initiate(handoff_event(id=f"probe-{i}")))["handoffId"] for i in range(5)]
        hub_env.clear()
        time.sleep(1.1)
        figures = sweep()
        probed = {r.json()["handoffId"] for r in hub_env.requests_to(HUB_PATH)}
        assert len(probed) == 2 and figures["still_pending"] == 2 and figures["delivered"] == 0
        waiting = [d for d in due_rows(table_prefix, azurite) if d.kind is DueKind.DELIVER and d.handoff_id not in probed]
        assert {d.handoff_id for d in waiting} == set(ids) - probed and all(d.at > utcnow() - timedelta(seconds=1) for d in waiting)
        hub.up = True
        time.sleep(2.1)
        assert total(sweep_until(settled(*ids)), "delivered") == 5
        assert_each_once_in_order(hub_env)

    def test_a_run_stops_by_its_deadline_leaving_the_rest_due(self, hub, hub_env, azurite, table_prefix) -> None:
        hub.up = False
        ids = [body_json(initiate(handoff_event(id=f"hang-{i}")))["handoffId"] for i in range(3)]
        hub_env.route(HUB_PATH, lambda request: HANG)
        time.sleep(1.1)
        started = time.monotonic()
        counts = sweeper_for(current_settings()).run(now=utcnow(), deadline=Deadline(2.5))
        elapsed = time.monotonic() - started
        assert elapsed < 2.5 + 2.0, elapsed  # the deadline, plus the last writes
        assert counts.delivered == 0
        assert {d.handoff_id for d in due_rows(table_prefix, azurite) if d.kind is DueKind.DELIVER} == set(ids)


class TestTwoSweepsAtOnce:
    def test_threads_sweeping_together_deliver_each_event_once_in_order(self, hub, hub_env, botframework, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_TOKEN_TTL_SECONDS", "3")
        chats = [connect_user(botframework, event=handoff_event(id=f"chat-{i}"), conversation_id=f"a:chat-{i}") for i in range(2)]
        hub.up = False  # down for a burst of messages and eight new handoffs
        for i in range(2):
            for n in range(4):
                say_in(botframework, f"c{i}-{n}", f"chat-{i}")
        unused = [body_json(initiate(handoff_event(id=f"unused-{i}")))["handoffId"] for i in range(8)]
        time.sleep(3.2)  # links expired; retries due
        hub.up = True
        hub.delay = 0.02
        runs: list[dict[str, int]] = []
        end = time.monotonic() + 30
        while not settled(*chats, *unused)() or not all(record(h).ended for h in unused):
            assert time.monotonic() < end, runs
            runs += run_concurrently([sweep, sweep, sweep])
            time.sleep(0.2)

        assert_each_once_in_order(hub_env)
        assert total(runs, "expired") == 8  # each expiry done by exactly one of the sweeps
        events = [e for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)]
        for handoff_id in unused:
            assert [(e["type"], e["seq"]) for e in events if e["handoffId"] == handoff_id] == [("handoff.requested", 1), ("handoff.ended", 2)]
        for i, handoff_id in enumerate(chats):
            mine = [e for e in events if e["handoffId"] == handoff_id and e["type"] == "handoff.message"]
            assert [e["text"] for e in mine] == [f"c{i}-{n}" for n in range(4)]
        assert total(runs, "delivered") == len(events) - 2 * 2 == 8 + 8 + 8  # all but what went out before the outage

    def test_a_sweep_purging_while_another_delivers_never_brings_the_handoff_back(
        self, hub, hub_env, monkeypatch, azurite, table_prefix
    ) -> None:
        monkeypatch.setenv("HANDOFF_RETENTION_DAYS", "0.00003")  # 2.6 s: purge due after the delivery retry
        hub.up = False
        doomed = body_json(initiate(handoff_event(id="doomed")))["handoffId"]
        time.sleep(3.2)
        hub.up = True
        nested: list[dict[str, int]] = []
        hub.during.append(lambda: nested.append(sweep()))  # a second sweep runs while the first one is posting

        first = sweep()
        assert nested and nested[0]["purged"] == 1 and first["purged"] == 0
        assert first["delivered"] == 1  # the post the second sweep interrupted went out, once
        assert record(doomed) is None and partition(azurite, table_prefix, doomed) == []  # nothing resurrected
        assert accepted_ids(hub_env) == [doomed]
        assert sweep()["delivered"] == 0 and partition(azurite, table_prefix, doomed) == []

    def test_a_sweep_meeting_another_ones_delivery_lease_leaves_it_alone(self, hub, hub_env) -> None:
        hub.up = False
        ids = [body_json(initiate(handoff_event(id=f"lease-{i}")))["handoffId"] for i in range(3)]
        time.sleep(1.1)
        hub.up = True
        nested: list[dict[str, int]] = []
        hub.during.append(lambda: nested.append(sweep()))
        first = sweep()
        assert first["delivered"] + nested[0]["delivered"] == 3
        assert nested[0]["delivered"] == 2  # the other two; the one being posted was left to its sender
        assert sorted(accepted_ids(hub_env)) == sorted(ids)
        assert_each_once_in_order(hub_env)
