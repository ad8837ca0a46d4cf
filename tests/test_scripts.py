"""The developer scripts, run as a user runs them (bash scripts/run.sh, bash scripts/demo.sh --serve), asserting
what the user sees: a taken port named with the way out, a malformed local.settings.json named by file and line,
no request answered 503 because storage was not up yet, and the script's own PID (or Ctrl+C) stopping everything.

Each test runs the scripts in a sandbox: a copy of scripts/ beside links to the rest of the project, so that the
sandbox's local.settings.json, .demo/ and Azurite data are its own and a developer's are never touched."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import script_sandbox

from devtools.loopback import AZURITE_KEY, PROJECT, LoopbackServer, free_port

FIXTURE_INITIATE = PROJECT / "tests" / "fixtures" / "copilot-studio-handoff-initiate.activityset.json"


def connection_string(port: int) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def processes_of(sandbox: Path) -> list[str]:
    """Processes still running in the sandbox (their working directory or command line is in it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(sandbox) in cmdline or cwd == str(sandbox)):
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    return script_sandbox(tmp_path / "app")


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A shell's environment without the app's settings; Azurite on a free port with its data under tmp_path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HANDOFF_", "BOT_", "MicrosoftApp", "AZURITE_")) and k not in ("AzureWebJobsStorage", "PORT")
    }
    table_port = free_port()
    env.update(
        AZURITE_TABLE_PORT=str(table_port),
        AZURITE_LOCATION=str(tmp_path / "azurite"),
        HANDOFF_STORAGE_CONNECTION=connection_string(table_port),
    )
    return env


class Script:
    """A script started as from a terminal (its own process group, as a shell job), its output collected as it comes."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                self._reader.join(2)
                if text in self.output:
                    return
                pytest.fail(f"the script exited ({self.process.returncode}) without printing {text!r}:\n{self.output}")
            if time.monotonic() > end:
                pytest.fail(f"{text!r} not printed within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the script did not exit within {timeout} s:\n{self.output}")
        self._reader.join(5)
        return code

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(5)


@pytest.fixture
def scripts(sandbox: Path) -> Iterator[list[Script]]:
    started: list[Script] = []
    yield started
    for script in started:  # a failed test must not leave anything running
        if script.process.poll() is None:
            script.kill()
    for line in processes_of(sandbox):
        pid = int(line.split(":")[0])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(scripts: list[Script], sandbox: Path, env: dict[str, str], *args: str) -> Script:
    script = Script(["bash", *args], cwd=sandbox, env=env)
    scripts.append(script)
    return script


@pytest.fixture
def occupied() -> Iterator[tuple[socket.socket, int]]:
    """A port another program listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()



# -- scripts/run.sh ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--port", "PORT"])
def test_run_names_a_taken_port_and_how_to_pick_another_before_starting_anything(
    how: str, sandbox: Path, user_env: dict[str, str], scripts: list[Script], occupied: tuple[socket.socket, int]
) -> None:
    _, port = occupied
    if how == "PORT":
        script = start(scripts, sandbox, {**user_env, "PORT": str(port)}, "scripts/run.sh")
    else:
        script = start(scripts, sandbox, user_env, "scripts/run.sh", "--port", str(port))
    assert script.finish(15) == 2
    output = script.output
    assert f"port {port} is already taken" in output
    assert f"scripts/run.sh --port {port + 1}" in output and f"PORT={port + 1} scripts/run.sh" in output
    assert "Traceback" not in output and "serving" not in output and "Azurite" not in output
    assert not listening(int(user_env["AZURITE_TABLE_PORT"]))


def test_run_names_the_file_and_line_of_a_malformed_local_settings(
    sandbox: Path, user_env: dict[str, str], scripts: list[Script]
) -> None:
    (sandbox / "local.settings.json").write_text('{\n  "IsEncrypted": false,\n  "Values": {"MicrosoftAppId": "" "HANDOFF_TABLE_PREFIX": "x"}\n}\n')
    script = start(scripts, sandbox, user_env, "scripts/run.sh", "--port", str(free_port()))
    assert script.finish(60) == 2
    output = script.output
    assert f"{sandbox / 'local.settings.json'}, line 3, column 35: Expecting ',' delimiter" in output
    assert "delete it and let scripts/run.sh recreate it from local.settings.example.json" in output
    assert "Traceback" not in output and "serving" not in output
    assert not listening(int(user_env["AZURITE_TABLE_PORT"]))


