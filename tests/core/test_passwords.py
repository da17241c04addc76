"""Password hashing (auth/passwords.py): Argon2id at the OWASP parameters.

What came in: passwords, right and wrong, and a hash made with argon2-cffi's former
defaults (RFC 9106 low-memory profile, 64 MiB) as stored by earlier versions.
"""

from __future__ import annotations

from argon2 import PasswordHasher

from dicomhub.auth.passwords import Argon2Hasher


def test_hash_is_argon2id_with_owasp_parameters() -> None:
    encoded = Argon2Hasher().hash("correct horse")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "correct horse" not in encoded


def test_verify_right_and_wrong_passwords() -> None:
    hasher = Argon2Hasher()
    encoded = hasher.hash("correct horse")
    assert hasher.verify(encoded, "correct horse") is True
    assert hasher.verify(encoded, "Correct horse") is False
    assert hasher.verify(encoded, "") is False
    assert hasher.verify("not a hash", "correct horse") is False


def test_hashes_of_earlier_versions_still_verify() -> None:
    old = PasswordHasher().hash("s3cret")  # m=65536,t=3,p=4
    assert "m=65536" in old
    assert Argon2Hasher().verify(old, "s3cret") is True
    assert Argon2Hasher().verify(old, "other") is False
