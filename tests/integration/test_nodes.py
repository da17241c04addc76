"""The remote node registry over REST (/api/nodes) and the CLI (`dicomhub node …`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LiveServer, http


def api(srv: LiveServer) -> str:
    return srv.url.removesuffix("/dicom-web") + "/api/nodes"


def test_add_list_get_remove(server: LiveServer) -> None:
    node = {
        "name": "ct-1",
        "ae_title": "CT_SCANNER",
        "host": "127.0.0.1",
        "port": 104,
        "description": "CT in room 3",
    }
    r = http.post(api(server), json=node, timeout=10)
    assert r.status_code == 201 and r.json() == node
    assert http.get(api(server), timeout=10).json() == [node]
    assert http.get(api(server) + "/ct-1", timeout=10).json() == node
    assert server.ctx.nodes.by_ae_title("CT_SCANNER") is not None
    assert http.post(api(server), json=node, timeout=10).status_code == 409
    assert http.delete(api(server) + "/ct-1", timeout=10).status_code == 204
    assert http.delete(api(server) + "/ct-1", timeout=10).status_code == 404
    assert http.get(api(server) + "/ct-1", timeout=10).status_code == 404
    assert http.get(api(server), timeout=10).json() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ae_title", "THIS_AE_TITLE_IS_TOO_LONG"),
        ("ae_title", "BACK\\SLASH"),
        ("ae_title", "   "),
        ("port", 0),
        ("port", 70000),
        ("host", "two words"),
        ("name", "../etc"),
        ("port", "not-a-number"),
    ],
)
def test_invalid_nodes_are_400(server: LiveServer, field: str, value: object) -> None:
    """In: a node with one invalid field."""
    node: dict[str, object] = {"name": "n1", "ae_title": "AE", "host": "h", "port": 104}
    node[field] = value
    r = http.post(api(server), json=node, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]
    assert http.get(api(server), timeout=10).json() == []


def test_cli(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicomhub.cli", "node", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = run(
        "add", "pacs", "--ae-title", "PACS", "--host", "10.0.0.5", "--port", "11112", "--json"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["ae_title"] == "PACS"
    listed = json.loads(run("list", "--json").stdout)
    assert [n["name"] for n in listed] == ["pacs"]
    dup = run("add", "pacs", "--ae-title", "X", "--host", "h", "--port", "1")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    assert run("remove", "pacs").returncode == 0
    missing = run("remove", "pacs")
    assert missing.returncode == 2 and "no node" in missing.stderr
