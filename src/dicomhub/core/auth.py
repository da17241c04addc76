"""Authentication, principals, grants and audit: the core services (no I/O of their own).

- Passwords (Argon2, via the ``PasswordHasher`` port), JWT bearer tokens (``TokenCodec``),
  API keys ``dhk_<id>_<secret>`` (SHA-256 of a 256-bit secret stored), login throttling:
  each failure doubles a delay and ``lockout_threshold`` failures lock the principal for
  ``lockout_seconds``.
- DIMSE: a calling AE title must belong to a registered device and come from one of its
  allowed addresses.
- Audit: one :class:`AuditRecord` per store, query, retrieve, delete, login, failed login,
  grant change and credential change (PS3.15 A.5 / IHE ATNA), appended to the database and
  optionally written to JSON lines or syslog sinks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dicomhub.core.access import (
    AuditRecord,
    Grant,
    Kind,
    Permission,
    Principal,
    PrincipalRecord,
    Role,
)
from dicomhub.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized

log = logging.getLogger(__name__)

API_KEY_PREFIX = "dhk_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AE = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")


class PasswordHasher(Protocol):
    """Argon2 in production."""

    def hash(self, password: str) -> str: ...
    def verify(self, encoded: str, password: str) -> bool: ...


class TokenCodec(Protocol):
    """Issues and verifies signed tokens."""

    def issue(
        self, subject: str, ttl_seconds: int, extra: dict[str, Any] | None = None
    ) -> tuple[str, str, int]: ...
    def verify(self, token: str) -> Any: ...


class AccessStore(Protocol):
    """Persistence of subscribers, principals, credentials, grants and audit events."""

    def subscriber_add(self, name: str, title: str | None) -> int: ...
    def subscriber_pk(self, name: str) -> int | None: ...
    def subscriber_list(self) -> list[dict[str, Any]]: ...
    def principal_add(
        self,
        kind: Kind,
        name: str,
        role: Role,
        subscriber_pk: int | None,
        password_hash: str | None,
        ae_titles: Sequence[str],
        addresses: Sequence[str],
    ) -> int: ...
    def principal_get(self, name: str) -> PrincipalRecord | None: ...
    def principal_by_pk(self, pk: int) -> PrincipalRecord | None: ...
    def devices_with_ae(self, ae_title: str) -> list[PrincipalRecord]: ...
    def principal_list(self, subscriber_pk: int | None) -> list[PrincipalRecord]: ...
    def principal_count(self) -> int: ...
    def login_failed(self, pk: int, locked_until: float | None) -> None: ...
    def login_succeeded(self, pk: int) -> None: ...
    def set_password(self, pk: int, password_hash: str) -> None: ...
    def api_key_add(
        self,
        principal_pk: int,
        key_id: str,
        key_hash: str,
        label: str | None,
        expires_at: float | None,
    ) -> None: ...
    def api_key_get(self, key_id: str) -> tuple[int, str, float | None, float | None] | None: ...
    def api_key_revoke(self, key_id: str) -> bool: ...
    def token_revoke(self, jti: str, expires_at: float) -> None: ...
    def token_revoked(self, jti: str) -> bool: ...
    def grant_add(
        self,
        owner_pk: int,
        study: str,
        series: str | None,
        grantee_subscriber_pk: int | None,
        grantee_principal_pk: int | None,
        access: str,
        expires_at: float | None,
        created_by: str,
    ) -> int: ...
    def grant_remove(self, pk: int, owner_pk: int | None) -> bool: ...
    def grant_list(self, owner_pk: int | None) -> list[Grant]: ...
    def audit_add(self, record: AuditRecord, when: float) -> None: ...
    def audit_query(
        self,
        principal: str | None = None,
        study: str | None = None,
        event: str | None = None,
        since: float | None = None,
        until: float | None = None,
        subscriber: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]: ...


class AuditService:
    """Append-only audit trail with optional extra sinks (JSON lines, syslog)."""

    def __init__(
        self, store: AccessStore, sinks: Sequence[Callable[[AuditRecord, float], None]] = ()
    ) -> None:
        self.store = store
        self.sinks = list(sinks)

    def record(self, record: AuditRecord) -> None:
        """Write one event; a failing extra sink is logged, never fatal."""
        when = time.time()
        self.store.audit_add(record, when)
        for sink in self.sinks:
            try:
                sink(record, when)
            except Exception:
                log.exception("audit sink failed")

    def query(self, actor: Principal, **filters: Any) -> list[dict[str, Any]]:
        """Events, newest first; admins see all, subscriber admins their subscriber's."""
        if actor.is_admin:
            return self.store.audit_query(**filters)
        if actor.can(Permission.MANAGE) and actor.subscriber:
            filters["subscriber"] = actor.subscriber
            return self.store.audit_query(**filters)
        raise Forbidden("reading the audit trail needs the admin or subscriber-admin role")


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _credential_key(token: str) -> bytes:
    """How a verified credential is remembered: by its SHA-256, never the secret itself."""
    return hashlib.sha256(token.encode()).digest()


