"""SQL storage of subscribers, principals, credentials, grants and audit events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dicomhub.core.access import AuditRecord, Grant, Kind, PrincipalRecord, Role
from dicomhub.core.errors import Conflict
from dicomhub.index.tables import (
    api_keys,
    audit_events,
    grants,
    principals,
    revoked_tokens,
    subscribers,
)


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class SqlAccessStore:
    """Implements the access repository the auth service uses."""

    def __init__(self, engine: Engine, write_engine: Engine, dialect: str) -> None:
        self.engine = engine
        self.write_engine = write_engine
        self.dialect = dialect

    def _dt(self, epoch: float | None) -> datetime | None:
        if epoch is None:
            return None
        value = datetime.fromtimestamp(epoch, UTC)
        return value.replace(tzinfo=None) if self.dialect == "sqlite" else value

    # -- subscribers -----------------------------------------------------------------------
    def subscriber_add(self, name: str, title: str | None) -> int:
        try:
            with self.write_engine.begin() as conn:
                return int(
                    conn.execute(
                        insert(subscribers)
                        .values(name=name, title=title, disabled=False)
                        .returning(subscribers.c.pk)
                    ).scalar_one()
                )
        except IntegrityError:
            raise Conflict(f"subscriber '{name}' already exists") from None

    def subscriber_pk(self, name: str) -> int | None:
        with self.engine.connect() as conn:
            pk = conn.execute(select(subscribers.c.pk).where(subscribers.c.name == name)).scalar()
        return int(pk) if pk is not None else None

    def subscriber_list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(subscribers).order_by(subscribers.c.name)).all()
        return [{"name": r.name, "title": r.title, "disabled": bool(r.disabled)} for r in rows]

    # -- principals ------------------------------------------------------------------------
    def principal_add(
        self,
        kind: Kind,
        name: str,
        role: Role,
        subscriber_pk: int | None,
        password_hash: str | None,
        ae_titles: Sequence[str],
        addresses: Sequence[str],
    ) -> int:
        try:
            with self.write_engine.begin() as conn:
                return int(
                    conn.execute(
                        insert(principals)
                        .values(
                            kind=kind.value,
                            name=name,
                            role=role.value,
                            subscriber_pk=subscriber_pk,
                            password_hash=password_hash,
                            ae_titles=" ".join(ae_titles) or None,
                            allowed_addresses=",".join(addresses) or None,
                            disabled=False,
                            failed_logins=0,
                        )
                        .returning(principals.c.pk)
                    ).scalar_one()
                )
        except IntegrityError:
            raise Conflict(f"a principal named '{name}' already exists") from None

    @staticmethod
    def _record(row: Any) -> PrincipalRecord:
        return PrincipalRecord(
            pk=int(row.pk),
            name=row.name,
            kind=Kind(row.kind),
            role=Role(row.role),
            subscriber_pk=row.subscriber_pk,
            subscriber=row.subscriber_name,
            password_hash=row.password_hash,
            ae_titles=tuple((row.ae_titles or "").split()),
            allowed_addresses=tuple(a for a in (row.allowed_addresses or "").split(",") if a),
            disabled=bool(row.disabled),
            failed_logins=int(row.failed_logins or 0),
            locked_until=_ts(row.locked_until),
        )

    def principal_get(self, name: str) -> PrincipalRecord | None:
        with self.engine.connect() as conn:  # on every request: a statement built once
            row = conn.execute(_PRINCIPAL_BY_NAME, {"b_name": name}).first()
        return self._record(row) if row else None

    def principal_by_pk(self, pk: int) -> PrincipalRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_PRINCIPAL_BY_PK, {"b_pk": pk}).first()
        return self._record(row) if row else None

    def devices_with_ae(self, ae_title: str) -> list[PrincipalRecord]:
        """Devices whose AE titles include ``ae_title`` (asked at every association: a
        statement built once, its LIKE pattern bound; the exact match is made here)."""
        with self.engine.connect() as conn:
            rows = conn.execute(_DEVICES_BY_AE, {"b_pattern": f"%{ae_title}%"}).all()
        return [r for r in (self._record(x) for x in rows) if ae_title in r.ae_titles]

    def principal_list(self, subscriber_pk: int | None) -> list[PrincipalRecord]:
        stmt = _PRINCIPAL.order_by(principals.c.name)
        if subscriber_pk is not None:
            stmt = stmt.where(principals.c.subscriber_pk == subscriber_pk)
        with self.engine.connect() as conn:
            return [self._record(r) for r in conn.execute(stmt)]

    def principal_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(principals)).scalar_one())

    def login_failed(self, pk: int, locked_until: float | None) -> None:
        with self.write_engine.begin() as conn:
            conn.execute(
                update(principals)
                .where(principals.c.pk == pk)
                .values(
                    failed_logins=principals.c.failed_logins + 1,
                    locked_until=self._dt(locked_until),
                )
            )

    def login_succeeded(self, pk: int) -> None:
        with self.write_engine.begin() as conn:
            conn.execute(
                update(principals)
                .where(principals.c.pk == pk)
                .values(failed_logins=0, locked_until=None)
            )

    def set_password(self, pk: int, password_hash: str) -> None:
        with self.write_engine.begin() as conn:
            conn.execute(
                update(principals)
                .where(principals.c.pk == pk)
                .values(password_hash=password_hash, failed_logins=0, locked_until=None)
            )

    # -- API keys and revoked tokens -------------------------------------------------------
    def api_key_add(
        self,
        principal_pk: int,
        key_id: str,
        key_hash: str,
        label: str | None,
        expires_at: float | None,
    ) -> None:
        with self.write_engine.begin() as conn:
            conn.execute(
                insert(api_keys).values(
                    principal_pk=principal_pk,
                    key_id=key_id,
                    key_hash=key_hash,
                    label=label,
                    expires_at=self._dt(expires_at),
                )
            )

    def api_key_get(self, key_id: str) -> tuple[int, str, float | None, float | None] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None:
            return None
        return int(row.principal_pk), row.key_hash, _ts(row.expires_at), _ts(row.revoked_at)

    def api_key_revoke(self, key_id: str) -> bool:
        with self.write_engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._dt(datetime.now(UTC).timestamp()))
            )
        return bool(result.rowcount)

    def token_revoke(self, jti: str, expires_at: float) -> None:
        with self.write_engine.begin() as conn:
            exists_ = conn.execute(
                select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == jti)
            ).first()
            if exists_ is None:
                conn.execute(
                    insert(revoked_tokens).values(jti=jti, expires_at=self._dt(expires_at))
                )

    def token_revoked(self, jti: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(_TOKEN_REVOKED, {"b_jti": jti}).first() is not None

    # -- grants ----------------------------------------------------------------------------
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
    ) -> int:
        with self.write_engine.begin() as conn:
            return int(
                conn.execute(
                    insert(grants)
                    .values(
                        owner_pk=owner_pk,
                        study_instance_uid=study,
                        series_instance_uid=series,
                        grantee_subscriber_pk=grantee_subscriber_pk,
                        grantee_principal_pk=grantee_principal_pk,
                        access=access,
                        expires_at=self._dt(expires_at),
                        created_by=created_by,
                    )
                    .returning(grants.c.pk)
                ).scalar_one()
            )

    def grant_remove(self, pk: int, owner_pk: int | None) -> bool:
        stmt = delete(grants).where(grants.c.pk == pk)
        if owner_pk is not None:
            stmt = stmt.where(grants.c.owner_pk == owner_pk)
        with self.write_engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)

    def grant_list(self, owner_pk: int | None) -> list[Grant]:
        owner = subscribers.alias("owner")
        gsub = subscribers.alias("gsub")
        stmt = (
            select(
                grants,
                owner.c.name.label("owner_name"),
                gsub.c.name.label("gsub_name"),
                principals.c.name.label("gprin_name"),
            )
            .select_from(
                grants.join(owner, owner.c.pk == grants.c.owner_pk)
                .outerjoin(gsub, gsub.c.pk == grants.c.grantee_subscriber_pk)
                .outerjoin(principals, principals.c.pk == grants.c.grantee_principal_pk)
            )
            .order_by(grants.c.pk)
        )
        if owner_pk is not None:
            stmt = stmt.where(grants.c.owner_pk == owner_pk)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            Grant(
                int(r.pk),
                r.owner_name,
                r.study_instance_uid,
                r.series_instance_uid,
                r.gsub_name,
                r.gprin_name,
                r.access,
                _ts(r.expires_at),
                r.created_by,
            )
            for r in rows
        ]

    # -- audit -----------------------------------------------------------------------------
    def audit_add(self, record: AuditRecord, when: float) -> None:
        with self.write_engine.begin() as conn:
            conn.execute(
                _AUDIT_INSERT,  # built once: one event per request must cost little
                {
                    **record.fields(),
                    "time": self._dt(when),
                    "detail": json.dumps(record.detail, default=str) if record.detail else None,
                },
            )

    def audit_query(
        self,
        principal: str | None = None,
        study: str | None = None,
        event: str | None = None,
        since: float | None = None,
        until: float | None = None,
        subscriber: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        conds = []
        if principal:
            conds.append(audit_events.c.principal == principal)
        if study:
            conds.append(audit_events.c.study_instance_uid == study)
        if event:
            conds.append(audit_events.c.event == event)
        if subscriber:
            conds.append(audit_events.c.subscriber == subscriber)
        if since is not None:
            conds.append(audit_events.c.time >= self._dt(since))
        if until is not None:
            conds.append(audit_events.c.time <= self._dt(until))
        stmt = select(audit_events).order_by(audit_events.c.pk.desc()).limit(limit)
        if conds:
            stmt = stmt.where(and_(*conds))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            {
                "time": datetime.fromtimestamp(_ts(r.time) or 0, UTC).isoformat(),
                "event": r.event,
                "action": r.action,
                "outcome": r.outcome,
                "principal": r.principal,
                "subscriber": r.subscriber,
                "source": r.source,
                "interface": r.interface,
                "study_instance_uid": r.study_instance_uid,
                "patient_id": r.patient_id,
                "detail": json.loads(r.detail) if r.detail else {},
            }
            for r in rows
        ]


_AUDIT_INSERT = insert(audit_events)
_PRINCIPAL = select(principals, subscribers.c.name.label("subscriber_name")).select_from(
    principals.outerjoin(subscribers, subscribers.c.pk == principals.c.subscriber_pk)
)
_PRINCIPAL_BY_NAME = _PRINCIPAL.where(principals.c.name == bindparam("b_name"))
_PRINCIPAL_BY_PK = _PRINCIPAL.where(principals.c.pk == bindparam("b_pk"))
_DEVICES_BY_AE = _PRINCIPAL.where(
    principals.c.kind == Kind.DEVICE.value, principals.c.ae_titles.like(bindparam("b_pattern"))
)
_TOKEN_REVOKED = select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == bindparam("b_jti"))
