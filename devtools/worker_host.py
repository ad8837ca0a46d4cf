"""A small stand-in for the Azure Functions host that drives Microsoft's Python worker library.

Core Tools cannot be installed here, so this plays the host's side of the FunctionRpc protocol towards
`azure_functions_runtime_v1` (PyPI `azure-functions-runtime-v1`, MIT, Microsoft; Python >= 3.13), the
library that runs v1-model (function.json) apps on Python 3.13 in Azure. Each choice below follows the
host's or the worker's own source; the comments say where (paths in Azure/azure-functions-host and
Azure/azure-functions-python-worker, or in the library itself).

How it is laid out:
- `deployment_copy` copies the app as it would be deployed: only what `.funcignore` lets through.
- `read_functions` reads `host.json` and every `*/function.json` as the host's HostFunctionMetadataProvider
  does, into `FunctionSpec`s (discovered from the folders, not from a list).
- `WorkerHost` starts the worker in a separate interpreter (`python -I`, so neither the project nor the
  test suite is importable: only the deployment copy, appended to `sys.path` as the worker does), sends it
  WorkerInitRequest, FunctionsMetadataRequest, one FunctionLoadRequest per function, then
  InvocationRequests (HTTP with route parameters, timer), and turns the answers back into what the host
  would do with them. Messages travel as length-prefixed serialized `StreamingMessage`s over a pipe
  instead of gRPC; the channel's 4 MiB message limit is enforced on that pipe (see CHANNEL_LIMIT_BYTES).
- Run as a script (`python -I worker_host.py --worker APP_DIR`), this file is the worker process's side.

The HTTP helpers (`host_query`, `host_headers`, `match_route`) are also what scripts/local_runner.py uses,
so the runner and the worker see a request the same way.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

# gRPC's default maximum message size (4 MiB). The host itself allows int.MaxValue
# (src/WebJobs.Script.Grpc/Server/Startup.cs, RpcWorkerConstants.DefaultMaxMessageLengthBytes) and passes it
# to the worker as --functions-grpc-max-message-length; the contract (DESIGN.md, HANDOFF_MAX_BODY_BYTES) takes
# the 4 MiB default as the worker channel's limit, so the stand-in refuses any message above it, as a channel
# left at gRPC's default would. A request whose message exceeds it never reaches the app.
CHANNEL_LIMIT_BYTES = 4 * 1024 * 1024
_HOST_VERSION = "4.1037.0 (stand-in: devtools/worker_host.py)"
_FRAME = struct.Struct(">I")


class HostError(Exception):
    """The host could not start the worker or load the app; the message names the file and the reason."""


class ChannelLimitExceeded(HostError):
    """A message larger than the channel allows (the request never reaches the worker)."""


# --------------------------------------------------------------------------------------------------------
# The app as deployed: .funcignore
# --------------------------------------------------------------------------------------------------------


def funcignore_patterns(app_root: Path) -> list[str]:
    path = app_root / ".funcignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def is_ignored(relative: str, patterns: Iterable[str], is_dir: bool = False) -> bool:
    """gitignore-style matching, as Core Tools reads .funcignore (azure-functions-core-tools,
    src/Azure.Functions.Cli/Common/GitIgnoreParser.cs, used by `func azure functionapp publish` and
    `func pack`): a pattern without a slash matches a file or folder name at any depth, a pattern with one
    is anchored at the app root, a trailing slash matches folders only, `!` re-includes, the last match
    wins, and a file inside an ignored folder is ignored."""
    parts = relative.strip("/").split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        dir_only = body.endswith("/")
        body = body.strip("/")
        if not body:
            continue
        anchored = "/" in body
        hit = False
        for depth in range(1, len(parts) + 1):
            # a prefix of the path is a folder unless it is the whole path of a file
            prefix_is_dir = depth < len(parts) or is_dir
            if dir_only and not prefix_is_dir:
                continue
            candidate = "/".join(parts[:depth]) if anchored else parts[depth - 1]
            if fnmatch.fnmatchcase(candidate, body):
                hit = True
                break
        if hit:
            ignored = not negate
    return ignored


def deployment_copy(app_root: Path, destination: Path) -> Path:
    """Copy the app as a deployment would: every file .funcignore lets through, nothing else."""
    patterns = funcignore_patterns(app_root)
    destination.mkdir(parents=True, exist_ok=True)
    for current, dirs, files in os.walk(app_root):
        here = Path(current)
        rel_dir = here.relative_to(app_root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        dirs[:] = sorted(d for d in dirs if not is_ignored(f"{rel_dir}/{d}".strip("/"), patterns, is_dir=True))
        for name in sorted(files):
            rel = f"{rel_dir}/{name}".strip("/")
            if is_ignored(rel, patterns):
                continue
            target = destination / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(here / name, target)
    return destination


# --------------------------------------------------------------------------------------------------------
# Function metadata, as the host reads it
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    name: str
    type: str
    direction: str  # in / out / inout
    data_type: str | None  # string / binary / stream, or None (undefined)
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    directory: Path
    script_file: Path
    entry_point: str
    bindings: tuple[Binding, ...]
    function_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def trigger(self) -> Binding:
        return next(b for b in self.bindings if b.type.lower().endswith("trigger"))

    @property
    def route(self) -> str | None:
        """The HTTP route template (without the prefix), or None for a non-HTTP function."""
        trigger = self.trigger
        if trigger.type != "httpTrigger":
            return None
        # WebScriptHostHttpRoutesManager.InitializeHttpFunctionRoutes: an empty route means the function's name.
        return str(trigger.raw.get("route") or self.name).strip("/")

    @property
    def methods(self) -> frozenset[str] | None:
        """The allowed HTTP methods (upper case), or None for all of them."""
        methods = self.trigger.raw.get("methods")
        return frozenset(str(m).upper() for m in methods) if methods else None


def route_prefix(app_root: Path) -> str:
    """host.json extensions.http.routePrefix, default "api" (the host's HttpOptions)."""
    host = json.loads((app_root / "host.json").read_text())
    return str(host.get("extensions", {}).get("http", {}).get("routePrefix", "api")).strip("/")


def read_functions(app_root: Path) -> list[FunctionSpec]:
    """Every function of the app, from its folders (HostFunctionMetadataProvider: a function is a folder with
    a function.json; ParseFunctionMetadata / DeterminePrimaryScriptFile / BindingMetadata.Create)."""
    specs: list[FunctionSpec] = []
    for spec_path in sorted(app_root.glob("*/function.json")):
        where = f"{spec_path.parent.name}/function.json"
        try:
            config = json.loads(spec_path.read_text())
        except json.JSONDecodeError as exc:
            raise HostError(f"{where} is not valid JSON: {exc}") from exc
        if config.get("disabled"):
            continue
        bindings = config.get("bindings")
        if not isinstance(bindings, list) or not bindings:
            raise HostError(f"{where}: at least one binding must be declared")
        parsed = []
        for raw in bindings:
            direction = str(raw.get("direction", "")).lower()
            if direction not in ("in", "out", "inout"):
                raise HostError(f"{where}: binding {raw.get('name')!r} has no valid direction")
            data_type = raw.get("dataType")
            parsed.append(Binding(str(raw.get("name")), str(raw.get("type")), direction,
                                  str(data_type).lower() if data_type else None, raw))
        if sum(1 for b in parsed if b.type.lower().endswith("trigger")) != 1:
            raise HostError(f"{where}: a function needs exactly one trigger binding")
        script = config.get("scriptFile")
        if script:
            script_path = spec_path.parent / script
            if not script_path.is_file():
                raise HostError(f"{where}: the 'scriptFile' property is set to a file that does not exist ({script})")
        else:
            # DeterminePrimaryScriptFile: a single file is the primary one; for Python apps that is __init__.py.
            script_path = spec_path.parent / "__init__.py"
        specs.append(FunctionSpec(spec_path.parent.name, spec_path.parent.resolve(), script_path.resolve(),
                                  str(config.get("entryPoint") or ""), tuple(parsed)))
    if not specs:
        raise HostError(f"no */function.json under {app_root}")
    return specs


# --------------------------------------------------------------------------------------------------------
# HTTP as the host presents it (shared with scripts/local_runner.py)
# --------------------------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|[^{}]+")


def compile_route(template: str, prefix: str) -> re.Pattern[str]:
    """A route template with plain `{name}` parameters as a regex over the request path. Anything else
    (constraints, optional or catch-all parameters) raises ValueError."""
    regex, position = "", 0
    for match in _SEGMENT.finditer(template):
        if match.start() != position:
            break
        regex += f"(?P<{match.group(1)}>[^/]+)" if match.group(1) else re.escape(match.group(0))
        position = match.end()
    if position != len(template):
        raise ValueError(f"route template {template!r} uses syntax this stand-in does not support "
                         "(constraints, optional or catch-all parameters)")
    return re.compile(f"/{re.escape(prefix)}/{regex}" if prefix else f"/{regex}", re.IGNORECASE)


def match_route(pattern: re.Pattern[str], path: str) -> dict[str, str] | None:
    """Route values when `path` (as received, still percent-encoded) matches, else None.

    ASP.NET Core routing, which the host's WebJobsRouter uses (Microsoft.AspNetCore.Routing.Route and its
    RoutePatternMatcher): the path is split by its PathTokenizer, which does not count one trailing slash
    as a segment, so `/api/handoff/initiate/` matches `handoff/initiate` (a doubled slash is an empty
    segment and does not match); literal segments compare case-insensitively; Kestrel has decoded the path
    except `%2F`, so a route value keeps an encoded slash encoded."""
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    match = pattern.fullmatch(path)
    if match is None:
        return None
    return {name: unquote(value.replace("%2F", "%252F").replace("%2f", "%252f")) for name, value in match.groupdict().items()}


def host_query(query_string: str) -> dict[str, str]:
    """The query as the worker receives it (GrpcMessageConversionExtensions.ToRpcHttp, without the
    nullable-value capability, which azure_functions_runtime_v1 does not announce): ASP.NET's query
    collection (keys case-insensitive, repeated keys joined with ","), and keys whose value is empty dropped."""
    merged: dict[str, tuple[str, list[str]]] = {}
    for piece in query_string.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        key, value = unquote_plus(key), unquote_plus(value)
        entry = merged.setdefault(key.lower(), (key, []))
        entry[1].append(value)
    query = {}
    for key, values in merged.values():
        joined = ",".join(values)
        if joined:
            query[key] = joined
    return query


def host_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers as the worker receives them (ToRpcHttp): names lower-cased, repeated headers joined
    with "," (ASP.NET's StringValues), empty values kept (the worker does not announce
    IgnoreEmptyValuedRpcHttpHeaders)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


@dataclass(frozen=True)
class HostResponse:
    """What the host answers the HTTP caller, and the worker's failure if the invocation failed."""

    status: int
    headers: dict[str, str]
    body: bytes
    failure: str | None = None


# --------------------------------------------------------------------------------------------------------
# The host side
# --------------------------------------------------------------------------------------------------------


def load_protos() -> Any:
    """The FunctionRpc messages the library's wheel ships (its `tests/protos`, generated code), loaded
    under a private package name: the wheel's top-level `tests` package would clash with the suite's."""
    import importlib
    import importlib.util
    import types

    name = "_functionrpc_protos"
    if name in sys.modules:
        return sys.modules[name].namespace
    spec = importlib.util.find_spec("azure_functions_runtime_v1")
    if spec is None or spec.origin is None:
        raise HostError("azure-functions-runtime-v1 is not installed (pip install azure-functions-runtime-v1; Python >= 3.13)")
    protos_dir = Path(spec.origin).parent.parent / "tests" / "protos"
    package = types.ModuleType(name)
    package.__path__ = [str(protos_dir)]
    sys.modules[name] = package
    rpc = importlib.import_module(f"{name}.FunctionRpc_pb2")
    nullable = importlib.import_module(f"{name}.shared.NullableTypes_pb2")
    namespace = types.SimpleNamespace(**{k: getattr(rpc, k) for k in dir(rpc) if not k.startswith("_")})
    for k in ("NullableString", "NullableBool", "NullableDouble", "NullableTimestamp"):
        setattr(namespace, k, getattr(nullable, k))
    package.namespace = namespace
    return namespace


class WorkerHost:
    """Starts a worker process on a deployed app, loads every function, and invokes them."""

    def __init__(self, app_dir: Path, env: Mapping[str, str] | None = None, python: str = sys.executable,
                 channel_limit: int = CHANNEL_LIMIT_BYTES) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.protos = load_protos()
        self.functions = {spec.name: spec for spec in read_functions(self.app_dir)}
        self.prefix = route_prefix(self.app_dir)
        self.channel_limit = channel_limit
        self.worker_log: list[str] = []
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        environment = dict(os.environ if env is None else env)
        # The host starts the worker with the app's settings as environment variables and
        # AzureWebJobsScriptRoot set to the app (python/prodV4/worker.py reads it to extend sys.path).
        environment["AzureWebJobsScriptRoot"] = str(self.app_dir)
        environment.pop("PYTHONPATH", None)
        self._process = subprocess.Popen(
            [python, "-I", str(Path(__file__).resolve()), "--worker"],
            cwd=self.app_dir, env=environment,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._read_responses, daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> WorkerHost:
        """GrpcWorkerChannel's start-up: WorkerInitRequest, FunctionsMetadataRequest (a v1 worker answers
        use_default_metadata_indexing, so the host indexes function.json itself), then a FunctionLoadRequest
        per function. A load failure raises HostError naming the function.json and the worker's reason."""
        p = self.protos
        init = self._call(p.StreamingMessage(worker_init_request=p.WorkerInitRequest(
            host_version=_HOST_VERSION, function_app_directory=str(self.app_dir),
            worker_directory=str(self.app_dir))), timeout)
        if init.worker_init_response.result.status != p.StatusResult.Success:
            raise HostError(f"the worker refused WorkerInitRequest: {init.worker_init_response.result.exception.message}")
        self.capabilities = dict(init.worker_init_response.capabilities)
        metadata = self._call(p.StreamingMessage(functions_metadata_request=p.FunctionsMetadataRequest(
            function_app_directory=str(self.app_dir))), timeout)
        if not metadata.function_metadata_response.use_default_metadata_indexing:
            raise HostError("the worker indexed the app itself; this stand-in only serves function.json apps")
        for spec in self.functions.values():
            self.load(spec, timeout)
        return self

    def load(self, spec: FunctionSpec, timeout: float = 60) -> None:
        p = self.protos
        # GrpcWorkerChannel.GetFunctionLoadRequest and BindingMetadata.ToBindingInfo.
        bindings = {
            b.name: p.BindingInfo(
                type=b.type,
                direction=getattr(p.BindingInfo, b.direction),
                data_type=getattr(p.BindingInfo, b.data_type) if b.data_type else p.BindingInfo.undefined,
            )
            for b in spec.bindings
        }
        request = p.FunctionLoadRequest(function_id=spec.function_id, metadata=p.RpcFunctionMetadata(
            name=spec.name, directory=str(spec.directory), script_file=str(spec.script_file),
            entry_point=spec.entry_point, bindings=bindings, is_proxy=False, language="python",
            raw_bindings=[json.dumps(b.raw) for b in spec.bindings], function_id=spec.function_id))
        answer = self._call(p.StreamingMessage(function_load_request=request), timeout).function_load_response
        if answer.result.status != p.StatusResult.Success:
            exc = answer.result.exception
            raise HostError(f"{spec.name}/function.json: the worker could not load "
                            f"{spec.script_file.relative_to(self.app_dir)}: {exc.type + ': ' if exc.type else ''}{exc.message}")

    def stop(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def __enter__(self) -> WorkerHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- invocations --------------------------------------------------------------------------------------

    def http(self, method: str, path: str, *, body: bytes = b"", headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
             query: str = "", host: str = "localhost:7071", timeout: float = 30) -> HostResponse:
        """An HTTP request as the host routes it (404 when no function's route and methods match) and hands it
        to the worker."""
        header_pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if body and not any(k.lower() == "content-length" for k, _ in header_pairs):
            header_pairs.append(("Content-Length", str(len(body))))
        for spec in self.functions.values():
            if spec.route is None:
                continue
            values = match_route(compile_route(spec.route, self.prefix), path)
            # The methods are a route constraint (HttpMethodRouteConstraint): another method does not match.
            if values is not None and (spec.methods is None or method.upper() in spec.methods):
                break
        else:
            return HostResponse(404, {}, b"")
        url = f"http://{host}{path}{'?' + query if query else ''}"
        return self.invoke_http(spec.name, method, url, host_headers(header_pairs), host_query(query), values, body, timeout=timeout)

    def invoke_http(self, function: str, method: str, url: str, headers: Mapping[str, str], query: Mapping[str, str],
                    params: Mapping[str, str], body: bytes, *, timeout: float = 30) -> HostResponse:
        """The InvocationRequest of an HTTP function (ToRpcHttp; the worker announces RawHttpBodyBytes and
        RpcHttpBodyOnly, so the body travels as the raw bytes), and the host's answer from the response."""
        p = self.protos
        spec = self.functions[function]
        rpc = p.RpcHttp(method=method.upper(), url=url, headers=dict(headers), query=dict(query), params=dict(params))
        # ToRpcHttp populates the body only when the request has Content-Length > 0.
        if body:
            rpc.body.CopyFrom(p.TypedData(bytes=body))
        request = p.InvocationRequest(invocation_id=str(uuid.uuid4()), function_id=spec.function_id,
                                      input_data=[p.ParameterBinding(name=spec.trigger.name, data=p.TypedData(http=rpc))])
        response = self._invoke(request, timeout)
        if response.result.status != p.StatusResult.Success:
            # The host answers a failed invocation with 500 and no body.
            return HostResponse(500, {}, b"", failure=_describe(response.result.exception))
        returned = response.return_value
        if returned.WhichOneof("data") != "http":
            return HostResponse(500, {}, b"", failure=f"the function returned {returned.WhichOneof('data')!r}, not an HTTP response")
        out = returned.http
        content = out.body
        kind = content.WhichOneof("data")
        payload = content.bytes if kind == "bytes" else content.string.encode() if kind == "string" else b""
        return HostResponse(int(out.status_code or 200), dict(out.headers), payload)

    def timer(self, function: str, *, past_due: bool = False, timeout: float = 60) -> None:
        """A timer invocation: the trigger's TimerInfo as JSON under the binding's name, as the timer
        extension's binding data (TimerTriggerBinding / TimerInfo) reaches an out-of-process worker.
        Raises HostError with the worker's reason if the invocation failed."""
        p = self.protos
        spec = self.functions[function]
        if spec.trigger.type != "timerTrigger":
            raise HostError(f"{function} is not a timer function")
        info = json.dumps({"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None, "IsPastDue": past_due})
        request = p.InvocationRequest(
            invocation_id=str(uuid.uuid4()), function_id=spec.function_id,
            input_data=[p.ParameterBinding(name=spec.trigger.name, data=p.TypedData(json=info))],
            trigger_metadata={spec.trigger.name: p.TypedData(json=info)})
        response = self._invoke(request, timeout)
        if response.result.status != p.StatusResult.Success:
            raise HostError(f"{function}: the invocation failed: {_describe(response.result.exception)}")

    def _invoke(self, request: Any, timeout: float) -> Any:
        return self._call(self.protos.StreamingMessage(invocation_request=request), timeout).invocation_response

    # -- the channel --------------------------------------------------------------------------------------

    def _call(self, message: Any, timeout: float) -> Any:
        message.request_id = str(next(self._ids))
        data = message.SerializeToString()
        if len(data) > self.channel_limit:
            raise ChannelLimitExceeded(f"a {len(data)}-byte message exceeds the worker channel's {self.channel_limit}-byte limit")
        future: Future = Future()
        with self._lock:
            if self._process.poll() is not None:
                raise HostError(f"the worker process has exited ({self._process.returncode}): {self._tail()}")
            self._pending[message.request_id] = future
            self._process.stdin.write(_FRAME.pack(len(data)) + data)
            self._process.stdin.flush()
        try:
            return future.result(timeout)
        except TimeoutError:
            raise HostError(f"the worker did not answer within {timeout} s: {self._tail()}") from None

    def _read_responses(self) -> None:
        stream = self._process.stdout
        while True:
            header = stream.read(_FRAME.size)
            if len(header) < _FRAME.size:
                break
            data = stream.read(_FRAME.unpack(header)[0])
            message = self.protos.StreamingMessage()
            message.ParseFromString(data)
            with self._lock:
                future = self._pending.pop(message.request_id, None)
            if future is not None:
                future.set_result(message)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(HostError(f"the worker process ended: {self._tail()}"))

    def _read_log(self) -> None:
        for line in self._process.stderr:
            self.worker_log.append(line.decode(errors="replace").rstrip())

    def _tail(self) -> str:
        return " | ".join(self.worker_log[-8:]) or "no output"


def _describe(exception: Any) -> str:
    return f"{exception.type + ': ' if exception.type else ''}{exception.message}"


# --------------------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------------------


@dataclass
class _WorkerRequest:
    """What the library's handlers receive from the proxy worker: the StreamingMessage and properties."""

    name: str
    request: Any
    properties: dict[str, Any]


def _worker_main() -> None:
    import asyncio
    import logging

    # The channel is this process's original stdin/stdout; anything the app prints goes to stderr.
    channel_in = os.fdopen(os.dup(0), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    logging.basicConfig(level=os.environ.get("WORKER_HOST_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")

    # python/prodV4/worker.py (add_script_root_to_sys_path): the app's root is appended to sys.path, after
    # the worker's and the installed packages.
    script_root = os.environ.get("AzureWebJobsScriptRoot")
    if script_root:
        sys.path.append(script_root)

    protos = load_protos()
    from azure_functions_runtime_v1 import handle_event

    handlers = {
        "worker_init_request": (handle_event.worker_init_request, "worker_init_response"),
        "functions_metadata_request": (handle_event.functions_metadata_request, "function_metadata_response"),
        "function_load_request": (handle_event.function_load_request, "function_load_response"),
        "invocation_request": (handle_event.invocation_request, "invocation_response"),
    }
    write_lock = threading.Lock()

    def send(message: Any) -> None:
        data = message.SerializeToString()
        with write_lock:
            channel_out.write(_FRAME.pack(len(data)) + data)
            channel_out.flush()

    def read() -> Any:
        header = channel_in.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return None
        size = _FRAME.unpack(header)[0]
        chunks, remaining = [], size
        while remaining:
            chunk = channel_in.read(remaining)
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        message = protos.StreamingMessage()
        message.ParseFromString(b"".join(chunks))
        return message

    async def handle(message: Any) -> None:
        kind = message.WhichOneof("content")
        handler, answer_field = handlers[kind]
        answer = await handler(_WorkerRequest(kind, message, {"host": "worker_host", "protos": protos}))
        send(protos.StreamingMessage(request_id=message.request_id, **{answer_field: answer}))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            message = await loop.run_in_executor(None, read)
            if message is None:
                break
            # Invocations run concurrently, as the host may send several at once; start-up requests in order.
            task = asyncio.ensure_future(handle(message))
            if message.WhichOneof("content") != "invocation_request":
                await task
            else:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(serve())


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
