"""Authentication on the HTTP edge: who may call, with which credentials (docs/security.md).

What came in: requests without credentials, with expired, revoked, forged, wrongly
signed, malformed and `alg: none` tokens, password and client-credentials grants (right,
wrong, brute force), API keys (valid, revoked), and tokens of an external OpenID Connect
issuer whose JWKS the test serves on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CLI_ADMIN, LiveServer, free_port, http, make_settings
from dicomhub.context import build_context
from dicomhub.core.access import Role

OPEN = ["/health"]
NOT_SERVED = ["/docs", "/redoc", "/openapi.json"]
PROTECTED = [
    ("GET", "/dicom-web/studies"),
    ("GET", "/dicom-web/series"),
    ("GET", "/dicom-web/instances"),
    ("GET", "/dicom-web/studies/1.2.3"),
    ("GET", "/dicom-web/studies/1.2.3/metadata"),
    ("GET", "/dicom-web/studies/1.2.3/series"),
    ("GET", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1"),
    ("GET", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/rendered"),
    ("GET", "/dicom-web/studies/1.2.3/thumbnail"),
    ("GET", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/bulkdata/7FE00010"),
    ("POST", "/dicom-web/studies"),
    ("DELETE", "/dicom-web/studies/1.2.3"),
    ("GET", "/api/nodes"),
    ("POST", "/api/nodes"),
    ("GET", "/audit"),
    ("GET", "/auth/whoami"),
]


def test_nothing_answers_without_credentials(server: LiveServer) -> None:
    for path in OPEN:
        assert requests.get(server.origin + path, timeout=10).status_code == 200
    for path in NOT_SERVED:
        assert requests.get(server.origin + path, timeout=10).status_code == 404
    for method, path in PROTECTED:
        r = requests.request(method, server.origin + path, timeout=10)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "dicom" not in r.text.lower() or "authentication required" in r.text


def test_health_reveals_nothing(server: LiveServer) -> None:
    doc = requests.get(server.origin + "/health", timeout=10).json()
    assert set(doc) == {"status", "version"}


def bearer(srv: LiveServer, token: str) -> requests.Response:
    return requests.get(
        srv.url + "/studies", timeout=10, headers={"Authorization": f"Bearer {token}"}
    )


def test_bad_tokens_are_401(server: LiveServer, tmp_path: Path) -> None:
    ctx = server.ctx
    good = server.token
    assert bearer(server, good).status_code == 200
    # expired: signed by the server's own key, exp in the past
    codec = ctx.auth.tokens
    expired, _, _ = codec.issue("admin", -30)
    # forged: payload changed, signature kept
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "someone-else"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{head}.{forged_payload}.{sig}"
    # wrongly signed: a valid-looking token signed by another Ed25519 key
    other = Ed25519PrivateKey.generate()
    wrong_key = jwt.encode(
        {
            "iss": "dicomhub",
            "sub": "admin",
            "jti": "x",
            "iat": int(time.time()),
            "exp": int(time.time()) + 600,
        },
        other,
        algorithm="EdDSA",
    )
    # alg none
    none_token = jwt.encode(
        {"iss": "dicomhub", "sub": "admin", "jti": "y", "exp": int(time.time()) + 600},
        None,
        algorithm="none",
    )
    for name, token in [
        ("expired", expired),
        ("forged", forged),
        ("wrong key", wrong_key),
        ("alg none", none_token),
        ("garbage", "not.a.token"),
        ("unknown api key", "dhk_000000000000_nope"),
    ]:
        r = bearer(server, token)
        assert r.status_code == 401, name
        assert 'error="invalid_token"' in r.headers["www-authenticate"], name
    r = requests.get(server.url + "/studies", timeout=10, headers={"Authorization": "Basic xyz"})
    assert r.status_code == 401


def test_revoked_token_and_api_key(server: LiveServer) -> None:
    auth = server.ctx.auth
    token, _ = auth.issue_token(CLI_ADMIN, "admin", 600, "test")
    assert bearer(server, token).status_code == 200
    auth.revoke(CLI_ADMIN, token, "test")
    assert bearer(server, token).status_code == 401
    key = auth.issue_api_key(CLI_ADMIN, "admin", "ci", None, "test")
    assert bearer(server, key).status_code == 200
    auth.revoke(CLI_ADMIN, key.split("_")[1], "test")
    assert bearer(server, key).status_code == 401
    events = {e["event"] for e in auth.store.audit_query()}
    assert {"token-issue", "token-revoke", "apikey-issue", "apikey-revoke"} <= events


def test_a_verified_credential_is_remembered_briefly(server: LiveServer) -> None:
    """What came in: a token and an API key used twice, then revoked through another
    service instance on the same database (as the CLI does), then revoked here.  A
    remembered credential keeps working for at most ``credential_cache_seconds``; a
    revocation through this server's own service ends it at once."""
    auth = server.ctx.auth
    auth.credential_cache_seconds = 30.0  # long enough to see the cache on a slow machine
    try:
        token, _ = auth.issue_token(CLI_ADMIN, "admin", 600, "test")
        key = auth.issue_api_key(CLI_ADMIN, "admin", "cache", None, "test")
        for credential in (token, key):
            assert bearer(server, credential).status_code == 200
            assert auth.cached_bearer(credential) is not None
        # another process revokes the token: this one notices within the cache time
        other = build_context(server.ctx.settings, migrate=False)
        try:
            other.auth.revoke(CLI_ADMIN, token, "test")
        finally:
            other.close()
        assert bearer(server, token).status_code == 200  # still remembered here
        auth.credential_cache_seconds = 0.0  # what an expired entry amounts to
        assert auth.cached_bearer(token) is None
        assert bearer(server, token).status_code == 401
        auth.credential_cache_seconds = 30.0
        assert bearer(server, key).status_code == 200
        auth.revoke(CLI_ADMIN, key.split("_")[1], "test")  # through this service: at once
        assert auth.cached_bearer(key) is None
        assert bearer(server, key).status_code == 401
    finally:
        auth.credential_cache_seconds = 1.0


