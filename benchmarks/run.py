"""Benchmarks: the handoff path against its floor and its peers, as ratios measured side by side in one run.

These machines are shared and noisy, so no absolute time is a target: every figure is a ratio between our
code and a baseline measured in the same run, interleaved (ours, baseline, ours, ...) so that drift hits both.

    scripts/bench.sh                   all figures (about two minutes)
    scripts/bench.sh --only parse      one group: parse, redeem, initiate, coldstart, throughput
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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from devtools.botframework import APP_ID, APP_PASSWORD, BotFramework  # noqa: E402
from devtools.loopback import Answer, Azurite, LoopbackServer  # noqa: E402
from devtools.payloads import transcript_activities  # noqa: E402

FIXTURE = PROJECT / "tests" / "fixtures" / "copilot-studio-handoff-initiate.activityset.json"
INVOKE = PROJECT / "tests" / "fixtures" / "teams-handoff-action.invoke.json"


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


# ------------------------------------------------------------------------------------------------
# 1. Parsing


def handoff_body(count: int, *, activity_id: str | None = None) -> bytes:
    document = json.loads(FIXTURE.read_text())
    event = document["activities"][0]
    event["attachments"][0]["content"] = {"activities": transcript_activities(count, seed=count)}
    if activity_id:
        event["id"] = activity_id
    return json.dumps(document).encode()


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
# Shared in-process environment for the end-to-end figures


class Environment:
    def __init__(self) -> None:
        self.azurite = Azurite().start()
        self.bot = BotFramework()
        self.hub = LoopbackServer("hub")
        self.hub.route("/hook", lambda r: Answer(202, {"accepted": True}))
        self.prefix = f"b{uuid.uuid4().hex[:10]}"
        os.environ.update(
            {
                "HANDOFF_STORAGE_CONNECTION": self.azurite.connection_string,
                "HANDOFF_TABLE_PREFIX": self.prefix,
                "MicrosoftAppId": APP_ID,
                "MicrosoftAppPassword": APP_PASSWORD,
                "BOT_OPENID_METADATA_URL": self.bot.metadata_url,
                "BOT_TOKEN_URL": self.bot.token_url,
                "HANDOFF_ALLOWED_SERVICE_URL_HOSTS": "127.0.0.1",
                "HANDOFF_HUB_URL": self.hub.url + "/hook",
                "HANDOFF_HUB_SECRET": "benchmark-secret",
            }
        )
        import httpx
        from azure.data.tables import TableServiceClient

        self.raw_tables = TableServiceClient.from_connection_string(self.azurite.connection_string)
        self.raw_http = httpx.Client(trust_env=False)
        self.jwt = self.bot.jwt(lifetime=7200)
        self.invoke = json.loads(INVOKE.read_text())
        self.invoke["serviceUrl"] = self.bot.service_url

    def request(self, body: bytes, route: str, headers: dict[str, str] | None = None):
        import azure.functions as func

        return func.HttpRequest(method="POST", url=f"http://localhost/api/{route}", headers=headers or {}, params={}, route_params={}, body=body)

    def stop(self) -> None:
        self.bot.stop()
        self.hub.stop()
        self.azurite.stop()


def mint_handoffs(count: int, *, threads: int = 8) -> list[str]:
    """Handoffs with one token each, written straight through the stores (setup, not measured)."""
    from shared import services
    from shared.activities import parse_handoff_initiate
    from shared.handoffs import PENDING, HandoffRecord
    from shared.settings import current_settings
    from shared.tokens import ContinuationContext, Grant, new_token

    settings = current_settings()
    handoffs, tokens = services.handoff_store(settings), services.token_store(settings)
    context = ContinuationContext.from_context(parse_handoff_initiate(FIXTURE.read_bytes()).context)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    minted: list[str] = []
    lock = threading.Lock()

    def work(indices: range) -> None:
        for index in indices:
            handoff_id = f"bench{uuid.uuid4().hex}"
            handoffs.create(HandoffRecord(handoff_id=handoff_id, conversation_id="c", activity_id=str(index), created_at=now,
                                          expires_at=now + timedelta(hours=2), user_id=None, tenant_id=None, hub_status=PENDING), {})
            token = new_token()
            tokens.add(token, Grant(handoff_id=handoff_id, expires_at=now + timedelta(hours=2), user_id=None, tenant_id=None, context=context))
            with lock:
                minted.append(token)

    per = -(-count // threads)
    workers = [threading.Thread(target=work, args=(range(i * per, min(count, (i + 1) * per)),)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return minted


class RawRedemption:
    """The redemption floor with raw clients: one get_entity, one conditional update_entity, the same POSTs."""

    def __init__(self, env: Environment, count: int) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        self.env = env
        self.table = env.raw_tables.create_table_if_not_exists(f"{env.prefix}floor")
        self.keys = [uuid.uuid4().hex for _ in range(count)]
        for key in self.keys:
            self.table.create_entity({"PartitionKey": key, "RowKey": "token", "handoffId": key, "state": "open"})
        self.match, self.mode = MatchConditions.IfNotModified, UpdateMode.MERGE
        self.url = f"{env.bot.service_url}v3/conversations/{env.invoke['conversation']['id']}/activities"
        self.activities = [{"type": "message", "text": "x" * 120, "from": {"id": "bot"}, "recipient": {"id": "user"}},
                           {"type": "typing"}, {"type": "message", "text": "y" * 200}]
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            key = self.keys.pop()
        row = self.table.get_entity(key, "token")
        self.table.update_entity({"PartitionKey": key, "RowKey": "token", "state": "claimed"}, mode=self.mode, etag=row.metadata["etag"], match_condition=self.match)
        for activity in self.activities:
            self.env.raw_http.post(self.url, json=activity, headers={"Authorization": "Bearer x"}).raise_for_status()


class OurRedemption:
    def __init__(self, env: Environment, tokens: list[str]) -> None:
        import handoff_action

        self.env, self.tokens, self.main = env, tokens, handoff_action.main
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            token = self.tokens.pop()
        activity = dict(self.env.invoke, value={"continuation": token})
        response = self.main(self.env.request(json.dumps(activity).encode(), "handoff/action", {"Authorization": f"Bearer {self.env.jwt}"}))
        assert response.status_code == 200, response.get_body()


def bench_redeem(rows: list[Row], env: Environment) -> None:
    rounds = 300
    ours = OurRedemption(env, mint_handoffs(rounds + 20))
    floor = RawRedemption(env, rounds + 20)
    for _ in range(10):  # warm both: keys, bot token, connection pools
        ours()
        floor()
    env.bot.connector.clear()
    a, b = interleave(ours, floor, rounds)
    sent = len(env.bot.connector.requests)
    assert sent == rounds * 6, f"expected {rounds * 6} connector POSTs, saw {sent}"
    env.bot.connector.clear()
    o, f = statistics.median(a), statistics.median(b)
    rows.append(Row("handoff_action redemption, median (in-process, Azurite, loopback connector)", ms(o), ms(f), o / f, "<= 1.2x", o / f <= 1.2))
    for q in (95, 99):
        po, pf = percentile(a, q), percentile(b, q)
        rows.append(Row(f"handoff_action redemption, p{q}", ms(po), ms(pf), po / pf, "info", None))


class RawInitiate:
    """The initiate floor with raw clients: the same batch (record + blob rows of the same sizes), the token row,
    the lease and outcome updates, and the hub POST of the same body."""

    def __init__(self, env: Environment, body: bytes) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        from shared.activities import parse_handoff_initiate
        from shared.handoffs import _pack

        self.env = env
        self.table = env.raw_tables.create_table_if_not_exists(f"{env.prefix}floorh")
        self.tokens = env.raw_tables.create_table_if_not_exists(f"{env.prefix}floort")
        parsed = parse_handoff_initiate(body)
        self.blobs = {"document": json.dumps(parsed.context_values).encode() * 2, "transcript": parsed.transcript.json_bytes}
        self.packed = {name: _pack("p", name, data) for name, data in self.blobs.items()}
        self.hub_body = body
        self.match, self.mode = MatchConditions.IfNotModified, UpdateMode.MERGE

    def __call__(self) -> None:
        key = uuid.uuid4().hex
        record: dict[str, Any] = {"PartitionKey": key, "RowKey": "handoff", "conversationId": "c", "hubStatus": "pending"}
        operations = [("create", record)]
        for rows, meta in self.packed.values():
            record.update(meta)
            operations.extend(("create", {**row, "PartitionKey": key}) for row in rows)
        result = self.table.submit_transaction(operations)
        self.tokens.create_entity({"PartitionKey": uuid.uuid4().hex, "RowKey": "token", "handoffId": key, "context": "{}"})
        lease = self.table.update_entity({"PartitionKey": key, "RowKey": "handoff", "hubStatus": "sending"}, mode=self.mode, etag=result[0]["etag"], match_condition=self.match)
        self.env.raw_http.post(self.env.hub.url + "/hook", content=self.hub_body, headers={"Content-Type": "application/json"}).raise_for_status()
        self.table.update_entity({"PartitionKey": key, "RowKey": "handoff", "hubStatus": "delivered"}, mode=self.mode, etag=lease["etag"], match_condition=self.match)


def bench_initiate(rows: list[Row], env: Environment) -> None:
    import handoff_initiate

    for count, rounds in ((2, 200), (300, 80)):
        placeholder = "ACTIVITY-ID-PLACEHOLDER-0000000000000000"
        template = handoff_body(count, activity_id=placeholder)
        floor = RawInitiate(env, template)

        def ours() -> None:
            body = template.replace(placeholder.encode(), uuid.uuid4().hex.encode().ljust(len(placeholder), b"0"))
            response = handoff_initiate.main(env.request(body, "handoff/initiate"))
            assert response.status_code == 201, response.get_body()

        for _ in range(5):
            ours()
            floor()
        a, b = interleave(ours, floor, rounds)
        env.hub.clear()
        o, f = statistics.median(a), statistics.median(b)
        size = len(template) / 1000
        rows.append(Row(f"handoff_initiate, {count}-activity transcript ({size:.0f} kB), median", ms(o), ms(f), o / f, "<= 1.3x", o / f <= 1.3))


# ------------------------------------------------------------------------------------------------
# 4. Cold start


# The third-party imports as the code makes them (a bare `import pydantic` is lazy and would skip BaseModel).
_PYDANTIC = "from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator; from pydantic_core import from_json"
ACTION_DEPS = f"import azure.functions, httpx, azure.data.tables, jwt; {_PYDANTIC}"
INITIATE_DEPS = f"import azure.functions, httpx, azure.data.tables; {_PYDANTIC}"
ACTION_REQUEST_PATH = ("import handoff_action, shared.botauth, shared.connector, shared.redeem, shared.handoffs, shared.tokens, "
                       "shared.services, azure.data.tables, httpx, jwt")
INITIATE_REQUEST_PATH = "import handoff_initiate, shared.initiate, shared.handoffs, shared.hub, shared.services, azure.data.tables, httpx"


def wall(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT, check=True)
    return time.perf_counter() - started


def bench_coldstart(rows: list[Row]) -> None:
    pairs = [
        ("import handoff_action", "import handoff_action", ACTION_DEPS, True),
        ("import handoff_initiate", "import handoff_initiate", INITIATE_DEPS, True),
        ("handoff_action + every module its request path imports", ACTION_REQUEST_PATH, ACTION_DEPS, None),
        ("handoff_initiate + every module its request path imports", INITIATE_REQUEST_PATH, INITIATE_DEPS, None),
    ]
    for label, ours_code, deps_code, targeted in pairs:
        wall(ours_code), wall(deps_code)  # warm the OS file cache
        a, b = interleave(lambda: wall(ours_code), lambda: wall(deps_code), 7)
        o, f = statistics.median(a), statistics.median(b)
        rows.append(Row(f"cold start: {label} vs its third-party deps (median of 7)", ms(o), ms(f), o / f,
                        "<= 1.15x" if targeted else "info", (o / f <= 1.15) if targeted else None))


# ------------------------------------------------------------------------------------------------
# 5. Throughput


def run_for(func: Callable[[], None], *, threads: int, seconds: float) -> int:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def worker(slot: int) -> None:
        while time.monotonic() < stop:
            func()
            counts[slot] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts)


def bench_throughput(rows: list[Row], env: Environment, seconds: float) -> None:
    budget = int(seconds * 400)  # more tokens than 8 threads can redeem in the time
    ours = OurRedemption(env, mint_handoffs(budget))
    floor = RawRedemption(env, budget)
    # Alternating 2-second slices (floor, ours, ours, floor, ...) so that drift in a shared machine and in
    # Azurite's growing tables falls on both alike.
    slices = max(1, round(seconds / 2))
    done_ours = done_floor = 0
    for index in range(slices):
        pair = [(floor, "floor"), (ours, "ours")] if index % 2 == 0 else [(ours, "ours"), (floor, "floor")]
        for func, name in pair:
            count = run_for(func, threads=8, seconds=seconds / slices)
            if name == "ours":
                done_ours += count
            else:
                done_floor += count
        env.bot.connector.clear()
    ratio = done_ours / done_floor
    rows.append(Row(f"throughput: 8 threads redeeming distinct tokens, {seconds:.0f} s each in alternating slices", f"{done_ours / seconds:.0f}/s", f"{done_floor / seconds:.0f}/s",
                    ratio, ">= 90%", ratio >= 0.9))


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
    parser.add_argument("--only", choices=["parse", "redeem", "initiate", "coldstart", "throughput"], action="append")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    groups = args.only or ["parse", "redeem", "initiate", "coldstart", "throughput"]
    import logging

    logging.disable(logging.CRITICAL)  # log handling is not what is measured
    rows: list[Row] = []
    if "parse" in groups:
        bench_parse(rows)
    if "coldstart" in groups:
        bench_coldstart(rows)
    if {"redeem", "initiate", "throughput"} & set(groups):
        env = Environment()
        try:
            if "redeem" in groups:
                bench_redeem(rows, env)
            if "initiate" in groups:
                bench_initiate(rows, env)
            if "throughput" in groups:
                bench_throughput(rows, env, args.seconds)
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
