"""The shared parsing module on the field fixtures, on variants built from them, and under fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.payloads import transcript_activities
from shared.activities import parse_bot_activity, parse_handoff_initiate
from shared.errors import InvalidActivity
from tests.fuzz import json_values, mutate
from tests.helpers import ACTIVITY_SET, INVOKE, fixture, fixture_bytes, handoff_event


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


class TestFixtures:
    def test_copilot_studio_activity_set(self) -> None:
        request = parse_handoff_initiate(fixture_bytes(ACTIVITY_SET))
        assert request is not None
        assert request.conversation_id == "91hcXEd0ZYCBPoRwBDPHZ6-o"
        assert request.activity_id == "91hcXEd0ZYCBPoRwBDPHZ6-o|0000005"
        context = request.context
        assert context.last_topic == "Lesson 1 - A simple topic"
        assert context.topics == ["Lesson 1 - A simple topic"]
        assert context.last_phrase == "store hours"  # the field sends va_LastPhrase (singular)
        assert context.phrases == ["store hours"]
        assert context.agent_message == "Transferred"
        assert context.bot_name == "Test501"
        assert context.language == "En-US"
        assert context.scope == "bot"
        assert request.context_values == fixture(ACTIVITY_SET)["activities"][0]["value"]
        transcript = request.transcript
        assert transcript is not None and transcript.is_inline and transcript.activity_count == 2
        original = fixture(ACTIVITY_SET)["activities"][0]["attachments"][0]["content"]
        assert json.loads(transcript.json_bytes) == original
        assert request.event.relates_to.user.name == "C2 User"

    def test_teams_invoke(self) -> None:
        request = parse_bot_activity(fixture_bytes(INVOKE))
        assert request.action is not None and request.action.continuation == "test-continuation-token"
        activity = request.activity
        assert activity.from_.aad_object_id == "57162b23-ae6f-4e95-9774-27f7cb019864"
        assert activity.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
        assert activity.service_url == "https://smba.trafficmanager.net/amer/"
        assert activity.channel_id == "msteams"
        assert activity.recipient.id == "28:68935e91-ff09-4a33-a675-0fe09f015706"


class TestVariants:
    def test_single_activity_body(self) -> None:
        request = parse_handoff_initiate(dumps(handoff_event()))
        assert request is not None and request.transcript.activity_count == 2

    def test_string_encoded_transcript_is_kept_exactly(self) -> None:
        event = handoff_event()
        text = json.dumps(event["attachments"][0]["content"], indent=3, ensure_ascii=True)
        event["attachments"][0]["content"] = text
        request = parse_handoff_initiate(dumps(event))
        assert request.transcript.json_bytes == text.encode()
        assert request.transcript.activity_count == 2

    @pytest.mark.parametrize("name", ["transcript", "TRANSCRIPT", "TranScript"])
    def test_transcript_name_in_any_case(self, name: str) -> None:
        event = handoff_event()
        event["attachments"][0]["name"] = name
        assert parse_handoff_initiate(dumps(event)).transcript.activity_count == 2

    def test_attachments_without_name_or_other_names_are_ignored(self) -> None:
        event = handoff_event()
        transcript = event["attachments"][0]
        event["attachments"] = [
            {"contentType": "image/png", "contentUrl": "https://example.invalid/a.png"},
            {"contentType": "application/json", "name": "notes", "content": {"x": 1}},
            transcript,
        ]
        assert parse_handoff_initiate(dumps(event)).transcript.activity_count == 2
        event["attachments"] = event["attachments"][:2]
        assert parse_handoff_initiate(dumps(event)).transcript is None

    def test_event_not_first_in_the_set(self) -> None:
        document = fixture(ACTIVITY_SET)
        event = document["activities"][0]
        messages = event["attachments"][0]["content"]["activities"]
        other_event = {"type": "event", "name": "something.else", "id": "x"}
        document["activities"] = [*messages, other_event, event]
        request = parse_handoff_initiate(dumps(document))
        assert request.activity_id == "91hcXEd0ZYCBPoRwBDPHZ6-o|0000005"

    def test_first_handoff_event_wins(self) -> None:
        first, second = handoff_event(id="first"), handoff_event(id="second")
        assert parse_handoff_initiate(dumps({"activities": [first, second]})).activity_id == "first"

    def test_documented_spelling_va_last_phrases(self) -> None:
        event = handoff_event()
        del event["value"]["va_LastPhrase"]
        event["value"]["va_LastPhrases"] = "where is my order"
        request = parse_handoff_initiate(dumps(event))
        assert request.context.last_phrase == "where is my order"
        assert request.context_values["va_LastPhrases"] == "where is my order"

    def test_user_defined_variables_are_kept(self) -> None:
        event = handoff_event()
        event["value"].update({"OrderNumber": "A-1234", "Priority": 2, "Customer": {"tier": "gold", "tags": ["vip"]}})
        values = parse_handoff_initiate(dumps(event)).context_values
        assert values["OrderNumber"] == "A-1234"
        assert values["Priority"] == 2
        assert values["Customer"] == {"tier": "gold", "tags": ["vip"]}
        assert values["va_BotName"] == "Test501"

    def test_value_as_json_string(self) -> None:
        event = handoff_event()
        event["value"] = json.dumps(event["value"])
        assert parse_handoff_initiate(dumps(event)).context.bot_name == "Test501"

    def test_content_url_transcript_is_a_reference(self) -> None:
        event = handoff_event()
        event["attachments"] = [{"name": "Transcript", "contentType": "application/json", "contentUrl": "https://files.example/t.json"}]
        transcript = parse_handoff_initiate(dumps(event)).transcript
        assert not transcript.is_inline and transcript.json_bytes is None
        assert transcript.content_url == "https://files.example/t.json"

    def test_three_thousand_activity_transcript(self) -> None:
        activities = transcript_activities(3000)
        event = handoff_event()
        event["attachments"][0]["content"] = {"activities": activities}
        request = parse_handoff_initiate(dumps({"activities": [event], "watermark": "9"}))
        assert request.transcript.activity_count == 3000
        assert json.loads(request.transcript.json_bytes)["activities"] == activities

    def test_no_handoff_event_is_none(self) -> None:
        messages = fixture(ACTIVITY_SET)["activities"][0]["attachments"][0]["content"]["activities"]
        assert parse_handoff_initiate(dumps({"activities": messages, "watermark": "2"})) is None
        assert parse_handoff_initiate(dumps({"activities": []})) is None
        assert parse_handoff_initiate(dumps(messages[0])) is None

    def test_utf8_bom_is_accepted(self) -> None:
        assert parse_handoff_initiate(b"\xef\xbb\xbf" + fixture_bytes(ACTIVITY_SET)) is not None

    def test_teams_tenant_falls_back_to_channel_data(self) -> None:
        invoke = fixture(INVOKE)
        del invoke["conversation"]["tenantId"]
        assert parse_bot_activity(dumps(invoke)).activity.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"

    def test_other_activities_have_no_action(self) -> None:
        message = {"type": "message", "text": "hi", "conversation": {"id": "c"}}
        assert parse_bot_activity(dumps(message)).action is None
        other_invoke = {"type": "invoke", "name": "adaptiveCard/action", "value": {}}
        assert parse_bot_activity(dumps(other_invoke)).action is None


class TestRefusals:
    @pytest.mark.parametrize(
        ("body", "says"),
        [
            (b"", "not valid UTF-8 JSON"),
            (b"{not json", "not valid UTF-8 JSON"),
            (b"\xff\xfe{}", "not valid UTF-8 JSON"),
            (b'{"activities": [{"type": "event", "value": NaN}]}', "not valid UTF-8 JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'"text"', "must be a JSON object"),
            (b'{"hello": "world"}', "neither a Bot Framework activity"),
            (b'{"activities": "x"}', "neither a Bot Framework activity"),
            (b'{"activities": [42]}', "activities[0] is not an activity"),
            (b'{"activities": [{"name": "handoff.initiate"}]}', "activities[0] is not an activity"),
            (b'{"type": 5}', "is not an activity"),
            (b"[" * 300 + b"]" * 300, "nested too deeply"),
        ],
    )
    def test_not_an_activity(self, body: bytes, says: str) -> None:
        with pytest.raises(InvalidActivity) as caught:
            parse_handoff_initiate(body)
        assert says in caught.value.message
        assert caught.value.status == 400

    @pytest.mark.parametrize(
        ("change", "says"),
        [
            ({"conversation": None}, "no conversation.id"),
            ({"conversation": {"id": ""}}, "no conversation.id"),
            ({"id": None}, "has no id"),
            ({"id": "x" * 1025}, "over 1024 characters"),
            ({"value": [1, 2]}, "value must be an object"),
            ({"value": "not json"}, "not valid UTF-8 JSON"),
            ({"value": {"va_Topics": [1, 2]}}, "va_Topics"),
            ({"value": {"va_BotName": 7}}, "va_BotName"),
            ({"from": "bot"}, "from"),
            ({"attachments": [{"name": "transcript"}]}, "neither content nor contentUrl"),
            ({"attachments": [{"name": "transcript", "content": {"turns": []}}]}, "\"activities\" list"),
            ({"attachments": [{"name": "transcript", "content": "[1]"}]}, "\"activities\" list"),
            ({"attachments": [{"name": "transcript", "content": "{oops"}]}, "not valid UTF-8 JSON"),
            ({"attachments": "nope"}, "attachments"),
        ],
    )
    def test_malformed_handoff_event(self, change: dict, says: str) -> None:
        with pytest.raises(InvalidActivity) as caught:
            parse_handoff_initiate(dumps({"activities": [handoff_event(**change)]}))
        assert says in caught.value.message

    @pytest.mark.parametrize(
        "value",
        [None, {}, {"continuation": 5}, {"continuation": None}, "token", []],
    )
    def test_handoff_action_needs_a_continuation_string(self, value: object) -> None:
        invoke = fixture(INVOKE)
        invoke["value"] = value
        with pytest.raises(InvalidActivity, match="value.continuation"):
            parse_bot_activity(dumps(invoke))

    def test_handoff_action_needs_a_conversation(self) -> None:
        invoke = fixture(INVOKE)
        del invoke["conversation"]
        with pytest.raises(InvalidActivity, match="conversation.id"):
            parse_bot_activity(dumps(invoke))


# ------------------------------------------------------------------------------------------------
# Properties: whatever the bytes, the parser answers with a result or its own validation error.

def parses_or_refuses(parse, body: bytes) -> None:
    try:
        parse(body)
    except InvalidActivity as error:
        assert error.status == 400 and error.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_else(body: bytes) -> None:
    parses_or_refuses(parse_handoff_initiate, body)
    parses_or_refuses(parse_bot_activity, body)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_never_raises_anything_else(value: object) -> None:
    body = dumps(value)
    parses_or_refuses(parse_handoff_initiate, body)
    parses_or_refuses(parse_bot_activity, body)
    parses_or_refuses(parse_handoff_initiate, dumps({"activities": [value]}))
    parses_or_refuses(parse_handoff_initiate, dumps({"type": "event", "name": "handoff.initiate", "id": "a", "conversation": {"id": "c"}, "value": value}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_fixtures_never_raise_anything_else(data: st.DataObject) -> None:
    parses_or_refuses(parse_handoff_initiate, dumps(mutate(fixture(ACTIVITY_SET), data)))
    parses_or_refuses(parse_bot_activity, dumps(mutate(fixture(INVOKE), data)))
