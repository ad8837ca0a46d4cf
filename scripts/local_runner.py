"""A small stand-in for `func start`, for machines without Azure Functions Core Tools.

It reads every `*/function.json` of the app and checks it against the code as Microsoft's Python worker does
when it loads a function (every parameter bound and every binding a parameter, trigger annotations that are
the right azure.functions types, `from __future__ import annotations` resolved with typing.get_type_hints),
then serves:
- HTTP triggers under `/{routePrefix}/` with a real HTTP server, routed as the host routes (a trailing slash
  matches the same route; another method than the function's does not match: 404), the request presented as
  the host presents it to the worker (header names lower-cased, empty query values dropped);
- timer triggers on their NCRONTAB schedule (six fields; `%SETTING%` resolved from the settings, as the host
  does), and at start-up when `runOnStartup` is true.
Like Core Tools, it loads `Values` from local.settings.json into the environment without overriding variables
already set, and does not enforce function keys locally. It refuses to start on a function.json it cannot serve.

    .venv/bin/python scripts/local_runner.py [--host 127.0.0.1] [--port 7071] [--check] [--engine inprocess|worker]

`--engine worker` (Python 3.13 with azure-functions-runtime-v1, i.e. .venv313) runs the functions in
Microsoft's worker library, through devtools/worker_host.py, from a deployment-shaped copy of the app.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import typing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

PROJECT = Path(__file__).resolve().parent.parent
APP_ROOT = PROJECT
METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"}
log = logging.getLogger("local_runner")


def _ensure_project_python() -> None:
    """`python scripts/local_runner.py` with an interpreter that lacks the app's packages: run it again with the
    project's .venv (scripts/setup.sh makes it), or say what to do."""
    try:
        import azure.functions  # noqa: F401
        return
    except ImportError:
        pass
    venv_python = PROJECT / ".venv" / "bin" / "python"
    if venv_python.is_file() and not os.environ.get("LOCAL_RUNNER_REEXEC"):
        os.environ["LOCAL_RUNNER_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])
    print("local_runner: this Python has no azure-functions package. Run scripts/setup.sh, then "
          ".venv/bin/python scripts/local_runner.py", file=sys.stderr)
    sys.exit(2)


def _load_module(name: str, path: Path) -> Any:
    """A development module of this project, by its path (the app's own folders stay as the worker sees them)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _hosthttp() -> Any:
    """devtools/worker_host.py: how the host routes and presents an HTTP request (shared with the worker tests)."""
    return _load_module("_local_runner_worker_host", PROJECT / "devtools" / "worker_host.py")


class FunctionJsonError(Exception):
    """A function.json this runner cannot serve faithfully (the message names the file and what is wrong)."""


# ------------------------------------------------------------------------------------------------------------
# NCRONTAB (six fields: second minute hour day month day-of-week), as the timer trigger reads its schedule
# ------------------------------------------------------------------------------------------------------------

_NAMES = {
    4: {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    5: {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())},
}
_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
_FIELD_NAMES = ["second", "minute", "hour", "day", "month", "day-of-week"]


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    fields: tuple[frozenset[int], ...]
    restricted: tuple[bool, ...]

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) != 6:
            raise ValueError(f"{expression!r} is not an NCRONTAB expression of six fields "
                             "(second minute hour day month day-of-week), e.g. '0 */5 * * * *'")
        fields, restricted = [], []
        for index, (text, (low, high)) in enumerate(zip(parts, _RANGES)):
            values: set[int] = set()
            for item in text.lower().split(","):
                base, _, step_text = item.partition("/")
                step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
                if step_text and step is None:
                    raise ValueError(f"{expression!r}: bad step in the {_FIELD_NAMES[index]} field ({item!r})")
                if base == "*":
                    start, end = low, high
                else:
                    first, _, last = base.partition("-")
                    start = cls._value(first, index, expression)
                    end = cls._value(last, index, expression) if last else (high if step else start)
                if index == 5 and end == 7:
                    end = 6 if start <= 6 else 0  # 7 is Sunday too
                if not (low <= start <= high and low <= end <= high and start <= end):
                    raise ValueError(f"{expression!r}: {item!r} is out of range for the {_FIELD_NAMES[index]} field ({low}-{high})")
                values.update(range(start, end + 1, step or 1))
            fields.append(frozenset(values))
            restricted.append(text != "*")
        return cls(expression, tuple(fields), tuple(restricted))

    @staticmethod
    def _value(text: str, index: int, expression: str) -> int:
        if text.isdigit():
            return int(text)
        if text[:3] in _NAMES.get(index, {}):
            return _NAMES[index][text[:3]]
        raise ValueError(f"{expression!r}: {text!r} is not a value of the {_FIELD_NAMES[index]} field")

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment` (UTC, as the host's default WEBSITE_TIME_ZONE).
        A time matches when every field matches; day and day-of-week both apply (NCrontab checks them in turn)."""
        second, minute, hour, day, month, weekday = self.fields
        candidate = moment.replace(microsecond=0) + timedelta(seconds=1)
        limit = candidate + timedelta(days=366 * 5)
        while candidate < limit:
            if candidate.month not in month:
                candidate = (candidate.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
                continue
            if candidate.day not in day or (candidate.isoweekday() % 7) not in weekday:
                candidate = candidate.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if candidate.hour not in hour:
                candidate = candidate.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if candidate.minute not in minute:
                candidate = candidate.replace(second=0) + timedelta(minutes=1)
                continue
            if candidate.second not in second:
                candidate += timedelta(seconds=1)
                continue
            return candidate
        raise ValueError(f"{self.expression!r} never occurs")


_SETTING = re.compile(r"%([^%]+)%")


def resolve_settings(value: str, where: str, environ: typing.Mapping[str, str] | None = None) -> str:
    """`%NAME%` replaced with the app setting NAME, as the host's binding name resolver does; a missing one is an
    error naming the setting (the host refuses to index the function)."""
    environ = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise FunctionJsonError(f"{where}: '%{name}%' does not resolve to a value: set the app setting {name} "
                                    "(local.settings.json Values, or the environment)")
        return environ[name]

    return _SETTING.sub(lookup, value)


# ------------------------------------------------------------------------------------------------------------
# Loading the app
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    function: str
    methods: frozenset[str]  # upper case
    pattern: re.Pattern[str]
    template: str
    auth_level: str
    handler: Callable[..., Any]
    param_name: str


@dataclass(frozen=True)
class Timer:
    function: str
    schedule: CronSchedule
    run_on_startup: bool
    handler: Callable[..., Any]
    param_name: str


@dataclass
class App:
    root: Path
    routes: list[Route] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    # Functions in error, as the host has them when a binding expression does not resolve: the others still run.
    errors: list[str] = field(default_factory=list)


def load_app(app_root: Path = APP_ROOT) -> App:
    """Every function of the app; FunctionJsonError names the file and what is wrong."""
    # The worker appends the app's root to sys.path, after its own packages (python/prodV4/worker.py).
    if str(app_root) not in sys.path:
        sys.path.append(str(app_root))
    hosthttp = _hosthttp()
    try:
        prefix = hosthttp.route_prefix(app_root)
    except (OSError, json.JSONDecodeError) as exc:
        raise FunctionJsonError(f"host.json cannot be read: {exc}") from exc
    app = App(app_root)
    for spec_path in sorted(app_root.glob("*/function.json")):
        _load_function(spec_path, prefix, app, hosthttp)
    if not app.routes and not app.timers and not app.errors:
        raise FunctionJsonError(f"no */function.json under {app_root}")
    seen: dict[tuple[str, str], str] = {}
    for route in app.routes:
        for method in route.methods:
            key = (method, route.pattern.pattern.lower())
            if key in seen:
                raise FunctionJsonError(f"{route.function} and {seen[key]} both serve {method} {route.template}")
            seen[key] = route.function
    return app


def load_routes(app_root: Path = APP_ROOT) -> list[Route]:
    return load_app(app_root).routes


def _load_function(spec_path: Path, prefix: str, app: App, hosthttp: Any) -> None:
    import azure.functions as func

    name = spec_path.parent.name
    where = f"{name}/function.json"
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise FunctionJsonError(f"{where} is not valid JSON: {exc}") from exc
    if spec.get("disabled"):
        raise FunctionJsonError(f"{where} is disabled; this runner serves every function or none")
    bindings = spec.get("bindings")
    if not isinstance(bindings, list) or not bindings:
        raise FunctionJsonError(f"{where} has no bindings list")
    http_triggers = [b for b in bindings if b.get("type") == "httpTrigger"]
    timer_triggers = [b for b in bindings if b.get("type") == "timerTrigger"]
    outputs = [b for b in bindings if b.get("type") == "http" and b.get("direction") == "out"]
    others = [b for b in bindings if b not in http_triggers and b not in timer_triggers and b not in outputs]
    if others:
        raise FunctionJsonError(f"{where} has bindings this runner cannot serve: {[b.get('type') for b in others]}")
    if len(http_triggers) + len(timer_triggers) != 1:
        raise FunctionJsonError(f"{where} must have exactly one trigger: one httpTrigger binding or one timerTrigger binding")
    trigger = (http_triggers or timer_triggers)[0]
    if trigger.get("direction") != "in":
        raise FunctionJsonError(f"{where}: the trigger binding must have direction 'in'")
    if http_triggers and len(outputs) != 1:
        raise FunctionJsonError(f"{where} must have exactly one http output binding")
    if timer_triggers and outputs:
        raise FunctionJsonError(f"{where}: a timer function has no http output binding")
    if outputs and outputs[0].get("name") != "$return":
        raise FunctionJsonError(f"{where}: only the '$return' http output is supported (got {outputs[0].get('name')!r})")

    script = spec.get("scriptFile", "__init__.py")
    if not (spec_path.parent / script).is_file():
        raise FunctionJsonError(f"{where}: scriptFile {script!r} does not exist")
    module_name = name if Path(script).stem == "__init__" else f"{name}.{Path(script).stem}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a module that does not import is a load failure, as in the worker
        raise FunctionJsonError(f"{where}: {module_name} does not import ({type(exc).__name__}: {exc})") from exc
    entry = spec.get("entryPoint") or "main"
    handler = getattr(module, entry, None)
    if not callable(handler):
        raise FunctionJsonError(f"{where}: {module_name}.{entry} is not a function")

    # As azure_functions_runtime_v1.functions.Registry.add_function: annotations resolved with get_type_hints
    # (so `from __future__ import annotations` is fine when the names resolve), every parameter bound and
    # every binding a parameter (a `context` parameter aside), trigger annotations of the right type.
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:  # noqa: BLE001 - an unresolvable annotation fails to load in the worker too
        raise FunctionJsonError(f"{where}: the annotations of {module_name}.{entry} do not resolve ({exc})") from exc
    parameters = set(inspect.signature(handler).parameters) - {"context"}
    bound = {str(b.get("name")) for b in bindings} - {"$return"}
    if parameters - bound:
        raise FunctionJsonError(f"{where}: {module_name}.{entry} takes {sorted(parameters - bound)}, which function.json does not declare")
    if bound - parameters:
        raise FunctionJsonError(f"{where}: the bindings {sorted(bound - parameters)} are declared in function.json but "
                                f"{module_name}.{entry} takes {sorted(parameters)}")
    param_name = str(trigger.get("name"))
    expected = func.HttpRequest if http_triggers else func.TimerRequest
    annotation = hints.get(param_name)
    if annotation is not None and not (isinstance(annotation, type) and issubclass(annotation, expected)):
        raise FunctionJsonError(f"{where}: {module_name}.{entry}({param_name}) must be annotated azure.functions.{expected.__name__}")
    returned = hints.get("return")
    if outputs and returned is not None and not (isinstance(returned, type) and issubclass(returned, (func.HttpResponse, str))):
        raise FunctionJsonError(f"{where}: {module_name}.{entry} must return azure.functions.HttpResponse (annotated {returned!r})")

    if http_triggers:
        methods = {str(m).upper() for m in trigger.get("methods") or METHODS}
        if not methods <= METHODS:
            raise FunctionJsonError(f"{where}: unknown HTTP methods {sorted(methods - METHODS)}")
        auth_level = str(trigger.get("authLevel", "function")).lower()
        if auth_level not in ("anonymous", "function", "admin"):
            raise FunctionJsonError(f"{where}: unknown authLevel {auth_level!r}")
        template = str(trigger.get("route") or name).strip("/")
        try:
            pattern = hosthttp.compile_route(template, prefix)
        except ValueError as exc:
            raise FunctionJsonError(f"{where}: {exc}") from exc
        app.routes.append(Route(name, frozenset(methods), pattern, f"/{prefix}/{template}" if prefix else f"/{template}",
                                auth_level, handler, param_name))
    else:
        try:
            expression = resolve_settings(str(trigger.get("schedule") or ""), where)
        except FunctionJsonError as exc:
            app.errors.append(str(exc))
            return
        try:
            schedule = CronSchedule.parse(expression)
        except ValueError as exc:
            raise FunctionJsonError(f"{where}: the schedule {exc}") from exc
        app.timers.append(Timer(name, schedule, bool(trigger.get("runOnStartup")), handler, param_name))


# ------------------------------------------------------------------------------------------------------------
# Engines: the function called in this process, or in Microsoft's worker library
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class InProcess:
    """Calls the function here, with the request as the worker builds it and the response encoded as the worker
    encodes it (azure.functions' own HttpResponseConverter: the same code the worker calls)."""

    def http(self, route: Route, method: str, url: str, headers: dict[str, str], query: dict[str, str],
             params: dict[str, str], body: bytes) -> Answer:
        import azure.functions as func
        from azure.functions.http import HttpResponseConverter

        request = func.HttpRequest(method=method, url=url, headers=headers, params=query, route_params=params, body=body)
        try:
            result = _call(route.handler, {route.param_name: request})
            datum = HttpResponseConverter.encode(result, expected_type=None)
        except Exception:  # noqa: BLE001 - the host answers a failed invocation with 500 and logs it
            log.exception("%s failed", route.function)
            return Answer(500, {}, b"")
        if datum.type == "string":
            return Answer(200, {}, datum.value.encode())
        value = datum.value
        return Answer(int(value["status_code"].value), {k: v.value for k, v in value["headers"].items()},
                      value["body"].value or b"")

    def timer(self, timer: Timer, past_due: bool) -> None:
        from azure.functions.timer import TimerRequest  # the concrete class the worker builds

        _call(timer.handler, {timer.param_name: TimerRequest(past_due=past_due)})

    def close(self) -> None:
        pass


class InWorker:
    """Runs the functions in Microsoft's worker library (Python 3.13), from a deployment-shaped copy of the app."""

    def __init__(self, app_root: Path) -> None:
        hosthttp = _hosthttp()
        self._copy = tempfile.TemporaryDirectory(prefix="local-runner-app-")
        deployed = hosthttp.deployment_copy(app_root, Path(self._copy.name) / "wwwroot")
        self.host = hosthttp.WorkerHost(deployed).start()

    def http(self, route: Route, method: str, url: str, headers: dict[str, str], query: dict[str, str],
             params: dict[str, str], body: bytes) -> Answer:
        answer = self.host.invoke_http(route.function, method, url, headers, query, params, body)
        if answer.failure:
            log.error("%s failed in the worker: %s", route.function, answer.failure)
        return Answer(answer.status, answer.headers, answer.body)

    def timer(self, timer: Timer, past_due: bool) -> None:
        self.host.timer(timer.function, past_due=past_due)

    def close(self) -> None:
        self.host.stop()
        self._copy.cleanup()


def _call(handler: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    result = handler(**arguments)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    return result


# ------------------------------------------------------------------------------------------------------------
# Serving
# ------------------------------------------------------------------------------------------------------------


def make_server(routes: list[Route], host: str, port: int, engine: Any | None = None) -> ThreadingHTTPServer:
    """The HTTP front; `server.engine` (InProcess by default, or InWorker) runs the functions."""
    hosthttp = _hosthttp()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffer each response and send it in one write: headers and body written apart meet Nagle's
        # algorithm and the peer's delayed ACK, which costs ~40 ms a request on loopback.
        wbufsize = 1 << 16

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            chosen = None
            for route in routes:
                values = hosthttp.match_route(route.pattern, parts.path)
                if values is None:
                    continue
                # HttpMethodRouteConstraint: a method the function does not accept does not match the route.
                if self.command.upper() in route.methods:
                    chosen = (route, values)
                    break
                log.info("%s %s: %s accepts only %s", self.command, hosthttp_clean(parts.path), route.function, ",".join(sorted(route.methods)))
            if chosen is None:
                return self._reply(404, {}, b"")
            route, values = chosen
            url = f"http://{self.headers.get('Host', f'{host}:{port}')}{self.path}"
            answer = self.server.engine.http(route, self.command, url, hosthttp.host_headers(self.headers.items()),
                                 hosthttp.host_query(parts.query), values, body)
            self._reply(answer.status, answer.headers, answer.body)

        def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), hosthttp_clean(format % args))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.engine = engine or InProcess()
    return server


def hosthttp_clean(text: str) -> str:
    """A request line for the log: control characters escaped, so a request cannot forge log lines."""
    return text.encode("unicode_escape").decode("ascii")[:300]


class TimerScheduler:
    """Runs each timer function on its schedule in a thread of its own, as the host's timer listener does
    (one run at a time per function; a run that overlaps the next occurrence makes the next one late)."""

    def __init__(self, timers: list[Timer], engine: Any, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self._timers, self._engine, self._now = timers, engine, now
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(t,), daemon=True, name=f"timer-{t.function}") for t in timers]

    def start(self) -> TimerScheduler:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, timer: Timer) -> None:
        if timer.run_on_startup:
            self._run(timer, past_due=False)
        due = timer.schedule.next_after(self._now())
        while not self._stop.is_set():
            wait = (due - self._now()).total_seconds()
            if wait > 0 and self._stop.wait(min(wait, 1.0)):
                return
            if wait > 0:
                continue
            now = self._now()
            self._run(timer, past_due=(now - due).total_seconds() > 1)
            due = timer.schedule.next_after(max(due, self._now()))

    def _run(self, timer: Timer, past_due: bool) -> None:
        started = time.monotonic()
        try:
            self._engine.timer(timer, past_due)
            log.info("timer %s ran in %d ms", timer.function, (time.monotonic() - started) * 1000)
        except Exception:  # noqa: BLE001 - as the host: a failed run is logged, the schedule goes on
            log.exception("timer %s failed", timer.function)


