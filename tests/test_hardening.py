"""Hardening (issue 10, issue 11 item 3): each weakness an adversarial review found, through `main(req)`, with
loopback servers that misbehave as a hostile network would (hang, drip one byte a second, a 200 MiB body,
garbage headers). Every answer is timed; the figures go to the "reliability figures" summary."""

from __future__ import annotations

import json
import random
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.botframework import APP_ID, CONNECTOR_PATH, BotFramework
from devtools.loopback import HANG, Answer, Drip, Huge, LoopbackServer, Raw
from tests import fuzz
from tests.conftest import HUB_PATH, RELIABILITY_FIGURES
from tests.helpers import ACTIVITY_SET, INVOKE, action, body_json, error_of, fixture, fixture_bytes, handoff_event, hub_call, initiate, invoke

TOKEN_PATH = "/botframework.com/oauth2"
MiB = 1024 * 1024


def mint(name: str = "hardening") -> str:
    response = initiate(handoff_event(id=f"hardening|{name}|{time.monotonic_ns()}"))
    assert response.status_code in (200, 201), response.get_body()
    return body_json(response)["continuationToken"]


def timed(call) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def figure(line: str) -> None:
    RELIABILITY_FIGURES.append(f"hardening: {line}")


def quiet(botframework: BotFramework, **changes: Any) -> dict[str, Any]:
    """An authenticated activity the bot acknowledges with 200 and nothing else (a typing indicator)."""
    return invoke("unused", service_url=botframework.service_url, type="typing", name=None, **changes)


def outbound_calls(botframework: BotFramework) -> int:
    """Requests the Bot Connector and the token endpoint received so far (the login server is shared by the session)."""
    return len(botframework.connector.requests) + len(botframework.login.requests_to(TOKEN_PATH))


@pytest.fixture
def fresh_credentials(monkeypatch):
    """Each test fetches its own bot token (no token cached by an earlier test)."""
    from shared import connector

    monkeypatch.setattr(connector, "_credentials", {})


# ------------------------------------------------------------------------------------------------
# Item 2: OpenID key refreshes


@pytest.fixture
def openid(env, botframework: BotFramework, monkeypatch):
    """A metadata + JWKS endpoint of its own (so a fresh key cache), publishing the loopback Bot Framework's keys."""
    server = LoopbackServer("openid")
    server.route("/meta", lambda r: Answer(200, {"jwks_uri": f"{server.url}/keys"}))
    server.route("/keys", lambda r: Answer(200, {"keys": [k.jwk() for k in botframework.keys.values()]}))
    monkeypatch.setenv("BOT_OPENID_METADATA_URL", f"{server.url}/meta")
    yield server
    server.stop()


