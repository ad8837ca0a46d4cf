"""Benchmarks: the handoff path against its floor and its peers, as ratios measured side by side in one run.

These machines are shared and noisy, so no absolute time is a target: every figure is a ratio between our
code and a baseline measured in the same run, interleaved (ours, baseline, ours, ...) so that drift hits both.

    scripts/bench.sh                   all figures (about three minutes)
    scripts/bench.sh --only relay      one group (repeatable): parse, coldstart, redeem, relay, hubmessage,
                                       initiate, throughput
    scripts/bench.sh --update-readme   also write the results into README.md's Performance section
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.common import Row, interleave, ms  # noqa: E402
from benchmarks.live import handoff_body  # noqa: E402

GROUPS = ["parse", "coldstart", "redeem", "relay", "hubmessage", "initiate", "throughput"]


# ------------------------------------------------------------------------------------------------
# 1. Parsing


def bench_parse(rows: list[Row]) -> None:
    from shared.activities import parse_handoff_initiate

    peers: dict[str, Callable[[bytes], Any]] = {}
    try:
        from microsoft_agents.activity import Activity as AgentsActivity
        from microsoft_agents.activity import Transcript as AgentsTranscript

        def agents(body: bytes) -> Any:
            event = next(a for a in json.loads(body)["activities"] if a.get("name") == "handoff.initiate")
            activity = AgentsActivity.model_validate(event)
            return activity, AgentsTranscript.model_validate(event["attachments"][0]["content"])

        peers["M365 Agents SDK (microsoft-agents-activity)"] = agents
    except ImportError:
        print("  (microsoft-agents-activity not installed: scripts/bench.sh installs requirements-bench.txt)")
    try:
        from botbuilder.schema import Activity as BotbuilderActivity

        def botbuilder(body: bytes) -> Any:
            event = next(a for a in json.loads(body)["activities"] if a.get("name") == "handoff.initiate")
            activity = BotbuilderActivity.deserialize(event)
            return activity, [BotbuilderActivity.deserialize(a) for a in event["attachments"][0]["content"]["activities"]]

        peers["botbuilder-schema Activity.deserialize"] = botbuilder
    except ImportError:
        print("  (botbuilder-schema not installed)")

    for count, rounds in ((1000, 60), (10000, 12)):
        body = handoff_body(count)
        parsed = parse_handoff_initiate(body)
        assert parsed is not None and parsed.transcript.activity_count == count
        ours, floor = interleave(lambda: parse_handoff_initiate(body), lambda: json.loads(body), rounds)
        o, f = statistics.median(ours), statistics.median(floor)
        rows.append(Row(f"parse, {count:,}-activity transcript ({len(body) / 1e6:.1f} MB) vs json.loads", ms(o), ms(f), o / f, "<= 1.5x", o / f <= 1.5))
        for name, peer in peers.items():
            ours, theirs = interleave(lambda: parse_handoff_initiate(body), lambda: peer(body), max(4, rounds // 3))
            o, t = statistics.median(ours), statistics.median(theirs)
            rows.append(Row(f"parse, {count:,} activities vs {name}", ms(o), ms(t), o / t, "info", None))


# ------------------------------------------------------------------------------------------------
# 2. Cold start


# The third-party imports as the code makes them (a bare `import pydantic` is lazy and would skip BaseModel).
_PYDANTIC = "from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator; from pydantic_core import from_json"
ACTION_DEPS = f"import azure.functions, httpx, azure.data.tables, jwt; {_PYDANTIC}"
INITIATE_DEPS = f"import azure.functions, httpx, azure.data.tables; {_PYDANTIC}"
HUB_DEPS = INITIATE_DEPS
ACTION_REQUEST_PATH = ("import handoff_action, shared.botauth, shared.connector, shared.redeem, shared.relay, shared.handoffs, "
                       "shared.tokens, shared.links, shared.outbox, shared.hub, shared.schedule, shared.teams, shared.initiate, "
                       "shared.services, azure.data.tables, httpx, jwt")
INITIATE_REQUEST_PATH = ("import handoff_initiate, shared.initiate, shared.handoffs, shared.outbox, shared.hub, shared.schedule, "
                         "shared.services, azure.data.tables, httpx")
HUB_REQUEST_PATH = ("import handoff_hub, shared.hubcalls, shared.handoffs, shared.teams, shared.connector, shared.services, "
                    "azure.data.tables, httpx")


def wall(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True)
    return time.perf_counter() - started


def bench_coldstart(rows: list[Row]) -> None:
    pairs = [
        ("import handoff_action", "import handoff_action", ACTION_DEPS, True),
        ("import handoff_initiate", "import handoff_initiate", INITIATE_DEPS, True),
        ("import handoff_hub", "import handoff_hub", HUB_DEPS, True),
        ("handoff_action + every module its request path imports", ACTION_REQUEST_PATH, ACTION_DEPS, None),
        ("handoff_initiate + every module its request path imports", INITIATE_REQUEST_PATH, INITIATE_DEPS, None),
        ("handoff_hub + every module its request path imports", HUB_REQUEST_PATH, HUB_DEPS, None),
    ]
    for label, ours_code, deps_code, targeted in pairs:
        wall(ours_code), wall(deps_code)  # warm the OS file cache
        a, b = interleave(lambda: wall(ours_code), lambda: wall(deps_code), 7)
        o, f = statistics.median(a), statistics.median(b)
        rows.append(Row(f"cold start: {label} vs its third-party deps (median of 7)", ms(o), ms(f), o / f,
                        "<= 1.15x" if targeted else "info", (o / f <= 1.15) if targeted else None))


# ------------------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def table(rows: list[Row]) -> str:
    header = ["figure", "ours", "floor or peer", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = PROJECT / "README.md"
    content = readme.read_text()
    start, end = "<!-- performance:start -->", "<!-- performance:end -->"
    before, _, rest = content.partition(start)
    _, _, after = rest.partition(end)
    readme.write_text(f"{before}{start}\n{text}\n{end}{after}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=GROUPS, action="append", help="run only this group (repeatable)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    groups = [group for group in GROUPS if group in (args.only or GROUPS)]
    import logging

    # Log handling is not what is measured; errors still show (an unexpected one would make a figure meaningless).
    logging.disable(logging.WARNING)
    logging.basicConfig(level=logging.ERROR, format="  %(levelname)s %(name)s: %(message)s")
    rows: list[Row] = []
    if "parse" in groups:
        bench_parse(rows)
    if "coldstart" in groups:
        bench_coldstart(rows)
    live_groups = [group for group in groups if group not in ("parse", "coldstart")]
    if live_groups:
        from benchmarks import live

        env = live.Environment()
        try:
            for group in live_groups:
                started = time.perf_counter()
                if group == "throughput":
                    live.bench_throughput(rows, env, args.seconds)
                else:
                    {"redeem": live.bench_redeem, "relay": live.bench_relay, "hubmessage": live.bench_hub_message,
                     "initiate": live.bench_initiate}[group](rows, env)
                print(f"  {group}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        finally:
            env.stop()
    stamp = f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}."
    output = f"{stamp}\n\n{table(rows)}"
    print(output)
    if args.update_readme:
        update_readme(output)
        print("\nREADME.md Performance section updated.")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
