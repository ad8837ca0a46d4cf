"""The sweeper, on a timer (`%HANDOFF_SWEEP_SCHEDULE%`): pending hub events delivered, expired links ended, handoffs
past their retention deleted. See `shared.sweeper` and "The sweeper" in ../shared/DESIGN.md.

A timer has nobody to answer: a configuration error is logged at ERROR (naming the setting) and the run ends; a
storage outage ends the run with a WARNING, and the work waits, due, for the next one. Every run logs one line,
`sweep: delivered=N still_pending=N failed=N expired=N purged=N in N ms`.
"""

# No `from __future__ import annotations` here: the Functions worker reads main's annotations as real types.
import logging

import azure.functions as func

from shared.errors import ConfigurationError
from shared.logsafe import clean
from shared.outbound import Deadline
from shared.settings import current_settings
from shared.sweeper import WORK_SECONDS, sweeper_for
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


def main(timer: func.TimerRequest) -> None:
    try:
        settings = current_settings()
        sweeper_for(settings).run(now=utcnow(), deadline=Deadline(WORK_SECONDS))
    except ConfigurationError as error:
        log.error("handoff_sweeper did not run: %s: %s", error.code, clean(error.message, 500))