def test_cold_instance_with_a_hanging_metadata_endpoint_answers_503_in_time_and_fetches_once(openid, botframework) -> None:
    openid.script("/meta", *[HANG] * 50)
    jwt = botframework.jwt()
    barrier = threading.Barrier(20)

    def one(_: int) -> tuple[int, float, str | None]:
        barrier.wait()
        response, elapsed = timed(lambda: action(quiet(botframework), jwt=jwt))
        return response.status_code, elapsed, response.headers.get("Retry-After")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    worst = max(elapsed for _, elapsed, _ in results)
    assert {status for status, _, _ in results} == {503} and all(retry for _, _, retry in results)
    assert worst < 10
    fetches = len(openid.requests_to("/meta"))
    assert fetches <= 2, "the 20 waiters shared one refresh (at most its 2 attempts)"

    # Backing off: the next requests answer 503 at once and fetch nothing.
    again, quick = timed(lambda: action(quiet(botframework), jwt=jwt))
    assert again.status_code == 503 and quick < 0.5 and len(openid.requests_to("/meta")) == fetches
    assert error_of(again)["code"] == "keys_unavailable"

    openid.clear()  # the endpoint recovers: after the backoff, keys are fetched and requests pass
    deadline = time.monotonic() + 15
    while (status := action(quiet(botframework), jwt=jwt).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert status == 200
    figure(f"cold instance, metadata hanging, 20 concurrent invokes: all 503 (Retry-After), worst {worst:.1f}s, "
           f"{fetches} metadata request(s); during the backoff 503 in {quick * 1000:.0f} ms with no fetch")


def test_stale_keys_keep_serving_while_the_endpoint_hangs_and_junk_kids_do_not_slow_valid_requests(openid, botframework, monkeypatch) -> None:
    from shared import botauth

    monkeypatch.setattr(botauth, "KEYS_MAX_AGE", 0.5)
    jwt = botframework.jwt()
    assert action(quiet(botframework), jwt=jwt).status_code == 200  # keys cached
    time.sleep(0.6)  # ... and now older than the (shortened) day
    openid.clear()
    openid.script("/meta", *[HANG] * 200)

    jobs = [("valid", jwt)] * 48 + [("junk", botframework.jwt(headers={"kid": f"junk-{i}"})) for i in range(16)]
    random.Random(7).shuffle(jobs)

    def one(job: tuple[str, str]) -> tuple[str, int, float]:
        kind, token = job
        response, elapsed = timed(lambda: action(quiet(botframework), jwt=token))
        return kind, response.status_code, elapsed

    with ThreadPoolExecutor(16) as pool:
        results, total = timed(lambda: list(pool.map(one, jobs)))
    valid = [(s, e) for kind, s, e in results if kind == "valid"]
    junk = [(s, e) for kind, s, e in results if kind == "junk"]
    assert {s for s, _ in valid} == {200}, "cached keys keep serving while the refresh fails"
    assert {s for s, _ in junk} == {401}
    worst_valid = max(e for _, e in valid)
    worst_junk = max(e for _, e in junk)
    assert worst_valid < 2.0, f"a valid request waited {worst_valid:.1f}s for a refresh"
    assert worst_junk < 10
    fetches = len(openid.requests_to("/meta"))
    assert fetches <= 2 * (1 + int(total / botauth.FAILURE_BACKOFF[0])), "a failed refresh is not retried by every request"
    figure(f"stale keys, metadata hanging, 48 valid + 16 junk-kid invokes on 16 threads: valid all 200, worst {worst_valid:.2f}s; "
           f"junk all 401, worst {worst_junk:.1f}s; {fetches} metadata requests in {total:.1f}s")


def test_jwks_larger_than_its_cap_is_not_read(openid, botframework) -> None:
    openid.script("/keys", Huge(200, size=200 * MiB), Huge(200, size=200 * MiB, chunked=True))
    response, elapsed = timed(lambda: action(quiet(botframework), jwt=botframework.jwt()))
    assert response.status_code == 503 and elapsed < 10
    figure(f"JWKS of 200 MiB on a cold instance: 503 in {elapsed:.1f}s")


# ------------------------------------------------------------------------------------------------
# Item 3: outbound responses bounded in total time and size


def test_connector_dripping_its_bodies_costs_a_second_per_call_not_the_deadline(env, botframework) -> None:
    token = mint("drip-body")
    botframework.connector.script(CONNECTOR_PATH, *[Drip(201, b'{"id": "dripped-activity"}')] * 10)
    response, elapsed = timed(lambda: action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()))
    assert response.status_code == 200 and elapsed < 10
    figure(f"connector dripping each 2xx body (1 byte/s): 200 in {elapsed:.1f}s")


