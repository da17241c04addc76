"""SQL index adapter: implements :class:`dicomhub.core.ports.Index` on SQLAlchemy Core.

SQLite (WAL, ``synchronous=NORMAL``, writers take ``BEGIN IMMEDIATE``) is the embedded
default; PostgreSQL (psycopg 3) is the scale-out index.  Matching is translated into
SQL here so queries run on indexes (PS3.4 C.2.2.2, PS3.18 §8.3.4).
"""

from __future__ import annotations

import collections
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    LargeBinary,
    Select,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from dicomhub.core.access import SYSTEM, AccessScope
from dicomhub.core.attributes import ATTRIBUTES, BY_PATH, PATIENT_KEYS, Level
from dicomhub.core.model import (
    IndexedInstance,
    ParsedInstance,
    QueryRow,
    StagedFile,
    StoredInstance,
)
from dicomhub.core.ports import DuplicateInstance
from dicomhub.core.query import Constraint, Match, Query, like_pattern
from dicomhub.index import migrate
from dicomhub.index.tables import grants, instances, series, studies, subscribers

_TABLE_BY_LEVEL = {Level.STUDY: studies, Level.SERIES: series, Level.IMAGE: instances}
_STUDY_COLUMNS = [a for a in ATTRIBUTES if a.level == Level.STUDY]
_SERIES_COLUMNS = [a for a in ATTRIBUTES if a.level == Level.SERIES]
_INSTANCE_COLUMNS = [a for a in ATTRIBUTES if a.level == Level.IMAGE]

# Extra attributes returned with includefield=all, read from a representative instance
# (PS3.18 §10.6.3.3: all attributes of the level).
_STUDY_ALL_GROUPS = (0x0010,)
_STUDY_ALL_TAGS = {
    "00080020",
    "00080030",
    "00080050",
    "00080090",
    "00081030",
    "00081032",
    "00081060",
    "00200010",
    "0020000D",
    "00080201",
    "00321032",
    "00321060",
    "00101010",
    "00101020",
    "00101030",
    "00102160",
    "00104000",
}
_SERIES_ALL_TAGS = {
    "00080021",
    "00080031",
    "00080060",
    "0008103E",
    "00180015",
    "00200011",
    "0020000E",
    "00200060",
    "00185100",
    "00081070",
    "00081050",
    "00400244",
    "00400245",
    "00400275",
    "00080070",
    "00081090",
    "00181030",
    "00081010",
}
_INSTANCE_EXCLUDE_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def _study_cols() -> list[Any]:
    return [studies.c.pk.label("study_pk")] + [
        studies.c[a.column].label(a.path) for a in _STUDY_COLUMNS
    ]


def _series_cols() -> list[Any]:
    return [series.c.pk.label("series_pk")] + [
        series.c[a.column].label(a.path) for a in _SERIES_COLUMNS
    ]


def _instance_cols() -> list[Any]:
    return [instances.c.pk.label("instance_pk")] + [
        instances.c[a.column].label(a.path) for a in _INSTANCE_COLUMNS
    ]


