"""Test session: one real Azurite (table service) on a free loopback port, a loopback Bot Framework, and
per-test isolation by table prefix. Nothing in the suite reaches beyond 127.0.0.1."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator

import pytest

from devtools.botframework import APP_ID, APP_PASSWORD, BotFramework
from devtools.loopback import Answer, Azurite, LoopbackServer
from devtools.storagecount import StorageCounter

HUB_PATH = "/hooks/handoff"
HUB_SECRET = "whsec_dGVzdC1odWItc2lnbmluZy1zZWNyZXQtZm9yLXRoZS1zdWl0ZQ=="


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: load, soak and long fuzz runs (scripts/test.sh -m long)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long suite runs only when asked for with -m long; it is never counted as skipped-but-passing.
    if "long" in (config.getoption("-m") or ""):
        return
    deselected = [item for item in items if "long" in item.keywords]
    if deselected:  # reported as "N deselected", so that the counts add up
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "long" not in item.keywords]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def botframework() -> Iterator[BotFramework]:
    framework = BotFramework()
    yield framework
    framework.stop()


@pytest.fixture
def hub() -> Iterator[LoopbackServer]:
    server = LoopbackServer("hub")
    server.route(HUB_PATH, lambda request: Answer(202, {"accepted": True}))
    yield server
    server.stop()


@pytest.fixture
def table_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, azurite: Azurite, botframework: BotFramework, table_prefix: str) -> dict[str, str]:
    """The app's settings for one test: its own tables, the loopback Bot Framework, no hub unless `hub_env`."""
    for name in list(os.environ):
        if name.startswith(("HANDOFF_", "BOT_", "MicrosoftApp")) or name == "AzureWebJobsStorage":
            monkeypatch.delenv(name)
    values = {
        "HANDOFF_STORAGE_CONNECTION": azurite.connection_string,
        "HANDOFF_TABLE_PREFIX": table_prefix,
        "MicrosoftAppId": APP_ID,
        "MicrosoftAppPassword": APP_PASSWORD,
        "BOT_OPENID_METADATA_URL": botframework.metadata_url,
        "BOT_TOKEN_URL": botframework.token_url,
        "HANDOFF_ALLOWED_SERVICE_URL_HOSTS": "127.0.0.1, trafficmanager.net",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    botframework.connector.clear()
    return values


@pytest.fixture
def hub_env(env: dict[str, str], hub: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> LoopbackServer:
    monkeypatch.setenv("HANDOFF_HUB_URL", hub.url + HUB_PATH)
    monkeypatch.setenv("HANDOFF_HUB_SECRET", HUB_SECRET)
    return hub


@pytest.fixture
def live(hub_env: LoopbackServer, botframework: BotFramework) -> str:
    """A handoff whose user has opened the link in Teams (hub configured); the connector's record starts empty."""
    from tests.helpers import connect_user

    handoff_id = connect_user(botframework)
    botframework.connector.clear()
    return handoff_id


@pytest.fixture
def storage_counter(env: dict[str, str], azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageCounter]:
    """The app's storage requests, counted: its connection string points at a counting proxy in front of Azurite."""
    counter = StorageCounter(azurite.port)
    monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", counter.connection_string)
    yield counter
    counter.stop()


@pytest.fixture
def tables(env: dict[str, str], azurite: Azurite, table_prefix: str):
    """Raw table clients on this test's tables, to look at what the app stored."""
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(azurite.connection_string)

    class Tables:
        handoffs = service.get_table_client(f"{table_prefix}handoffs")
        links = service.get_table_client(f"{table_prefix}links")
        due = service.get_table_client(f"{table_prefix}due")

    return Tables


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session")
def all_logs() -> Iterator[LogCapture]:
    """Every log line of the whole session (with traces), for the scan that no secret is ever logged."""
    handler = LogCapture()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


# What must never appear in a log line: bearer JWTs, continuation tokens (a 32-character handoff id and 43
# URL-safe characters, or the 43 standing alone), outbound bot tokens, the app password, the hub secret, and transcript text.
FORBIDDEN_IN_LOGS = [
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"), "a JWT"),
    (re.compile(r"(?<![A-Za-z0-9_-])(?:[a-z2-7]{32})?[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"), "a continuation token"),
    (re.compile(re.escape("bot-access-token-")), "an outbound bot token"),
    (re.compile(re.escape(APP_PASSWORD)), "MicrosoftAppPassword"),
    (re.compile(re.escape(HUB_SECRET)), "HANDOFF_HUB_SECRET"),
    (re.compile(re.escape("I'm happy to help with store hours")), "transcript text"),
]


@pytest.fixture(autouse=True)
def _no_secret_in_logs(all_logs: LogCapture) -> Iterator[None]:
    """Every log line a test causes (DEBUG and up, all loggers) is scanned for secrets after the test."""
    start = len(all_logs.lines)
    yield
    for line in all_logs.lines[start:]:
        for pattern, what in FORBIDDEN_IN_LOGS:
            assert not pattern.search(line), f"{what} was logged: {line[:300]}"


RELIABILITY_FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if RELIABILITY_FIGURES:
        terminalreporter.section("reliability figures")
        for line in RELIABILITY_FIGURES:
            terminalreporter.write_line(line)