def test_connector_dripping_its_headers_is_503_in_time_and_the_token_survives(env, botframework) -> None:
    token = mint("drip-head")
    botframework.connector.script(CONNECTOR_PATH, *[Drip(201, b'{"id": "x"}', head=True)] * 10)
    response, elapsed = timed(lambda: action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()))
    assert response.status_code == 503 and response.headers["Retry-After"] and elapsed < 10
    botframework.connector.clear()
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
    assert any(a["type"] == "typing" for a in botframework.sent_activities()), "the retry continued the conversation"
    figure(f"connector dripping status line and headers (1 byte/s): 503 in {elapsed:.1f}s, token intact")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_connector_answering_200_mib_is_not_read_into_memory(env, botframework, chunked: bool) -> None:
    token = mint(f"huge-{chunked}")
    botframework.connector.script(CONNECTOR_PATH, *[Huge(201, size=200 * MiB, chunked=chunked)] * 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response, elapsed = timed(lambda: action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert response.status_code == 200 and elapsed < 10
    assert grown_mib < 50, f"peak memory grew by {grown_mib:.0f} MiB"
    figure(f"connector answering 200 MiB ({'chunked' if chunked else 'Content-Length'}): 200 in {elapsed:.1f}s, peak memory +{grown_mib:.0f} MiB")


@pytest.mark.parametrize(
    "fault",
    [Drip(200, b'{"access_token": "t", "expires_in": 3600}', head=True), Huge(200, size=200 * MiB), Drip(200, b'{"access_token": "t"}')],
    ids=["drip-head", "200-MiB", "drip-body"],
)
def test_token_endpoint_misbehaving_is_503_in_time(env, botframework, fresh_credentials, fault) -> None:
    token = mint(f"token-{type(fault).__name__}")
    botframework.login.script(TOKEN_PATH, *[fault] * 5)
    response, elapsed = timed(lambda: action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()))
    assert response.status_code == 503 and error_of(response)["code"] == "token_endpoint_unavailable" and elapsed < 10
    assert botframework.sent_activities() == []
    botframework.login.clear()
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
    figure(f"token endpoint {fault.__class__.__name__}{' headers' if getattr(fault, 'head', False) else ''}: 503 in {elapsed:.1f}s, token intact")


@pytest.mark.parametrize(
    "fault",
    [Drip(202, b'{"accepted": true}', head=True), Drip(202, b'{"accepted": true}'), Huge(202, size=200 * MiB)],
    ids=["drip-head", "drip-body", "200-MiB"],
)
def test_hub_misbehaving_answers_initiate_in_time(hub_env, fault) -> None:
    hub_env.script(HUB_PATH, *[fault] * 5)
    response, elapsed = timed(lambda: initiate(handoff_event(id=f"hub-fault-{time.monotonic_ns()}")))
    assert response.status_code == 201 and elapsed < 10
    assert body_json(response)["hub"]["status"] in ("delivered", "pending")
    figure(f"hub {fault.__class__.__name__}{' headers' if getattr(fault, 'head', False) else ''}: initiate 201 "
           f"(hub {body_json(response)['hub']['status']}) in {elapsed:.1f}s")


def test_send_is_bounded_by_the_deadline_not_per_read() -> None:
    """The helper itself, on the shared client: a server dripping its headers forever ends at the deadline."""
    from shared.outbound import Deadline, RetryPolicy, Unavailable, send, shared_client

    server = LoopbackServer("drip")
    try:
        server.script("/", *[Drip(200, b"x" * 100, head=True, interval=0.2)] * 5)
        client = shared_client("hardening-test")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            send(client, lambda: client.build_request("GET", server.url + "/"), policy=RetryPolicy(attempts=5, attempt_timeout=10),
                 deadline=Deadline(2.0), what="drip test")
        elapsed = time.monotonic() - started
        assert elapsed < 2.5, f"{elapsed:.2f}s for a 2 s deadline"
    finally:
        server.stop()


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 201 Created\r\nContent-Length: \xc2\xb2\r\n\r\n{}",
        b"HTTP/1.1 201 Created\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}",
        b"HTTP/1.1 2O1 Created\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nX-Correlating-OperationId: a\x00b\r\nBad Header Line\r\n\r\n",
        b"\x00\xff garbage",
    ],
    ids=["content-length-superscript", "content-length-5000-digits", "status-not-a-number", "bad-header-line", "not-http"],
)
def test_connector_answering_garbage_is_503_and_the_token_survives(env, botframework, garbage: bytes) -> None:
    token = mint("garbage")
    botframework.connector.script(CONNECTOR_PATH, *[Raw(garbage)] * 10)
    response, elapsed = timed(lambda: action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()))
    assert response.status_code == 503 and elapsed < 10
    botframework.connector.clear()
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200


# ------------------------------------------------------------------------------------------------
# Item 4: non-finite numbers are refused at the edge


@pytest.mark.parametrize("number", fuzz.NON_FINITE)
def test_non_finite_numbers_in_an_invoke_are_400(env, botframework, number: str) -> None:
    for path in (["from", "extra"], ["recipient", "n"], ["conversation", "n"], ["channelData", "a", "b"], ["value", "x"]):
        activity = invoke("tok", service_url=botframework.service_url)
        target = activity
        for key in path[:-1]:
            target = target.setdefault(key, {})
        body = fuzz.with_number(activity, path, number)
        response = action(body, jwt=botframework.jwt())
        assert response.status_code == 400, (path, response.get_body())
        assert "too large to represent" in error_of(response)["message"]
    assert botframework.sent_activities() == []


