"""A small stand-in for `func start`, for machines without Azure Functions Core Tools.

It reads every `*/function.json` of the app, checks it against the code (an HTTP trigger and an HTTP
output binding, known methods, a route template it can serve, the script file and its entry point, the
trigger's parameter name), and serves the routes under `/api/` with a real HTTP server, handing each
request to the function as an `azure.functions.HttpRequest`. It refuses to start on a `function.json` it
cannot serve. Like Core Tools, it loads `Values` from local.settings.json into the environment without
overriding variables already set, and does not enforce function keys locally.

    python scripts/local_runner.py [--host 127.0.0.1] [--port 7071] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import sys
import threading
import typing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

APP_ROOT = Path(__file__).resolve().parent.parent
METHODS = {"get", "post", "put", "delete", "patch", "head", "options", "trace"}
_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|[^{}]+")


class FunctionJsonError(Exception):
    """A function.json this runner cannot serve faithfully."""


@dataclass(frozen=True)
class Route:
    function: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    template: str
    auth_level: str
    handler: Callable[..., Any]
    param_name: str


def load_routes(app_root: Path = APP_ROOT) -> list[Route]:
    """Every function of the app as a route; FunctionJsonError names the file and what is wrong."""
    if str(app_root) not in sys.path:
        sys.path.insert(0, str(app_root))
    prefix = _route_prefix(app_root)
    routes: list[Route] = []
    for spec_path in sorted(app_root.glob("*/function.json")):
        routes.append(_route(spec_path, prefix))
    if not routes:
        raise FunctionJsonError(f"no */function.json under {app_root}")
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        for method in route.methods:
            key = (method, route.pattern.pattern)
            if key in seen:
                raise FunctionJsonError(f"{route.function} and {seen[key]} both serve {method.upper()} {route.template}")
            seen[key] = route.function
    return routes


def _route_prefix(app_root: Path) -> str:
    host = json.loads((app_root / "host.json").read_text())
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    return prefix.strip("/")


def _route(spec_path: Path, prefix: str) -> Route:
    name = spec_path.parent.name
    where = f"{name}/function.json"
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise FunctionJsonError(f"{where} is not valid JSON: {exc}") from exc
    if spec.get("disabled"):
        raise FunctionJsonError(f"{where} is disabled; this runner serves every function or none")
    bindings = spec.get("bindings")
    if not isinstance(bindings, list):
        raise FunctionJsonError(f"{where} has no bindings list")
    triggers = [b for b in bindings if b.get("type") == "httpTrigger"]
    outputs = [b for b in bindings if b.get("type") == "http" and b.get("direction") == "out"]
    others = [b for b in bindings if b not in triggers and b not in outputs]
    if len(triggers) != 1 or triggers[0].get("direction") != "in":
        raise FunctionJsonError(f"{where} must have exactly one httpTrigger binding with direction 'in'")
    if len(outputs) != 1:
        raise FunctionJsonError(f"{where} must have exactly one http output binding")
    if others:
        raise FunctionJsonError(f"{where} has bindings this runner cannot serve: {[b.get('type') for b in others]}")
    trigger, output = triggers[0], outputs[0]
    if output.get("name") != "$return":
        raise FunctionJsonError(f"{where}: only the '$return' http output is supported (got {output.get('name')!r})")
    methods = {str(m).lower() for m in trigger.get("methods") or METHODS}
    if not methods <= METHODS:
        raise FunctionJsonError(f"{where}: unknown HTTP methods {sorted(methods - METHODS)}")
    auth_level = str(trigger.get("authLevel", "function")).lower()
    if auth_level not in ("anonymous", "function", "admin"):
        raise FunctionJsonError(f"{where}: unknown authLevel {auth_level!r}")
    template = (trigger.get("route") or name).strip("/")
    pattern = _compile(template, prefix, where)

    script = spec.get("scriptFile", "__init__.py")
    if not (spec_path.parent / script).is_file():
        raise FunctionJsonError(f"{where}: scriptFile {script!r} does not exist")
    module_name = name if script == "__init__.py" else f"{name}.{Path(script).stem}"
    module = importlib.import_module(module_name)
    entry = spec.get("entryPoint", "main")
    handler = getattr(module, entry, None)
    if not callable(handler):
        raise FunctionJsonError(f"{where}: {module_name}.{entry} is not a function")
    param_name = trigger.get("name")
    parameters = inspect.signature(handler).parameters
    if param_name not in parameters:
        raise FunctionJsonError(
            f"{where}: the trigger binding is named {param_name!r} but {module_name}.{entry} takes {list(parameters)}"
        )
    # Like the Functions worker: an annotated trigger parameter must be an azure.functions.HttpRequest (a real type).
    import azure.functions as func

    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:  # noqa: BLE001 - any unresolvable annotation fails to load in the worker too
        raise FunctionJsonError(f"{where}: the annotations of {module_name}.{entry} do not resolve ({exc})") from exc
    if param_name in hints and hints[param_name] is not func.HttpRequest:
        raise FunctionJsonError(f"{where}: {module_name}.{entry}({param_name}) must be annotated azure.functions.HttpRequest")
    if isinstance(handler.__annotations__.get(param_name), str):
        raise FunctionJsonError(f"{where}: {module_name}.{entry} has string annotations (from __future__ import annotations); the worker needs real types")
    return Route(name, frozenset(methods), pattern, f"/{prefix}/{template}", auth_level, handler, param_name)


def _compile(template: str, prefix: str, where: str) -> re.Pattern[str]:
    regex = ""
    position = 0
    for match in _SEGMENT.finditer(template):
        if match.start() != position:
            break
        regex += f"(?P<{match.group(1)}>[^/]+)" if match.group(1) else re.escape(match.group(0))
        position = match.end()
    if position != len(template):
        raise FunctionJsonError(f"{where}: route template {template!r} uses syntax this runner does not support (constraints, optional or catch-all parameters)")
    return re.compile(f"/{re.escape(prefix)}/{regex}" if prefix else f"/{regex}")


def make_server(routes: list[Route], host: str, port: int) -> ThreadingHTTPServer:
    import azure.functions as func

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffer each response and send it in one write: headers and body written apart meet Nagle's
        # algorithm and the peer's delayed ACK, which costs ~40 ms a request on loopback.
        wbufsize = 1 << 16

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            matches = [(route, route.pattern.fullmatch(parts.path)) for route in routes]
            matches = [(route, m) for route, m in matches if m]
            if not matches:
                return self._reply(404, {"Content-Type": "application/json"}, b'{"error": {"code": "not_found", "message": "No function serves this route."}}')
            allowed = [(route, m) for route, m in matches if self.command.lower() in route.methods]
            if not allowed:
                methods = sorted({m.upper() for route, _ in matches for m in route.methods})
                return self._reply(405, {"Allow": ", ".join(methods), "Content-Type": "application/json"},
                                   b'{"error": {"code": "method_not_allowed", "message": "This route does not accept that method."}}')
            route, match = allowed[0]
            request = func.HttpRequest(
                method=self.command,
                url=f"http://{self.headers.get('Host', f'{host}:{port}')}{self.path}",
                headers=dict(self.headers.items()),
                params=dict(parse_qsl(parts.query, keep_blank_values=True)),
                route_params=match.groupdict(),
                body=body,
            )
            result = route.handler(**{route.param_name: request})
            if inspect.isawaitable(result):
                result = asyncio.run(result)
            headers = dict(result.headers.items())
            if result.mimetype and "content-type" not in {k.lower() for k in headers}:
                headers["Content-Type"] = f"{result.mimetype}; charset={result.charset}" if result.charset else result.mimetype
            self._reply(result.status_code, headers, result.get_body() or b"")

        def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        def log_message(self, format: str, *args: Any) -> None:
            logging.getLogger("local_runner").info("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def load_local_settings(app_root: Path = APP_ROOT) -> None:
    path = app_root / "local.settings.json"
    if path.is_file():
        for key, value in json.loads(path.read_text()).get("Values", {}).items():
            os.environ.setdefault(key, str(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--check", action="store_true", help="validate every function.json against the code and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_local_settings()
    try:
        routes = load_routes()
    except FunctionJsonError as exc:
        print(f"local_runner: cannot serve this app: {exc}", file=sys.stderr)
        return 2
    for route in routes:
        print(f"  {route.function}: [{','.join(sorted(m.upper() for m in route.methods))}] http://{args.host}:{args.port}{route.template}  (authLevel {route.auth_level})")
    if args.check:
        return 0
    server = make_server(routes, args.host, args.port)
    print(f"local_runner: serving on http://{args.host}:{args.port} (function keys are not enforced locally, as with Core Tools); Ctrl+C stops")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
