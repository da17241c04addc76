"""Password hashing with Argon2id (RFC 9106) via argon2-cffi."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Argon2Hasher:
    """Hashes and verifies passwords; parameters are argon2-cffi's RFC 9106 defaults."""

    def __init__(self) -> None:
        self._ph = PasswordHasher()

    def hash(self, password: str) -> str:
        """An encoded Argon2id hash (salt and parameters included)."""
        return self._ph.hash(password)

    def verify(self, encoded: str, password: str) -> bool:
        """Whether ``password`` matches; never raises for a wrong password."""
        try:
            return bool(self._ph.verify(encoded, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
