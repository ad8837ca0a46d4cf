"""Posting events to the engagement hub: `POST HANDOFF_HUB_URL`, signed as a Standard Webhooks message.

`webhook-id` is the event's id (the same on every attempt, so the hub drops repeats by it), `webhook-timestamp`
is fresh per attempt, `webhook-signature` carries one `v1,` signature per configured secret (the current one,
and the previous one during a rotation). The outcome is a `Delivery`: 2xx delivered; 429, 5xx, timeouts and
connection errors pending; any other 4xx failed for good.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.outbound import Deadline, RetryPolicy, Unavailable, send
from shared.vocabulary import Delivery, EventType
from shared.webhooks import WebhookSecret, outbound_headers

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

HUB_POLICY = RetryPolicy(attempts=3, attempt_timeout=3.0)


def webhook_id(handoff_id: str, seq: int, type_: EventType) -> str:
    """`<handoffId>` for handoff.requested, `<handoffId>:<seq>` for every later event."""
    return handoff_id if type_ is EventType.REQUESTED else f"{handoff_id}:{seq}"


def event_body(
    *, type_: EventType, handoff_id: str, seq: int, occurred_at: str, fields: dict[str, Any], raw_tail: tuple[str, bytes] | None = None
) -> bytes:
    """The JSON body of one event. `raw_tail` splices a field whose value is already JSON text (a transcript as
    received: never parsed and serialised a second time)."""
    head = {"type": type_.value, "handoffId": handoff_id, "seq": seq, "occurredAt": occurred_at, **fields}
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if raw_tail is None:
        return text
    name, value = raw_tail
    return b"".join((text[:-1], b',"', name.encode("ascii"), b'":', value, b"}"))


@dataclass(frozen=True, slots=True)
class HubAnswer:
    delivery: Delivery
    http_status: int | None
    detail: str


class HubClient:
    def __init__(self, *, url: str, secrets: list[WebhookSecret], client: httpx.Client, policy: RetryPolicy = HUB_POLICY) -> None:
        self._url = url
        self._secrets = secrets
        self._client = client
        self._policy = policy

    def post(self, webhook_id: str, body: bytes, deadline: Deadline) -> HubAnswer:
        def build() -> httpx.Request:
            # A fresh timestamp (and signature) per attempt, so that a hub enforcing the freshness window accepts retries.
            headers = outbound_headers(self._secrets, webhook_id, body, now=time.time())
            return self._client.build_request("POST", self._url, content=body, headers=headers)

        try:
            response = send(self._client, build, policy=self._policy, deadline=deadline, what="engagement hub")
        except Unavailable as exc:
            return HubAnswer(Delivery.PENDING, exc.status, exc.reason)
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return HubAnswer(Delivery.DELIVERED, status, "delivered")
        return HubAnswer(Delivery.FAILED, status, f"refused with HTTP {status}")
