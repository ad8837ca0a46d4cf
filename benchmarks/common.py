"""What every figure shares: a result row, interleaved timing, percentiles, threaded runs, the app's settings."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: float
    target: str
    met: bool | None  # None: reported for information, no target

    def cells(self) -> list[str]:
        met = "n/a" if self.met is None else ("yes" if self.met else "NO")
        return [self.figure, self.ours, self.baseline, f"{self.ratio:.2f}x", self.target, met]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def interleave(ours: Callable[[], Any], baseline: Callable[[], Any], rounds: int) -> tuple[list[float], list[float]]:
    """Per-call wall times of both, alternating which goes first."""
    a: list[float] = []
    b: list[float] = []
    for index in range(rounds):
        order = [(ours, a), (baseline, b)] if index % 2 == 0 else [(baseline, b), (ours, a)]
        for func, sink in order:
            started = time.perf_counter()
            func()
            sink.append(time.perf_counter() - started)
    return a, b


def latency_rows(label: str, ours: list[float], floor: list[float], *, limit: float) -> list[Row]:
    """The median against a target, and the p95 for information."""
    o, f = statistics.median(ours), statistics.median(floor)
    rows = [Row(f"{label}, p50", ms(o), ms(f), o / f, f"<= {limit}x", o / f <= limit)]
    po, pf = percentile(ours, 95), percentile(floor, 95)
    rows.append(Row(f"{label}, p95", ms(po), ms(pf), po / pf, "info", None))
    return rows


def run_for(func: Callable[[int], None], *, threads: int, seconds: float) -> int:
    """Calls completed by `threads` threads, each calling `func(slot)` in a loop for `seconds`."""
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def worker(slot: int) -> None:
        while time.monotonic() < stop:
            func(slot)
            counts[slot] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts)


def app_settings(bot: Any, *, hub_url: str, hub_secret: str) -> dict[str, str]:
    """The settings that point the app at the loopback Bot Framework (`devtools.botframework.BotFramework`) and hub."""
    from devtools.botframework import APP_ID, APP_PASSWORD

    return {
        "MicrosoftAppId": APP_ID,
        "MicrosoftAppPassword": APP_PASSWORD,
        "BOT_OPENID_METADATA_URL": bot.metadata_url,
        "BOT_TOKEN_URL": bot.token_url,
        "HANDOFF_ALLOWED_SERVICE_URL_HOSTS": "127.0.0.1",
        "HANDOFF_HUB_URL": hub_url,
        "HANDOFF_HUB_SECRET": hub_secret,
    }
