"""local.settings.json for local development: read as Core Tools reads it, with errors a person can act on.

Shared by scripts/run.sh and scripts/local_runner.py. (Note to whoever edits the runner: load the file with
`apply_to_environ()` or `load_values()` from here, not with json.loads of your own, so that a malformed file
gives the same message everywhere: the file, the line, and what to do.)

    python scripts/localsettings.py check                  exit 2 with a clear message if the file is malformed
    python scripts/localsettings.py wait-storage [--timeout S] [--pid PID]
                                                           wait until the Table Storage the app will use answers

Like Core Tools, the `Values` of the file become environment variables without overriding variables already
set; values must be strings (app settings are strings: write "900", not 900).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parent.parent
FILE_NAME = "local.settings.json"
EXAMPLE_NAME = "local.settings.example.json"
FIX_HINT = (
    f"Fix it there (strict JSON: double quotes, no comments, no trailing commas), "
    f"or delete it and let scripts/run.sh recreate it from {EXAMPLE_NAME}."
)


class LocalSettingsError(Exception):
    """local.settings.json cannot be used; the message names the file, the line and what to do."""


def settings_path(app_root: Path = APP_ROOT) -> Path:
    return app_root / FILE_NAME


def load_values(path: Path | None = None) -> dict[str, str]:
    """The file's `Values` (empty if the file does not exist); LocalSettingsError if it is malformed."""
    path = settings_path() if path is None else path
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LocalSettingsError(f"{path}: not UTF-8 text (byte {exc.start}). {FIX_HINT}") from None
    except OSError as exc:
        raise LocalSettingsError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalSettingsError(f"{path}, line {exc.lineno}, column {exc.colno}: {exc.msg}. {FIX_HINT}") from None
    if not isinstance(document, dict):
        raise LocalSettingsError(f'{path}: must be a JSON object like {{"IsEncrypted": false, "Values": {{...}}}}. {FIX_HINT}')
    values = document.get("Values", {})
    if not isinstance(values, dict):
        raise LocalSettingsError(f'{path}, line {_line_of(text, "Values")}: "Values" must be an object of settings. {FIX_HINT}')
    for name, value in values.items():
        if not isinstance(value, str):
            raise LocalSettingsError(
                f'{path}, line {_line_of(text, name)}: the value of "{name}" must be a string '
                f"(app settings are strings: write {json.dumps(json.dumps(value))}). {FIX_HINT}"
            )
    return values


def apply_to_environ(values: Mapping[str, str], environ: MutableMapping[str, str] | None = None) -> None:
    """As Core Tools does: the file's values become variables, without overriding those already set."""
    environ = os.environ if environ is None else environ
    for name, value in values.items():
        environ.setdefault(name, value)


def _line_of(text: str, key: str) -> int:
    match = re.search(r'"' + re.escape(key) + r'"\s*:', text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


# -- waiting for storage ---------------------------------------------------------------------------


def storage_connection(environ: Mapping[str, str]) -> str:
    """The connection string the app will use, resolved as shared/settings.py does."""
    for name in ("HANDOFF_STORAGE_CONNECTION", "AzureWebJobsStorage"):
        value = (environ.get(name) or "").strip()
        if value:
            return value
    return "UseDevelopmentStorage=true"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def wait_for_storage(environ: Mapping[str, str], *, timeout: float, pid: int | None = None) -> str:
    """Returns the table endpoint once it answers as Table Storage; LocalSettingsError (what, and what to do) if not."""
    if (environ.get("HANDOFF_TABLES_ENDPOINT") or "").strip():
        return environ["HANDOFF_TABLES_ENDPOINT"].strip() + " (managed identity: not checked locally)"
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError, ServiceResponseError
    from azure.data.tables import TableServiceClient

    try:
        service = TableServiceClient.from_connection_string(
            storage_connection(environ), connection_timeout=1, read_timeout=2, retry_total=0
        )
    except ValueError as exc:
        raise LocalSettingsError(
            f"the storage connection string (HANDOFF_STORAGE_CONNECTION or AzureWebJobsStorage) is not valid: {exc}"
        ) from None
    endpoint = service.url.rstrip("/")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            next(iter(service.list_tables(results_per_page=1).by_page()), None)
            return endpoint
        except ClientAuthenticationError:
            raise LocalSettingsError(
                f"Table Storage at {endpoint} refused the account key of the connection string; check "
                "HANDOFF_STORAGE_CONNECTION / AzureWebJobsStorage."
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:  # nothing answers (yet), or not in time
            text = str(exc)
            last = "connection refused" if "refused" in text.lower() else (text.splitlines()[0][:160] if text else type(exc).__name__)
        except HttpResponseError as exc:
            raise LocalSettingsError(
                f"something answers at {endpoint} but not as Table Storage (HTTP {exc.status_code}); is another "
                "program using that port? Stop it, or point HANDOFF_STORAGE_CONNECTION at your storage."
            ) from None
        except Exception as exc:  # noqa: BLE001 - an answer that is not Table Storage's (not XML/JSON, cut off...)
            raise LocalSettingsError(
                f"something answers at {endpoint} but not as Table Storage ({type(exc).__name__}); is another "
                "program using that port? Stop it, or point HANDOFF_STORAGE_CONNECTION at your storage."
            ) from None
        if pid is not None and not _alive(pid):
            raise LocalSettingsError(f"Azurite (PID {pid}) exited before Table Storage at {endpoint} answered.")
        if time.monotonic() >= deadline:
            raise LocalSettingsError(
                f"Table Storage at {endpoint} did not answer within {timeout:g} s ({last}). Is Azurite running? "
                "Check HANDOFF_STORAGE_CONNECTION / AzureWebJobsStorage."
            )
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="local.settings.json checks for scripts/run.sh")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="exit 2 with a clear message if local.settings.json is malformed")
    wait = commands.add_parser("wait-storage", help="wait until the Table Storage the app will use answers")
    wait.add_argument("--timeout", type=float, default=30.0)
    wait.add_argument("--pid", type=int, default=None, help="stop waiting if this process (Azurite) exits")
    args = parser.parse_args(argv)
    try:
        values = load_values()
        if args.command == "wait-storage":
            environ = dict(os.environ)
            apply_to_environ(values, environ)
            endpoint = wait_for_storage(environ, timeout=args.timeout, pid=args.pid)
            print(f"run: Table Storage answers at {endpoint}")
    except LocalSettingsError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
