"""Hostile-input strategies for the hardening fuzzers (tests/test_hardening.py): the classes an adversarial
review found (non-finite numbers, long and odd URLs and ids, control characters, garbage headers), each
combined with the field fixtures so that the input gets past the first check and reaches the deep ones."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Numbers JSON can write and a double cannot hold (they parse as inf), and some that are merely large.
NON_FINITE = ["1e400", "-1e400", "1E+999", "9" * 400 + ".0", "-" + "9" * 320 + ".5", "1" + "0" * 309 + ".0", "123456789e999"]
# Integers of any length are exact in Python and valid JSON both ways: they pass.
LARGE_BUT_FINITE = ["1e308", "-1e-400", "1" + "0" * 300, "9" * 400, "0.000001e-300"]

CONTROL = [chr(c) for c in range(0, 32)] + ["\x7f", "\x85", "\u2028", "\u2029", "\ufeff"]

odd_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(CONTROL + ["\r\nFORGED log line", ".", "..", "%2e", "/", "\\", "?", "#", "@", " ", "²", "é", "\u3002"]),
             min_size=1, max_size=8).map("".join),
    st.integers(1000, 5000).map(lambda n: "x" * n),
)

odd_ids = st.one_of(
    st.sampled_from([".", "..", "%2e", "%2E%2e", " .. ", "a/../b", "a%2fb", "", "\t", "a\r\nFORGED", "ÿ", "\u3002", "a" * 1025, "a" * 4096]),
    odd_text,
)

def odd_service_urls(port: int) -> st.SearchStrategy[str]:
    """serviceUrls around the loopback connector's `http://127.0.0.1:{port}/amer/` (allowed in the tests): every form
    that passes the checks reaches the loopback connector, never beyond; the odd ones must be refused with 401."""
    allowed = "127.0.0.1"
    scheme = st.sampled_from(["http://", "HTTP://", "http:/", "http:", " http://", "http://\t", "ftp://", ""])
    userinfo = st.sampled_from(["", "", "user@", "user:pass@", f"{allowed}@", "@"])
    host = st.sampled_from([
        allowed, f"{allowed}.", f"evil.com#{allowed}", f"evil.com\\.{allowed}", f"evil.com?.{allowed}", "127.0.0.1.evil.com",
        "127.0.0.l", "smba.trafficmanagér.net", "xn--a.trafficmanager.net", "xn--.trafficmanager.net", "smba\u3002trafficmanager.net",
        "", "[::1]", "[::1", "localhost", f"{allowed}\x00.evil.com", "0x7f.0.0.1", "2130706433", "127.1", "1" * 300,
    ])
    ports = st.sampled_from([f":{port}", f":{port}", ":0", ":99999", f":+{port}", f": {port}", ":-1", ":٤٤٣", ":", f":{port}:{port}",
                             f":0{port}"])
    path = st.sampled_from(["/amer/", "/amer", "/amer/../", "/amer/./", "/amer/%2e%2e/", "/am er/", "/amer/?q=1", "/amer/#frag",
                            "/amer/\n", "/amer/\x00", "/amer/%zz/", "/amer/" + "a" * 3000, "/amer//", "/amer\\", "/amer/%2F"])
    tail = st.sampled_from(["", "", "", " ", "\t", "\r\n", "?", "#"])
    return st.one_of(st.tuples(scheme, userinfo, host, ports, path, tail).map("".join), odd_text)


garbage_content_length = st.one_of(
    st.sampled_from(["²", "-1", "+5", "1e3", "0x10", " 12 ", "9" * 5000, "0" * 5000 + "7", "4000001", "", "NaN", "١٢"]),
    st.text(max_size=12),
)

garbage_authorization = st.one_of(
    st.sampled_from(["Bearer", "Bearer ", "Bearer \r\nFORGED", "bearer a.b.c", "Bearer " + "A" * 20000, "Basic Og==",
                     "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IlxyXG5GT1JHRUQifQ.e30.", "Bearer e30.e30.e30"]),
    st.text(max_size=60),
)

garbage_retry_after = st.one_of(
    st.sampled_from(["²", "9" * 300, "-5", "1.5", "", " ", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
                     "Sun, 06 Nov 1994 08:49:37 GMT", "Wed, 99 Foo 2026 99:99:99 GMT", "\r\n", "3600000", "٣"]),
    st.text(max_size=40),
)


def put_at(document: Any, path: list[Any], value: Any) -> None:
    """Replace (or add) the value at `path` (keys and list indexes) inside `document`, in place."""
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def with_number(document: Any, path: list[Any], number: str) -> bytes:
    """`document` as JSON bytes with the raw number text `number` put at `path` (a JSON number, not a string)."""
    marker = "__NUMBER_MARKER__"
    put_at(document, path, marker)
    return json.dumps(document).replace(f'"{marker}"', number).encode()


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[list[Any]]:
    """Every place in `document` a value can be put: each dict key and list index, nested."""
    found: list[list[Any]] = []
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        found.append([*prefix, key])
        found.extend(paths(value, (*prefix, key)))
    return found


# Mutations of field fixtures, shared by the parser's and the functions' fuzz tests.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)


def mutate(document: object, data: st.DataObject) -> object:
    """Delete, null, retype or replace one field somewhere in the document."""
    paths: list[tuple[object, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                paths.append((node, key))
                walk(child)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                paths.append((node, index))
                walk(child)

    walk(document)
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["delete", "null", "value", "string", "deep"]))
        try:
            if action == "delete":
                del container[key]  # type: ignore[index]
            elif action == "null":
                container[key] = None  # type: ignore[index]
            elif action == "value":
                container[key] = data.draw(json_values)  # type: ignore[index]
            elif action == "string":
                container[key] = json.dumps(container[key])  # type: ignore[index]
            else:
                deep: object = "x"
                for _ in range(data.draw(st.integers(150, 260))):
                    deep = [deep]
                container[key] = deep  # type: ignore[index]
        except (KeyError, IndexError):
            pass
    return document
