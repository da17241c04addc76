"""Who is asking, and what they may touch (DESIGN §1 "subscribers and access").

Pure model: roles and their permissions, the authenticated principal, and the access
scope the index applies *inside* every query (never by filtering results afterwards).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """Roles of principals (docs/security.md)."""

    ADMIN = "admin"  # the whole server
    SUBSCRIBER_ADMIN = "subscriber-admin"  # users, devices, grants of one subscriber
    UPLOADER = "uploader"  # store and read
    READER = "reader"  # read only
    DEVICE = "device"  # a modality, workstation, printer or processing client


class Permission(StrEnum):
    """What a request needs."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    MANAGE = "manage"  # principals, credentials and grants of the own subscriber
    ADMIN = "admin"  # subscribers, nodes, audit of everyone


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.SUBSCRIBER_ADMIN: frozenset(
        {Permission.READ, Permission.WRITE, Permission.DELETE, Permission.MANAGE}
    ),
    Role.UPLOADER: frozenset({Permission.READ, Permission.WRITE}),
    Role.READER: frozenset({Permission.READ}),
    Role.DEVICE: frozenset({Permission.READ, Permission.WRITE}),
}


class Kind(StrEnum):
    """Principal kinds."""

    USER = "user"
    DEVICE = "device"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    pk: int
    name: str
    kind: Kind
    role: Role
    subscriber_pk: int | None
    subscriber: str | None
    ae_titles: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()

    def can(self, permission: Permission) -> bool:
        """Whether the role grants ``permission``."""
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def is_admin(self) -> bool:
        """A server administrator sees and manages everything."""
        return self.role == Role.ADMIN

    @property
    def scope(self) -> AccessScope:
        """The index filter for this principal."""
        return AccessScope(
            subscriber_pk=self.subscriber_pk, principal_pk=self.pk, everything=self.is_admin
        )


@dataclass(frozen=True)
class AccessScope:
    """What the index may show: own studies, studies granted (not expired), or everything.

    ``write`` asks for write access (read-write grants only).
    """

    subscriber_pk: int | None
    principal_pk: int | None = None
    everything: bool = False
    write: bool = False

    def for_write(self) -> AccessScope:
        """The same scope restricted to what may be written."""
        return AccessScope(self.subscriber_pk, self.principal_pk, self.everything, True)


SYSTEM = AccessScope(subscriber_pk=None, everything=True)
"""Scope of internal maintenance (migrations, storage commitment checks)."""


@dataclass(frozen=True)
class PrincipalRecord:
    """A principal as stored, with its secrets and login state (never leaves the core)."""

    pk: int
    name: str
    kind: Kind
    role: Role
    subscriber_pk: int | None
    subscriber: str | None
    password_hash: str | None
    ae_titles: tuple[str, ...]
    allowed_addresses: tuple[str, ...]
    disabled: bool
    failed_logins: int
    locked_until: float | None  # epoch seconds

    def principal(self) -> Principal:
        """The authenticated view of this record."""
        return Principal(
            self.pk,
            self.name,
            self.kind,
            self.role,
            self.subscriber_pk,
            self.subscriber,
            self.ae_titles,
            self.allowed_addresses,
        )


@dataclass(frozen=True)
class Grant:
    """A study (or series) of ``owner`` shared with a subscriber or a principal."""

    pk: int
    owner: str
    study_instance_uid: str
    series_instance_uid: str | None
    grantee_subscriber: str | None
    grantee_principal: str | None
    access: str  # read | write
    expires_at: float | None
    created_by: str | None


@dataclass
class AuditRecord:
    """One audit event, modelled on DICOM PS3.15 A.5 / IHE ATNA.

    ``action``: C create, R read, U update, D delete, E execute (A.5.3.1 EventActionCode);
    ``outcome``: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
    """

    event: str
    action: str
    outcome: int
    principal: str | None
    subscriber: str | None
    source: str | None
    interface: str
    study_instance_uid: str | None = None
    patient_id: str | None = None
    detail: dict[str, object] = field(default_factory=dict)

    def fields(self) -> dict[str, object]:
        """The event's fields by name, as stored and sent to the sinks."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