@pytest.mark.parametrize("number", ["1e400", "-" + "9" * 400 + ".0"])
def test_non_finite_numbers_in_a_handoff_are_400(env, hub_env, number: str) -> None:
    event = handoff_event()
    cases = {
        "va_ value": fuzz.with_number(handoff_event(), ["value", "va_Score"], number),
        "object transcript": fuzz.with_number(event, ["attachments", 0, "content", "activities", 0, "deep"], number),
        "string transcript": json.dumps(handoff_event(attachments=[{"name": "transcript", "contentType": "application/json",
                                        "content": '{"activities": [{"type": "message", "n": ' + number + "}]}"}])).encode(),
        "string value": json.dumps(handoff_event(value='{"va_LastTopic": "x", "n": [[' + number + "]]}")).encode(),
    }
    for case, body in cases.items():
        response = initiate(body)
        assert response.status_code == 400, (case, response.get_body())
    assert hub_env.requests == [], "nothing reached the hub"
    ok = initiate(fuzz.with_number(handoff_event(id="finite-ok"), ["value", "va_Score"], "1e308"))
    assert ok.status_code == 201
    def refuse(constant: str) -> None:
        raise AssertionError(f"the hub was sent {constant}: not JSON")

    assert json.loads(hub_env.requests[-1].body, parse_constant=refuse)


# ------------------------------------------------------------------------------------------------
# Item 5: malformed Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [("²", None), ("٣", None), ("9" * 300, 3600.0), ("-5", None), ("1.5", None), ("", None), ("\r\n", None), ("120", 120.0),
     ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0), ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0), ("Wed, 99 Foo 2026 99:99:99 GMT", None),
     ("Mon, 01 Jan 0001 00:00:00 GMT", 0.0), ("x" * 100_000, None)],
)
def test_retry_after_is_parsed_strictly_and_clamped(value: str, expected: float | None) -> None:
    from shared.outbound import parse_retry_after

    assert parse_retry_after(value) == expected


@settings(max_examples=500, deadline=None)
@given(value=fuzz.garbage_retry_after)
def test_retry_after_never_raises(value: str) -> None:
    from shared.outbound import parse_retry_after

    parsed = parse_retry_after(value)
    assert parsed is None or 0 <= parsed <= 3600


@pytest.mark.parametrize("value", ["²", "9" * 300, "-5", "Fri, 31 Dec 9999 23:59:59 GMT", "Wed, 99 Foo 2026 99:99:99 GMT"])
def test_connector_retry_after_garbage_never_crashes(env, botframework, value: str) -> None:
    token = mint("retry-after")
    botframework.connector.script(CONNECTOR_PATH, *[Answer(503, headers={"Retry-After": value})] * 50)
    response, elapsed = timed(lambda: action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()))
    assert response.status_code == 503 and elapsed < 10
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    botframework.connector.clear()
    botframework.connector.script(CONNECTOR_PATH, Answer(429, headers={"Retry-After": value}))
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code in (200, 503)


@pytest.mark.parametrize("value", ["²", "9" * 300, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_hub_retry_after_garbage_never_crashes(hub_env, value: str) -> None:
    hub_env.script(HUB_PATH, *[Answer(503, headers={"Retry-After": value})] * 5)
    response, elapsed = timed(lambda: initiate(handoff_event(id=f"retry-after-{time.monotonic_ns()}")))
    assert response.status_code == 201 and body_json(response)["hub"]["status"] == "pending" and elapsed < 10


# ------------------------------------------------------------------------------------------------
# Item 7: only {serviceUrl}/v3/conversations/{id}/activities, with a real id


@pytest.mark.parametrize("conversation_id", [".", "..", "%2e%2e", "%2E", " .. ", "a" * 1025, "a\r\nb", "a\x00b"])
def test_conversation_ids_that_are_not_path_segments_are_400_with_no_outbound_call(env, botframework, conversation_id: str) -> None:
    activity = invoke(mint("dots"), service_url=botframework.service_url)
    activity["conversation"]["id"] = conversation_id
    before = outbound_calls(botframework)
    response = action(activity, jwt=botframework.jwt())
    assert response.status_code == 400
    assert outbound_calls(botframework) == before


@pytest.mark.parametrize("conversation_id", [".", "..", "%2e%2E", "", "a" * 1025, "a\nb"])
def test_the_connector_itself_refuses_ids_that_are_not_path_segments(env, botframework, conversation_id: str) -> None:
    from shared import services
    from shared.errors import InvalidConversationId
    from shared.outbound import Deadline
    from shared.settings import current_settings

    connector = services.bot_connector(current_settings())
    before = outbound_calls(botframework)
    with pytest.raises(InvalidConversationId) as refused:
        connector.send_activities(botframework.service_url, conversation_id, [{"type": "typing"}], Deadline(5))
    assert refused.value.status == 400
    assert outbound_calls(botframework) == before


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(None, "default"), (Answer(201, {"id": 5}), None), (Answer(200, b""), None), (Answer(201, b"<html>"), None),
     (Answer(201, {"id": "x" * 2000}), None), (Huge(201, size=5 * MiB), None), (Answer(201, {"id": "given-id"}), "given-id")],
    ids=["id", "id-not-a-string", "empty", "html", "id-too-long", "5-MiB", "given"],
)
def test_send_activities_returns_the_connector_ids(env, botframework, answer, expected) -> None:
    from shared import services
    from shared.outbound import Deadline
    from shared.settings import current_settings

    if answer is not None:
        botframework.connector.script(CONNECTOR_PATH, answer)
    connector = services.bot_connector(current_settings())
    ids = connector.send_activities(botframework.service_url, "a:conversation", [{"type": "typing"}, {"type": "typing"}], Deadline(8))
    assert len(ids) == 2 and ids[1].startswith("activity-")
    assert ids[0].startswith("activity-") if expected == "default" else ids[0] == expected
    assert botframework.connector.requests[0].path == "/amer/v3/conversations/a%3Aconversation/activities"