def load_local_settings(app_root: Path = APP_ROOT) -> None:
    """local.settings.json's Values into the environment (scripts/localsettings.py: errors name the file and line)."""
    localsettings = _load_module("_local_runner_localsettings", PROJECT / "scripts" / "localsettings.py")
    localsettings.apply_to_environ(localsettings.load_values(localsettings.settings_path(app_root)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port to listen on (default 7071)")
    parser.add_argument("--check", action="store_true", help="validate every function.json against the code and exit")
    parser.add_argument("--engine", choices=("inprocess", "worker"), default="inprocess",
                        help="run the functions in this process (default) or in Microsoft's worker library (Python 3.13)")
    parser.add_argument("--app", type=Path, default=APP_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _ensure_project_python()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_root = args.app.resolve()
    try:
        load_local_settings(app_root)
        app = load_app(app_root)
    except FunctionJsonError as exc:
        print(f"local_runner: cannot serve this app: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - LocalSettingsError and friends: the message says what to do
        if type(exc).__name__ != "LocalSettingsError":
            raise
        print(f"local_runner: {exc}", file=sys.stderr)
        return 2

    def describe() -> None:
        for route in app.routes:
            print(f"  {route.function}: [{','.join(sorted(route.methods))}] http://{args.host}:{args.port}{route.template}  (authLevel {route.auth_level})")
        for timer in app.timers:
            print(f"  {timer.function}: timerTrigger, schedule '{timer.schedule.expression}'"
                  f"{' (and at start-up)' if timer.run_on_startup else ''}")

    for error in app.errors:
        print(f"local_runner: a function is in error and will not run (as in the Functions host): {error}", file=sys.stderr)
    if args.check:
        describe()
        return 2 if app.errors else 0
    try:
        server = make_server(app.routes, args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"local_runner: port {args.port} on {args.host} is already taken by another program, so the app cannot "
                  f"serve there. Stop that program, or choose another port: --port {args.port + 1 if args.port < 65535 else 7072}",
                  file=sys.stderr)
        else:
            print(f"local_runner: cannot listen on {args.host}:{args.port}: {exc.strerror}; choose another with --host / --port",
                  file=sys.stderr)
        return 2
    where = "in-process"
    if args.engine == "worker":
        try:
            server.engine = InWorker(app_root)
        except Exception as exc:  # noqa: BLE001 - HostError names the function.json and the reason
            print(f"local_runner: the worker cannot serve this app: {exc}", file=sys.stderr)
            server.server_close()
            return 2
        where = "in Microsoft's worker library"
    engine = server.engine
    describe()
    scheduler = TimerScheduler(app.timers, engine).start()
    print(f"local_runner: serving on http://{args.host}:{args.port} ({where}; function keys are not enforced "
          "locally, as with Core Tools); Ctrl+C stops", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.stop()
        server.shutdown()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