def test_run_names_a_setting_that_is_not_a_string(sandbox: Path, user_env: dict[str, str], scripts: list[Script]) -> None:
    (sandbox / "local.settings.json").write_text('{\n  "Values": {\n    "HANDOFF_TOKEN_TTL_SECONDS": 900\n  }\n}\n')
    script = start(scripts, sandbox, user_env, "scripts/run.sh", "--port", str(free_port()))
    assert script.finish(60) == 2
    assert f'{sandbox / "local.settings.json"}, line 3: the value of "HANDOFF_TOKEN_TTL_SECONDS" must be a string' in script.output
    assert 'write "900"' in script.output


@pytest.mark.parametrize("stop", ["kill PID", "Ctrl+C"])
def test_run_serves_once_storage_answers_and_its_pid_stops_everything(
    stop: str, sandbox: Path, user_env: dict[str, str], scripts: list[Script]
) -> None:
    port = free_port()
    script = start(scripts, sandbox, user_env, "scripts/run.sh", "--port", str(port))
    script.wait_for("local_runner: serving on", timeout=90)
    output = script.output
    assert "run: created local.settings.json from local.settings.example.json" in output
    assert output.index("run: Table Storage answers at") < output.index("local_runner: serving on")
    # The very first request after "serving" is served: storage was up before the app said so.
    response = httpx.post(
        f"http://127.0.0.1:{port}/api/handoff/initiate", content=FIXTURE_INITIATE.read_bytes(),
        headers={"Content-Type": "application/json"}, timeout=10, trust_env=False,
    )
    assert response.status_code == 201, response.text
    assert _wait_text(script, "PLACEHOLDER: MicrosoftAppId is the all-zero GUID")  # the example's placeholder, loudly

    if stop == "kill PID":
        script.process.send_signal(signal.SIGTERM)
        expected = 143
    else:  # a terminal sends SIGINT to the whole foreground process group
        os.killpg(script.process.pid, signal.SIGINT)
        expected = 130
    started = time.monotonic()
    assert script.finish(15) == expected
    took = time.monotonic() - started
    assert "run: stopping" in script.output
    assert not listening(port) and not listening(int(user_env["AZURITE_TABLE_PORT"]))
    assert processes_of(sandbox) == [] and _azurite_processes(user_env) == []
    assert took < 10


def _wait_text(script: Script, text: str) -> bool:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if text in script.output:
            return True
        time.sleep(0.05)
    return False


def _azurite_processes(env: dict[str, str]) -> list[str]:
    location = env["AZURITE_LOCATION"]
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if location.encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                pass
    return found


def test_run_stops_when_the_storage_port_answers_but_is_not_table_storage(
    sandbox: Path, user_env: dict[str, str], scripts: list[Script]
) -> None:
    impostor = LoopbackServer("not-storage")
    try:
        impostor_port = int(impostor.url.rsplit(":", 1)[1])
        env = {**user_env, "AZURITE_TABLE_PORT": str(impostor_port), "HANDOFF_STORAGE_CONNECTION": connection_string(impostor_port)}
        app_port = free_port()
        script = start(scripts, sandbox, env, "scripts/run.sh", "--port", str(app_port))
        assert script.finish(60) == 2
    finally:
        impostor.stop()
    output = script.output
    assert f"something already listens on 127.0.0.1:{impostor_port}; using it as Table Storage" in output
    assert f"something answers at http://127.0.0.1:{impostor_port}/devstoreaccount1 but not as Table Storage" in output
    assert "serving" not in output and not listening(app_port)


def test_run_gives_up_with_a_message_when_storage_never_answers(
    sandbox: Path, user_env: dict[str, str], scripts: list[Script]
) -> None:
    nowhere = free_port()
    env = {**user_env, "HANDOFF_STORAGE_CONNECTION": connection_string(nowhere), "STORAGE_WAIT_SECONDS": "2"}
    app_port = free_port()
    script = start(scripts, sandbox, env, "scripts/run.sh", "--port", str(app_port))
    assert script.finish(60) == 2
    output = script.output
    assert f"Table Storage at http://127.0.0.1:{nowhere}/devstoreaccount1 did not answer within 2 s (connection refused)" in output
    assert "serving" not in output and not listening(app_port)
    # the Azurite it started (on AZURITE_TABLE_PORT) is stopped again
    assert not listening(int(env["AZURITE_TABLE_PORT"])) and processes_of(sandbox) == []


# -- scripts/demo.sh --serve -------------------------------------------------------------------------------------