# ------------------------------------------------------------------------------------------------
# Item 8: a bad Content-Length never raises


@pytest.mark.parametrize("declared", ["²", "-1", "+5", " 12 ", "١٢", "NaN", "1e3", "0" * 5000 + "7"])
def test_a_content_length_that_is_not_a_number_is_ignored(env, botframework, declared: str) -> None:
    ok = initiate(handoff_event(id=f"cl-{time.monotonic_ns()}"), headers={"Content-Length": declared})
    assert ok.status_code == 201
    assert action(quiet(botframework), jwt=botframework.jwt(), headers={"Content-Length": declared}).status_code == 200


def test_a_content_length_of_thousands_of_digits_is_413(env, botframework) -> None:
    for call in (lambda: initiate(handoff_event(), headers={"Content-Length": "9" * 5000}),
                 lambda: action(quiet(botframework), jwt=botframework.jwt(), headers={"Content-Length": "9" * 5000})):
        response = call()
        assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"


# ------------------------------------------------------------------------------------------------
# Item 9: a token endpoint answering 200 with something other than a token


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, b"<html><body>Sign in</body></html>", {"Content-Type": "text/html"}),
        Answer(200, {}),
        Answer(200, {"access_token": "t", "expires_in": "soon"}),
        Answer(200, {"access_token": "t", "expires_in": -5}),
        Answer(200, b'{"access_token": "t", "expires_in": 1e400}'),
        Answer(200, {"access_token": "t", "expires_in": True}),
        Answer(200, {"access_token": "a\r\nInjected: header"}),
        Answer(200, {"access_token": 5}),
        Answer(200, {"access_token": ""}),
        Answer(200, [1, 2]),
    ],
    ids=["html", "no-token", "expires-in-text", "expires-in-negative", "expires-in-1e400", "expires-in-bool",
         "token-with-crlf", "token-not-a-string", "token-empty", "a-list"],
)
def test_token_endpoint_answering_200_without_a_usable_token_is_502(env, botframework, fresh_credentials, answer) -> None:
    token = mint("token-200")
    botframework.login.script(TOKEN_PATH, answer)
    response = action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt())
    assert response.status_code == 502 and error_of(response)["code"] == "token_endpoint_invalid"
    assert "BOT_TOKEN_URL" in error_of(response)["message"]
    assert botframework.sent_activities() == []
    botframework.login.clear()
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200


@pytest.mark.parametrize("expires_in", ["3599", 10**30, 0, 12.5])
def test_token_endpoint_lifetimes_that_are_odd_but_usable(env, botframework, fresh_credentials, expires_in) -> None:
    token = mint("token-odd")
    botframework.login.script(TOKEN_PATH, Answer(200, {"access_token": "bot-access-token-odd", "expires_in": expires_in}))
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200


# ------------------------------------------------------------------------------------------------
# Item 10: serviceUrl validated the way httpx uses it; 401 before any outbound call

