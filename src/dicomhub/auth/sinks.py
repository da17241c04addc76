"""Extra audit sinks: JSON lines and RFC 5424 syslog (UDP)."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from dicomhub.core.access import AuditRecord


def _doc(record: AuditRecord, when: float) -> dict[str, object]:
    return {"time": datetime.fromtimestamp(when, UTC).isoformat(), **record.fields()}


class JsonLinesSink:
    """Appends one JSON object per event to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: AuditRecord, when: float) -> None:
        line = json.dumps(_doc(record, when), default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)


class SyslogSink:
    """RFC 5424 messages over UDP (facility authpriv=10, severity notice/warning)."""

    def __init__(self, address: str, hostname: str = "dicomhub") -> None:
        host, _, port = address.rpartition(":")
        self.address = (host or "127.0.0.1", int(port))
        self.hostname = hostname
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def __call__(self, record: AuditRecord, when: float) -> None:
        severity = 5 if record.outcome == 0 else 4
        pri = 10 * 8 + severity
        ts = datetime.fromtimestamp(when, UTC).isoformat()
        msg = json.dumps(_doc(record, when), default=str)
        line = f"<{pri}>1 {ts} {self.hostname} dicomhub - {record.event} - {msg}"
        self.sock.sendto(line.encode(), self.address)
