"""Table Storage clients: one per process and configuration, tables created on first use.

Timeouts and the retry budget are small on purpose: every answer must come within 10 seconds
(Teams gives up at 15), so a storage outage turns into a quick 503 rather than a hung request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from shared.errors import ServiceUnavailable

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

    from shared.settings import Settings

log = logging.getLogger(__name__)
# The SDK logs every request's headers at INFO: noise in Application Insights, not a signal.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

NO_CONTENT = "return-no-content"  # `response_preference` of inserts: the ETag only, not the entity echoed back
HANDOFFS_TABLE = "handoffs"
TOKENS_TABLE = "tokens"

CLIENT_OPTIONS = {
    # Proxy settings are not read from the environment (as the app's httpx clients do not read them either): with
    # them, `requests` scans os.environ twice per storage request, about 0.25 ms of CPU each time with 35
    # variables (a Functions host has more), which cost the relay 8% of its throughput on 2 cores.
    "use_env_settings": False,
    "connection_timeout": 1.5,
    "read_timeout": 2.5,
    "retry_total": 1,
    "retry_backoff_factor": 0.2,
    "retry_backoff_max": 1,
}

_lock = threading.Lock()
_services: dict[tuple[str | None, str | None], TableServiceClient] = {}
_tables: dict[tuple[str | None, str | None, str], TableClient] = {}


def service_client(settings: Settings) -> TableServiceClient:
    """The account's client, from HANDOFF_TABLES_ENDPOINT with a managed identity or from a connection string."""
    key = (settings.tables_endpoint, None if settings.tables_endpoint else settings.storage_connection)
    client = _services.get(key)
    if client is None:
        from azure.data.tables import TableServiceClient

        if settings.tables_endpoint:
            from azure.identity import DefaultAzureCredential  # heavy: only on this path

            client = TableServiceClient(
                endpoint=settings.tables_endpoint, credential=DefaultAzureCredential(), **CLIENT_OPTIONS
            )
        else:
            client = TableServiceClient.from_connection_string(settings.storage_connection, **CLIENT_OPTIONS)
        with _lock:
            client = _services.setdefault(key, client)
    return client


def table_client(settings: Settings, name: str) -> TableClient:
    """`{HANDOFF_TABLE_PREFIX}{name}`, created if missing the first time this process uses it."""
    key = (settings.tables_endpoint, settings.storage_connection, settings.table_prefix + name)
    client = _tables.get(key)
    if client is None:
        with storage_call("create the table"):
            client = service_client(settings).create_table_if_not_exists(settings.table_prefix + name)
        with _lock:
            client = _tables.setdefault(key, client)
    return client


@contextmanager
def storage_call(what: str) -> Iterator[None]:
    """Turn an outage (connection refused, timeout, 5xx, throttling) into a 503 that the caller can retry.

    Conditions the caller expects (conflict, not found, precondition failed) are re-raised unchanged:
    callers catch those inside this block.
    """
    from azure.core.exceptions import AzureError, HttpResponseError

    try:
        yield
    except HttpResponseError as exc:
        if exc.status_code is not None and exc.status_code < 500 and exc.status_code not in (408, 429):
            raise
        log.warning("Table Storage failed to %s: %s", what, type(exc).__name__)
        raise ServiceUnavailable("Table Storage is unavailable; nothing was lost, retry shortly.", code="storage_unavailable") from exc
    except AzureError as exc:
        log.warning("Table Storage unreachable to %s: %s", what, type(exc).__name__)
        raise ServiceUnavailable("Table Storage is unavailable; nothing was lost, retry shortly.", code="storage_unavailable") from exc
