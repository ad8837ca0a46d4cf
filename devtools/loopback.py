"""Real HTTP servers on 127.0.0.1 standing in for the Bot Framework and the engagement hub.

Each server records every request (method, path, headers, body) and answers through a route table;
answers can be scripted per path (a list consumed in order, then the default), so that tests make a
dependency fail on demand: an HTTP status, a `Retry-After`, a hang, a dropped connection, a response
dripped one byte a second (`Drip`), a huge body (`Huge`), or raw bytes such as garbage headers (`Raw`).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HANG = "hang"  # scripted answer: accept, read, never answer (until the server stops)
DROP = "drop"  # scripted answer: close the connection without a response


@dataclass
class Drip:
    """Scripted answer: a well-formed response sent `chunk` bytes every `interval` seconds (until the client
    leaves or the server stops). `head=True` drips the status line and headers too, not only the body."""

    status: int = 200
    body: bytes = b'{"id": "dripped"}'
    interval: float = 1.0
    chunk: int = 1
    head: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Huge:
    """Scripted answer: a body of `size` bytes (spaces after an opening brace, so it is never valid JSON
    whole), streamed in 64 KiB writes; with `chunked`, no Content-Length."""

    status: int = 200
    size: int = 200 * 1024 * 1024
    chunked: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    """Scripted answer: these bytes, as they are (garbage headers, broken framing), then the connection closes."""

    data: bytes


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # what the server answered (None: hung up or dropped)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # dict/list -> JSON, bytes -> raw, None -> empty
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Recorded], "Answer | Drip | Huge | Raw | str"]


class LoopbackServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Recorded] = []
        self._routes: dict[str, Responder] = {}
        self._scripts: dict[str, list[Answer | Drip | Huge | Raw | str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffer each response and send it in one write: headers and body written apart meet Nagle's
            # algorithm and the peer's delayed ACK, which costs ~40 ms a request on loopback.
            wbufsize = 1 << 16

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, self.path, dict(self.headers.items()), body)
                answer = server._answer(recorded)
                if answer == HANG:
                    server._stopping.wait(30)
                    self.close_connection = True
                    return
                if answer == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(answer, (Drip, Huge, Raw)):
                    self.close_connection = True
                    try:
                        self._misbehave(answer)
                    except OSError:
                        pass  # the client gave up: that is the point
                    return
                assert isinstance(answer, Answer)
                payload = answer.body
                if isinstance(payload, (dict, list)):
                    data = json.dumps(payload).encode()
                    content_type = "application/json"
                else:
                    data = payload or b""
                    content_type = "application/octet-stream"
                self.send_response(answer.status)
                headers = {"Content-Type": content_type, **answer.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _misbehave(self, answer: Drip | Huge | Raw) -> None:
                sock = self.connection
                if isinstance(answer, Raw):
                    sock.sendall(answer.data)
                    return
                if isinstance(answer, Huge):
                    head = [f"HTTP/1.1 {answer.status} OK", "Content-Type: application/json", "Connection: close"]
                    head += [f"{k}: {v}" for k, v in answer.headers.items()]
                    head.append("Transfer-Encoding: chunked" if answer.chunked else f"Content-Length: {answer.size}")
                    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                    block = b"{" + b" " * (65536 - 1)
                    sent = 0
                    while sent < answer.size and not server._stopping.is_set():
                        piece = block[: min(len(block), answer.size - sent)]
                        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if answer.chunked else piece)
                        sent += len(piece)
                        block = b" " * 65536
                    if answer.chunked:
                        sock.sendall(b"0\r\n\r\n")
                    return
                head = [f"HTTP/1.1 {answer.status} OK", "Content-Type: application/json", "Connection: close",
                        f"Content-Length: {len(answer.body)}"]
                head += [f"{k}: {v}" for k, v in answer.headers.items()]
                head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
                if not answer.head:
                    sock.sendall(head_bytes)
                    head_bytes = b""
                data = head_bytes + answer.body
                for start in range(0, len(data), answer.chunk):
                    if server._stopping.wait(answer.interval):
                        return
                    sock.sendall(data[start : start + answer.chunk])

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name=f"loopback-{name}")
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, path_prefix: str, responder: Responder) -> None:
        self._routes[path_prefix] = responder

    def script(self, path_prefix: str, *answers: Answer | Drip | Huge | Raw | str) -> None:
        """The next requests under `path_prefix` get these answers in order, then the route's default."""
        with self._lock:
            self._scripts.setdefault(path_prefix, []).extend(answers)

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix) and (method is None or r.method == method)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._scripts.clear()

    def _answer(self, recorded: Recorded) -> Answer | Drip | Huge | Raw | str:
        answer = self._choose(recorded)
        recorded.status = answer.status if isinstance(answer, (Answer, Drip, Huge)) else None
        return answer

    def _choose(self, recorded: Recorded) -> Answer | Drip | Huge | Raw | str:
        path = urlsplit(recorded.path).path
        with self._lock:
            self.requests.append(recorded)
            for prefix, queue in self._scripts.items():
                if path.startswith(prefix) and queue:
                    return queue.pop(0)
        for prefix in sorted(self._routes, key=len, reverse=True):
            if path.startswith(prefix):
                return self._routes[prefix](recorded)
        return Answer(404, {"error": "no route"})

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PROJECT = Path(__file__).resolve().parent.parent


class Azurite:
    """Azurite's table service on a loopback port; in memory, or on disk in `location` so it survives a restart."""

    def __init__(self, *, port: int | None = None, location: Path | None = None) -> None:
        self.port = port or free_port()
        self.location = location
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};TableEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    def start(self) -> Azurite:
        binary = PROJECT / "node_modules" / ".bin" / "azurite-table"
        if not binary.exists():
            raise RuntimeError("Azurite is not installed: run scripts/setup.sh (scripts/test.sh does it for you)")
        storage = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        self.process = subprocess.Popen(
            [str(binary), "--tableHost", "127.0.0.1", "--tablePort", str(self.port), *storage,
             "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            self._log.seek(0)
            raise RuntimeError(f"Azurite did not start: {self._log.read()[-2000:].decode(errors='replace')}") from None
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGINT, as Ctrl+C): Azurite saves its on-disk store then, and otherwise only every few
        seconds, so an abrupt kill can lose its latest writes (real Table Storage acknowledges only durable ones)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
