"""Microsoft Entra ID tokens as the emulators issue and check them.

One `TokenIssuer` is shared by the managed identity endpoint (which issues) and the registry
and Azure DevOps emulators (which accept a token only when it was issued for them and has not
expired). Tokens are JWT-shaped (header.payload.signature, HMAC-SHA256) so clients that peek at
claims see what real Entra tokens carry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

ACR_RESOURCE = "https://containerregistry.azure.net"
DEVOPS_RESOURCE = "499b84ac-1321-427f-aa17-267ca6975798"


def normalize_resource(resource_or_scope: str) -> str:
    """`https://x/.default`, `https://x/` and `https://x` name the same resource."""
    return resource_or_scope.removesuffix("/.default").rstrip("/")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    audience: str
    subject: str
    expires_at: float


class TokenIssuer:
    """Issues and verifies the emulated Entra access tokens."""

    def __init__(self, lifetime_s: float = 3600.0) -> None:
        self._key = secrets.token_bytes(32)
        self.lifetime_s = lifetime_s
        self.issued = 0

    def issue(
        self, resource: str, subject: str = "emulated-identity", lifetime_s: float | None = None
    ) -> tuple[str, float]:
        """A token for `resource` and its expiry (epoch seconds); `lifetime_s` overrides."""
        now = time.time()
        expires = now + (self.lifetime_s if lifetime_s is None else lifetime_s)
        claims = {
            "aud": normalize_resource(resource),
            "sub": subject,
            "oid": subject,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(expires),
            "jti": secrets.token_hex(8),
        }
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        signature = _b64url(self._sign(f"{header}.{payload}"))
        self.issued += 1
        return f"{header}.{payload}.{signature}", expires

    def verify(self, token: str, resource: str) -> TokenClaims | None:
        """The token's claims when it is ours, unexpired and for `resource`; otherwise None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        header, payload, signature = parts
        try:
            expected = self._sign(f"{header}.{payload}")
            if not hmac.compare_digest(_unb64url(signature), expected):
                return None
            claims = json.loads(_unb64url(payload))
        except (ValueError, TypeError):
            return None
        if claims.get("aud") != normalize_resource(resource):
            return None
        if float(claims.get("exp", 0)) <= time.time():
            return None
        return TokenClaims(claims["aud"], str(claims.get("sub", "")), float(claims["exp"]))

    def _sign(self, message: str) -> bytes:
        return hmac.new(self._key, message.encode("ascii"), hashlib.sha256).digest()
