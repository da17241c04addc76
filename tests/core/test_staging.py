"""Names of staged files (dicomhub.core.staging): unique in a process and across
processes forked from it.  What came in: 10,000 names asked for in one process, and
names asked for in a forked child after the parent had named files."""

from __future__ import annotations

import os

from dicomhub.core.staging import staging_name


def test_names_are_unique_in_the_staging_directory() -> None:
    names = [staging_name("/data/staging") for _ in range(10_000)]
    assert len(set(names)) == len(names)
    assert all(n.startswith("/data/staging/") and n.endswith(".part") for n in names)
    assert all("/" not in n[len("/data/staging/") :] for n in names)


def test_a_forked_child_names_files_of_its_own() -> None:
    parent = {staging_name("/s") for _ in range(100)}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a worker forked by the zygote
        try:
            os.write(write, "\n".join(staging_name("/s") for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        child = set(fh.read().split("\n"))
    os.waitpid(pid, 0)
    assert len(child) == 100
    assert not child & parent
    prefix = next(iter(child)).rsplit("-", 1)[0]
    assert all(n.startswith(prefix) for n in child)
    assert not any(n.startswith(prefix) for n in parent)