BAD_SERVICE_URLS = {
    "too long": "https://smba.trafficmanager.net/amer/" + "a" * 3000,
    "tab": "https://smba.traffic\tmanager.net/amer/",
    "newline in path": "https://smba.trafficmanager.net/am\ner/",
    "NUL": "https://smba.trafficmanager.net\x00.evil.com/amer/",
    "non-ASCII host": "https://smba.trafficmanagér.net/amer/",
    "ideographic full stop": "https://evil.com\u3002smba.trafficmanager.net/amer/",
    "invalid IDNA": "https://xn--a.smba.trafficmanager.net/amer/",
    "leading space": " https://smba.trafficmanager.net/amer/",
    "trailing space": "https://smba.trafficmanager.net/amer/ ",
    "query": "https://smba.trafficmanager.net/amer/?x=1",
    "fragment": "https://smba.trafficmanager.net/amer/#x",
    "userinfo": "https://user@smba.trafficmanager.net/amer/",
    "userinfo as host": "https://smba.trafficmanager.net@evil.com/amer/",
    "backslash": "https://evil.com\\.smba.trafficmanager.net/amer/",
    "empty host": "https:///amer/",
    "port only": "https://:443/amer/",
    "port 0": "https://smba.trafficmanager.net:0/amer/",
    "port 99999": "https://smba.trafficmanager.net:99999/amer/",
    "port +443": "https://smba.trafficmanager.net:+443/amer/",
    "port 8443": "https://smba.trafficmanager.net:8443/amer/",
    "dot segments": "https://smba.trafficmanager.net/amer/../v3/",
    "encoded dot segments": "https://smba.trafficmanager.net/amer/%2e%2e/",
    "plain http": "http://smba.trafficmanager.net/amer/",
    "no scheme": "smba.trafficmanager.net/amer/",
    "label too long": f"https://{'a' * 64}.smba.trafficmanager.net/amer/",
}


@pytest.mark.parametrize("case", sorted(BAD_SERVICE_URLS))
def test_service_url_forms_httpx_reads_differently_are_401_before_any_outbound_call(env, botframework, case: str) -> None:
    url = BAD_SERVICE_URLS[case]
    activity = invoke(mint("url"), service_url=url)
    before = outbound_calls(botframework)
    response, elapsed = timed(lambda: action(activity, jwt=botframework.jwt(service_url=url)))
    assert response.status_code == 401, response.get_body()
    assert error_of(response)["message"] == "The request is not authenticated as coming from the Bot Framework."
    assert outbound_calls(botframework) == before
    assert elapsed < 10


def test_valid_service_url_forms_pass(env, botframework) -> None:
    from shared.botauth import check_service_url

    hosts = ("smba.trafficmanager.net", "botframework.com")
    assert check_service_url("https://smba.trafficmanager.net/amer/", hosts) == "https://smba.trafficmanager.net/amer"
    assert check_service_url("https://SMBA.TrafficManager.net:443/teams", hosts) == "https://smba.trafficmanager.net:443/teams"
    assert check_service_url("https://europe.webchat.botframework.com/", hosts) == "https://europe.webchat.botframework.com"


def test_an_action_conversation_id_over_1024_characters_is_400(env, botframework) -> None:
    activity = quiet(botframework)
    activity["conversation"]["id"] = "a:" + "x" * 5000
    response = action(activity, jwt=botframework.jwt())
    assert response.status_code == 400 and "1024" in error_of(response)["message"]


# ------------------------------------------------------------------------------------------------
# Item 11: log forging


