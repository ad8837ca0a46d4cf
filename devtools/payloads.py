"""Payloads built from the field fixtures: varied transcripts of any length, for tests and benchmarks."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
ACTIVITY_SET = FIXTURES / "copilot-studio-handoff-initiate.activityset.json"

_WORDS = ("store hours refund order password reset printer laptop delivery invoice account café naïve "
          "出荷 заказ 🙂 \"quoted\" back\\slash line\nbreak").split(" ")


def transcript_activities(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` varied activities in the shapes of the fixture's transcript (user and bot turns, ~700 bytes each)."""
    rng = random.Random(seed)
    shapes = json.loads(ACTIVITY_SET.read_text(encoding="utf-8"))["activities"][0]["attachments"][0]["content"]["activities"]
    activities = []
    for index in range(count):
        activity = copy.deepcopy(shapes[index % 2])
        activity["id"] = f"91hcXEd0ZYCBPoRwBDPHZ6-o|{index:07d}"
        activity["timestamp"] = f"2020-02-10T{21 + index // 3600 % 3:02d}:{index // 60 % 60:02d}:{index % 60:02d}.4914530+00:00"
        activity["text"] = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 40)))
        if index % 10:  # the full diagnostic channelData on one turn in ten keeps the mix realistic
            activity.pop("channelData", None)
        activities.append(activity)
    return activities
