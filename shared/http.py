"""The HTTP edge shared by both functions: body size cap, JSON answers, and the one place errors map to HTTP."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared.errors import HandoffError, PayloadTooLarge
from shared.logsafe import clean

log = logging.getLogger(__name__)


_ASCII_DIGITS = re.compile(r"[0-9]+")


def read_body(req: func.HttpRequest, limit: int) -> bytes:
    """The request body, refused with 413 before any parsing when it is over `limit` bytes.

    A declared Content-Length of ASCII digits over the limit is refused at once (however many digits: no int()
    of thousands of them); one that is not a plain number (`²`, a sign, garbage) is ignored, and the body's
    actual length decides.
    """
    declared = (req.headers.get("Content-Length") or "").strip()
    significant = declared.lstrip("0")
    if _ASCII_DIGITS.fullmatch(declared) and (len(significant) > 18 or int(significant or "0") > limit):
        raise PayloadTooLarge(f"The body is larger than HANDOFF_MAX_BODY_BYTES ({limit} bytes).")
    body = req.get_body() or b""
    if len(body) > limit:
        raise PayloadTooLarge(f"The body is larger than HANDOFF_MAX_BODY_BYTES ({limit} bytes).")
    return body


def json_response(payload: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        body=json.dumps(payload, ensure_ascii=False, allow_nan=False),  # never `Infinity`: invalid JSON
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
        mimetype="application/json",
        charset="utf-8",
    )


def error_response(error: HandoffError) -> func.HttpResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return json_response({"error": {"code": error.code, "message": error.message}}, error.status, headers)


def handles_errors(name: str) -> Callable[[Callable[[func.HttpRequest], func.HttpResponse]], Callable[[func.HttpRequest], func.HttpResponse]]:
    """Map every error of a function to its HTTP answer; nothing unhandled, no stack trace, ever, reaches the caller."""

    def decorate(handler: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
        @functools.wraps(handler)
        def main(req: func.HttpRequest) -> func.HttpResponse:
            try:
                return handler(req)
            except HandoffError as error:
                level = logging.ERROR if error.status == 500 else logging.WARNING if error.status >= 500 else logging.INFO
                detail = getattr(error, "detail", None)
                log.log(
                    level,
                    "%s answered %s %s: %s%s",
                    name,
                    error.status,
                    error.code,
                    clean(getattr(error, "reason", error.message), 500),
                    f" ({clean(detail, 200)})" if detail else "",
                )
                return error_response(error)
            except Exception:  # a bug: logged with its trace for the operator, a generic answer for the caller
                log.exception("%s failed unexpectedly", name)
                return error_response(HandoffError("An unexpected error occurred; it has been logged."))

        return main

    return decorate
