"""The parsing module: request bytes in, typed Bot Framework models out, or one `InvalidActivity`.

Each function calls exactly one entry point (`parse_handoff_initiate`, `parse_bot_activity`); nothing
else in the code touches raw dicts. Only what the product reads is validated: the transcript's activities
are passed through untouched (they go to the hub and to storage as received), so parsing a large
transcript costs about one JSON parse. JSON is parsed by pydantic-core's parser (jiter), which is faster
than `json.loads` and refuses nesting deeper than 200 levels with a ValueError instead of a RecursionError.

This module imports nothing of storage or HTTP, so it stays cheap to import and easy to test.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import from_json, to_json

from shared.errors import InvalidActivity, InvalidHubEvent
from shared.vocabulary import HubEventType, TextFormat

HANDOFF_EVENT_NAME = "handoff.initiate"
HANDOFF_INVOKE_NAME = "handoff/action"
_BOM = b"\xef\xbb\xbf"
MAX_ID_LENGTH = 1024


class _Model(BaseModel):
    """Unknown fields are kept (extra="allow"): what we pass on goes on as it came."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ChannelAccount(_Model):
    id: str | None = None
    name: str | None = None
    role: str | None = None
    aad_object_id: str | None = Field(default=None, alias="aadObjectId")


class ConversationAccount(_Model):
    id: str | None = None
    name: str | None = None
    conversation_type: str | None = Field(default=None, alias="conversationType")
    tenant_id: str | None = Field(default=None, alias="tenantId")


class ConversationReference(_Model):
    activity_id: str | None = Field(default=None, alias="activityId")
    user: ChannelAccount | None = None
    bot: ChannelAccount | None = None
    conversation: ConversationAccount | None = None
    channel_id: str | None = Field(default=None, alias="channelId")
    service_url: str | None = Field(default=None, alias="serviceUrl")


class Attachment(_Model):
    content_type: str | None = Field(default=None, alias="contentType")
    content_url: str | None = Field(default=None, alias="contentUrl")
    content: Any = None
    name: str | None = None


class TenantInfo(_Model):
    id: str | None = None


class TeamsChannelData(_Model):
    tenant: TenantInfo | None = None


class Activity(_Model):
    """The Bot Framework activity fields this product reads; everything else is kept as extra."""

    type: str
    id: str | None = None
    name: str | None = None
    timestamp: str | None = None
    channel_id: str | None = Field(default=None, alias="channelId")
    service_url: str | None = Field(default=None, alias="serviceUrl")
    from_: ChannelAccount | None = Field(default=None, alias="from")
    recipient: ChannelAccount | None = None
    conversation: ConversationAccount | None = None
    attachments: list[Attachment] | None = None
    entities: list[Any] | None = None
    channel_data: Any = Field(default=None, alias="channelData")
    value: Any = None
    reply_to_id: str | None = Field(default=None, alias="replyToId")
    relates_to: ConversationReference | None = Field(default=None, alias="relatesTo")
    locale: str | None = None
    text: str | None = None
    text_format: str | None = Field(default=None, alias="textFormat")
    action: str | None = None  # installationUpdate: add / remove

    @property
    def tenant_id(self) -> str | None:
        """`conversation.tenantId`, falling back to Teams' `channelData.tenant.id`."""
        if self.conversation is not None and self.conversation.tenant_id:
            return self.conversation.tenant_id
        if isinstance(self.channel_data, dict):
            try:
                tenant = TeamsChannelData.model_validate(self.channel_data).tenant
            except ValidationError:
                return None
            return tenant.id if tenant else None
        return None


