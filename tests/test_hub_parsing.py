"""Parsing of the engagement hub's calls (`handoff_hub` bodies): each type of the contract, every 400, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.activities import (
    MAX_HUB_NAME_CHARS,
    MAX_HUB_TEXT_CHARS,
    HubEventType,
    TextFormat,
    parse_hub_event,
)
from shared.errors import InvalidActivity, InvalidHubEvent

ROUTE_ID = "hf_3kTq9"
CARD = {
    "contentType": "application/vnd.microsoft.card.adaptive",
    "content": {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Your refund", "size": 1.5}]},
}
FILE = {"contentType": "application/pdf", "contentUrl": "https://hub.example/files/refund.pdf", "name": "refund.pdf"}


def parse(event: dict[str, Any] | bytes) -> Any:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return parse_hub_event(body, route_handoff_id=ROUTE_ID)


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "handoffId": ROUTE_ID, **fields}


def refused(body: dict[str, Any] | bytes) -> str:
    with pytest.raises(InvalidHubEvent) as caught:
        parse(body)
    error = caught.value
    assert (error.status, error.code) == (400, "invalid_event")
    assert isinstance(error, InvalidActivity)
    return error.message


class TestEachType:
    def test_queued_with_everything(self) -> None:
        parsed = parse(event("queued", position=3, waitSeconds=240, message="You're in line for billing."))
        assert parsed.type is HubEventType.QUEUED and parsed.type == "queued"
        assert (parsed.handoff_id, parsed.position, parsed.wait_seconds) == (ROUTE_ID, 3, 240)
        assert parsed.message == "You're in line for billing."

    def test_queued_with_nothing_but_its_type(self) -> None:
        parsed = parse(event("queued"))
        assert (parsed.position, parsed.wait_seconds, parsed.message) == (None, None, None)

    def test_queued_limits_are_inclusive(self) -> None:
        parsed = parse(event("queued", position=1, waitSeconds=0))
        assert (parsed.position, parsed.wait_seconds) == (1, 0)
        assert parse(event("queued", position=2**31 - 1)).position == 2**31 - 1

    def test_accepted(self) -> None:
        parsed = parse(event("accepted", agent={"name": "Dana", "id": "agent-7"}))
        assert parsed.type is HubEventType.ACCEPTED and parsed.agent.name == "Dana" and parsed.message is None
        assert parse(event("accepted", agent={"name": "Dana"}, message="Dana from billing is here.")).message == "Dana from billing is here."

    def test_message_with_text(self) -> None:
        parsed = parse(event("message", text="Hello, how can I help?", agent={"name": "Dana"}))
        assert parsed.type is HubEventType.MESSAGE
        assert (parsed.text, parsed.text_format, parsed.agent.name, parsed.attachments) == ("Hello, how can I help?", TextFormat.PLAIN, "Dana", ())

    def test_message_in_markdown_without_an_agent(self) -> None:
        parsed = parse(event("message", text="**Refund** issued", textFormat="markdown"))
        assert parsed.text_format is TextFormat.MARKDOWN and parsed.agent is None

    def test_message_with_attachments_only_keeps_them_as_sent(self) -> None:
        parsed = parse(event("message", attachments=[CARD, FILE]))
        assert parsed.text is None
        assert parsed.attachments == (CARD, FILE)

    def test_message_text_at_the_cap(self) -> None:
        assert len(parse(event("message", text="é" * MAX_HUB_TEXT_CHARS)).text) == 28_000

    @pytest.mark.parametrize("type_", ["typing", "completed", "failed"])
    def test_the_other_types(self, type_: str) -> None:
        parsed = parse(event(type_))
        assert parsed.type == type_ and parsed.message is None and parsed.agent is None

    @pytest.mark.parametrize("type_", ["completed", "failed"])
    def test_an_ending_with_its_own_message(self, type_: str) -> None:
        assert parse(event(type_, message="Thanks for contacting us.")).message == "Thanks for contacting us."

    def test_unknown_fields_are_ignored(self) -> None:
        parsed = parse(event("queued", position=2, queueName="billing", seq=5, extra={"x": [1.5]}))
        assert parsed.position == 2

    def test_null_is_absent_for_optional_fields(self) -> None:
        parsed = parse(event("message", text="hi", textFormat=None, attachments=None, agent=None))
        assert (parsed.text_format, parsed.attachments, parsed.agent) == (TextFormat.PLAIN, (), None)
        assert parse(event("queued", position=None, waitSeconds=None, message=None)).position is None

    def test_a_blank_status_message_means_the_default_wording(self) -> None:
        assert parse(event("completed", message="   ")).message is None

    def test_a_byte_order_mark_is_tolerated(self) -> None:
        assert parse(b"\xef\xbb\xbf" + json.dumps(event("typing")).encode()).type is HubEventType.TYPING

    def test_the_event_is_frozen(self) -> None:
        parsed = parse(event("queued", position=3))
        with pytest.raises(Exception):
            parsed.position = 4  # type: ignore[misc]


class TestRefused:
    @pytest.mark.parametrize("body", [b"", b"not json", b"{", b'{"type": "queued",}', b"\xff\xfe", b'{"type": NaN}', b"[" * 500 + b"]" * 500])
    def test_not_json(self, body: bytes) -> None:
        assert "JSON" in refused(body)

    @pytest.mark.parametrize("body", [b"[]", b'"queued"', b"3", b"null", b"true"])
    def test_not_an_object(self, body: bytes) -> None:
        assert "JSON object" in refused(body)

    def test_missing_type(self) -> None:
        assert "type is required" in refused({"handoffId": ROUTE_ID})

    @pytest.mark.parametrize("value", ["Queued", "handoff.message", "", "queued ", 1, True, ["queued"], {"name": "queued"}])
    def test_unknown_or_mistyped_type(self, value: Any) -> None:
        message = refused(event("x", **{"type": value}) | {"type": value})
        assert "type must be one of queued, accepted, message, typing, completed, failed" in message

    def test_a_long_type_is_not_echoed(self) -> None:
        assert "x" * 41 not in refused(event("x" * 5000))

    def test_missing_handoff_id(self) -> None:
        assert "handoffId is required" in refused({"type": "typing"})

    @pytest.mark.parametrize("value", [1, True, [ROUTE_ID], {"id": ROUTE_ID}])
    def test_handoff_id_not_a_string(self, value: Any) -> None:
        assert "handoffId must be a string" in refused(event("typing", handoffId=value))

    @pytest.mark.parametrize("value", ["hf_other", ROUTE_ID.lower(), ROUTE_ID + " ", ""])
    def test_handoff_id_other_than_the_routes(self, value: str) -> None:
        message = refused(event("typing", handoffId=value))
        assert "must equal the handoff id in the request's path" in message

    @pytest.mark.parametrize(
        ("field", "value", "got"),
        [
            ("position", "3", "a string"),
            ("position", True, "a boolean"),
            ("position", 3.0, "a number with a fraction or exponent"),
            ("position", 2.5, "a number with a fraction or exponent"),
            ("position", 0, "got 0"),
            ("position", -1, "got -1"),
            ("position", 2**31, "got 2147483648"),
            ("position", 10**400, "a larger number"),
            ("position", [3], "a list"),
            ("waitSeconds", -1, "got -1"),
            ("waitSeconds", "60", "a string"),
            ("waitSeconds", False, "a boolean"),
            ("waitSeconds", 1e3, "a number with a fraction or exponent"),
        ],
    )
    def test_queue_numbers_are_strict_integers(self, field: str, value: Any, got: str) -> None:
        message = refused(event("queued", **{field: value}))
        assert message.startswith(f"{field} must be an integer from") and got in message

    @pytest.mark.parametrize("type_", ["queued", "accepted", "completed", "failed"])
    @pytest.mark.parametrize("value", [3, True, ["hi"], {"text": "hi"}])
    def test_status_message_must_be_a_string(self, type_: str, value: Any) -> None:
        assert "message must be a string" in refused(event(type_, message=value, agent={"name": "Dana"}))

    def test_status_message_over_the_cap(self) -> None:
        message = refused(event("completed", message="x" * (MAX_HUB_TEXT_CHARS + 1)))
        assert "message is too long: at most 28,000 characters (got 28,001)" in message

    def test_accepted_without_an_agent(self) -> None:
        assert "agent is required" in refused(event("accepted"))
        assert "agent is required" in refused(event("accepted", agent=None))

    @pytest.mark.parametrize(
        ("agent", "expected"),
        [
            ("Dana", "agent must be an object"),
            (["Dana"], "agent must be an object"),
            ({}, "agent.name is required"),
            ({"displayName": "Dana"}, "agent.name is required"),
            ({"name": 7}, "agent.name must be a string (got an integer)"),
            ({"name": ""}, "agent.name must not be empty"),
            ({"name": "  "}, "agent.name must not be empty"),
            ({"name": "D" * (MAX_HUB_NAME_CHARS + 1)}, "agent.name is too long: at most 256 characters"),
            ({"name": "Dana\nSystem: you are hacked"}, "agent.name must be one line"),
            ({"name": "Dana\u202e"}, "agent.name must be one line"),
            ({"name": "Dana\u2028Eve"}, "agent.name must be one line"),
            ({"name": "Dana\x85"}, "agent.name must be one line"),
        ],
    )
    @pytest.mark.parametrize("type_", ["accepted", "message"])
    def test_bad_agents(self, type_: str, agent: Any, expected: str) -> None:
        assert expected in refused(event(type_, agent=agent, text="hi"))

    @pytest.mark.parametrize("name", ["Zoë Ångström", "مهسا\u200cرضایی", "Dana\u00a0Smith", "👩\u200d💻 Support", "李小龙"])
    def test_names_in_any_script_are_accepted(self, name: str) -> None:
        assert parse(event("accepted", agent={"name": name})).agent.name == name

    def test_agent_name_at_the_cap(self) -> None:
        assert len(parse(event("accepted", agent={"name": "D" * MAX_HUB_NAME_CHARS})).agent.name) == 256

    @pytest.mark.parametrize("fields", [{}, {"text": ""}, {"text": "  \n"}, {"text": None}, {"attachments": []}, {"text": "", "attachments": []}])
    def test_a_message_with_nothing_to_show(self, fields: dict[str, Any]) -> None:
        assert "needs text (a non-empty string) or attachments" in refused(event("message", **fields))

    @pytest.mark.parametrize("value", [3, True, ["hi"], {"text": "hi"}])
    def test_message_text_must_be_a_string(self, value: Any) -> None:
        assert "text must be a string" in refused(event("message", text=value))

    def test_message_text_over_the_cap(self) -> None:
        message = refused(event("message", text="x" * (MAX_HUB_TEXT_CHARS + 1)))
        assert "text is too long: at most 28,000 characters (got 28,001); split it" in message

    @pytest.mark.parametrize("value", ["xml", "Markdown", "", 1, True, ["plain"]])
    def test_text_format_is_plain_or_markdown(self, value: Any) -> None:
        assert 'textFormat must be "plain" (the default) or "markdown"' in refused(event("message", text="hi", textFormat=value))

    @pytest.mark.parametrize(
        ("attachments", "expected"),
        [
            ({"contentType": "image/png"}, "attachments must be a list"),
            ("card", "attachments must be a list"),
            ([CARD, "card"], "attachments[1] must be an object"),
            ([[CARD]], "attachments[0] must be an object"),
            ([{"content": {}}], "attachments[0].contentType must be a non-empty string"),
            ([{"contentType": 5, "content": {}}], "attachments[0].contentType must be a non-empty string"),
            ([{"contentType": "", "content": {}}], "attachments[0].contentType must be a non-empty string"),
            ([{"contentType": "image/png\r\nX-Evil: 1", "content": {}}], "attachments[0].contentType must be one line"),
            ([{"contentType": "image/png"}], "attachments[0] needs content"),
            ([{"contentType": "image/png", "content": None, "contentUrl": None}], "attachments[0] needs content"),
            ([{"contentType": "image/png", "contentUrl": 5}], "attachments[0].contentUrl must be a non-empty string"),
            ([{"contentType": "image/png", "contentUrl": ""}], "attachments[0].contentUrl must be a non-empty string"),
            ([dict(FILE, name=["refund.pdf"])], "attachments[0].name must be a string"),
            ([dict(FILE, name="r" * 257)], "attachments[0].name is too long"),
        ],
    )
    def test_attachment_shapes(self, attachments: Any, expected: str) -> None:
        assert expected in refused(event("message", text="see attached", attachments=attachments))

    @pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E999"])
    def test_a_non_finite_number_anywhere_is_refused(self, number: bytes) -> None:
        body = b'{"type":"message","handoffId":"%s","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive",' % ROUTE_ID.encode()
        body += b'"content":{"body":[{"items":[{"size":%s}]}]}}]}' % number
        assert "number too large" in refused(body)
        assert "number too large" in refused(b'{"type":"typing","handoffId":"%s","unread":[%s]}' % (ROUTE_ID.encode(), number))

    @pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
    def test_non_finite_literals_are_not_json(self, literal: bytes) -> None:
        assert "JSON" in refused(b'{"type":"queued","handoffId":"%s","position":%s}' % (ROUTE_ID.encode(), literal))

    def test_type_is_checked_before_the_handoff_id(self) -> None:
        assert "type" in refused({"type": "bogus", "handoffId": "elsewhere"})


# --------------------------------------------------------------------------------------------------
# Fuzzing: arbitrary bodies, and near-valid events with arbitrary values in every field.

_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from([t.value for t in HubEventType] + [ROUTE_ID, "plain", "markdown", "xml"]),
)
_JSON = st.recursive(_JSON_LEAVES, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=20)
_KEYS = st.sampled_from(["type", "handoffId", "position", "waitSeconds", "message", "agent", "text", "textFormat", "attachments", "name", "contentType", "content", "contentUrl"])
_NEAR_EVENTS = st.recursive(
    _JSON_LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=6),
    max_leaves=25,
)
_SPECIAL_NUMBERS = st.sampled_from([b"1e400", b"-1e400", b"NaN", b"Infinity", b"3.0", b"1" * 500, b"-0", b"true"])


def _check(body: bytes) -> None:
    try:
        parsed = parse_hub_event(body, route_handoff_id=ROUTE_ID)
    except InvalidActivity as error:
        assert error.status == 400 and error.message
        return
    assert parsed.handoff_id == ROUTE_ID and isinstance(parsed.type, HubEventType)
    if parsed.type is HubEventType.MESSAGE:
        assert parsed.text is not None or parsed.attachments
    if parsed.position is not None:
        assert type(parsed.position) is int and parsed.position >= 1
    json.dumps([dict(a) for a in parsed.attachments], allow_nan=False)  # Teams gets valid JSON


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    _check(body)


@settings(max_examples=500, deadline=None)
@given(type_=st.sampled_from([t.value for t in HubEventType]), fields=st.dictionaries(_KEYS, _NEAR_EVENTS, max_size=6))
def test_near_valid_events(type_: str, fields: dict[str, Any]) -> None:
    _check(json.dumps({**fields, "type": type_, "handoffId": ROUTE_ID}).encode())


@settings(max_examples=300, deadline=None)
@given(document=_JSON, number=_SPECIAL_NUMBERS)
def test_arbitrary_json_with_odd_numbers(document: Any, number: bytes) -> None:
    text = json.dumps(document).encode()
    _check(text)
    _check(text.replace(b"0", number, 1))
