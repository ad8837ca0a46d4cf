"""A loopback Bot Framework: OpenID metadata + JWKS (test-made RSA keys, with endorsements), the
client-credentials token endpoint, and a Bot Connector that records every activity it is sent."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.loopback import Answer, LoopbackServer, Recorded

ISSUER = "https://api.botframework.com"
APP_ID = "6a1f3d7e-2b59-4c1a-9b0e-3f6c2d8e1a47"
APP_PASSWORD = "test-app-password-not-a-secret"
CONNECTOR_PATH = "/amer/v3/conversations/"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SigningKeyPair:
    def __init__(self, kid: str, endorsements: Any) -> None:
        self.kid = kid
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.endorsements = endorsements

    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        jwk: dict[str, Any] = {"kty": "RSA", "use": "sig", "kid": self.kid, "n": _b64(numbers.n), "e": _b64(numbers.e)}
        if self.endorsements is not None:
            jwk["endorsements"] = self.endorsements
        return jwk


class BotFramework:
    """OpenID/JWKS + token endpoint on one loopback server; a separate server is the Bot Connector."""

    def __init__(self) -> None:
        self.keys = {
            "main": SigningKeyPair("key-main", ["msteams", "webchat"]),
            "plain": SigningKeyPair("key-plain", None),  # no endorsements list: accepted
            "other-channel": SigningKeyPair("key-other", ["skype"]),
            # A malformed JWKS entry: `endorsements` a string, not a list. It endorses nothing (not every channel).
            "string-endorsements": SigningKeyPair("key-string-endorsements", "msteams"),
        }
        self.unpublished = SigningKeyPair("key-unpublished", ["msteams"])
        self.login = LoopbackServer("botframework-login")
        self.login.route("/v1/.well-known/openidconfiguration", self._metadata)
        self.login.route("/keys", lambda r: Answer(200, {"keys": [k.jwk() for k in self.keys.values()]}))
        self.login.route("/botframework.com/oauth2/v2.0/token", self._token)
        self.connector = LoopbackServer("bot-connector")
        self.connector.route(CONNECTOR_PATH, lambda r: Answer(201, {"id": f"activity-{uuid.uuid4().hex[:8]}"}))
        self.issued_tokens: list[str] = []

    @property
    def metadata_url(self) -> str:
        return f"{self.login.url}/v1/.well-known/openidconfiguration"

    @property
    def token_url(self) -> str:
        return f"{self.login.url}/botframework.com/oauth2/v2.0/token"

    @property
    def service_url(self) -> str:
        return f"{self.connector.url}/amer/"

    def _metadata(self, request: Recorded) -> Answer:
        return Answer(200, {"issuer": ISSUER, "jwks_uri": f"{self.login.url}/keys", "id_token_signing_alg_values_supported": ["RS256"]})

    def _token(self, request: Recorded) -> Answer:
        form = dict(pair.split("=", 1) for pair in request.body.decode().split("&"))
        if form.get("client_id") != APP_ID or form.get("grant_type") != "client_credentials":
            return Answer(400, {"error": "invalid_client"})
        token = f"bot-access-token-{uuid.uuid4().hex}"
        self.issued_tokens.append(token)
        return Answer(200, {"token_type": "Bearer", "expires_in": 3600, "access_token": token})

    def jwt(
        self,
        *,
        service_url: str | None = None,
        key: str = "main",
        claims: dict[str, Any] | None = None,
        omit: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        lifetime: int = 3600,
        issued_offset: int = -10,
    ) -> str:
        """A channel-to-bot token as the Bot Framework signs it; override or omit claims to forge bad ones."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": APP_ID,
            "iat": now + issued_offset,
            "nbf": now + issued_offset,
            "exp": now + issued_offset + lifetime,
            "serviceurl": service_url or self.service_url,
        }
        body.update(claims or {})
        for name in omit:
            body.pop(name, None)
        pair = self.unpublished if key == "unpublished" else self.keys[key]
        return jwt.encode(body, pair.private_key, algorithm="RS256", headers={"kid": pair.kid, **(headers or {})})

    def sent_activities(self) -> list[dict[str, Any]]:
        """What the user received: activities the connector accepted (failed attempts are not shown to anyone)."""
        return [r.json() for r in self.connector.requests_to(CONNECTOR_PATH, "POST") if r.status and 200 <= r.status < 300]

    def stop(self) -> None:
        self.login.stop()
        self.connector.stop()


def unsigned_jwt(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."
