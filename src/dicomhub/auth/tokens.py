"""Bearer tokens: JWTs signed by the server's Ed25519 key, and trusted OIDC issuers.

- Own tokens (RFC 7519, alg EdDSA): iss ``dicomhub``, sub = principal name, ``jti`` for
  revocation, ``exp``.  The key is created on first use in ``<data_dir>/keys/`` (0600).
- External OpenID Connect issuer (optional): tokens signed by a key from the issuer's
  JWKS are accepted; the configured claim names a local principal.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "dicomhub"


class TokenError(Exception):
    """The token is malformed, forged, expired or from an untrusted issuer."""


@dataclass(frozen=True)
class TokenClaims:
    """The verified claims dicomhub uses."""

    subject: str
    jti: str | None
    expires_at: int
    external: bool = False


def load_or_create_key(directory: Path) -> Ed25519PrivateKey:
    """The server's signing key; created with mode 0600 if missing."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "jwt-ed25519.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TokenError(f"{path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


class JwtCodec:
    """Issues and verifies tokens."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        oidc_issuer: str | None = None,
        oidc_jwks_url: str | None = None,
        oidc_audience: str | None = None,
        oidc_claim: str = "preferred_username",
    ) -> None:
        self.key = key
        self.public_key = key.public_key()
        self.oidc_issuer = oidc_issuer
        self.oidc_audience = oidc_audience
        self.oidc_claim = oidc_claim
        self._jwks = jwt.PyJWKClient(oidc_jwks_url, cache_keys=True) if oidc_jwks_url else None

    def issue(
        self, subject: str, ttl_seconds: int, extra: dict[str, Any] | None = None
    ) -> tuple[str, str, int]:
        """A signed token for ``subject``; returns (token, jti, expiry epoch seconds)."""
        now = int(time.time())
        jti = secrets.token_hex(16)
        exp = now + ttl_seconds
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
            **(extra or {}),
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA"), jti, exp

    def verify(self, token: str) -> TokenClaims:
        """Verify signature, issuer and expiry; raise :class:`TokenError` otherwise."""
        try:
            # one unverified parse for header and issuer; the signature is checked below
            complete = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = complete["header"], complete["payload"]
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        issuer = unverified.get("iss")
        try:
            if issuer == ISSUER:
                if header.get("alg") != "EdDSA":
                    raise TokenError("unexpected signing algorithm")
                claims = jwt.decode(
                    token,
                    self.public_key,
                    algorithms=["EdDSA"],
                    issuer=ISSUER,
                    options={"require": ["exp", "sub", "jti", "iss"]},
                )
                return TokenClaims(str(claims["sub"]), str(claims["jti"]), int(claims["exp"]))
            if self._jwks is not None and issuer == self.oidc_issuer:
                signing_key = self._jwks.get_signing_key_from_jwt(token)
                claims = jwt.decode(
                    token,
                    signing_key.key,
                    algorithms=["RS256", "ES256", "EdDSA"],
                    issuer=self.oidc_issuer,
                    audience=self.oidc_audience,
                    options={"require": ["exp", "iss"], "verify_aud": bool(self.oidc_audience)},
                )
                subject = claims.get(self.oidc_claim)
                if not subject:
                    raise TokenError(f"token has no '{self.oidc_claim}' claim")
                return TokenClaims(str(subject), claims.get("jti"), int(claims["exp"]), True)
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        raise TokenError("token from an untrusted issuer")
