"""The end-to-end demo runs in the suite, so that it cannot rot: every step must behave as expected."""

from __future__ import annotations

import os
import subprocess
import sys

from devtools.loopback import PROJECT


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
    for step in range(1, 7):
        assert f"Step {step} ·" in output
    assert output.count("✔ as expected") == 6 and "✘" not in output
    assert "← 201 Created" in output
    assert "verifies with HANDOFF_HUB_SECRET" in output
    assert "(SHA-256 of the token)" in output
    assert output.count("← 200 OK, 0 bytes") == 3
    assert "You're continuing your earlier conversation with Test501" in output
    assert "You're already connected: carry on here." in output  # step 5: the same user, the same chat
    assert output.count("Please start a new conversation") == 1  # step 6: the expired link
    # step 6 says what it posted, and why that is a 201
    assert "the fixture of step 1 with another activity id" in output
    assert "a new handoff, so 201 Created,\n     not the 200 a repeat of step 1's event would get" in output
    assert "demo: 6 of 6 steps behaved as expected" in output