class HandoffContext(_Model):
    """The `va_*` variables of a Copilot Studio handoff, plus any user-defined topic variables (kept as extra)."""

    scope: str | None = Field(default=None, alias="va_Scope")
    last_topic: str | None = Field(default=None, alias="va_LastTopic")
    topics: list[str] | None = Field(default=None, alias="va_Topics")
    # Copilot Studio sends va_LastPhrase; the documentation spells it va_LastPhrases. Both are accepted.
    last_phrase: str | None = Field(default=None, validation_alias=AliasChoices("va_LastPhrase", "va_LastPhrases"))
    phrases: list[str] | None = Field(default=None, alias="va_Phrases")
    conversation_id: str | None = Field(default=None, alias="va_ConversationId")
    agent_message: str | None = Field(default=None, alias="va_AgentMessage")
    bot_id: str | None = Field(default=None, alias="va_BotId")
    bot_name: str | None = Field(default=None, alias="va_BotName")
    language: str | None = Field(default=None, alias="va_Language")

    @field_validator("topics", "phrases", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class HandoffActionValue(_Model):
    """`value` of the Teams `handoff/action` invoke."""

    continuation: str


class Transcript:
    """The conversation so far: inline JSON `{"activities": [...]}`, or a `contentUrl` reference.

    `json_bytes` is the inline transcript as UTF-8 JSON: for content that arrived as a JSON string, exactly that
    string; for an object, its compact serialisation, made once on first use (by pydantic-core, 5x faster than
    `json.dumps`, identical output for JSON input), so that parsing never pays for it.
    """

    __slots__ = ("_json", "_content", "content_url", "content_type", "activity_count")

    def __init__(
        self,
        *,
        json_text: str | None = None,
        content: dict[str, Any] | None = None,
        content_url: str | None = None,
        content_type: str | None = None,
        activity_count: int | None = None,
    ) -> None:
        # The parser refuses lone surrogates, so every string here encodes to UTF-8.
        self._json = json_text.encode("utf-8") if json_text is not None else None
        self._content = content
        self.content_url = content_url
        self.content_type = content_type
        self.activity_count = activity_count

    @property
    def is_inline(self) -> bool:
        return self._json is not None or self._content is not None

    @property
    def json_bytes(self) -> bytes | None:
        if self._json is None and self._content is not None:
            self._json = to_json(self._content)
        return self._json


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """What handoff_initiate needs of a `handoff.initiate` event, validated."""

    event: Activity
    conversation_id: str
    activity_id: str
    context: HandoffContext
    # The `va_*` and user-defined variables exactly as received, under their original names: passed on, not read.
    context_values: dict[str, Any]
    transcript: Transcript | None


@dataclass(frozen=True, slots=True)
class BotRequest:
    """An activity posted to the Teams bot's messaging endpoint; `action` is set for `handoff/action` invokes."""

    activity: Activity
    action: HandoffActionValue | None


# --------------------------------------------------------------------------------------------------
# Entry points


def parse_handoff_initiate(body: bytes) -> HandoffRequest | None:
    """Bytes of one activity or a Direct Line activity set -> the first `handoff.initiate` event, or None."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise InvalidActivity("The body must be a JSON object: a Bot Framework activity or a Direct Line activity set.")
    if "type" in document:
        candidates = [document]
        where = "the activity"
    elif isinstance(document.get("activities"), list):
        candidates = document["activities"]
        where = "activities[{index}]"
    else:
        raise InvalidActivity(
            "The body is neither a Bot Framework activity (an object with \"type\") "
            "nor a Direct Line activity set (an object with an \"activities\" list)."
        )
    for index, raw in enumerate(candidates):
        label = where.format(index=index)
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise InvalidActivity(f"{label} is not an activity: it must be an object with a string \"type\".")
        if raw["type"] == "event" and raw.get("name") == HANDOFF_EVENT_NAME:
            return _handoff_request(raw, label)
    return None


def parse_bot_activity(body: bytes) -> BotRequest:
    """Bytes posted by a Bot Framework channel -> the activity, with the `handoff/action` value checked."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise InvalidActivity("The body must be a JSON object: a Bot Framework activity.")
    activity = _validate(Activity, document, "the activity")
    _check_conversation_id(activity)
    action = None
    if activity.type == "invoke" and activity.name == HANDOFF_INVOKE_NAME:
        if not isinstance(activity.value, dict) or not isinstance(activity.value.get("continuation"), str):
            raise InvalidActivity("A handoff/action invoke must carry the continuation token as a string in value.continuation.")
        if activity.conversation is None or not activity.conversation.id:
            raise InvalidActivity("A handoff/action invoke must name its conversation (conversation.id) so that the bot can answer.")
        action = HandoffActionValue.model_validate(activity.value)
    return BotRequest(activity=activity, action=action)


# --------------------------------------------------------------------------------------------------
# Helpers


# A number JSON can write but a float cannot hold: `allow_inf_nan=False` refuses the literals `Infinity` and
# `NaN`, yet `1e400` (or 400 digits) still parses as inf, which would reach the hub as the invalid `Infinity`
# and fail a reply's serialisation. Such a number needs an exponent of 3+ digits or 300+ digits in a row. The
# bytes are searched for those shapes in C (digits mapped to `0`, then substring searches), a hit counts only
# where it stands as a JSON number (after `:`, `[`, `,` or at the start: not inside a GUID such as
# "...7226e9662c01", which nearly every transcript has), and only a body with one is walked for a non-finite
# value. (A regex scan cost 8 ms on a 265 kB transcript and the walk 5 ms; this costs 0.6 ms.)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_HUGE_SHAPES = (b"0e000", b"0e+000", b"0" * 300)
_IN_NUMBER = frozenset(b"0.+-")
_JSON_SPACE = frozenset(b" \t\r\n")


def _may_hold_huge_number(raw: bytes) -> bool:
    shape = raw.translate(_DIGITS_AS_ZERO)
    for pattern in _HUGE_SHAPES:
        at = shape.find(pattern)
        while at != -1:
            start = at
            while start > 0 and shape[start - 1] in _IN_NUMBER:
                start -= 1
            while start > 0 and shape[start - 1] in _JSON_SPACE:
                start -= 1
            if start == 0 or shape[start - 1] in b":[,":
                return True
            at = shape.find(pattern, at + len(pattern))
    return False


def _load_json(data: bytes | str) -> Any:
    if isinstance(data, bytes) and data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        document = from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        reason = str(exc)
        if "recursion limit" in reason:
            raise InvalidActivity("The JSON is nested too deeply (more than 200 levels).") from exc
        raise InvalidActivity(f"The body is not valid UTF-8 JSON ({reason}).") from exc
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if _may_hold_huge_number(raw) and not _all_finite(document):
        raise InvalidActivity("The JSON holds a number too large to represent (such as 1e400); send numbers within the range of a double.")
    return document


def _all_finite(document: Any) -> bool:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return False
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


def _validate(model: type[_Model], data: Any, label: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        path = ".".join(str(part) for part in first["loc"])
        where = f"{label}.{path}" if path else label
        raise InvalidActivity(f"{where}: {first['msg']}.") from exc


def _check_conversation_id(activity: Activity) -> None:
    """An activity posted to the bot names the conversation the bot answers in, which becomes a path segment of
    `{serviceUrl}/v3/conversations/{id}/activities`: at most 1024 characters, no control characters, not `.`/`..`."""
    conversation_id = activity.conversation.id if activity.conversation is not None else None
    if conversation_id is None:
        return
    if len(conversation_id) > MAX_ID_LENGTH:
        raise InvalidActivity(f"The activity's conversation.id is longer than {MAX_ID_LENGTH} characters.")
    if not conversation_id.isprintable():
        raise InvalidActivity("The activity's conversation.id contains control characters.")
    if conversation_id.strip() in (".", "..") or unquote(conversation_id) in (".", ".."):
        raise InvalidActivity("The activity's conversation.id is not a valid id.")


def _handoff_request(raw: dict[str, Any], label: str) -> HandoffRequest:
    event: Activity = _validate(Activity, raw, label)
    conversation_id = event.conversation.id if event.conversation else None
    if not conversation_id:
        raise InvalidActivity(f"The handoff.initiate event ({label}) has no conversation.id.")
    if not event.id:
        raise InvalidActivity(f"The handoff.initiate event ({label}) has no id: it is needed to recognise a repeated callback.")
    if len(conversation_id) > MAX_ID_LENGTH or len(event.id) > MAX_ID_LENGTH:
        raise InvalidActivity(f"The handoff.initiate event ({label}) has an id or conversation.id over {MAX_ID_LENGTH} characters.")

    value = event.value
    if isinstance(value, str):
        value = _load_json(value) if value.strip() else None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidActivity(f"{label}.value must be an object (or a JSON string of one) holding the va_* handoff context.")
    context: HandoffContext = _validate(HandoffContext, value, f"{label}.value")

    return HandoffRequest(
        event=event,
        conversation_id=conversation_id,
        activity_id=event.id,
        context=context,
        context_values=value,
        transcript=_transcript(event, label),
    )


def _transcript(event: Activity, label: str) -> Transcript | None:
    for index, attachment in enumerate(event.attachments or ()):
        if (attachment.name or "").lower() != "transcript":
            continue
        where = f"{label}.attachments[{index}]"
        content = attachment.content
        if content is None:
            if not attachment.content_url:
                raise InvalidActivity(f"The transcript attachment ({where}) has neither content nor contentUrl.")
            return Transcript(content_url=attachment.content_url, content_type=attachment.content_type)
        json_text = None
        if isinstance(content, str):
            json_text = content
            content = _load_json(content)
        if not isinstance(content, dict) or not isinstance(content.get("activities"), list):
            raise InvalidActivity(f"The transcript ({where}.content) must be an object with an \"activities\" list.")
        return Transcript(
            json_text=json_text,
            content=content,
            content_url=attachment.content_url,
            content_type=attachment.content_type,
            activity_count=len(content["activities"]),
        )
    return None


# --------------------------------------------------------------------------------------------------
# Hub calls: the body of POST /api/handoffs/{handoffId}/events (function handoff_hub), one event each.
#
# Strictly typed, as the contract's "handoff_hub" table says: no "3" for 3, no true for 1, no 3.0 for 3; null
# counts as absent for an optional field (many serialisers write None as null). Fields of other types and
# unknown fields are ignored (a hub may send more than we read). Attachments are kept as the dicts the hub sent
# (they go to Teams as they are), checked only for shape. Every refusal is one `InvalidHubEvent` (a subclass of
# `InvalidActivity`, code `invalid_event`) naming the field and what is expected.

MAX_HUB_TEXT_CHARS = 28_000
MAX_HUB_NAME_CHARS = 256
# Queue positions and waits are shown to the user and stored: they must fit a 32-bit integer column.
MAX_HUB_COUNT = 2**31 - 1


class HubAgent(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    name: str


class HubEvent(BaseModel):
    """One hub call, validated. Fields a type does not have are None (or empty); `attachments` go to Teams as-is."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    type: HubEventType
    handoff_id: str
    position: int | None = None  # queued
    wait_seconds: int | None = None  # queued
    message: str | None = None  # queued, accepted, completed, failed: replaces the default wording
    agent: HubAgent | None = None  # accepted (required), message (optional)
    text: str | None = None  # message
    text_format: TextFormat = TextFormat.PLAIN  # message
    attachments: tuple[dict[str, Any], ...] = ()  # message


def parse_hub_event(body: bytes, *, route_handoff_id: str) -> HubEvent:
    """Bytes of a hub call -> its event, or `InvalidHubEvent` (400) saying which field is wrong and how."""
    try:
        document = _load_json(body)
    except InvalidActivity as exc:
        raise InvalidHubEvent(exc.message) from None
    if not isinstance(document, dict):
        raise InvalidHubEvent("The body must be a JSON object: one hub event with \"type\" and \"handoffId\".")

    raw_type = document.get("type")
    if raw_type is None:
        raise InvalidHubEvent(f"type is required: one of {_HUB_TYPE_NAMES}.")
    if not isinstance(raw_type, str) or raw_type not in _HUB_TYPES:
        raise InvalidHubEvent(f"type must be one of {_HUB_TYPE_NAMES} (got {_described(raw_type)}).")
    event_type = _HUB_TYPES[raw_type]

    handoff_id = document.get("handoffId")
    if handoff_id is None:
        raise InvalidHubEvent("handoffId is required: the id of the handoff in the request's path.")
    if not isinstance(handoff_id, str):
        raise InvalidHubEvent(f"handoffId must be a string (got {_json_type(handoff_id)}).")
    if handoff_id != route_handoff_id:
        raise InvalidHubEvent("handoffId in the body must equal the handoff id in the request's path (/api/handoffs/{handoffId}/events).")

    fields: dict[str, Any] = {"type": event_type, "handoff_id": handoff_id}
    if event_type is HubEventType.QUEUED:
        fields["position"] = _hub_count(document, "position", minimum=1)
        fields["wait_seconds"] = _hub_count(document, "waitSeconds", minimum=0)
    if event_type in (HubEventType.QUEUED, HubEventType.ACCEPTED, HubEventType.COMPLETED, HubEventType.FAILED):
        fields["message"] = _hub_text(document, "message", "message")
    if event_type is HubEventType.ACCEPTED:
        fields["agent"] = _hub_agent(document, required=True)
    if event_type is HubEventType.MESSAGE:
        fields["agent"] = _hub_agent(document, required=False)
        fields["text"] = _hub_text(document, "text", "text")
        fields["text_format"] = _hub_text_format(document)
        fields["attachments"] = _hub_attachments(document)
        if fields["text"] is None and not fields["attachments"]:
            raise InvalidHubEvent("A message event needs text (a non-empty string) or attachments (a non-empty list).")
    return HubEvent.model_construct(**fields)


_HUB_TYPES = {member.value: member for member in HubEventType}
_HUB_TYPE_NAMES = ", ".join(_HUB_TYPES)
_TEXT_FORMATS = {member.value: member for member in TextFormat}
# Refused in a display name: C0/C1 controls, line and paragraph separators, and the bidi embeddings, overrides
# and isolates that could make a name display as something else. Zero-width (non-)joiners stay: Persian and
# Indic names, and emoji sequences, need them.
_UNSHOWABLE_IN_A_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _described(value: Any) -> str:
    """A short description of a refused value: strings are quoted only when short and printable (never long input)."""
    if isinstance(value, str) and len(value) <= 40 and value.isascii() and value.isprintable():
        return repr(value)
    return _json_type(value)


def _hub_count(document: dict[str, Any], key: str, *, minimum: int) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    expected = f"{key} must be an integer from {minimum} to {MAX_HUB_COUNT}"
    # bool is an int in Python; true is not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidHubEvent(f"{expected} (got {_json_type(value)}).")
    if not minimum <= value <= MAX_HUB_COUNT:
        shown = value if -10**12 < value < 10**12 else ("a larger number" if value > 0 else "a smaller number")
        raise InvalidHubEvent(f"{expected} (got {shown}).")
    return value


def _hub_text(document: dict[str, Any], key: str, label: str) -> str | None:
    """An optional text: None when absent, null, empty or only whitespace (there is nothing to show)."""
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidHubEvent(f"{label} must be a string (got {_json_type(value)}).")
    if len(value) > MAX_HUB_TEXT_CHARS:
        raise InvalidHubEvent(f"{label} is too long: at most {MAX_HUB_TEXT_CHARS:,} characters (got {len(value):,}); split it into several messages.")
    return value if value.strip() else None


def _hub_name(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise InvalidHubEvent(f"{label} must be a string (got {_json_type(value)}).")
    if not value.strip():
        raise InvalidHubEvent(f"{label} must not be empty: it is shown to the user.")
    if len(value) > MAX_HUB_NAME_CHARS:
        raise InvalidHubEvent(f"{label} is too long: at most {MAX_HUB_NAME_CHARS} characters (got {len(value):,}).")
    if _UNSHOWABLE_IN_A_NAME.search(value):
        raise InvalidHubEvent(f"{label} must be one line of printable characters (no control characters, line breaks or bidi overrides).")
    return value


def _hub_agent(document: dict[str, Any], *, required: bool) -> HubAgent | None:
    value = document.get("agent")
    if value is None:
        if required:
            raise InvalidHubEvent("agent is required for an accepted event: an object {\"name\": \"<the agent's display name>\"}.")
        return None
    if not isinstance(value, dict):
        raise InvalidHubEvent(f"agent must be an object {{\"name\": \"<display name>\"}} (got {_json_type(value)}).")
    if value.get("name") is None:
        raise InvalidHubEvent("agent.name is required: the agent's display name, a string.")
    return HubAgent.model_construct(name=_hub_name(value["name"], "agent.name"))


def _hub_text_format(document: dict[str, Any]) -> TextFormat:
    value = document.get("textFormat")
    if value is None:
        return TextFormat.PLAIN
    if not isinstance(value, str) or value not in _TEXT_FORMATS:
        raise InvalidHubEvent(f"textFormat must be \"plain\" (the default) or \"markdown\" (got {_described(value)}).")
    return _TEXT_FORMATS[value]


def _hub_attachments(document: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    value = document.get("attachments")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidHubEvent(f"attachments must be a list of Bot Framework attachments (got {_json_type(value)}).")
    for index, attachment in enumerate(value):
        where = f"attachments[{index}]"
        if not isinstance(attachment, dict):
            raise InvalidHubEvent(f"{where} must be an object {{contentType, content}} or {{contentType, contentUrl, name}} (got {_json_type(attachment)}).")
        content_type = attachment.get("contentType")
        if not isinstance(content_type, str) or not content_type.strip():
            got = "missing" if content_type is None else f"got {_json_type(content_type)}"
            raise InvalidHubEvent(f"{where}.contentType must be a non-empty string, e.g. \"application/vnd.microsoft.card.adaptive\" ({got}).")
        if len(content_type) > MAX_HUB_NAME_CHARS or not (content_type.isascii() and content_type.isprintable()):
            raise InvalidHubEvent(f"{where}.contentType must be one line of at most {MAX_HUB_NAME_CHARS} printable ASCII characters.")
        content_url = attachment.get("contentUrl")
        if content_url is not None and (not isinstance(content_url, str) or not content_url.strip()):
            raise InvalidHubEvent(f"{where}.contentUrl must be a non-empty string, the URL of the file (got {_json_type(content_url)}).")
        if attachment.get("content") is None and content_url is None:
            raise InvalidHubEvent(f"{where} needs content (e.g. an Adaptive Card) or contentUrl (a link to a file).")
        if attachment.get("name") is not None:
            _hub_name(attachment["name"], f"{where}.name")
    return tuple(value)


# --------------------------------------------------------------------------------------------------
# The End chat button: a Teams `message` whose `value` is {"handoff": "end", "handoffId": ...}


@dataclass(frozen=True, slots=True)
class EndChat:
    """The user pressed End chat; `handoff_id` None means the handoff that owns the chat."""

    handoff_id: str | None


def end_chat_of(activity: Activity) -> EndChat | None:
    """The End chat request a `message` carries in its `value`, or None for an ordinary message."""
    value = activity.value
    if activity.type != "message" or not isinstance(value, dict) or value.get("handoff") != "end":
        return None
    handoff_id = value.get("handoffId")
    return EndChat(handoff_id if isinstance(handoff_id, str) and handoff_id else None)

