"""Delivery of a handoff to the engagement hub: a signed, idempotent webhook.

The body is `{"type": "handoff.requested", ...}`; the transcript is spliced into it as the JSON text
that was stored, so the hub receives it exactly as the bot sent it. Headers: `Idempotency-Key`
(the handoff id: the hub can drop repeats), `X-Handoff-Timestamp` and, with a secret,
`X-Handoff-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.handoffs import DELIVERED, FAILED, PENDING
from shared.outbound import Deadline, RetryPolicy, Unavailable, send

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

EVENT_TYPE = "handoff.requested"
HUB_POLICY = RetryPolicy(attempts=3, attempt_timeout=3.0)


def event_body(*, handoff_id: str, document: dict[str, Any], transcript_json: bytes | None, deep_link: str) -> bytes:
    """The webhook body; `document` holds conversation, context and createdAt as recorded, `transcript_json` the
    inline transcript's UTF-8 JSON (spliced in as it is: no second serialisation of a large transcript)."""
    head = json.dumps(
        {
            "type": EVENT_TYPE,
            "handoffId": handoff_id,
            "conversation": document["conversation"],
            "context": document["context"],
            "deepLink": deep_link,
            "createdAt": document["createdAt"],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    transcript = transcript_json if transcript_json is not None else json.dumps(document.get("transcriptReference")).encode()
    return b"".join((head[:-1].encode("utf-8"), b',"transcript":', transcript, b"}"))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    status: str  # delivered / pending / failed
    http_status: int | None
    detail: str


class HubClient:
    def __init__(
        self,
        *,
        url: str,
        secret: str | None,
        client: httpx.Client,
        policy: RetryPolicy = HUB_POLICY,
        budget_seconds: float = 8.0,
    ) -> None:
        self._url = url
        self._secret = secret
        self._client = client
        self._policy = policy
        self._budget = budget_seconds

    def deliver(self, handoff_id: str, body: bytes) -> DeliveryResult:
        def build() -> httpx.Request:
            # A fresh timestamp (and signature) per attempt, so that a hub enforcing a freshness window accepts retries.
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Idempotency-Key": handoff_id,
                "X-Handoff-Timestamp": timestamp,
            }
            if self._secret:
                headers["X-Handoff-Signature"] = signature(self._secret, timestamp, body)
            return self._client.build_request("POST", self._url, content=body, headers=headers)

        try:
            response = send(self._client, build, policy=self._policy, deadline=Deadline(self._budget), what="engagement hub")
        except Unavailable as exc:
            return DeliveryResult(PENDING, exc.status, exc.reason)
        if response.is_success:
            return DeliveryResult(DELIVERED, response.status_code, "delivered")
        return DeliveryResult(FAILED, response.status_code, f"hub refused the handoff with HTTP {response.status_code}")
