"""POST /api/handoff/action: the Teams bot's messaging endpoint.

Order of checks (../shared/DESIGN.md): size cap (413), the JWT itself (401), the body (400), the claims against
the activity (401), then the activity: a `handoff/action` invoke redeems its continuation token
(`shared.redeem`); another invoke is 501; messages, edits, deletes, End chat and the bot's removal go to the
handoff that owns the chat (`shared.relay`); anything else is answered 200 and ignored.
"""

# No `from __future__ import annotations` here: the Functions worker reads main's annotations as real types.
import logging

import azure.functions as func

from shared import services
from shared.activities import parse_bot_activity
from shared.botauth import authorize_activity, verify_token
from shared.errors import NotImplementedActivity
from shared.http import handles_errors, read_body
from shared.outbound import Deadline
from shared.settings import current_settings
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

# Teams gives up on an invoke after 15 s; every answer, 503 included, must come well before.
ANSWER_WITHIN_SECONDS = 9.0


@handles_errors("handoff_action")
def main(req: func.HttpRequest) -> func.HttpResponse:
    deadline = Deadline(ANSWER_WITHIN_SECONDS)
    settings = current_settings()
    body = read_body(req, settings.max_body_bytes)
    if settings.auth_disabled:
        log.warning("HANDOFF_AUTH_DISABLED=true: Bot Framework authentication is OFF (local development only)")
        jwt = None
    else:
        jwt = verify_token(req.headers.get("Authorization"), app_id=settings.app_id, keys=services.openid_keys(settings), deadline=deadline)
    request = parse_bot_activity(body)
    activity = request.activity
    authorize_activity(jwt, activity, allowed_hosts=settings.allowed_service_url_hosts)

    if request.action is not None:
        services.redemption(settings).redeem(activity, request.action.continuation, deadline=deadline, now=utcnow())
    elif activity.type == "invoke":
        raise NotImplementedActivity("This endpoint handles only the handoff/action invoke.")
    else:
        services.relay(settings).handle(activity, deadline=deadline, now=utcnow())
    return func.HttpResponse(status_code=200)
