"""Password hashing with Argon2id (RFC 9106) via argon2-cffi."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: OWASP Password Storage Cheat Sheet's Argon2id configuration (m=19 MiB, t=2, p=1).
#: RFC 9106's low-memory profile (argon2-cffi's default) takes 64 MiB per hash: every
#: concurrent login would hold that much, a memory-exhaustion lever on a public server.
MEMORY_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1


class Argon2Hasher:
    """Hashes and verifies passwords with Argon2id (RFC 9106) at the OWASP parameters;
    hashes made with other parameters (e.g. earlier defaults) still verify."""

    def __init__(self) -> None:
        self._ph = PasswordHasher(
            time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM
        )

    def hash(self, password: str) -> str:
        """An encoded Argon2id hash (salt and parameters included)."""
        return self._ph.hash(password)

    def verify(self, encoded: str, password: str) -> bool:
        """Whether ``password`` matches; never raises for a wrong password."""
        try:
            return bool(self._ph.verify(encoded, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