def test_crlf_from_outside_never_makes_a_second_log_line(env, botframework, all_logs) -> None:
    start = len(all_logs.lines)
    forged = "x\r\nFORGED: a forged log line"
    # A correlation id from the connector, logged with a refusal.
    token = mint("forging")
    # (CR/LF cannot stand in an HTTP header; a tab and NEL, which splitlines() breaks on, can.)
    botframework.connector.script(CONNECTOR_PATH, Answer(403, {"error": "no"}, {"X-Correlating-OperationId": "op\tFORGED\x85x"}))
    assert action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 502
    # JWT header fields (alg, kid) and channel ids, logged with a 401.
    assert action(quiet(botframework), jwt=botframework.jwt(headers={"kid": forged})).status_code == 401
    assert action(quiet(botframework, channelId=forged), jwt=botframework.jwt()).status_code == 401
    assert action(quiet(botframework), headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    # Ids in a handoff (logged when it is recorded) and in an activity.
    for response in (initiate(handoff_event(id=forged)),
                     initiate(handoff_event(conversation={"id": forged})),
                     action(quiet(botframework, id=forged), jwt=botframework.jwt()),
                     action(quiet(botframework, conversation={"id": forged}), jwt=botframework.jwt())):
        assert response.status_code < 500
    lines = all_logs.lines[start:]
    assert len(lines) > 5
    offending = [line for line in lines if "FORGED" in line and len(line.splitlines()) > 1 or "\tFORGED" in line]
    assert offending == [], offending[:3]
    assert any("op\\tFORGED\\x85x" in line for line in lines), "the correlation id is logged, escaped"


# ------------------------------------------------------------------------------------------------
# Item 12: aud, endorsements


def test_aud_as_a_list_is_refused(env, botframework) -> None:
    response = action(quiet(botframework), jwt=botframework.jwt(claims={"aud": [APP_ID]}))
    assert response.status_code == 401
    response = action(quiet(botframework), jwt=botframework.jwt(claims={"aud": [APP_ID, "another-bot"]}))
    assert response.status_code == 401


def test_a_key_whose_endorsements_is_not_a_list_endorses_nothing(env, botframework) -> None:
    response = action(quiet(botframework), jwt=botframework.jwt(key="string-endorsements"))
    assert response.status_code == 401
    assert action(quiet(botframework), jwt=botframework.jwt(key="main")).status_code == 200


def test_requirements_pin_a_pyjwt_without_the_partial_issuer_match() -> None:
    from pathlib import Path

    from packaging.requirements import Requirement

    lines = (Path(__file__).resolve().parent.parent / "requirements.txt").read_text().splitlines()
    [pyjwt] = [Requirement(line) for line in lines if line.strip().lower().startswith("pyjwt")]
    assert "crypto" in pyjwt.extras
    assert not pyjwt.specifier.contains("2.10.0") and pyjwt.specifier.contains("2.10.1") and not pyjwt.specifier.contains("3.0.0")


# ------------------------------------------------------------------------------------------------
# Issue 11 item 3: while auth is disabled, the 401 names its check


def test_with_auth_disabled_the_401_names_the_check_but_no_input(env, botframework, monkeypatch) -> None:
    monkeypatch.setenv("HANDOFF_AUTH_DISABLED", "true")
    url = "https://evil.example.com/amer/"
    response = action(invoke(mint("disabled"), service_url=url))
    assert response.status_code == 401
    message = error_of(response)["message"]
    assert "HANDOFF_ALLOWED_SERVICE_URL_HOSTS" in message and "evil.example.com" not in message
    response = action(invoke(mint("disabled-2"), service_url="http://smba.trafficmanager.net/amer/"))
    assert "is not https" in error_of(response)["message"]
    monkeypatch.setenv("HANDOFF_AUTH_DISABLED", "false")
    response = action(invoke(mint("enabled"), service_url=url), jwt=botframework.jwt(service_url=url))
    assert error_of(response)["message"] == "The request is not authenticated as coming from the Bot Framework."


# ------------------------------------------------------------------------------------------------
# Fuzz: the classes above, for both functions. No 5xx but the contract's 501.


def assert_handled(response) -> None:
    if response.status_code >= 400:
        error = json.loads(response.get_body())["error"]
        assert error["code"] and error["message"]
        assert response.status_code < 500 or (response.status_code, error["code"]) == (501, "not_implemented"), (response.status_code, error)


def fuzz_action(data: st.DataObject, botframework: BotFramework) -> None:
    activity = fixture(INVOKE)
    activity["serviceUrl"] = botframework.service_url
    kind = data.draw(st.sampled_from(["service_url", "conversation_id", "number", "control", "headers"]))
    headers: dict[str, str] = {}
    claim = botframework.service_url
    body: bytes | None = None
    if kind == "service_url":
        port = int(botframework.connector.url.rsplit(":", 1)[1])
        activity["serviceUrl"] = claim = data.draw(fuzz.odd_service_urls(port))
    elif kind == "conversation_id":
        activity["conversation"]["id"] = data.draw(fuzz.odd_ids)
        activity["type"] = data.draw(st.sampled_from(["invoke", "typing", "message"]))
    elif kind == "number":
        body = fuzz.with_number(activity, data.draw(st.sampled_from(fuzz.paths(activity))), data.draw(st.sampled_from(fuzz.NON_FINITE + fuzz.LARGE_BUT_FINITE)))
    elif kind == "control":
        fuzz.put_at(activity, data.draw(st.sampled_from(fuzz.paths(activity))), data.draw(fuzz.odd_text))
    else:
        headers["Content-Length"] = data.draw(fuzz.garbage_content_length)
        if data.draw(st.booleans()):
            headers["Authorization"] = data.draw(fuzz.garbage_authorization)
    jwt = None if "Authorization" in headers else botframework.jwt(service_url=claim if isinstance(claim, str) else None)
    assert_handled(action(body if body is not None else json.dumps(activity).encode(), jwt=jwt, headers=headers))


def fuzz_initiate(data: st.DataObject) -> None:
    document = fixture(ACTIVITY_SET)
    kind = data.draw(st.sampled_from(["number", "control", "ids", "headers"]))
    headers: dict[str, str] = {}
    body: bytes | None = None
    if kind == "number":
        body = fuzz.with_number(document, data.draw(st.sampled_from(fuzz.paths(document))), data.draw(st.sampled_from(fuzz.NON_FINITE + fuzz.LARGE_BUT_FINITE)))
    elif kind == "control":
        fuzz.put_at(document, data.draw(st.sampled_from(fuzz.paths(document))), data.draw(fuzz.odd_text))
    elif kind == "ids":
        event = document["activities"][0]
        event["id"] = data.draw(fuzz.odd_ids)
        event["conversation"]["id"] = data.draw(fuzz.odd_ids)
    else:
        headers["Content-Length"] = data.draw(fuzz.garbage_content_length)
    assert_handled(initiate(body if body is not None else json.dumps(document).encode(), headers=headers))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_action_hardening(env, botframework, data) -> None:
    fuzz_action(data, botframework)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_initiate_hardening(env, data) -> None:
    fuzz_initiate(data)


@pytest.mark.long
@settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_action_hardening_long(env, botframework, data) -> None:
    fuzz_action(data, botframework)


@pytest.mark.long
@settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_initiate_hardening_long(env, data) -> None:
    fuzz_initiate(data)


# --------------------------------------------------------------------------------------------------
# Item 1: a claim whose answer arrives after the storage read timeout; item 6: handoff id collisions


class TestClaimWithUnknownOutcome:
    def test_a_claim_that_lands_but_answers_late_still_continues_the_conversation(self, storage_counter, botframework) -> None:
        """The claim's batch reaches storage and is applied, but its answer comes after the client's read timeout
        (2.5 s): the redemption reads its random claim id back and continues; the user's retry is not refused."""
        from shared import services
        from shared.teams import ALREADY_CONNECTED

        services.reset()
        created = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        late = {"done": False}

        def claim_answers_late(method: str, path: str, body: bytes) -> float:
            if method == "POST" and path.endswith("$batch") and b'"RowKey": "claim"' in body.replace(b'"RowKey":"claim"', b'"RowKey": "claim"') and not late["done"]:
                late["done"] = True
                return 3.0
            return 0.0

        storage_counter.answer_late = claim_answers_late
        started = time.monotonic()
        response = action(invoke(created["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt())
        elapsed = time.monotonic() - started
        storage_counter.answer_late = None
        assert late["done"], "the claim's answer was never delayed: the test did not exercise the case"
        assert response.status_code == 200 and elapsed < 10
        shown = [a.get("text") or a["type"] for a in botframework.sent_activities()]
        assert shown[0].startswith("You're continuing") and len(shown) == 4
        botframework.connector.clear()
        again = action(invoke(created["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt())
        assert again.status_code == 200
        assert [a.get("text") for a in botframework.sent_activities()] == [ALREADY_CONNECTED]


class TestHandoffIds:
    def test_ids_that_only_a_separator_told_apart_are_different_handoffs(self, env) -> None:
        first = initiate(handoff_event(conversation={"id": "C\x1fX"}, id="A"))
        second = initiate(handoff_event(conversation={"id": "C"}, id="X\x1fA"))
        assert (first.status_code, second.status_code) == (201, 201)
        assert body_json(first)["handoffId"] != body_json(second)["handoffId"]

    def test_a_route_id_that_is_no_handoff_id_is_404_without_touching_storage(self, hub_env, storage_counter) -> None:
        from tests.conftest import HUB_SECRET

        for route_id in ("a/b", "..", "x" * 1100, "'; drop", "A" * 32):
            storage_counter.reset()
            response = hub_call(route_id, {"type": "queued"}, secret=HUB_SECRET)
            assert response.status_code == 404, route_id
            assert [r for r in storage_counter.taken() if r.kind != "table"] == []
