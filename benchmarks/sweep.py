"""The sweeper's cost: how a run's time grows with the work due, and that it does not grow with the table.

    .venv/bin/python benchmarks/sweep.py            N due events = 10, 100, 1000; idle over 100 vs 10,000 handoffs
    .venv/bin/python benchmarks/sweep.py --quick    N = 10, 100; idle over 100 vs 1,000 (a smoke run)

On demand only (not part of the test suite). Its own Azurite, a loopback hub that answers 202 at once, and the
app's settings pointing at them. Rows are written directly (through the app's own store and index), so that
setting up ten thousand handoffs does not dominate the run. Each scenario has tables of its own (a table prefix).

1. A sweep over N due events: N handoffs each owing the hub one `handoff.message` (the hub was down; its retry is
   due now), one `deliver` row each in the due index. Reported: the runs it took, events delivered, the time, the
   time per event, and the storage requests per event (counted at a proxy in front of Azurite).
2. An idle sweep (nothing due; every handoff has its retention check 30 days ahead) over a table of S handoffs:
   the median of repeated runs and the storage requests of one, for S = 100 and S = 10,000.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.common import app_settings  # noqa: E402
from devtools.botframework import BotFramework  # noqa: E402
from devtools.loopback import Answer, Azurite, LoopbackServer  # noqa: E402
from devtools.storagecount import StorageCounter  # noqa: E402

HUB_PATH = "/hook"
SECRET = "whsec_YmVuY2htYXJrLXNlY3JldC1mb3ItdGhlLXN3ZWVwZXItYmVuY2g="


class Bench:
    def __init__(self) -> None:
        self.azurite = Azurite().start()
        self.counter = StorageCounter(self.azurite.port)
        self.bot = BotFramework()
        self.hub = LoopbackServer("hub")
        self.hub.route(HUB_PATH, lambda request: Answer(202, {}))
        os.environ.update(
            {
                **app_settings(self.bot, hub_url=self.hub.url + HUB_PATH, hub_secret=SECRET),
                "HANDOFF_SWEEP_BATCH": "100000",  # the batch never cuts a run short here: time does, if anything
            }
        )

    def use(self, *, counted: bool) -> str:
        """Fresh tables (a new prefix); the app's requests go through the counting proxy or straight to Azurite."""
        from shared import services

        prefix = f"s{uuid.uuid4().hex[:10]}"
        os.environ["HANDOFF_TABLE_PREFIX"] = prefix
        os.environ["HANDOFF_STORAGE_CONNECTION"] = self.counter.connection_string if counted else self.azurite.connection_string
        services.reset()
        return prefix

    def stop(self) -> None:
        self.counter.stop()
        self.hub.stop()
        self.bot.stop()
        self.azurite.stop()


def write_handoffs(count: int, *, owing: bool, indexed: int | None = None) -> list[str]:
    """`count` handoffs through the app's store; with `owing`, each owes the hub a message whose retry is due now
    (and has a `deliver` row due); without, each is idle with its retention check 30 days ahead (only the first
    `indexed` of them, when given, have their row in the index)."""
    from shared import services
    from shared.handoffs import Handoff, StoredEvent, handoff_id_for
    from shared.schedule import Due
    from shared.settings import current_settings
    from shared.timeutil import utcnow
    from shared.tokens import mint, row_key
    from shared.vocabulary import Delivery, DueKind, EventType

    settings = current_settings()
    store, schedule = services.handoff_store(settings), services.schedule(settings)
    now = utcnow()
    run = uuid.uuid4().hex

    def one(index: int) -> Due:
        handoff_id = handoff_id_for(f"sweep-bench-{run}", str(index))
        handoff = Handoff(
            handoff_id=handoff_id, conversation_id=f"sweep-bench-{run}", activity_id=str(index), created_at=now,
            expires_at=now + timedelta(minutes=15), requested_delivery=Delivery.DELIVERED, last_activity_at=now,
            next_seq=3 if owing else 2, settled_seq=1,
            retry_at=now - timedelta(seconds=1) if owing else None, retry_delay=30 if owing else 0,
            pending_since=now - timedelta(seconds=31) if owing else None,
        )
        if owing:
            event = StoredEvent(handoff_id=handoff_id, seq=2, type=EventType.MESSAGE, occurred_at=now,
                                payload='{"messageId":"1:bench","text":"waited out a hub outage","textFormat":"plain"}')
        else:
            event = StoredEvent(handoff_id=handoff_id, seq=1, type=EventType.REQUESTED, occurred_at=now)
        assert store.create(handoff, {"document": b"{}"}, token_key=row_key(mint(handoff_id)), first_event=event)
        if owing:
            return Due(now - timedelta(seconds=1), DueKind.DELIVER, handoff_id)
        return Due(now + timedelta(days=30), DueKind.PURGE, handoff_id)

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(count)))
    if indexed is not None:
        rows = rows[:indexed]
    for start in range(0, len(rows), 100):
        schedule.add(*rows[start : start + 100])
    return [row.handoff_id for row in rows]