class AuthService:
    """Principals, credentials and grants; authentication for both edges."""

    def __init__(
        self,
        store: AccessStore,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        audit: AuditService,
        *,
        token_ttl: int = 3600,
        lockout_threshold: int = 5,
        lockout_seconds: int = 300,
        clock: Callable[[], float] = time.time,
        credential_cache_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.tokens = tokens
        self.audit = audit
        self.token_ttl = token_ttl
        self.lockout_threshold = lockout_threshold
        self.lockout_seconds = lockout_seconds
        self.clock = clock
        self.credential_cache_seconds = credential_cache_seconds
        # sha256(credential) -> (principal, valid until): see cached_bearer
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- bootstrap -------------------------------------------------------------------------
    def bootstrap_admin(self) -> str | None:
        """On an empty principal table, create user ``admin``; return its password once."""
        if self.store.principal_count() > 0:
            return None
        password = secrets.token_urlsafe(18)
        self.store.principal_add(
            Kind.USER, "admin", Role.ADMIN, None, self.hasher.hash(password), (), ()
        )
        return password

    # -- authentication --------------------------------------------------------------------
    def login_password(
        self, username: str, password: str, source: str, interface: str = "http"
    ) -> tuple[Principal, str, int]:
        """OAuth2 password grant: verify, throttle, issue a token (RFC 6749 §4.3)."""
        record = self.store.principal_get(username)
        now = self.clock()
        if record is not None and record.locked_until and record.locked_until > now:
            self._audit_login(username, record, source, interface, 8, "locked")
            raise Unauthorized("invalid credentials or account locked")
        ok = (
            record is not None
            and not record.disabled
            and record.password_hash is not None
            and self.hasher.verify(record.password_hash, password)
        )
        if not ok or record is None:
            if record is not None:
                failures = record.failed_logins + 1
                lock = now + self.lockout_seconds if failures >= self.lockout_threshold else None
                self.store.login_failed(record.pk, lock)
            self._audit_login(username, record, source, interface, 4, "bad credentials")
            raise Unauthorized("invalid credentials or account locked")
        self.store.login_succeeded(record.pk)
        principal = record.principal()
        token, _jti, exp = self.tokens.issue(principal.name, self.token_ttl)
        self._audit_login(username, record, source, interface, 0, "password")
        return principal, token, exp

    def failure_delay(self, username: str) -> float:
        """Seconds to wait before answering a failed login (doubles per failure, max 4 s)."""
        record = self.store.principal_get(username)
        failures = record.failed_logins if record else 1
        return float(min(0.05 * (2 ** max(failures - 1, 0)), 4.0))

    def login_client(self, client_id: str, secret: str, source: str) -> tuple[Principal, str, int]:
        """OAuth2 client-credentials grant: a device's name and one of its API keys."""
        found = self._api_key_principal(secret)
        principal = found[0] if found else None
        if principal is None or principal.name != client_id:
            self._audit_login(client_id, None, source, "http", 4, "bad client credentials")
            raise Unauthorized("invalid client credentials")
        token, _jti, exp = self.tokens.issue(principal.name, self.token_ttl)
        self._audit_login(client_id, None, source, "http", 0, "client_credentials")
        return principal, token, exp

    def cached_bearer(self, token: str) -> Principal | None:
        """The principal of a bearer credential that :meth:`authenticate_bearer` accepted
        less than ``credential_cache_seconds`` ago (and that has not expired since); None
        otherwise.  No I/O, so the HTTP edge asks here before it hands the full check to a
        thread: a viewer's burst of frame requests with one token is verified once.  A
        revocation done elsewhere (another process, the CLI) takes effect within that
        time; one done through this service at once."""
        if self.credential_cache_seconds <= 0:
            return None
        with self._verified_lock:
            hit = self._verified.get(_credential_key(token))
        if hit is None or hit[1] <= self.clock():
            return None
        return hit[0]

    def _remember(self, token: str, principal: Principal, expires_at: float | None) -> None:
        if self.credential_cache_seconds <= 0:
            return
        until = self.clock() + self.credential_cache_seconds
        if expires_at is not None:
            until = min(until, expires_at)
        key = _credential_key(token)
        with self._verified_lock:
            self._verified[key] = (principal, until)
            self._verified.move_to_end(key)
            while len(self._verified) > 4096:
                self._verified.popitem(last=False)

    def forget_verified(self) -> None:
        """Drop every remembered credential (a credential was revoked)."""
        with self._verified_lock:
            self._verified.clear()

    def authenticate_bearer(self, token: str) -> Principal:
        """A principal from a JWT (own or trusted OIDC issuer) or an API key."""
        if token.startswith(API_KEY_PREFIX):
            found = self._api_key_principal(token)
            if found is None:
                raise Unauthorized("invalid, expired or revoked API key")
            self._remember(token, *found)
            return found[0]
        try:
            claims = self.tokens.verify(token)
        except Exception as exc:
            raise Unauthorized(str(exc)) from None
        if claims.jti and self.store.token_revoked(claims.jti):
            raise Unauthorized("token revoked")
        record = self.store.principal_get(claims.subject)
        if record is None or record.disabled:
            raise Unauthorized("unknown or disabled principal")
        principal = record.principal()
        self._remember(token, principal, float(claims.expires_at) if claims.expires_at else None)
        return principal

    def _api_key_principal(self, key: str) -> tuple[Principal, float | None] | None:
        """The key's principal and its expiry, if the key is valid."""
        parts = key.split("_")
        if len(parts) != 3 or parts[0] + "_" != API_KEY_PREFIX:
            return None
        found = self.store.api_key_get(parts[1])
        if found is None:
            return None
        principal_pk, key_hash, expires_at, revoked_at = found
        if revoked_at is not None or (expires_at is not None and expires_at < self.clock()):
            return None
        if not hmac.compare_digest(key_hash, _hash_secret(parts[2])):
            return None
        record = self.store.principal_by_pk(principal_pk)
        if record is None or record.disabled:
            return None
        return record.principal(), expires_at

    def authenticate_ae(self, calling_ae: str, address: str) -> Principal | None:
        """The device registered for ``calling_ae`` whose allowed addresses include
        ``address`` (an empty list allows any address)."""
        for record in self.store.devices_with_ae(calling_ae.strip()):
            if record.disabled:
                continue
            if not record.allowed_addresses or _address_allowed(address, record.allowed_addresses):
                return record.principal()
        return None

    def _audit_login(
        self,
        name: str,
        record: PrincipalRecord | None,
        source: str,
        interface: str,
        outcome: int,
        how: str,
    ) -> None:
        self.audit.record(
            AuditRecord(
                event="login" if outcome == 0 else "login-failed",
                action="E",
                outcome=outcome,
                principal=name,
                subscriber=record.subscriber if record else None,
                source=source,
                interface=interface,
                detail={"method": how},
            )
        )

    # -- management ------------------------------------------------------------------------
    def _subscriber_for(self, actor: Principal, subscriber: str | None) -> tuple[int, str]:
        if actor.is_admin:
            if not subscriber:
                raise InvalidRequest("name the subscriber")
            pk = self.store.subscriber_pk(subscriber)
            if pk is None:
                raise NotFound(f"no subscriber '{subscriber}'")
            return pk, subscriber
        if not actor.can(Permission.MANAGE) or actor.subscriber_pk is None:
            raise Forbidden("managing principals needs the subscriber-admin role")
        if subscriber and subscriber != actor.subscriber:
            raise Forbidden("you can only manage your own subscriber")
        return actor.subscriber_pk, str(actor.subscriber)

    def _credential_event(
        self,
        actor: Principal,
        event: str,
        subject: str,
        subscriber: str | None,
        source: str,
        **detail: Any,
    ) -> None:
        self.audit.record(
            AuditRecord(
                event=event,
                action="C" if event.endswith("add") else "U",
                outcome=0,
                principal=actor.name,
                subscriber=subscriber,
                source=source,
                interface="api",
                detail={"subject": subject, **detail},
            )
        )

    def add_subscriber(self, actor: Principal, name: str, title: str | None, source: str) -> None:
        """Create a subscriber (server admins only)."""
        if not actor.is_admin:
            raise Forbidden("creating subscribers needs the admin role")
        if not _NAME.match(name):
            raise InvalidRequest("subscriber name: letters, digits, '.', '_', '-', '@'")
        self.store.subscriber_add(name, title)
        self._credential_event(actor, "subscriber-add", name, name, source)

    def add_user(
        self,
        actor: Principal,
        subscriber: str | None,
        name: str,
        role: Role,
        password: str | None,
        source: str,
    ) -> str:
        """Create a user; returns its password (generated if not given), shown once."""
        if role == Role.DEVICE:
            raise InvalidRequest("use a device for role 'device'")
        if role == Role.ADMIN:
            if not actor.is_admin:
                raise Forbidden("only admins create admins")
            sub_pk, sub_name = None, None
        else:
            sub_pk, sub_name = self._subscriber_for(actor, subscriber)
        if not _NAME.match(name):
            raise InvalidRequest("user name: letters, digits, '.', '_', '-', '@'")
        password = password or secrets.token_urlsafe(18)
        if len(password) < 10:
            raise InvalidRequest("passwords have at least 10 characters")
        self.store.principal_add(Kind.USER, name, role, sub_pk, self.hasher.hash(password), (), ())
        self._credential_event(actor, "user-add", name, sub_name, source, role=role.value)
        return password

    def add_device(
        self,
        actor: Principal,
        subscriber: str | None,
        name: str,
        ae_titles: Sequence[str],
        addresses: Sequence[str],
        source: str,
    ) -> str:
        """Create a device with AE titles and allowed addresses; returns its API key."""
        sub_pk, sub_name = self._subscriber_for(actor, subscriber)
        if not _NAME.match(name):
            raise InvalidRequest("device name: letters, digits, '.', '_', '-', '@'")
        for ae in ae_titles:
            if not _AE.match(ae):
                raise InvalidRequest(f"AE title '{ae}': 1-16 characters, no backslash")
        for cidr in addresses:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise InvalidRequest(f"'{cidr}' is not an address or CIDR network") from None
        pk = self.store.principal_add(
            Kind.DEVICE, name, Role.DEVICE, sub_pk, None, tuple(ae_titles), tuple(addresses)
        )
        self._credential_event(
            actor, "device-add", name, sub_name, source, ae_titles=list(ae_titles)
        )
        return self._new_api_key(pk, "initial")

    def _new_api_key(
        self, principal_pk: int, label: str | None, ttl_seconds: int | None = None
    ) -> str:
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32).replace("_", "-")
        expires = self.clock() + ttl_seconds if ttl_seconds else None
        self.store.api_key_add(principal_pk, key_id, _hash_secret(secret), label, expires)
        return f"{API_KEY_PREFIX}{key_id}_{secret}"

    def _target(self, actor: Principal, name: str) -> PrincipalRecord:
        record = self.store.principal_get(name)
        if record is None:
            raise NotFound(f"no principal '{name}'")
        if actor.is_admin or actor.name == name:
            return record
        if actor.can(Permission.MANAGE) and record.subscriber_pk == actor.subscriber_pk:
            return record
        raise NotFound(f"no principal '{name}'")

    def issue_token(
        self, actor: Principal, name: str, ttl: int | None, source: str
    ) -> tuple[str, int]:
        """A bearer token for ``name`` (self, or managed by the actor)."""
        record = self._target(actor, name)
        token, jti, exp = self.tokens.issue(record.name, ttl or self.token_ttl)
        self._credential_event(actor, "token-issue", name, record.subscriber, source, jti=jti)
        return token, exp

    def issue_api_key(
        self, actor: Principal, name: str, label: str | None, ttl: int | None, source: str
    ) -> str:
        """A new API key for ``name``; printed once, stored hashed."""
        record = self._target(actor, name)
        key = self._new_api_key(record.pk, label, ttl)
        self._credential_event(
            actor, "apikey-issue", name, record.subscriber, source, key_id=key.split("_")[1]
        )
        return key

    def revoke(self, actor: Principal, credential: str, source: str) -> None:
        """Revoke a JWT (by the token itself) or an API key (by the key or its id)."""
        if credential.startswith(API_KEY_PREFIX) or re.fullmatch(r"[0-9a-f]{12}", credential):
            key_id = (
                credential.split("_")[1] if credential.startswith(API_KEY_PREFIX) else credential
            )
            found = self.store.api_key_get(key_id)
            if found is None:
                raise NotFound("no such API key")
            owner = self.store.principal_by_pk(found[0])
            self._target(actor, owner.name if owner else "")
            self.store.api_key_revoke(key_id)
            self.forget_verified()
            self._credential_event(
                actor,
                "apikey-revoke",
                owner.name if owner else "?",
                owner.subscriber if owner else None,
                source,
                key_id=key_id,
            )
            return
        try:
            claims = self.tokens.verify(credential)
        except Exception as exc:
            raise InvalidRequest(f"not a token of this server: {exc}") from None
        self._target(actor, claims.subject)
        if claims.jti:
            self.store.token_revoke(claims.jti, float(claims.expires_at))
            self.forget_verified()
        self._credential_event(
            actor, "token-revoke", claims.subject, actor.subscriber, source, jti=claims.jti
        )

    def set_password(self, actor: Principal, name: str, password: str, source: str) -> None:
        """Change a user's password (self, or managed by the actor)."""
        record = self._target(actor, name)
        if len(password) < 10:
            raise InvalidRequest("passwords have at least 10 characters")
        self.store.set_password(record.pk, self.hasher.hash(password))
        self._credential_event(actor, "password-change", name, record.subscriber, source)

    def list_principals(self, actor: Principal) -> list[PrincipalRecord]:
        """Principals the actor may see."""
        if actor.is_admin:
            return self.store.principal_list(None)
        if actor.can(Permission.MANAGE):
            return self.store.principal_list(actor.subscriber_pk)
        raise Forbidden("listing principals needs the subscriber-admin role")

    # -- grants ----------------------------------------------------------------------------
    def add_grant(
        self,
        actor: Principal,
        study: str,
        series: str | None,
        to_subscriber: str | None,
        to_principal: str | None,
        access: str,
        expires_at: float | None,
        source: str,
        owner: str | None = None,
    ) -> int:
        """Share a study (or one series) of the actor's subscriber."""
        owner_pk, owner_name = self._subscriber_for(actor, owner)
        if not _UID.match(study) or (series is not None and not _UID.match(series)):
            raise InvalidRequest("study and series must be UIDs")
        if access not in ("read", "write"):
            raise InvalidRequest("access is 'read' or 'write'")
        if (to_subscriber is None) == (to_principal is None):
            raise InvalidRequest("grant to exactly one subscriber or one principal")
        gsub = gprin = None
        if to_subscriber is not None:
            gsub = self.store.subscriber_pk(to_subscriber)
            if gsub is None:
                raise NotFound(f"no subscriber '{to_subscriber}'")
            if gsub == owner_pk:
                raise Conflict("a subscriber already sees its own studies")
        if to_principal is not None:
            rec = self.store.principal_get(to_principal)
            if rec is None:
                raise NotFound(f"no principal '{to_principal}'")
            gprin = rec.pk
        pk = self.store.grant_add(
            owner_pk, study, series, gsub, gprin, access, expires_at, actor.name
        )
        self.audit.record(
            AuditRecord(
                event="grant-add",
                action="C",
                outcome=0,
                principal=actor.name,
                subscriber=owner_name,
                source=source,
                interface="api",
                study_instance_uid=study,
                detail={
                    "grant": pk,
                    "series": series,
                    "to_subscriber": to_subscriber,
                    "to_principal": to_principal,
                    "access": access,
                    "expires_at": expires_at,
                },
            )
        )
        return pk

    def remove_grant(self, actor: Principal, pk: int, source: str) -> None:
        """Revoke a grant of the actor's subscriber (admins: any)."""
        owner_pk = None if actor.is_admin else self._subscriber_for(actor, None)[0]
        grants = {g.pk: g for g in self.store.grant_list(owner_pk)}
        if pk not in grants or not self.store.grant_remove(pk, owner_pk):
            raise NotFound(f"no grant {pk}")
        self.audit.record(
            AuditRecord(
                event="grant-remove",
                action="D",
                outcome=0,
                principal=actor.name,
                subscriber=grants[pk].owner,
                source=source,
                interface="api",
                study_instance_uid=grants[pk].study_instance_uid,
                detail={"grant": pk},
            )
        )

    def list_grants(self, actor: Principal) -> list[Grant]:
        """Grants of the actor's subscriber (admins: all)."""
        if actor.is_admin:
            return self.store.grant_list(None)
        return self.store.grant_list(self._subscriber_for(actor, None)[0])


def _address_allowed(address: str, allowed: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for cidr in allowed:
        try:
            if ip in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def require(principal: Principal, permission: Permission) -> None:
    """Raise :class:`Forbidden` unless the role grants ``permission``."""
    if not principal.can(permission):
        raise Forbidden(f"role '{principal.role.value}' may not {permission.value}")
