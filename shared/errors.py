"""Errors that carry their HTTP answer, so each function maps them to a response in one place."""

from __future__ import annotations


class HandoffError(Exception):
    """Base class: `status` and `code` become the HTTP status and the JSON error code.

    The message is shown to the caller, so it must never contain a secret, a token or input echoed back.
    """

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class BadRequest(HandoffError):
    status = 400
    code = "bad_request"


class InvalidActivity(BadRequest):
    """The single error the parsing module raises, whatever was wrong with the bytes."""

    code = "invalid_activity"


class InvalidConversationId(BadRequest):
    """A conversation id that cannot name a Bot Connector conversation (empty, too long, a dot segment...)."""

    code = "invalid_conversation"


class InvalidHubEvent(InvalidActivity):
    """The body of an engagement hub's call (`handoff_hub`) is not an event of the contract's table."""

    code = "invalid_event"


class Unauthorized(HandoffError):
    status = 401
    code = "unauthorized"
    GENERIC = "The request is not authenticated as coming from the Bot Framework."

    def __init__(self, reason: str, *, detail: str | None = None, explain: bool = False) -> None:
        """`reason` names the check that refused, in fixed words (never input, never a secret): it goes to the log,
        and to the caller only with `explain` (HANDOFF_AUTH_DISABLED=true, local development). `detail` holds what
        came from outside (an alg name, an exception type): log only, escaped there."""
        message = f"{self.GENERIC} Refused because {reason} (shown since HANDOFF_AUTH_DISABLED=true)." if explain else self.GENERIC
        super().__init__(message)
        self.reason = reason
        self.detail = detail

    def explained(self) -> Unauthorized:
        return Unauthorized(self.reason, detail=self.detail, explain=True)


class PayloadTooLarge(HandoffError):
    status = 413
    code = "payload_too_large"


class NotImplementedActivity(HandoffError):
    status = 501
    code = "not_implemented"


class UpstreamRefused(HandoffError):
    """A dependency refused the request for good (4xx other than 408/429): retrying will not help."""

    status = 502
    code = "upstream_refused"


class ServiceUnavailable(HandoffError):
    """A dependency is down or slow: nothing was lost, the caller should retry after `retry_after` seconds."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, code=code, retry_after=retry_after)


class ConfigurationError(HandoffError):
    """An operator's mistake in the app settings: the one case where a 500 is the right answer."""

    status = 500
    code = "configuration_error"