def test_a_remembered_token_ends_with_its_expiry(server: LiveServer) -> None:
    """What came in: a token with 2 s to live, remembered for 30 s: it is refused once
    it has expired, the cache notwithstanding."""
    auth = server.ctx.auth
    auth.credential_cache_seconds = 30.0
    try:
        token, exp = auth.issue_token(CLI_ADMIN, "admin", 2, "test")
        assert bearer(server, token).status_code == 200
        assert auth.cached_bearer(token) is not None
        while time.time() <= exp + 0.05:
            time.sleep(0.1)
        assert auth.cached_bearer(token) is None
        assert bearer(server, token).status_code == 401
    finally:
        auth.credential_cache_seconds = 1.0


def token_request(srv: LiveServer, **form: str) -> requests.Response:
    return requests.post(srv.origin + "/auth/token", data=form, timeout=30)


def test_password_and_client_credentials_grants(server: LiveServer) -> None:
    auth = server.ctx.auth
    auth.add_subscriber(CLI_ADMIN, "clinic", None, "test")
    auth.add_user(CLI_ADMIN, "clinic", "carol", Role.READER, "carol-password-1", "test")
    r = token_request(server, grant_type="password", username="carol", password="carol-password-1")
    assert r.status_code == 200 and r.json()["token_type"] == "Bearer"
    assert r.headers["cache-control"] == "no-store"
    who = requests.get(
        server.origin + "/auth/whoami",
        timeout=10,
        headers={"Authorization": f"Bearer {r.json()['access_token']}"},
    ).json()
    assert who == {"name": "carol", "kind": "user", "role": "reader", "subscriber": "clinic"}
    r = token_request(server, grant_type="password", username="carol", password="wrong-pass")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = token_request(server, grant_type="password", username="nobody", password="whatever1")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert token_request(server, grant_type="magic").json()["error"] == "unsupported_grant_type"
    # a device: client_credentials with its API key (form and HTTP Basic)
    key = auth.add_device(CLI_ADMIN, "clinic", "us-1", ["US1"], ["127.0.0.1"], "test")
    r = token_request(server, grant_type="client_credentials", client_id="us-1", client_secret=key)
    assert r.status_code == 200
    basic = base64.b64encode(f"us-1:{key}".encode()).decode()
    r = requests.post(
        server.origin + "/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=30,
    )
    assert r.status_code == 200
    r = token_request(
        server, grant_type="client_credentials", client_id="us-1", client_secret="dhk_wrong_wrong"
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    events = auth.store.audit_query(principal="carol")
    assert {e["event"] for e in events} == {"login", "login-failed"}
    assert all(e["source"] == "127.0.0.1" for e in events)


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[LiveServer]:
    ctx = build_context(
        make_settings(
            tmp_path / "d",
            f"sqlite:///{tmp_path / 'i.sqlite3'}",
            None,
            lockout_threshold=3,
            lockout_seconds=2,
        )
    )
    with LiveServer(ctx) as live:
        yield live
    ctx.close()


def test_brute_force_slows_down_and_locks(strict_server: LiveServer) -> None:
    srv = strict_server
    srv.ctx.auth.add_subscriber(CLI_ADMIN, "c", None, "t")
    srv.ctx.auth.add_user(CLI_ADMIN, "c", "dave", Role.READER, "dave-password-1", "t")
    delays = []
    for _ in range(3):
        t0 = time.monotonic()
        r = token_request(srv, grant_type="password", username="dave", password="guess-1234")
        delays.append(time.monotonic() - t0)
        assert r.status_code == 400
    assert srv.ctx.auth.failure_delay("dave") > srv.ctx.auth.failure_delay("nobody-at-all") / 2
    # locked: even the right password is refused until the lock expires
    r = token_request(srv, grant_type="password", username="dave", password="dave-password-1")
    assert r.status_code == 400
    locked = [
        e
        for e in srv.ctx.auth.store.audit_query(principal="dave")
        if e["detail"].get("method") == "locked"
    ]
    assert locked
    time.sleep(2.2)
    r = token_request(srv, grant_type="password", username="dave", password="dave-password-1")
    assert r.status_code == 200


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return


def test_external_oidc_issuer(tmp_path: Path) -> None:
    """In: tokens signed by an RSA key of a test 'identity provider' whose JWKS is served on
    loopback; a token of another key; a token naming an unknown user."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="idp-1", use="sig", alg="RS256")
    _Jwks.body = json.dumps({"keys": [jwk]}).encode()
    port = free_port()
    idp = HTTPServer(("127.0.0.1", port), _Jwks)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    issuer = f"http://127.0.0.1:{port}"
    ctx = build_context(
        make_settings(
            tmp_path / "d",
            f"sqlite:///{tmp_path / 'i.sqlite3'}",
            None,
            oidc_issuer=issuer,
            oidc_jwks_url=f"{issuer}/jwks",
            oidc_audience="dicomhub",
        )
    )
    try:
        with LiveServer(ctx) as srv:
            ctx.auth.add_subscriber(CLI_ADMIN, "h", None, "t")
            ctx.auth.add_user(CLI_ADMIN, "h", "erin", Role.READER, None, "t")

            def idp_token(sub: str, signer: object = key, aud: str = "dicomhub") -> str:
                return jwt.encode(
                    {
                        "iss": issuer,
                        "aud": aud,
                        "preferred_username": sub,
                        "exp": int(time.time()) + 300,
                    },
                    signer,
                    algorithm="RS256",
                    headers={"kid": "idp-1"},
                )

            assert bearer(srv, idp_token("erin")).status_code == 200
            assert bearer(srv, idp_token("mallory")).status_code == 401
            assert bearer(srv, idp_token("erin", aud="other")).status_code == 401
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            assert bearer(srv, idp_token("erin", signer=other)).status_code == 401
    finally:
        idp.shutdown()
        ctx.close()


def test_roles_limit_what_principals_do(server: LiveServer) -> None:
    auth = server.ctx.auth
    auth.add_subscriber(CLI_ADMIN, "s1", None, "t")
    auth.add_user(CLI_ADMIN, "s1", "reader1", Role.READER, "reader-password-1", "t")
    token = auth.issue_token(CLI_ADMIN, "reader1", 600, "t")[0]
    h = {"Authorization": f"Bearer {token}"}
    assert requests.get(server.url + "/studies", headers=h, timeout=10).status_code == 200
    r = requests.post(
        server.url + "/studies",
        headers={**h, "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        data=b"--x--\r\n",
        timeout=10,
    )
    assert r.status_code == 403
    assert requests.delete(server.url + "/studies/1.2.3", headers=h, timeout=10).status_code == 403
    assert requests.get(server.origin + "/api/nodes", headers=h, timeout=10).status_code == 403
    assert requests.get(server.origin + "/audit", headers=h, timeout=10).status_code == 403
    assert http.get(server.origin + "/audit", timeout=10).status_code == 200


def test_audit_sinks_and_cli(tmp_path: Path) -> None:
    """In: a server configured with a JSON-lines file and a syslog UDP target (a socket the
    test listens on); a failed login and a query; then `dicomhub audit --json`."""
    import socket
    import subprocess
    import sys

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    jsonl = tmp_path / "audit.jsonl"
    data = tmp_path / "d"
    ctx = build_context(
        make_settings(
            data,
            f"sqlite:///{data / 'index.sqlite3'}",
            None,
            audit_jsonl=jsonl,
            audit_syslog=f"127.0.0.1:{udp.getsockname()[1]}",
        )
    )
    try:
        with LiveServer(ctx) as srv:
            token_request(srv, grant_type="password", username="admin", password="nope-nope")
            assert http.get(srv.url + "/studies", timeout=10).status_code == 200
        lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
        assert {"login-failed", "query"} <= {e["event"] for e in lines}
        query = next(e for e in lines if e["event"] == "query")
        assert query["principal"] == "admin" and query["outcome"] == 0
        messages = [udp.recv(65535).decode() for _ in range(2)]
        assert all(m.startswith("<8") and " dicomhub " in m for m in messages)
    finally:
        ctx.close()
        udp.close()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomhub.cli",
            "audit",
            "--json",
            "--event",
            "query",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    events = json.loads(out.stdout)
    assert events and all(e["event"] == "query" for e in events)


def test_cli_users_devices_and_password_change(server: LiveServer) -> None:
    """In: `dicomhub subscriber add`, `user add`, `user passwd`, `device add`, `grant add`,
    `token issue` against the running server's data directory, all with --json."""
    import subprocess
    import sys

    data = server.ctx.settings.data_dir
    url = server.ctx.settings.effective_database_url
    env = dict(os.environ)
    if server.ctx.settings.database_schema:  # PostgreSQL: the archive's private schema
        env["DICOMHUB_DATABASE_SCHEMA"] = server.ctx.settings.database_schema

    def cli(*args: str) -> dict[str, object]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicomhub.cli",
                *args,
                "--json",
                "--data-dir",
                str(data),
                "--database-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    cli("subscriber", "add", "radiology")
    created = cli("user", "add", "frank", "--subscriber", "radiology", "--role", "uploader")
    assert len(str(created["password"])) >= 20
    cli("user", "passwd", "frank", "--password", "frank-new-password")
    r = token_request(
        server, grant_type="password", username="frank", password="frank-new-password"
    )
    assert r.status_code == 200
    r = token_request(
        server, grant_type="password", username="frank", password=str(created["password"])
    )
    assert r.status_code == 400
    device = cli(
        "device",
        "add",
        "mr-2",
        "--subscriber",
        "radiology",
        "--ae-title",
        "MR2",
        "--address",
        "10.0.0.0/8",
    )
    assert str(device["api_key"]).startswith("dhk_")
    assert bearer(server, str(device["api_key"])).status_code == 200
    token = cli("token", "issue", "frank")["access_token"]
    assert bearer(server, str(token)).status_code == 200
    assert cli("grant", "add", "1.2.3.4", "--owner", "radiology", "--to-user", "frank")["grant"]
    events = {e["event"] for e in server.ctx.auth.store.audit_query()}
    assert {
        "subscriber-add",
        "user-add",
        "password-change",
        "device-add",
        "token-issue",
        "grant-add",
    } <= events


def test_audit_trail_is_append_only(server: LiveServer) -> None:
    """In: an UPDATE and a DELETE on audit_events issued directly to the database."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    assert http.get(server.url + "/studies", timeout=10).status_code == 200
    engine = server.ctx.index.write_engine
    for sql in ("UPDATE audit_events SET principal = 'nobody'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))
    assert server.ctx.auth.store.audit_query(principal="admin")


def test_frames_and_searches_are_audited_once_with_their_status(
    server: LiveServer, tmp_path: Path
) -> None:
    """Frames and QIDO-RS searches write their audit event together with their work (one
    thread hop); the middleware must neither skip nor repeat it.  What came in: a CT and
    an MR sample stored by STOW-RS, then as admin a frame of each, a search, and a frame
    of an instance that does not exist (404)."""
    import pydicom

    from conftest import SAMPLES
    from integration.dimse_helpers import CT_LE, MR_LE
    from integration.helpers import stow_body

    body, ctype = stow_body([SAMPLES / CT_LE, SAMPLES / MR_LE])
    r = http.post(server.url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    paths = []
    for sample in (CT_LE, MR_LE):
        ds = pydicom.dcmread(SAMPLES / sample, stop_before_pixels=True)
        paths.append(
            f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/1"
        )
    missing = paths[0].rsplit("/instances/", 1)[0] + "/instances/1.2.3.4.5/frames/1"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
    for path in paths:
        assert http.get(server.origin + path, headers=accept, timeout=30).status_code == 200
    assert http.get(server.origin + missing, headers=accept, timeout=30).status_code == 404
    query = "PatientID=no-such-patient-" + tmp_path.name
    r = http.get(server.url + "/studies?" + query, timeout=30)
    assert r.status_code == 200 and r.json() == []

    events = server.ctx.auth.store.audit_query(principal="admin", limit=1000)
    for path in paths:
        mine = [e for e in events if e["detail"].get("path") == path]
        assert [(e["event"], e["detail"]["status"], e["outcome"]) for e in mine] == [
            ("retrieve", 200, 0)
        ]
    mine = [e for e in events if e["detail"].get("path") == missing]
    assert [(e["detail"]["status"], e["outcome"]) for e in mine] == [(404, 4)]
    mine = [e for e in events if e["detail"].get("query") == query]
    assert [(e["event"], e["detail"]["status"]) for e in mine] == [("query", 200)]
    assert all(e["source"] == "127.0.0.1" and e["interface"] == "http" for e in mine)
