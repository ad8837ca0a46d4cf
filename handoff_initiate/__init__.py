"""POST /api/handoff/initiate: record a Copilot Studio handoff, deliver it to the hub, mint its Teams link.

Thin on purpose: bytes -> typed request (one call) -> act -> respond. See ../shared/DESIGN.md.
"""

# No `from __future__ import annotations` here: the Functions worker reads main's annotations as real types.
from datetime import timedelta

import azure.functions as func

from shared import services
from shared.activities import parse_handoff_initiate
from shared.errors import BadRequest
from shared.http import handles_errors, json_response, read_body
from shared.initiate import Binding, initiate
from shared.outbound import Deadline
from shared.settings import current_settings
from shared.timeutil import utcnow

_MAX_BINDING_CHARS = 256
ANSWER_WITHIN_SECONDS = 9.0


@handles_errors("handoff_initiate")
def main(req: func.HttpRequest) -> func.HttpResponse:
    deadline = Deadline(ANSWER_WITHIN_SECONDS)
    settings = current_settings()
    request = parse_handoff_initiate(read_body(req, settings.max_body_bytes))
    if request is None:
        return func.HttpResponse(status_code=204)
    result = initiate(
        request,
        _binding(req),
        handoffs=services.handoff_store(settings),
        schedule=services.schedule(settings),
        outbox=services.outbox(settings),
        bot_id=settings.bot_id,
        ttl_seconds=settings.token_ttl_seconds,
        retention=timedelta(days=settings.retention_days),
        deadline=deadline,
        now=utcnow(),
    )
    return json_response(result.body(), 201 if result.created else 200)


def _binding(req: func.HttpRequest) -> Binding:
    """`userId` / `tenantId` query parameters: who may redeem the link."""
    values = {}
    for name in ("userId", "tenantId"):
        value = (req.params.get(name) or "").strip()
        if len(value) > _MAX_BINDING_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise BadRequest(f"The {name} query parameter must be an id of at most {_MAX_BINDING_CHARS} printable characters.", code="invalid_binding")
        values[name] = value or None
    return Binding(user_id=values["userId"], tenant_id=values["tenantId"])
