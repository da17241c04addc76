"""Names of staged files: where an edge writes an incoming object before the store
service takes it (DESIGN §2: staged, made durable, renamed into place, then indexed).

A name is unique to the process (its ID and a random prefix, renewed in a forked
child) and then a counter, so that naming a file costs neither a system call nor a
UUID on an edge's critical path; the edge creates the file with ``O_EXCL``, so a
collision could never overwrite anything.
"""

from __future__ import annotations

import itertools
import os
import secrets

#: (process ID, its prefix, its counter)
_names: tuple[int, str, itertools.count[int]] = (0, "", itertools.count())


def staging_name(staging_dir: str) -> str:
    """A new path ``<staging_dir>/<pid>-<random>-<n>.part`` (not created here)."""
    global _names
    pid, prefix, counter = _names
    if pid != os.getpid():
        pid = os.getpid()
        _names = pid, prefix, counter = pid, f"{pid:x}-{secrets.token_hex(6)}-", itertools.count()
    return f"{staging_dir}/{prefix}{next(counter)}.part"
