"""Remote node registry on the index database (implements ``core.ports.NodeRegistry``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dicomhub.core.errors import Conflict
from dicomhub.core.model import RemoteNode
from dicomhub.index.tables import remote_nodes


def _node(row: Any) -> RemoteNode:
    return RemoteNode(
        name=row.name,
        ae_title=row.ae_title,
        host=row.host,
        port=int(row.port),
        description=row.description or "",
    )


class SqlNodeRegistry:
    """Remote DICOM nodes in the ``remote_nodes`` table."""

    def __init__(self, engine: Engine, write_engine: Engine | None = None) -> None:
        self.engine = engine
        self.write_engine = write_engine or engine

    def add(self, node: RemoteNode) -> None:
        """Insert a node; Conflict if its name is taken."""
        try:
            with self.write_engine.begin() as conn:
                conn.execute(
                    insert(remote_nodes).values(
                        name=node.name,
                        ae_title=node.ae_title,
                        host=node.host,
                        port=node.port,
                        description=node.description or None,
                    )
                )
        except IntegrityError:
            raise Conflict(f"a node named '{node.name}' already exists") from None

    def get(self, name: str) -> RemoteNode | None:
        """A node by name."""
        with self.engine.connect() as conn:
            row = conn.execute(select(remote_nodes).where(remote_nodes.c.name == name)).first()
        return _node(row) if row else None

    def by_ae_title(self, ae_title: str) -> RemoteNode | None:
        """The first node (by name) with this AE title."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(remote_nodes)
                .where(remote_nodes.c.ae_title == ae_title)
                .order_by(remote_nodes.c.name)
            ).first()
        return _node(row) if row else None

    def list(self) -> list[RemoteNode]:
        """All nodes by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(remote_nodes).order_by(remote_nodes.c.name)).all()
        return [_node(r) for r in rows]

    def remove(self, name: str) -> bool:
        """Delete a node by name."""
        with self.write_engine.begin() as conn:
            result = conn.execute(delete(remote_nodes).where(remote_nodes.c.name == name))
        return bool(result.rowcount)