def one_run():
    from shared.outbound import Deadline
    from shared.settings import current_settings
    from shared.sweeper import WORK_SECONDS, sweeper_for
    from shared.timeutil import utcnow

    return sweeper_for(current_settings()).run(now=utcnow(), deadline=Deadline(WORK_SECONDS))


def requests_per_event(bench: Bench, n: int = 10) -> tuple[float, int]:
    """Storage requests per delivered event, and scans, counted at the proxy (timed runs go straight to Azurite)."""
    bench.use(counted=True)
    write_handoffs(n, owing=True)
    one_run()
    bench.counter.reset()
    write_handoffs(n, owing=True)
    bench.counter.reset()
    assert one_run().delivered == n
    counts = bench.counter.counts()
    return (counts["read"] + counts["query"] + counts["write"]) / n, counts["scan"]


def due_events(bench: Bench, n: int) -> str:
    bench.use(counted=False)
    write_handoffs(n, owing=True)
    bench.hub.clear()
    runs = 0
    delivered = 0
    started = time.perf_counter()
    first_run = None
    while delivered < n and runs < 20:
        run_started = time.perf_counter()
        delivered += one_run().delivered
        runs += 1
        if first_run is None:
            first_run = time.perf_counter() - run_started
    elapsed = time.perf_counter() - started
    accepted = [r for r in bench.hub.requests_to(HUB_PATH, "POST") if r.status == 202]
    assert delivered == n == len(accepted), (delivered, n, len(accepted))
    return (
        f"| {n} | {runs} | {elapsed * 1000:.0f} ms | {elapsed / n * 1000:.1f} ms | {n / elapsed:.0f}/s | {first_run * 1000:.0f} ms |"
    )


def idle(bench: Bench, sizes: tuple[int, ...], rounds: int, *, indexed: int | None = None) -> list[str]:
    """Idle runs over tables of each size, interleaved (one run on each table in turn, the order alternating), so
    that the machine's drift hits every size alike; one run of each counted at the proxy."""
    prefixes = []
    for size in sizes:
        prefixes.append(bench.use(counted=True))
        write_handoffs(size, owing=False, indexed=indexed)

    def on(prefix: str) -> None:
        os.environ["HANDOFF_TABLE_PREFIX"] = prefix

    for prefix in prefixes:  # warm again: setting up the next table began a fresh set of clients
        on(prefix)
        one_run()
    counts = []
    for prefix in prefixes:
        on(prefix)
        bench.counter.reset()
        assert one_run().items == 0
        counts.append(bench.counter.counts())
    times: list[list[float]] = [[] for _ in sizes]
    for round_ in range(rounds):
        order = list(range(len(sizes))) if round_ % 2 == 0 else list(reversed(range(len(sizes))))
        for index in order:
            on(prefixes[index])
            started = time.perf_counter()
            one_run()
            times[index].append(time.perf_counter() - started)
    lines = []
    for size, samples, count in zip(sizes, times, counts):
        total = count["read"] + count["query"] + count["write"] + count["table"]
        rows = size if indexed is None else indexed
        lines.append(
            f"| {size} | {rows} | {statistics.median(samples) * 1000:.2f} ms | {min(samples) * 1000:.2f} ms "
            f"| {total} ({count['query']} query, scans: {count['scan']}) |"
        )
    ratio = statistics.median(times[-1]) / statistics.median(times[0])
    lines.append(f"| | | {ratio:.2f}x | | (S={sizes[-1]} / S={sizes[0]}, medians of {rounds} interleaved runs) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of the benchmark itself")
    parser.add_argument("--only", choices=("due", "idle"), help="one of the two figures")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)  # the sweep's INFO line per run is not the figure
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    tables = (100, 1000) if args.quick else (100, 10_000)
    bench = Bench()
    try:
        if args.only in (None, "due"):
            print("A sweep over N due events (each a handoff owing the hub one message; the hub answers at once)\n")
            print("| N | runs | time | per event | events/s | first run |")
            print("|---|---|---|---|---|---|")
            for n in sizes:
                print(due_events(bench, n), flush=True)
            per_event, scans = requests_per_event(bench)
            print(f"\nstorage requests per delivered event: {per_event:.1f} (scans: {scans}), counted at a proxy over 10 events")
        if args.only in (None, "idle"):
            print("\nAn idle sweep (nothing due) over a table of S handoffs, R of them with a (future) row in the due index\n")
            print("| S | R | median run | fastest run | storage requests of a run |")
            print("|---|---|---|---|---|")
            for indexed in (None, tables[0]):
                for line in idle(bench, tables, rounds=100, indexed=indexed):
                    print(line, flush=True)
    finally:
        bench.stop()


if __name__ == "__main__":
    threading.current_thread().name = "sweep-bench"
    main()
