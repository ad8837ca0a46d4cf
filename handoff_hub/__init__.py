"""POST /api/handoffs/{handoffId}/events: what the engagement hub tells the user (signed, Standard Webhooks).

Order of checks (../shared/DESIGN.md): size cap (413), the signature (401), the `webhook-id` format and the body
(400), then the repeat check, then the handoff and its state (`shared.hubcalls`).
"""

# No `from __future__ import annotations` here: the Functions worker reads main's annotations as real types.
import logging
import time

import azure.functions as func

from shared import services
from shared.activities import parse_hub_event
from shared.errors import BadRequest, ConfigurationError, Unauthorized
from shared.http import handles_errors, json_response, read_body
from shared.logsafe import clean
from shared.outbound import Deadline
from shared.settings import current_settings
from shared.timeutil import utcnow
from shared.webhooks import WebhookRejected, hub_secrets, valid_webhook_id, verify

log = logging.getLogger(__name__)

ANSWER_WITHIN_SECONDS = 9.0
_HUB_REFUSED = "The request is not signed by the engagement hub with HANDOFF_HUB_SECRET (Standard Webhooks)."


@handles_errors("handoff_hub")
def main(req: func.HttpRequest) -> func.HttpResponse:
    deadline = Deadline(ANSWER_WITHIN_SECONDS)
    settings = current_settings()
    if not settings.hub_secret:
        raise ConfigurationError("HANDOFF_HUB_SECRET must be set (a whsec_ Standard Webhooks secret): handoff_hub verifies every call with it.")
    body = read_body(req, settings.max_body_bytes)
    try:
        verified = verify(hub_secrets(settings.hub_secret, settings.hub_secret_previous), req.headers, body, now=time.time())
    except WebhookRejected as rejected:
        refusal = Unauthorized(rejected.reason)
        refusal.message = _HUB_REFUSED
        raise refusal from None
    if not valid_webhook_id(verified.id):
        raise BadRequest("The webhook-id header must be 1 to 200 printable ASCII characters without spaces.", code="invalid_webhook_id")
    handoff_id = req.route_params.get("handoffId") or ""
    event = parse_hub_event(body, route_handoff_id=handoff_id)
    answer = services.hub_calls(settings).handle(
        event.handoff_id, verified.id, body, event, deadline=deadline, now=utcnow()
    )
    log.info("handoff_hub answered %s: handoffId=%s type=%s", answer.status, clean(event.handoff_id), event.type.value)
    return json_response(answer.body, answer.status)
