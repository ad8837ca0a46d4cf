"""A counting proxy between the app and Azurite: every Table Storage request the app makes, recorded and classified.

The storage budgets of the contract ("2 point reads, 3 writes ...") are checked by pointing the app's
connection string at this proxy and counting what crossed it. Point reads are GETs naming one entity
(`Table(PartitionKey='..',RowKey='..')`), queries are GETs with `$filter`, writes are everything else that
changes data (POST insert, PUT/MERGE/PATCH update, DELETE, a `$batch` counts as one write, as on Azure).
Table creation (once per process and table) is reported apart, since the budgets are for a warm instance.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from devtools.loopback import AZURITE_KEY


@dataclass(frozen=True)
class StorageRequest:
    method: str
    path: str
    query: str
    status: int

    @property
    def kind(self) -> str:
        path = unquote(self.path)
        if path.rstrip("/").endswith("/Tables") or "Tables('" in path:
            return "table"
        if path.endswith("$batch"):
            return "write"
        if self.method == "GET":
            return "read" if "PartitionKey=" in path and "RowKey=" in path else "query"
        return "write"

    @property
    def scan(self) -> bool:
        """A query not pinned to one PartitionKey (DESIGN: none on any request path)."""
        return self.kind == "query" and "PartitionKey eq" not in unquote(self.query).replace("+", " ")


_SERVER_BUSY = b'{"odata.error":{"code":"ServerBusy","message":{"value":"The server is busy."}}}'


class StorageCounter:
    """An HTTP proxy on 127.0.0.1 in front of Azurite's table endpoint, that can also misbehave on demand: while
    `down` is set every request is answered 503 Server Busy (nothing reaches Azurite); `answer_late(method, path,
    body)` returning N > 0 holds the answer N seconds AFTER Azurite has acted on the request (a write that lands
    but whose answer arrives after the client's read timeout)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests: list[StorageRequest] = []
        self.down = threading.Event()
        self.answer_late: Callable[[str, str, bytes], float] | None = None
        self._lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if counter.down.is_set():
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(_SERVER_BUSY)))
                    self.end_headers()
                    self.wfile.write(_SERVER_BUSY)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", counter.target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                parts = urlsplit(self.path)
                with counter._lock:
                    counter.requests.append(StorageRequest(self.command, parts.path, parts.query, response.status))
                late = counter.answer_late(self.command, parts.path, body or b"") if counter.answer_late else 0
                if late > 0:
                    time.sleep(late)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = do_HEAD = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="storage-counter")
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};TableEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def taken(self) -> list[StorageRequest]:
        with self._lock:
            return list(self.requests)

    def counts(self) -> dict[str, int]:
        counts = {"read": 0, "query": 0, "write": 0, "table": 0, "scan": 0}
        for request in self.taken():
            counts[request.kind] += 1
            counts["scan"] += request.scan
        return counts

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
