"""The end-to-end demo runs in the suite, so that it cannot rot: every step must behave as expected."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools.loopback import PROJECT, free_port
from tests.helpers import script_sandbox

STEPS = 12


def test_demo_walks_through_every_step() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HANDOFF_", "BOT_", "MicrosoftApp"))}
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "demo.py"), "--no-color"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "\033[" not in output  # no colours when not writing to a terminal
    for step in range(1, STEPS + 1):
        assert f"Step {step} ·" in output
    assert output.count("✔ as expected") == STEPS and "✘" not in output
    assert f"demo: {STEPS} of {STEPS} steps behaved as expected" in output
    steps = {int(n): text for n, text in re.findall(r"━━ Step (\d+) · (.*?)(?=\n━━ Step |\ndemo: )", output, re.S)}
    assert sorted(steps) == list(range(1, STEPS + 1))

    # 1-5: the handoff, what the hub and the tables hold, the link redeemed, and opened again
    assert "← 201 Created" in steps[1]
    assert "verifies with HANDOFF_HUB_SECRET" in steps[2]
    assert "(SHA-256 of the token)" in steps[3]
    assert "You're continuing your earlier conversation with Test501" in steps[4]
    assert "You're already connected: carry on here." in steps[5]

    # 6-7: the hub's signed calls, and what the user saw of each
    assert "You're number 2 in line. Expected wait: about 3 minutes." in steps[6]
    assert "Dana has joined the conversation." in steps[7]
    assert "… (typing)" in steps[7]
    assert steps[7].count("💬 **Dana:** Hi, I'm Dana from the store team.") == 1  # the repeated call sent nothing
    assert "the user received in Teams: nothing" in steps[7].split("the hub retries that call")[1]

    # 8: the user's answer at the hub, seq 3 after requested and connected, signed; Teams' repeat relayed once
    assert re.search(r"seq 3 +handoff\.message +webhook-id: \w+:3 +'Great, thanks!.*✔ verifies", steps[8])
    assert "the hub received: nothing more" in steps[8]

    # 9: the hub down, both messages answered 200 at once, stored in order, delivered once by the sweeper
    outage = steps[9]
    assert outage.count("← 200 OK, 0 bytes") == 2
    assert "event.0000000004 handoff.message 'Also: do you gift-wrap?'" in outage
    assert "event.0000000005 handoff.message 'And is parking free on Sundays?'" in outage
    delivered = outage.split("the hub received,")[1]
    assert re.search(r"seq 4 +handoff\.message +webhook-id: \w+:4 +'Also: do you gift-wrap\?' +✔ verifies\n"
                     r" +seq 5 +handoff\.message +webhook-id: \w+:5 +'And is parking free on Sundays\?' +✔ verifies", delivered)
    assert re.search(r"sweep: delivered=[12] still_pending=\d+ failed=0 expired=0 purged=0 in \d+ ms", delivered)

    # 10: the agent ends it; the user's next message gets the polite reply and goes nowhere
    assert "Dana has ended the conversation. If you need anything else, start a new conversation with the assistant." in steps[10]
    assert "There's no open conversation with an agent here." in steps[10]
    assert "the hub received: nothing" in steps[10]

    # 11: End chat in a second handoff
    assert "You've ended the conversation with the agent." in steps[11]
    assert re.search(r"seq 3 +handoff\.ended +webhook-id: \w+:3 +reason user_ended +✔ verifies", steps[11])

    # 12: an expired link: can't continue; the sweeper ended the unused handoff and told the hub
    assert "the fixture of step 1 with another activity id" in steps[12]
    assert "a new handoff, so 201 Created,\n     not the 200 a repeat of step 1's event would get" in steps[12]
    assert "Please start a new conversation" in steps[12]
    assert re.search(r"seq 2 +handoff\.ended +webhook-id: \w+:2 +reason expired +✔ verifies", steps[12])
    assert output.count("Please start a new conversation") == 1


# -- the README's "Try it by hand", run as written against --serve ----------------------------------------------

def test_the_readme_commands_work_against_serve(tmp_path: Path) -> None:
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Try it by hand", 1)[1].split("**Against `scripts/run.sh`**", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    port = free_port()
    assert commands.count("127.0.0.1:7071") == 4  # initiate, invoke, hub calls, Teams messages
    commands = commands.replace("127.0.0.1:7071", f"127.0.0.1:{port}").replace("/tmp/", f"{tmp_path}/")

    sandbox = script_sandbox(tmp_path / "app")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HANDOFF_", "BOT_", "MicrosoftApp"))}
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen(
        [sys.executable, str(sandbox / "scripts" / "demo.py"), "--serve", "--port", str(port), "--no-color"],
        cwd=sandbox, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while "the README shows the curl commands" not in (tmp_path / "serve.log").read_text():
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        result = subprocess.run(["bash", "-c", commands], cwd=sandbox, env=env, capture_output=True, text=True, timeout=90)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert not (sandbox / ".demo").exists()  # removed when --serve stopped

    assert "HTTP/1.1 200" in output  # 2. the invoke
    assert '"type": "handoff.connected"' in output  # 3. what the hub received
    # 4. and 7.: each hub call was passed on to the user
    answers = [json.loads(line) for line in output.splitlines() if line.startswith('{"handoffId"') and '"state"' in line]
    assert [(a["state"], a["delivered"]) for a in answers] == [
        ("requested", True), ("accepted", True), ("accepted", True), ("ended", True)
    ], output
    # 5. and 6.: every message answered 200; the hub got them in seq order, the two of the outage from the sweeper
    assert output.splitlines().count("200") == 4, output[-3000:]  # the four messages the user wrote
    assert '{"hub": "down: events are answered 503"}' in output and '{"hub": "up: events are answered 202"}' in output
    assert (
        "1 handoff.requested \n2 handoff.connected \n3 handoff.message Can I pick up an order on Sunday?\n"
        "4 handoff.message Do you gift-wrap?\n5 handoff.message Is parking free?\n"
    ) in output
    # 7.: what the user saw, in order
    seen = output.rsplit("\n200\n", 1)[1]
    for text in (
        "message You're number 2 in line. Expected wait: about 3 minutes.",
        "message Dana has joined the conversation.",
        "message **Dana:** Hi, how can I help?",
        "message Dana has ended the conversation.",
        "message There's no open conversation with an agent here.",
    ):
        assert text in seen, seen
        seen = seen.split(text, 1)[1]