def _clip(table: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Clip strings to their column length: real data exceeds VR maxima (PS3.5 6.2),
    and the file keeps the full value — only the index copy is shortened."""
    out = {}
    for name, value in values.items():
        if isinstance(value, str):
            length = getattr(table.c[name].type, "length", None)
            if length and len(value) > length:
                value = value[:length]
        out[name] = value
    return out


def compress_json(doc: dict[str, Any]) -> bytes:
    """The stored form of an instance's DICOM JSON: compact UTF-8, zlib level 6.

    orjson writes it several times faster than the standard library; a document it
    refuses (an integer beyond 64 bits) is written by ``json``."""
    try:
        text = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        text = json.dumps(doc, separators=(",", ":")).encode()
    return zlib.compress(text, 6)


class SqlIndex:
    """The archive index on SQLite or PostgreSQL."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        self._default_owner: int | None = None
        self._statements: dict[str, tuple[Any, Any]] = {}
        self._queries: dict[tuple[object, ...], Any] = {}  # statements with bind parameters
        # ingest statements compiled to the driver's SQL (see _run)
        self._plans: dict[tuple[int, tuple[str, ...]], tuple[str, Any] | None] = {}
        if self.dialect == "sqlite":
            self.engine = self._sqlite_engine(url, immediate=False)
            self.write_engine = self._sqlite_engine(url, immediate=True)
        else:
            kwargs: dict[str, Any] = {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": True}
            self.engine = create_engine(url, **kwargs)
            if schema:
                self._set_search_path(self.engine, schema)
            self.write_engine = self.engine

    @staticmethod
    def _set_search_path(engine: Engine, schema: str) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(f'SET search_path TO "{schema}"')
            cur.close()
            dbapi_conn.commit()

    @staticmethod
    def _sqlite_engine(url: str, immediate: bool) -> Engine:
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            poolclass=NullPool if ":memory:" in url else None,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA case_sensitive_like=ON")
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    # -- lifecycle -----------------------------------------------------------------------
    def upgrade(self) -> None:
        """Create or migrate the schema (Alembic)."""
        migrate.upgrade(self.write_engine, self.schema)

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()

    # -- writes --------------------------------------------------------------------------
    def default_owner(self) -> int:
        """pk of the subscriber ``default`` (created by migration 0003)."""
        if self._default_owner is None:
            with self.engine.connect() as conn:
                self._default_owner = int(
                    conn.execute(
                        select(subscribers.c.pk).where(subscribers.c.name == "default")
                    ).scalar_one()
                )
        return self._default_owner

    def find_instance(self, sop_instance_uid: str, owner_pk: int) -> StoredInstance | None:
        """Look up one instance by SOP Instance UID in an owner's namespace.

        Every C-STORE asks it before storing (is this a duplicate?): run on the driver's
        cursor (:meth:`_run`), ~4x less CPU than through SQLAlchemy's execution, and
        fewer interpreter-lock hand-offs on the association's critical path."""
        with self.engine.connect() as conn:
            rows = self._run(conn, _FIND_INSTANCE, {"b_sop": sop_instance_uid, "b_owner": owner_pk})
        return _stored(_StoredRow._make(rows[0])) if rows else None

    def find_instances(
        self, sop_instance_uids: Sequence[str], owner_pk: int
    ) -> dict[str, StoredInstance]:
        """The instances of an owner's namespace among ``sop_instance_uids``, by UID."""
        found: dict[str, StoredInstance] = {}
        uids = list(dict.fromkeys(sop_instance_uids))
        with self.engine.connect() as conn:
            for i in range(0, len(uids), 500):
                rows = conn.execute(
                    self._stored_select().where(
                        instances.c.sop_instance_uid.in_(uids[i : i + 500]),
                        instances.c.owner_pk == owner_pk,
                    )
                )
                for row in rows:
                    stored = _stored(row)
                    found[stored.sop_instance_uid] = stored
        return found

    def store_owner(self, study_instance_uid: str, access: AccessScope, default_pk: int) -> int:
        """The namespace a store by ``access`` goes to (docs/security.md).

        The caller's own subscriber, unless the caller does not have the study but holds a
        read-write grant on another subscriber's study with this UID: then the instance is
        added to that study.  Server admins without a subscriber store into ``default_pk``.
        """
        own = access.subscriber_pk if access.subscriber_pk is not None else default_pk
        if access.everything:
            return own
        with self.engine.connect() as conn:
            mine = conn.execute(_STUDY_PK, {"b_uid": study_instance_uid, "b_owner": own}).first()
            if mine is not None:
                return own
            granted = conn.execute(
                select(studies.c.owner_pk)
                .where(
                    studies.c.study_instance_uid == study_instance_uid,
                    self._grant_exists(access.for_write(), None),
                )
                .order_by(studies.c.pk)
            ).first()
        return int(granted[0]) if granted else own

    def _now(self) -> datetime:
        now = datetime.now(UTC)
        return now.replace(tzinfo=None) if self.dialect == "sqlite" else now

    def _grant_exists(
        self, access: AccessScope, series_col: Any, bind: bool = False
    ) -> ColumnElement[bool]:
        """EXISTS a live grant of the current study (or of ``series_col``) to ``access``.

        With ``bind`` the scope's subscriber, principal and the time are bind parameters
        (``b_sub``, ``b_principal``, ``b_now``: see :meth:`_scope_params`), so the statement
        can be built once and reused."""
        sub: Any = bindparam("b_sub") if bind else access.subscriber_pk
        grantee = [grants.c.grantee_subscriber_pk == sub]
        if access.principal_pk is not None:
            who: Any = bindparam("b_principal") if bind else access.principal_pk
            grantee.append(grants.c.grantee_principal_pk == who)
        now: Any = bindparam("b_now") if bind else self._now()
        conds: list[ColumnElement[bool]] = [
            grants.c.owner_pk == studies.c.owner_pk,
            grants.c.study_instance_uid == studies.c.study_instance_uid,
            or_(*grantee),
            or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
        ]
        if access.write:
            conds.append(grants.c.access == "write")
        if series_col is not None:
            conds.append(
                or_(
                    grants.c.series_instance_uid.is_(None),
                    grants.c.series_instance_uid == series_col,
                )
            )
        return exists(select(grants.c.pk).where(*conds))

    def _visible(
        self, access: AccessScope, level: Level, bind: bool = False
    ) -> ColumnElement[bool]:
        """Rows of ``studies`` (and ``series`` below study level) the scope may see
        (``bind``: as in :meth:`_grant_exists`)."""
        if access.everything:
            return true()
        own = studies.c.owner_pk == (bindparam("b_sub") if bind else access.subscriber_pk)
        series_col = series.c.series_instance_uid if level != Level.STUDY else None
        return or_(own, self._grant_exists(access, series_col, bind))

    def _scope_params(self, access: AccessScope) -> dict[str, Any]:
        """The bind parameters of a statement built with ``bind=True``."""
        return {
            "b_sub": access.subscriber_pk,
            "b_principal": access.principal_pk,
            "b_now": self._now(),
        }

    def _insert_or_get(
        self, conn: Connection, table: Any, uid_col: str, uid: str, values: dict[str, Any]
    ) -> tuple[int, bool]:
        """pk of the (uid, owner) row of ``table``, inserting it from ``values`` if absent;
        whether it was created.  Statements are built once per table (no per-call SQL
        construction: that is most of the cost of a small statement in SQLAlchemy)."""
        find, insert_stmt = self._upsert_statements(table, uid_col)
        key = {"b_uid": uid, "b_owner": values["owner_pk"]}
        found = self._run(conn, find, key)
        if found:
            return int(found[0][0]), False
        created = self._run(conn, insert_stmt, _clip(table, values))
        if created:
            return int(created[0][0]), True
        return int(self._run(conn, find, key)[0][0]), False

    def _upsert_statements(self, table: Any, uid_col: str) -> tuple[Any, Any]:
        cached = self._statements.get(table.name)
        if cached is None:
            insert_fn: Any
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as insert_fn
            else:
                from sqlalchemy.dialects.sqlite import insert as insert_fn
            find = select(table.c.pk).where(
                table.c[uid_col] == bindparam("b_uid"), table.c.owner_pk == bindparam("b_owner")
            )
            # the columns come from the parameters: unset ones keep their defaults
            insert_stmt = insert_fn(table).on_conflict_do_nothing().returning(table.c.pk)
            cached = self._statements[table.name] = (find, insert_stmt)
        return cached

    def _run(
        self, conn: Connection, stmt: Any, params: dict[str, Any] | list[dict[str, Any]]
    ) -> list[Any]:
        """Execute one of the ingest statements on the driver's cursor of ``conn`` (inside
        its transaction); its rows (if it returns any).

        The statement is compiled once per shape of its parameters and then run as plain
        SQL: SQLAlchemy's execution machinery costs more than SQLite's own work for these
        small statements, and an instance takes seven of them.  Statements whose
        parameters need SQLAlchemy's type conversion are executed by SQLAlchemy.
        """
        rows: list[dict[str, Any]] = params if isinstance(params, list) else [params]
        many = isinstance(params, list)
        first = rows[0]
        key = (id(stmt), tuple(first))
        if key not in self._plans:
            compiled = stmt.compile(dialect=conn.dialect, column_keys=list(first))
            # what SQLAlchemy would convert; bytes for a LargeBinary go to the driver as
            # they are (its conversion only wraps them for the driver)
            converted = {
                n
                for n in compiled._bind_processors
                if not isinstance(compiled.binds[n].type, LargeBinary)
            }
            if "POSTCOMPILE" in compiled.string or any(n in converted for n in compiled.binds):
                plan = None
            else:
                plan = (compiled.string, compiled.positiontup)
            self._plans[key] = plan
        plan = self._plans[key]
        if plan is None:
            result = conn.execute(stmt, params)
            return list(result) if result.returns_rows else []
        sql, order = plan
        args: list[Any] = [tuple(r[n] for n in order) for r in rows] if order else list(rows)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if many and len(args) > 1:
                cursor.executemany(sql, args)
                return []
            cursor.execute(sql, args[0])
            return list(cursor.fetchall()) if cursor.description else []
        except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy would raise it
            raise DBAPIError.instance(
                sql, params, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from exc
        finally:
            cursor.close()

    def _write_rows(
        self, conn: Connection, items: Sequence[IndexedInstance], documents: Sequence[bytes]
    ) -> None:
        """Insert instances with their studies and series: one study/series lookup, one
        multi-row instance insert and one counter update per study and series touched."""
        by_study: dict[tuple[int, str], list[IndexedInstance]] = {}
        document = {id(item): doc for item, doc in zip(items, documents, strict=True)}
        for item in items:
            key = (item.owner_pk, item.parsed.study_instance_uid)
            by_study.setdefault(key, []).append(item)
        for (owner, study_uid), group in by_study.items():
            cols = group[0].parsed.columns
            study_values = {a.column: cols.get(a.column) for a in _STUDY_COLUMNS if not a.computed}
            for pn in ("patient_name", "referring_physician_name"):
                study_values[pn + "_norm"] = cols.get(pn + "_norm")
                study_values[pn + "_words"] = cols.get(pn + "_words")
            study_values.update(
                num_series=0, num_instances=0, modalities_in_study=None, owner_pk=owner
            )
            study_pk, _ = self._insert_or_get(
                conn, studies, "study_instance_uid", study_uid, study_values
            )
            # lock the study row so counters and ModalitiesInStudy stay consistent (PostgreSQL)
            (study_row,) = self._run(conn, _LOCK_STUDY, {"b_pk": study_pk})
            series_pks: dict[str, int] = {}
            series_added: dict[int, int] = {}
            new_series = 0
            rows: list[dict[str, Any]] = []
            modalities = study_row[0]
            present = modalities.split("\\") if modalities else []
            for item in group:
                parsed, cols = item.parsed, item.parsed.columns
                series_uid = parsed.series_instance_uid
                if series_uid not in series_pks:
                    series_values = {
                        a.column: cols.get(a.column) for a in _SERIES_COLUMNS if not a.computed
                    }
                    series_values.update(
                        owner_pk=owner,
                        study_pk=study_pk,
                        num_instances=0,
                        timezone_offset_from_utc=cols.get("timezone_offset_from_utc"),
                    )
                    series_pks[series_uid], created = self._insert_or_get(
                        conn, series, "series_instance_uid", series_uid, series_values
                    )
                    new_series += 1 if created else 0
                series_pk = series_pks[series_uid]
                series_added[series_pk] = series_added.get(series_pk, 0) + 1
                values = {a.column: cols.get(a.column) for a in _INSTANCE_COLUMNS if not a.computed}
                values.update(
                    owner_pk=owner,
                    series_pk=series_pk,
                    study_pk=study_pk,
                    transfer_syntax_uid=parsed.transfer_syntax_uid,
                    storage_key=item.storage_key,
                    size_bytes=item.staged.size,
                    sha256=item.staged.sha256,
                    pixel_data_offset=parsed.pixel_data_offset,
                    pixel_digest=parsed.pixel_digest,
                    original_transfer_syntax_uid=parsed.original_transfer_syntax_uid
                    or parsed.transfer_syntax_uid,
                    original_planar_configuration=parsed.original_planar_configuration,
                    metadata_json=document[id(item)],
                )
                rows.append(_clip(instances, values))
                modality = cols.get("modality")
                if modality and modality not in present:
                    present = sorted([*present, modality])
            self._run(conn, _INSERT_INSTANCE, rows)  # executemany
            for series_pk, n in series_added.items():
                self._run(conn, _COUNT_SERIES, {"b_pk": series_pk, "b_n": n})
            joined = "\\".join(present) if present else None
            self._run(
                conn,
                _COUNT_STUDY,
                {
                    "b_pk": study_pk,
                    "b_n": len(group),
                    "b_series": new_series,
                    "b_modalities": joined[:256] if joined else None,
                },
            )

    def add_instance(
        self,
        parsed: ParsedInstance,
        staged: StagedFile,
        storage_key: str,
        owner_pk: int,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        """Insert one instance with its study and series, in one transaction."""
        self.add_instances([IndexedInstance(parsed, staged, storage_key, owner_pk)], before_write)

    def add_instances(
        self,
        items: Sequence[IndexedInstance],
        before_write: Callable[[], None] | None = None,
    ) -> None:
        """Insert instances (with their studies and series) in one transaction: all or none.

        ``before_write`` runs after the stored form of each instance's metadata is
        prepared and before the transaction begins (a store waits there for its blobs to
        be durable): SQLite's write lock is never held while a disk flushes, which made
        every other writer — another association, another worker process — sleep in
        SQLite's busy handler.  Its exception propagates, nothing written.  Raises
        :class:`DuplicateInstance` when one of the SOP Instance UIDs is already indexed
        in its owner's namespace (nothing of the batch is then written).
        """
        if not items:
            return
        documents = [compress_json(item.parsed.metadata) for item in items]
        if before_write is not None:
            before_write()
        try:
            with self.write_engine.begin() as conn:
                self._write_rows(conn, items, documents)
        except IntegrityError as exc:
            for item in items:
                if self.find_instance(item.parsed.sop_instance_uid, item.owner_pk) is not None:
                    raise DuplicateInstance(item.parsed.sop_instance_uid) from exc
            raise

    def replace_instance(
        self, parsed: ParsedInstance, staged: StagedFile, storage_key: str, owner_pk: int
    ) -> StoredInstance:
        """Replace an instance row (duplicate policy 'overwrite'); return the old one."""
        where = and_(
            instances.c.sop_instance_uid == parsed.sop_instance_uid,
            instances.c.owner_pk == owner_pk,
        )
        document = compress_json(parsed.metadata)
        with self.write_engine.begin() as conn:
            row = conn.execute(self._stored_select().where(where)).first()
            if row is None:
                raise LookupError(parsed.sop_instance_uid)
            old = _stored(row)
            self._delete_in(conn, where)
            item = IndexedInstance(parsed, staged, storage_key, owner_pk)
            self._write_rows(conn, [item], [document])
        return old

    def record_pixel_digests(self, digests: Sequence[tuple[StoredInstance, str]]) -> None:
        """Set ``pixel_digest`` where it is still empty and the row still points at the
        same stored object (its storage key)."""
        if not digests:
            return
        stmt = (
            update(instances)
            .where(
                instances.c.owner_pk == bindparam("o"),
                instances.c.sop_instance_uid == bindparam("u"),
                instances.c.storage_key == bindparam("k"),
                instances.c.pixel_digest.is_(None),
            )
            .values(pixel_digest=bindparam("d"))
        )
        rows = [
            {"o": i.owner_pk, "u": i.sop_instance_uid, "k": i.storage_key, "d": d}
            for i, d in digests
        ]
        with self.write_engine.begin() as conn:
            conn.execute(stmt, rows)

    # -- reads ---------------------------------------------------------------------------
    @staticmethod
    def _stored_select() -> Select[Any]:
        return (
            select(
                studies.c.study_instance_uid,
                series.c.series_instance_uid,
                instances.c.sop_instance_uid,
                instances.c.sop_class_uid,
                instances.c.transfer_syntax_uid,
                instances.c.storage_key,
                instances.c.size_bytes,
                instances.c.sha256,
                instances.c.number_of_frames,
                instances.c.pixel_data_offset,
                instances.c.owner_pk,
                instances.c.pixel_digest,
                instances.c.original_transfer_syntax_uid,
                instances.c.original_planar_configuration,
            )
            .select_from(instances)
            .join(series, series.c.pk == instances.c.series_pk)
            .join(studies, studies.c.pk == instances.c.study_pk)
        )

    def _resource_filter(
        self,
        study: str,
        series_uid: str | None,
        instance: str | None,
        access: AccessScope,
        bind: bool = False,
    ) -> ColumnElement[bool]:
        """A study, series or instance the scope may see; with ``bind`` the UIDs are the
        bind parameters ``b_study``, ``b_series``, ``b_sop`` (and the scope's as in
        :meth:`_grant_exists`), so the statement can be built once per shape."""

        def uid(name: str, value: str) -> Any:
            return bindparam(name) if bind else value

        conds = [
            studies.c.study_instance_uid == uid("b_study", study),
            self._visible(access, Level.SERIES, bind),
        ]
        if series_uid is not None:
            conds.append(series.c.series_instance_uid == uid("b_series", series_uid))
        if instance is not None:
            conds.append(instances.c.sop_instance_uid == uid("b_sop", instance))
        return and_(*conds)

    def instances(
        self,
        access: AccessScope,
        study: str,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """Instances under a study/series/instance the scope may see, in retrieval order.

        If the same UIDs exist in several visible namespaces (own and granted), the
        caller's own copy wins.
        """
        # built once per shape (which UIDs, which kind of scope); the values are bound
        shape = (
            "instances",
            series_uid is not None,
            instance_uid is not None,
            access.everything,
            access.principal_pk is not None,
            access.write,
        )
        stmt = self._queries.get(shape)
        if stmt is None:
            stmt = self._queries[shape] = (
                self._stored_select()
                .where(self._resource_filter(study, series_uid, instance_uid, access, bind=True))
                .order_by(instances.c.series_pk, instances.c.instance_number, instances.c.pk)
            )
        params = {"b_study": study, "b_series": series_uid, "b_sop": instance_uid}
        if not access.everything:
            params.update(self._scope_params(access))
        with self.engine.connect() as conn:
            found = [_stored(r) for r in conn.execute(stmt, params)]
        return _one_namespace(found, access)

    def metadata(
        self,
        access: AccessScope,
        study: str,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> Iterator[bytes]:
        """Each visible instance's DICOM JSON, decompressed, in retrieval order."""
        stmt = (
            select(instances.c.metadata_json, instances.c.owner_pk)
            .select_from(instances)
            .join(series, series.c.pk == instances.c.series_pk)
            .join(studies, studies.c.pk == instances.c.study_pk)
            .where(self._resource_filter(study, series_uid, instance_uid, access))
            .order_by(instances.c.series_pk, instances.c.instance_number, instances.c.pk)
        )
        with self.engine.connect() as conn:
            rows = [(r[0], r[1]) for r in conn.execute(stmt)]
        owners = {owner for _, owner in rows}
        if len(owners) > 1:
            keep = access.subscriber_pk if access.subscriber_pk in owners else min(owners)
            rows = [r for r in rows if r[1] == keep]
        for blob, _ in rows:
            yield zlib.decompress(blob)

    def count_instances(self, owner_pk: int | None = None) -> int:
        """Number of indexed instances (of one owner, or all)."""
        stmt = select(func.count()).select_from(instances)
        if owner_pk is not None:
            stmt = stmt.where(instances.c.owner_pk == owner_pk)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    # -- query ---------------------------------------------------------------------------
    def _condition(self, c: Constraint, access: AccessScope) -> ColumnElement[bool]:
        attr = c.attribute
        if attr.path == "ModalitiesInStudy":
            inner = Constraint(_MODALITY, c.kind, c.values)
            return exists(
                select(series.c.pk).where(
                    series.c.study_pk == studies.c.pk,
                    self._condition(inner, access),
                    self._visible(access, Level.SERIES),
                )
            )
        table = _TABLE_BY_LEVEL[attr.level]
        if attr.vr == "PN":
            if c.kind == Match.FUZZY:
                words_col = table.c[attr.column + "_words"]
                return and_(
                    *[
                        words_col.like("% " + like_pattern(word) + "%", escape="\\")
                        for word in c.values[0].replace("^", " ").split()
                    ]
                )
            col = table.c[attr.column + "_norm"]
        else:
            col = table.c[attr.column]
        if c.kind == Match.SINGLE:
            if attr.vr == "IS":
                return col == int(c.values[0])
            return col == c.values[0]
        if c.kind == Match.LIST:
            return col.in_(c.values)
        if c.kind == Match.WILDCARD:
            return col.like(like_pattern(c.values[0]), escape="\\")
        if c.kind == Match.RANGE:
            low, high = c.values
            conds = []
            if low:
                conds.append(col >= low)
            if high:
                # inclusive upper bound: 1200 includes 120059.99
                conds.append(col <= (high + "~" if attr.vr == "TM" else high))
            return and_(*conds)
        raise ValueError(c.kind)

    def search(self, query: Query, scope: dict[str, str], access: AccessScope) -> list[QueryRow]:
        """Run a QIDO-RS/C-FIND query at its level (PS3.4 C.4.1.3.1.1).

        Only what ``access`` may see is matched, counted and paged: the visibility
        condition is part of the SQL, and study-level counts and ModalitiesInStudy are
        computed over the visible series only.
        """
        level = query.level
        rep: Any
        if level == Level.PATIENT:
            return self._search_patients(query, access)
        if level == Level.STUDY:
            stmt = select(*_study_cols()).select_from(studies).order_by(studies.c.pk)
            rep = select(func.min(instances.c.pk)).where(instances.c.study_pk == studies.c.pk)
        elif level == Level.SERIES:
            stmt = (
                select(*_series_cols(), *_study_cols())
                .select_from(series)
                .join(studies, studies.c.pk == series.c.study_pk)
                .order_by(series.c.pk)
            )
            rep = select(func.min(instances.c.pk)).where(instances.c.series_pk == series.c.pk)
        else:
            stmt = (
                select(*_instance_cols(), *_series_cols(), *_study_cols())
                .select_from(instances)
                .join(series, series.c.pk == instances.c.series_pk)
                .join(studies, studies.c.pk == instances.c.study_pk)
                .order_by(instances.c.series_pk, instances.c.instance_number, instances.c.pk)
            )
            rep = None
        if "StudyInstanceUID" in scope:
            stmt = stmt.where(studies.c.study_instance_uid == scope["StudyInstanceUID"])
        if "SeriesInstanceUID" in scope:
            stmt = stmt.where(series.c.series_instance_uid == scope["SeriesInstanceUID"])
        conds = [self._condition(c, access) for c in query.constraints]
        conds.append(self._visible(access, Level.STUDY if level == Level.STUDY else Level.SERIES))
        stmt = stmt.where(and_(*conds))
        if query.offset:
            stmt = stmt.offset(query.offset)
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        want_extra = bool(query.extra_includes) or query.include_all
        if want_extra:
            stmt = stmt.add_columns(
                (rep.scalar_subquery() if rep is not None else instances.c.pk).label("rep_pk")
            )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
            extras: dict[int, dict[str, Any]] = {}
            if want_extra:
                pks = [r["rep_pk"] for r in rows if r.get("rep_pk") is not None]
                for i in range(0, len(pks), 500):
                    chunk = pks[i : i + 500]
                    for pk, blob in conn.execute(
                        select(instances.c.pk, instances.c.metadata_json).where(
                            instances.c.pk.in_(chunk)
                        )
                    ):
                        extras[pk] = json.loads(zlib.decompress(blob))
            if level == Level.STUDY and not access.everything and rows:
                self._visible_counts(conn, rows, access)
        result: list[QueryRow] = []
        wanted_tags = {_keyword_to_tag(k) for k in query.extra_includes}
        for r in rows:
            extra: dict[str, Any] = {}
            if want_extra and r.get("rep_pk") in extras:
                doc = extras[r["rep_pk"]]
                extra = {
                    tag: el
                    for tag, el in doc.items()
                    if tag in wanted_tags or (query.include_all and _in_all(level, tag, el))
                }
            result.append(QueryRow(values=r, extra=extra))
        return result

    def _visible_counts(
        self, conn: Connection, rows: list[dict[str, Any]], access: AccessScope
    ) -> None:
        """Recompute study counts and modalities over the series ``access`` may see."""
        pks = [r["study_pk"] for r in rows]
        stats: dict[int, list[Any]] = {pk: [0, 0, set()] for pk in pks}
        stmt = (
            select(series.c.study_pk, series.c.modality, series.c.num_instances)
            .select_from(series)
            .join(studies, studies.c.pk == series.c.study_pk)
            .where(series.c.study_pk.in_(pks), self._visible(access, Level.SERIES))
        )
        for study_pk, modality, n in conn.execute(stmt):
            entry = stats[study_pk]
            entry[0] += 1
            entry[1] += n
            if modality:
                entry[2].add(modality)
        for r in rows:
            n_series, n_instances, modalities = stats[r["study_pk"]]
            r["NumberOfStudyRelatedSeries"] = n_series
            r["NumberOfStudyRelatedInstances"] = n_instances
            r["ModalitiesInStudy"] = "\\".join(sorted(modalities)) or None

    def _search_patients(self, query: Query, access: AccessScope) -> list[QueryRow]:
        """Patient level (Patient Root C-FIND): distinct patients of the visible studies,
        with counts over the visible series."""
        keys = [BY_PATH[k] for k in PATIENT_KEYS]
        # PatientID is the unique key of the patient level (PS3.4 C.6.1.1.2): one answer per
        # PatientID, the other attributes taken from its studies
        pid = studies.c.patient_id
        others = [studies.c[a.column] for a in keys if a.path != "PatientID"]
        stmt = (
            select(
                pid.label("PatientID"),
                *[
                    func.min(c).label(a.path)
                    for c, a in zip(others, [a for a in keys if a.path != "PatientID"], strict=True)
                ],
                func.count(func.distinct(studies.c.pk)).label("NumberOfPatientRelatedStudies"),
                func.count(series.c.pk).label("NumberOfPatientRelatedSeries"),
                func.sum(series.c.num_instances).label("NumberOfPatientRelatedInstances"),
            )
            .select_from(studies)
            .join(series, series.c.study_pk == studies.c.pk)
            .group_by(pid)
            .order_by(func.min(studies.c.pk))
        )
        conds = [self._condition(c, access) for c in query.constraints]
        conds.append(self._visible(access, Level.SERIES))
        if conds:
            stmt = stmt.where(and_(*conds))
        if query.offset:
            stmt = stmt.offset(query.offset)
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        with self.engine.connect() as conn:
            return [QueryRow(values=dict(r._mapping)) for r in conn.execute(stmt)]

    def select_instances(
        self, level: Level, keys: dict[str, list[str]], access: AccessScope
    ) -> list[StoredInstance]:
        """Instances named by the unique keys of a C-GET/C-MOVE identifier (PS3.4 C.4.2.2.1).

        ``keys`` maps PatientID, StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID to
        lists of values; every key given must match.
        """
        columns = {
            "PatientID": studies.c.patient_id,
            "StudyInstanceUID": studies.c.study_instance_uid,
            "SeriesInstanceUID": series.c.series_instance_uid,
            "SOPInstanceUID": instances.c.sop_instance_uid,
        }
        stmt = self._stored_select().order_by(
            instances.c.study_pk,
            instances.c.series_pk,
            instances.c.instance_number,
            instances.c.pk,
        )
        for key, values in keys.items():
            if values:
                stmt = stmt.where(columns[key].in_(values))
        stmt = stmt.where(self._visible(access, Level.SERIES))
        with self.engine.connect() as conn:
            return [_stored(r) for r in conn.execute(stmt)]

    # -- delete --------------------------------------------------------------------------
    def _delete_in(self, conn: Connection, where: ColumnElement[bool]) -> list[str]:
        rows = conn.execute(
            select(
                instances.c.pk, instances.c.storage_key, instances.c.series_pk, instances.c.study_pk
            )
            .select_from(instances)
            .join(series, series.c.pk == instances.c.series_pk)
            .join(studies, studies.c.pk == instances.c.study_pk)
            .where(where)
        ).all()
        if not rows:
            return []
        pks = [r.pk for r in rows]
        for i in range(0, len(pks), 500):
            conn.execute(delete(instances).where(instances.c.pk.in_(pks[i : i + 500])))
        series_pks = {r.series_pk for r in rows}
        study_pks = {r.study_pk for r in rows}
        for spk in series_pks:
            remaining = conn.execute(
                select(func.count()).where(instances.c.series_pk == spk)
            ).scalar_one()
            if remaining:
                conn.execute(
                    update(series).where(series.c.pk == spk).values(num_instances=remaining)
                )
            else:
                conn.execute(delete(series).where(series.c.pk == spk))
        for stpk in study_pks:
            n_inst = conn.execute(
                select(func.count()).where(instances.c.study_pk == stpk)
            ).scalar_one()
            if not n_inst:
                conn.execute(delete(series).where(series.c.study_pk == stpk))
                conn.execute(delete(studies).where(studies.c.pk == stpk))
                continue
            mods = sorted(
                {
                    m
                    for (m,) in conn.execute(
                        select(series.c.modality).where(series.c.study_pk == stpk)
                    )
                    if m
                }
            )
            n_series = conn.execute(
                select(func.count()).where(series.c.study_pk == stpk)
            ).scalar_one()
            conn.execute(
                update(studies)
                .where(studies.c.pk == stpk)
                .values(
                    num_instances=n_inst,
                    num_series=n_series,
                    modalities_in_study="\\".join(mods) or None,
                    updated_at=func.now(),
                )
            )
        return [r.storage_key for r in rows]

    def delete(
        self,
        access: AccessScope,
        study: str,
        series_uid: str | None = None,
        instance_uid: str | None = None,
    ) -> list[str]:
        """Delete the rows under a resource; return the storage keys of removed instances.

        Only the owner (or a server admin) deletes; grants never allow deletion.
        """
        where = self._resource_filter(study, series_uid, instance_uid, SYSTEM)
        if not access.everything:
            where = and_(where, studies.c.owner_pk == access.subscriber_pk)
        with self.write_engine.begin() as conn:
            return self._delete_in(conn, where)


_MODALITY = next(a for a in ATTRIBUTES if a.path == "Modality")


def _keyword_to_tag(name: str) -> str:
    from pydicom.datadict import tag_for_keyword

    if len(name) == 8 and all(ch in "0123456789abcdefABCDEF" for ch in name):
        return name.upper()
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else name


def _in_all(level: Level, tag: str, element: dict[str, Any]) -> bool:
    if level == Level.STUDY:
        return int(tag[:4], 16) in _STUDY_ALL_GROUPS or tag in _STUDY_ALL_TAGS
    if level == Level.SERIES:
        return tag in _SERIES_ALL_TAGS
    return element.get("vr") not in _INSTANCE_EXCLUDE_VRS and "BulkDataURI" not in element


def _one_namespace(found: list[StoredInstance], access: AccessScope) -> list[StoredInstance]:
    """Keep one owner's copy when the same UIDs are visible in several namespaces."""
    owners = {i.owner_pk for i in found}
    if len(owners) <= 1:
        return found
    keep = access.subscriber_pk if access.subscriber_pk in owners else min(owners)
    return [i for i in found if i.owner_pk == keep]


def _stored(row: Any) -> StoredInstance:
    return StoredInstance(
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        storage_key=row.storage_key,
        size=int(row.size_bytes),
        sha256=row.sha256,
        number_of_frames=row.number_of_frames,
        pixel_data_offset=row.pixel_data_offset,
        owner_pk=row.owner_pk,
        pixel_digest=row.pixel_digest,
        original_transfer_syntax_uid=row.original_transfer_syntax_uid,
        original_planar_configuration=row.original_planar_configuration,
    )


# Statements of the store path, built once (see SqlIndex._insert_or_get).
_FIND_INSTANCE = SqlIndex._stored_select().where(
    instances.c.sop_instance_uid == bindparam("b_sop"),
    instances.c.owner_pk == bindparam("b_owner"),
)
#: a row of _FIND_INSTANCE as the driver returns it (a tuple), by column name
_StoredRow = collections.namedtuple(  # type: ignore[misc]
    "_StoredRow", [str(c.key) for c in _FIND_INSTANCE.selected_columns]
)
_STUDY_PK = select(studies.c.pk).where(
    studies.c.owner_pk == bindparam("b_owner"),
    studies.c.study_instance_uid == bindparam("b_uid"),
)
# lock the study row so counters and ModalitiesInStudy stay consistent (PostgreSQL)
_INSERT_INSTANCE = instances.insert()
_LOCK_STUDY = (
    select(studies.c.modalities_in_study).where(studies.c.pk == bindparam("b_pk")).with_for_update()
)
_COUNT_SERIES = (
    update(series)
    .where(series.c.pk == bindparam("b_pk"))
    .values(num_instances=series.c.num_instances + bindparam("b_n"))
)
_COUNT_STUDY = (
    update(studies)
    .where(studies.c.pk == bindparam("b_pk"))
    .values(
        num_instances=studies.c.num_instances + bindparam("b_n"),
        num_series=studies.c.num_series + bindparam("b_series"),
        modalities_in_study=bindparam("b_modalities"),
        updated_at=func.now(),
    )
)