def test_demo_serve_names_a_taken_port_and_how_to_pick_another(
    sandbox: Path, user_env: dict[str, str], scripts: list[Script], occupied: tuple[socket.socket, int]
) -> None:
    _, port = occupied
    script = start(scripts, sandbox, user_env, "scripts/demo.sh", "--serve", "--port", str(port), "--no-color")
    assert script.finish(30) == 2
    output = script.output
    assert f"demo: could not start: port {port} is already taken by another program" in output
    assert f"scripts/demo.sh --serve --port {port + 1}" in output
    assert "Everything is running" not in output and "Traceback" not in output
    assert processes_of(sandbox) == []


def test_demo_serve_runs_until_its_pid_is_killed_then_stops_everything_and_removes_its_files(
    sandbox: Path, user_env: dict[str, str], scripts: list[Script]
) -> None:
    port = free_port()
    script = start(scripts, sandbox, user_env, "scripts/demo.sh", "--serve", "--port", str(port), "--no-color")
    script.wait_for("the README shows the curl commands", timeout=90)
    output = script.output
    assert f"app (Functions)   http://127.0.0.1:{port}" in output
    azurite_port = int(re.search(r"Azurite on port (\d+)", output).group(1))  # type: ignore[union-attr]
    jwt, service_url = sandbox / ".demo" / "jwt", sandbox / ".demo" / "service_url"
    assert jwt.read_text().count(".") == 2 and service_url.read_text().startswith("http://127.0.0.1:")
    answer = httpx.post(f"http://127.0.0.1:{port}/api/handoff/initiate", content=b'{"type": "message"}',
                        headers={"Content-Type": "application/json"}, timeout=10, trust_env=False)
    assert answer.status_code == 204

    script.process.send_signal(signal.SIGTERM)  # kill <PID of demo.sh>
    assert script.finish(20) == 143
    assert not jwt.exists() and not service_url.exists() and not (sandbox / ".demo").exists()
    assert not listening(port) and not listening(azurite_port)
    assert processes_of(sandbox) == []


# -- local.settings.example.json ---------------------------------------------------------------------------------


def _example_values() -> dict[str, str]:
    return json.loads((PROJECT / "local.settings.example.json").read_text())["Values"]


def test_the_example_settings_list_every_setting_and_override_no_default() -> None:
    from shared.settings import ENV_NAMES, Settings

    values = _example_values()
    assert set(ENV_NAMES) <= set(values), f"missing: {sorted(set(ENV_NAMES) - set(values))}"
    assert all(isinstance(value, str) for value in values.values())
    placeholder = values["MicrosoftAppId"]
    # The example changes nothing but the placeholder bot id: every other setting is its default.
    assert Settings.from_env(values) == Settings.from_env({"MicrosoftAppId": placeholder})
    # Setting MicrosoftAppId is enough: the deep link's bot id follows it.
    real_id = "68935e91-ff09-4a33-a675-0fe09f015706"
    assert Settings.from_env({**values, "MicrosoftAppId": real_id}).bot_id == real_id
    # func start needs AzureWebJobsStorage (the timer trigger keeps its state in the blob service).
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_a_placeholder_bot_id_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from shared.settings import Settings

    values = _example_values()
    with caplog.at_level("WARNING", logger="shared.settings"):
        Settings.from_env(values)
        Settings.from_env({**values, "MicrosoftAppId": "", "HANDOFF_BOT_ID": "00000000-0000-0000-0000-000000000000"})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("PLACEHOLDER: MicrosoftAppId is the all-zero GUID") for m in warnings), warnings
    assert any(m.startswith("PLACEHOLDER: HANDOFF_BOT_ID is the all-zero GUID") for m in warnings), warnings
    caplog.clear()
    with caplog.at_level("WARNING", logger="shared.settings"):
        Settings.from_env({**values, "MicrosoftAppId": "68935e91-ff09-4a33-a675-0fe09f015706"})
    assert not [r for r in caplog.records if "PLACEHOLDER" in r.getMessage()]


# -- pytest's counts ---------------------------------------------------------------------------------------------


LONG_AND_QUICK = """
import pytest

def test_quick():
    pass

@pytest.mark.long
def test_slow():
    pass
"""


def test_the_long_tests_are_reported_as_deselected(tmp_path: Path) -> None:
    """A run without -m long says how many long tests it left out, so that collected = passed + deselected."""
    (tmp_path / "test_counts.py").write_text(LONG_AND_QUICK)
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_counts.py")]
    default = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert "collected 2 items / 1 deselected / 1 selected" in default.stdout, default.stdout[-2000:]
    assert "1 passed, 1 deselected" in default.stdout
    long = subprocess.run([*command, "-m", "long"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert "1 passed, 1 deselected" in long.stdout, long.stdout[-2000:]  # with -m long: the long one ran
