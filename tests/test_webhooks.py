"""Standard Webhooks signing both ways, proven against the `standardwebhooks` package (what a hub would use)."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.webhooks import (
    WebhookRejected,
    WebhookSecret,
    hub_secrets,
    outbound_headers,
    sign,
    valid_webhook_id,
    verify,
)

CURRENT = "whsec_" + base64.b64encode(b"current-secret-of-32-bytes-long!").decode()
PREVIOUS = "whsec_" + base64.b64encode(b"previous-secret-of-32-bytes-lon!").decode()
OTHER = "whsec_" + base64.b64encode(b"a-secret-nobody-here-configured!").decode()
BODY = '{"type":"message","handoffId":"h-1","text":"Grüße – ça va? 👋"}'.encode()
WEBHOOK_ID = "msg_2b3c4d:17"


def library_headers(secret: str, body: bytes = BODY, *, webhook_id: str = WEBHOOK_ID, at: float | None = None) -> dict[str, str]:
    """What a hub using the Standard Webhooks library sends."""
    at = time.time() if at is None else at
    stamp = datetime.fromtimestamp(int(at), tz=timezone.utc)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": Webhook(secret).sign(webhook_id, stamp, body.decode()),
    }


def rejected(headers: dict[str, str], body: bytes = BODY, *, secrets: tuple[WebhookSecret, ...] | None = None, now: float | None = None) -> str:
    with pytest.raises(WebhookRejected) as caught:
        verify(hub_secrets(CURRENT) if secrets is None else secrets, headers, body, now=time.time() if now is None else now)
    return caught.value.reason


class TestInteroperability:
    def test_the_library_verifies_our_events(self) -> None:
        headers = outbound_headers(hub_secrets(CURRENT), WEBHOOK_ID, BODY, now=time.time())
        assert Webhook(CURRENT).verify(BODY, headers) == {"type": "message", "handoffId": "h-1", "text": "Grüße – ça va? 👋"}
        assert headers["Content-Type"] == "application/json"
        assert headers["webhook-id"] == WEBHOOK_ID

    def test_during_a_rotation_a_hub_with_either_secret_verifies_our_events(self) -> None:
        headers = outbound_headers(hub_secrets(CURRENT, PREVIOUS), WEBHOOK_ID, BODY, now=time.time())
        assert len(headers["webhook-signature"].split(" ")) == 2
        assert headers["webhook-signature"].split(" ")[0] == sign(hub_secrets(CURRENT), WEBHOOK_ID, int(headers["webhook-timestamp"]), BODY)
        Webhook(CURRENT).verify(BODY, headers)
        Webhook(PREVIOUS).verify(BODY, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(OTHER).verify(BODY, headers)

    def test_the_library_refuses_our_event_once_tampered(self) -> None:
        headers = outbound_headers(hub_secrets(CURRENT), WEBHOOK_ID, BODY, now=time.time())
        with pytest.raises(WebhookVerificationError):
            Webhook(CURRENT).verify(BODY.replace(b"h-1", b"h-2"), headers)

    def test_without_a_secret_our_events_carry_no_signature(self) -> None:
        headers = outbound_headers((), WEBHOOK_ID, BODY, now=1_700_000_000.9)
        assert headers == {"webhook-id": WEBHOOK_ID, "webhook-timestamp": "1700000000", "Content-Type": "application/json"}

    def test_we_verify_the_librarys_signature(self) -> None:
        verified = verify(hub_secrets(CURRENT), library_headers(CURRENT), BODY, now=time.time())
        assert verified.id == WEBHOOK_ID
        assert abs(verified.timestamp - time.time()) < 5

    def test_a_hub_still_signing_with_the_previous_secret_is_accepted_during_a_rotation(self) -> None:
        assert verify(hub_secrets(CURRENT, PREVIOUS), library_headers(PREVIOUS), BODY, now=time.time()).id == WEBHOOK_ID
        assert "no v1 signature" in rejected(library_headers(PREVIOUS))  # once the previous secret is removed

    def test_the_headers_are_found_whatever_their_case(self) -> None:
        headers = {name.title(): value for name, value in library_headers(CURRENT).items()}
        assert verify(hub_secrets(CURRENT), headers, BODY, now=time.time()).id == WEBHOOK_ID


class TestSignatureMatrix:
    @pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_each_header_missing(self, missing: str) -> None:
        headers = library_headers(CURRENT)
        del headers[missing]
        assert missing in rejected(headers)

    @pytest.mark.parametrize("emptied", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_each_header_empty(self, emptied: str) -> None:
        headers = library_headers(CURRENT)
        headers[emptied] = ""
        assert emptied in rejected(headers)

    def test_wrong_secret(self) -> None:
        assert "no v1 signature" in rejected(library_headers(OTHER))

    def test_tampered_body(self) -> None:
        assert "no v1 signature" in rejected(library_headers(CURRENT), BODY + b" ")

    def test_tampered_webhook_id(self) -> None:
        headers = library_headers(CURRENT)
        headers["webhook-id"] = WEBHOOK_ID + "x"
        assert "no v1 signature" in rejected(headers)

    def test_a_signature_from_another_moment_does_not_match(self) -> None:
        headers = library_headers(CURRENT, at=time.time() - 10)
        headers["webhook-timestamp"] = str(int(time.time()))
        assert "no v1 signature" in rejected(headers)

    def test_stale_and_future_timestamps_outside_five_minutes(self) -> None:
        now = time.time()
        assert "too old" in rejected(library_headers(CURRENT, at=now - 302), now=now)
        assert "future" in rejected(library_headers(CURRENT, at=now + 302), now=now)

    def test_timestamps_at_the_edge_of_the_window_are_accepted(self) -> None:
        now = 1_800_000_000.0
        for at in (now - 300, now + 300):
            assert verify(hub_secrets(CURRENT), library_headers(CURRENT, at=at), BODY, now=now).timestamp == int(at)

    def test_no_secret_configured_accepts_nothing(self) -> None:
        assert "no webhook secret" in rejected(library_headers(CURRENT), secrets=())

    def test_several_signatures_in_one_header_one_of_them_matching(self) -> None:
        good = library_headers(CURRENT)
        foreign = library_headers(OTHER)["webhook-signature"]
        for signature in (f"{foreign} {good['webhook-signature']}", f"{good['webhook-signature']} {foreign}", f"v2,abc  {good['webhook-signature']}"):
            headers = dict(good, **{"webhook-signature": signature})
            assert verify(hub_secrets(CURRENT), headers, BODY, now=time.time()).id == WEBHOOK_ID

    def test_several_signatures_none_matching(self) -> None:
        headers = library_headers(CURRENT)
        headers["webhook-signature"] = " ".join(library_headers(secret)["webhook-signature"] for secret in (OTHER, PREVIOUS))
        assert "no v1 signature" in rejected(headers)

    @pytest.mark.parametrize(
        "garbage",
        [
            "v1",
            "v1,",
            ",",
            "v1,!!!!",
            "v1," + "*" * 44,
            "v1," + "A" * 43 + "=" * 2,
            "v1," + base64.b64encode(b"x" * 31).decode(),
            "v1,,,",
            "x" * 5000,
            "v1a,AAAA v1,,AAAA",
            "\u0000\u202e",
            "v1,QUFB\n",
        ],
    )
    def test_garbage_signatures_are_refused_without_error(self, garbage: str) -> None:
        headers = library_headers(CURRENT)
        headers["webhook-signature"] = garbage
        assert "no v1 signature" in rejected(headers)

    def test_a_valid_digest_under_another_version_is_refused(self) -> None:
        headers = library_headers(CURRENT)
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v1a,")
        assert "no v1 signature" in rejected(headers)

    @pytest.mark.parametrize(
        "timestamp",
        ["1e9", " {now}", "{now} ", "+{now}", "-{now}", "{now}.0", "0x10", "١٢٣", "{arabic}", "9" * 300, "1" * 13, "NaN", "inf", "1_700_000_000"],
    )
    def test_a_timestamp_that_is_not_plain_ascii_digits_is_refused(self, timestamp: str) -> None:
        now = int(time.time())
        arabic = str(now).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
        headers = library_headers(CURRENT, at=now)
        headers["webhook-timestamp"] = timestamp.format(now=now, arabic=arabic)
        assert "not an integer" in rejected(headers, now=now)

    def test_the_reason_never_shows_a_secret_or_a_signature(self) -> None:
        headers = library_headers(OTHER)
        reason = rejected(headers, secrets=hub_secrets(CURRENT, PREVIOUS))
        for secret in (CURRENT, PREVIOUS, OTHER):
            assert secret not in reason and secret[len("whsec_") :] not in reason
        assert headers["webhook-signature"][3:] not in reason


class TestSecretsAndIds:
    def test_a_secret_never_shows_in_its_repr(self) -> None:
        secret = WebhookSecret(CURRENT)
        assert CURRENT[len("whsec_") :] not in repr(secret) and CURRENT[len("whsec_") :] not in str(secret)
        assert "hidden" in repr(hub_secrets(CURRENT, PREVIOUS))
        assert secret == WebhookSecret(CURRENT) and secret != WebhookSecret(PREVIOUS)

    @pytest.mark.parametrize(
        "value",
        ["", "secret", base64.b64encode(b"x" * 32).decode(), "whsec_", "whsec_not base64!", "whsec_" + base64.b64encode(b"x" * 23).decode()],
    )
    def test_a_malformed_secret_is_refused_without_echo(self, value: str) -> None:
        with pytest.raises(ValueError) as caught:
            WebhookSecret(value)
        assert (value[6:] or "\x00") not in str(caught.value)

    def test_no_secrets_in_the_settings_means_none(self) -> None:
        assert hub_secrets(None, None) == () and hub_secrets("", None) == ()
        assert hub_secrets(None, PREVIOUS) == (WebhookSecret(PREVIOUS),)

    def test_signing_needs_a_secret(self) -> None:
        with pytest.raises(ValueError):
            sign((), WEBHOOK_ID, 1, BODY)

    @pytest.mark.parametrize("value", ["a", "msg_1", "h-1:2", "x" * 200, "!~{}[]|<>"])
    def test_valid_webhook_ids(self, value: str) -> None:
        assert valid_webhook_id(value)

    @pytest.mark.parametrize("value", ["", "x" * 201, "has space", "tab\there", "line\nbreak", "nul\x00", "del\x7f", "café", "١", None, 12])
    def test_invalid_webhook_ids(self, value: object) -> None:
        assert not valid_webhook_id(value)

    def test_an_id_is_checked_for_format_only_after_the_signature(self) -> None:
        """verify() accepts any signed id; the handler answers 400 for a malformed one (after 401 checks)."""
        headers = library_headers(CURRENT, webhook_id="has space")
        assert verify(hub_secrets(CURRENT), headers, BODY, now=time.time()).id == "has space"


_HEADER_NAMES = st.sampled_from(["webhook-id", "Webhook-Id", "webhook-timestamp", "WEBHOOK-TIMESTAMP", "webhook-signature", "x-other"])
_HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.integers(min_value=1_799_999_000, max_value=1_800_001_000).map(str),
    st.lists(st.sampled_from(["v1,", "v2,", "v1", ",", " ", "QUFB", "=" * 2, "A" * 43]), max_size=8).map("".join),
    st.none(),
    st.integers(),
    st.binary(max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(headers=st.dictionaries(st.one_of(_HEADER_NAMES, st.text(max_size=10), st.integers()), _HEADER_VALUES, max_size=6), body=st.binary(max_size=200))
def test_verify_never_raises_anything_but_rejected(headers: dict, body: bytes) -> None:
    try:
        verify(hub_secrets(CURRENT, PREVIOUS), headers, body, now=1_800_000_000.0)
    except WebhookRejected as exc:
        assert exc.reason and isinstance(exc.reason, str)
    else:  # pragma: no cover - would need a forged HMAC
        pytest.fail("an arbitrary header set passed verification")


@settings(max_examples=200, deadline=None)
@given(webhook_id=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60), body=st.binary(max_size=300), now=st.integers(min_value=0, max_value=10**11))
def test_our_own_signature_always_verifies(webhook_id: str, body: bytes, now: int) -> None:
    """Arbitrary ids (any Unicode but lone surrogates), arbitrary bytes, any moment: sign and verify agree."""
    headers = outbound_headers(hub_secrets(CURRENT, PREVIOUS), webhook_id, body, now=now)
    assert verify(hub_secrets(PREVIOUS), headers, body, now=now + 299) == verify(hub_secrets(CURRENT), headers, body, now=now - 300)
