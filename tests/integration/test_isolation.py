"""The isolation matrix: two subscribers, grants, and every HTTP route and DIMSE service.

What came in: subscribers A (hospital) and B (imaging centre), an uploader user and a
device each; B's studies: one private, one granted to A read-only, one with only its first
series granted, one granted then revoked, one whose grant expired, one granted read-write;
and one study with the *same UIDs* stored by both. Each cell checks what A's principals
see — own / other's / granted / revoked / expired — and that an audit event was written.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from conftest import CLI_ADMIN, LiveServer, free_port, make_settings
from dicomhub.context import build_context
from dicomhub.core.access import Role
from dicomhub.dimse.server import DimseServer
from integration.helpers import split_multipart, stow_body, uid


def ct(tmp: Path, study: str, series: str, name: str = "PAT^ONE") -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = name
    out = tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out)
    return out


@dataclass
class World:
    srv: LiveServer
    dimse_port: int
    tokens: dict[str, str]
    studies: dict[str, str] = field(default_factory=dict)
    series: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def get(self, who: str, path: str, **kw: object) -> requests.Response:
        return requests.get(self.srv.url + path, headers=self.h(who), timeout=30, **kw)  # type: ignore[arg-type]

    def stow(self, who: str, files: list[Path], path: str = "/studies") -> requests.Response:
        body, ctype = stow_body(files)
        return requests.post(
            self.srv.url + path,
            data=body,
            timeout=60,
            headers={**self.h(who), "Content-Type": ctype},
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    db = request.getfixturevalue("database_module")
    tmp = tmp_path_factory.mktemp("iso")
    url, schema = db(request.param, tmp)
    ctx = build_context(make_settings(tmp / "data", url, schema, dimse_port=free_port()))
    auth = ctx.auth
    for s in ("A", "B"):
        auth.add_subscriber(CLI_ADMIN, s, None, "t")
        auth.add_user(CLI_ADMIN, s, f"{s.lower()}_up", Role.UPLOADER, f"{s}-password-123", "t")
        auth.add_device(CLI_ADMIN, s, f"dev{s}", [f"DEV{s}"], ["127.0.0.1"], "t")
    auth.add_user(CLI_ADMIN, "A", "a_adm", Role.SUBSCRIBER_ADMIN, "A-admin-password-1", "t")
    dimse = DimseServer(ctx)
    dimse.start()
    with LiveServer(ctx) as srv:
        tokens = {
            w: auth.issue_token(CLI_ADMIN, w, 3600, "t")[0] for w in ("a_up", "b_up", "a_adm")
        }
        w = World(srv, dimse.port, tokens)
        plan = {
            "A_own": ("a_up", 1),
            "B_private": ("b_up", 1),
            "B_granted": ("b_up", 1),
            "B_series": ("b_up", 2),
            "B_revoked": ("b_up", 1),
            "B_expired": ("b_up", 1),
            "B_write": ("b_up", 1),
        }
        for key, (who, n_series) in plan.items():
            study = generate_uid()
            w.studies[key] = study
            w.series[key] = [generate_uid() for _ in range(n_series)]
            w.files[key] = [ct(tmp, study, se, name=f"PAT^{key}") for se in w.series[key]]
            assert w.stow(who, w.files[key]).status_code == 200
        # the same UIDs stored by both subscribers, with different content
        same_study, same_series, same_sop = generate_uid(), generate_uid(), generate_uid()
        for who, name in (("a_up", "SAME^A"), ("b_up", "SAME^B")):
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
                same_study,
                same_series,
                same_sop,
            )
            ds.file_meta.MediaStorageSOPInstanceUID = same_sop
            ds.PatientName = name
            out = tmp / f"same-{who}.dcm"
            ds.save_as(out)
            assert w.stow(who, [out]).status_code == 200
        w.studies["same"] = same_study
        w.series["same"] = [same_series]
        b = "B"
        auth.add_grant(
            CLI_ADMIN, w.studies["B_granted"], None, "A", None, "read", None, "t", owner=b
        )
        auth.add_grant(
            CLI_ADMIN,
            w.studies["B_series"],
            w.series["B_series"][0],
            "A",
            None,
            "read",
            None,
            "t",
            owner=b,
        )
        revoked = auth.add_grant(
            CLI_ADMIN, w.studies["B_revoked"], None, "A", None, "read", None, "t", owner=b
        )
        auth.remove_grant(CLI_ADMIN, revoked, "t")
        auth.add_grant(
            CLI_ADMIN,
            w.studies["B_expired"],
            None,
            "A",
            None,
            "read",
            time.time() - 60,
            "t",
            owner=b,
        )
        auth.add_grant(
            CLI_ADMIN, w.studies["B_write"], None, "A", None, "write", None, "t", owner=b
        )
        yield w
    dimse.stop()
    ctx.close()


def study_list(w: World, who: str, **params: str) -> list[str]:
    r = w.get(who, "/studies", params=params)
    assert r.status_code == 200
    return sorted(uid(x, "0020000D") for x in r.json())


VISIBLE_TO_A = ("A_own", "B_granted", "B_series", "B_write", "same")
HIDDEN_FROM_A = ("B_private", "B_revoked", "B_expired")


def test_qido_lists_only_own_and_granted(world: World) -> None:
    w = world
    assert study_list(w, "a_up") == sorted(w.studies[k] for k in VISIBLE_TO_A)
    for key in HIDDEN_FROM_A:
        assert study_list(w, "a_up", StudyInstanceUID=w.studies[key]) == []
        assert w.get("a_up", f"/studies/{w.studies[key]}/series").status_code == 404
        assert w.get("a_up", "/series", params={"StudyInstanceUID": w.studies[key]}).json() == []
        assert w.get("a_up", "/instances", params={"StudyInstanceUID": w.studies[key]}).json() == []
        r = w.get("a_up", "/studies", params={"PatientName": f"PAT^{key}"})
        assert r.json() == []  # nothing found by the other subscriber's patient name
    # every query is audited with who asked and what
    queries = w.srv.ctx.auth.store.audit_query(principal="a_up", event="query")
    assert any(e["detail"]["query"].startswith("StudyInstanceUID=") for e in queries)
    # paging never counts what A cannot see
    pages = [study_list(w, "a_up", limit="2", offset=str(o)) for o in (0, 2, 4)]
    assert sum(len(p) for p in pages) == len(VISIBLE_TO_A)
    # B sees its own, A's private study does not exist for B
    assert w.studies["A_own"] not in study_list(w, "b_up")


def test_series_grant_shows_only_that_series_and_its_counts(world: World) -> None:
    w = world
    study = w.studies["B_series"]
    doc = w.get("a_up", "/studies", params={"StudyInstanceUID": study}).json()[0]
    assert doc["00201206"]["Value"] == [1]  # B's study has 2 series; A sees 1
    assert doc["00201208"]["Value"] == [1]
    series = w.get("a_up", f"/studies/{study}/series").json()
    assert [uid(s, "0020000E") for s in series] == [w.series["B_series"][0]]
    hidden = w.series["B_series"][1]
    assert w.get("a_up", f"/studies/{study}/series/{hidden}").status_code == 404
    assert w.get("a_up", f"/studies/{study}/series/{hidden}/metadata").status_code == 404
    r = w.get("a_up", f"/studies/{study}/metadata")
    assert len(r.json()) == 1
    r = w.get("a_up", f"/studies/{study}")
    assert len(split_multipart(r.content, r.headers["content-type"])) == 1
    owner = w.get("b_up", "/studies", params={"StudyInstanceUID": study}).json()[0]
    assert owner["00201206"]["Value"] == [2]


def _instance_paths(w: World, key: str) -> list[str]:
    st, se = w.studies[key], w.series[key][0]
    sop = pydicom.dcmread(w.files[key][0], stop_before_pixels=True).SOPInstanceUID
    base = f"/studies/{st}/series/{se}/instances/{sop}"
    return [
        f"/studies/{st}",
        f"/studies/{st}/metadata",
        f"/studies/{st}/series/{se}",
        f"/studies/{st}/series/{se}/metadata",
        base,
        f"{base}/metadata",
        f"{base}/frames/1",
        f"{base}/rendered",
        f"{base}/thumbnail",
        f"/studies/{st}/thumbnail",
        f"/studies/{st}/series/{se}/rendered",
        f"{base}/bulkdata/7FE00010",
        f"/studies/{st}/series",
        f"/studies/{st}/instances",
        f"/studies/{st}/series/{se}/instances",
    ]


@pytest.mark.parametrize(
    "key", ["A_own", "B_granted", "B_write", "B_private", "B_revoked", "B_expired"]
)
def test_every_wado_route(world: World, key: str) -> None:
    w = world
    expected = 200 if key in VISIBLE_TO_A else 404
    before = len(w.srv.ctx.auth.store.audit_query(principal="a_up", limit=100000))
    for path in _instance_paths(w, key):
        r = w.get("a_up", path)
        assert r.status_code == expected, (key, path, r.status_code)
        if expected == 404:
            assert w.studies[key] not in r.text or "not found" in r.text
    events = w.srv.ctx.auth.store.audit_query(principal="a_up", study=w.studies[key], limit=100000)
    assert len(w.srv.ctx.auth.store.audit_query(principal="a_up", limit=100000)) >= (
        before + len(_instance_paths(w, key))
    )
    assert events and all(e["interface"] == "http" for e in events)
    assert {e["outcome"] for e in events} == ({0} if expected == 200 else {4})


def test_same_uids_in_two_subscribers_stay_separate(world: World) -> None:
    w = world
    st, se = w.studies["same"], w.series["same"][0]
    for who, name in (("a_up", "SAME^A"), ("b_up", "SAME^B")):
        docs = w.get(who, "/studies", params={"StudyInstanceUID": st}).json()
        assert len(docs) == 1
        assert docs[0]["00100010"]["Value"][0]["Alphabetic"] == name
        r = w.get(who, f"/studies/{st}")
        (part,) = split_multipart(r.content, r.headers["content-type"])
        assert pydicom.dcmread(io.BytesIO(part[1])).PatientName == name
    # an uploader may not delete; A's subscriber admin deletes A's copy, B's is untouched
    r = requests.delete(f"{w.srv.url}/studies/{st}/series/{se}", headers=w.h("a_up"), timeout=30)
    assert r.status_code == 403
    r = requests.delete(f"{w.srv.url}/studies/{st}/series/{se}", headers=w.h("a_adm"), timeout=30)
    assert r.status_code == 204
    assert w.get("a_up", "/studies", params={"StudyInstanceUID": st}).json() == []
    assert len(w.get("b_up", "/studies", params={"StudyInstanceUID": st}).json()) == 1


def test_grantees_cannot_delete(world: World) -> None:
    w = world
    for key in ("B_granted", "B_write", "B_private"):
        r = requests.delete(
            f"{w.srv.url}/studies/{w.studies[key]}", headers=w.h("a_adm"), timeout=30
        )
        assert r.status_code == 404, key
        assert (
            len(w.get("b_up", "/studies", params={"StudyInstanceUID": w.studies[key]}).json()) == 1
        )
    events = w.srv.ctx.auth.store.audit_query(principal="a_adm", event="delete")
    assert any(e["outcome"] == 4 for e in events)


def test_stow_into_other_studies(world: World, tmp_path: Path) -> None:
    """A read grant does not let A add to B's study: A's upload with that Study UID becomes
    a study of A's own; a read-write grant adds it to B's study."""
    w = world
    ro = w.studies["B_granted"]
    n_b_before = w.get("b_up", "/studies", params={"StudyInstanceUID": ro}).json()[0]["00201208"][
        "Value"
    ][0]
    r = w.stow("a_up", [ct(tmp_path, ro, generate_uid(), "PAT^A_ADDED")], f"/studies/{ro}")
    assert r.status_code == 200
    b_doc = w.get("b_up", "/studies", params={"StudyInstanceUID": ro}).json()[0]
    assert b_doc["00201208"]["Value"] == [n_b_before]  # B's study unchanged
    rw = w.studies["B_write"]
    r = w.stow("a_up", [ct(tmp_path, rw, generate_uid(), "PAT^B_write")], f"/studies/{rw}")
    assert r.status_code == 200
    b_doc = w.get("b_up", "/studies", params={"StudyInstanceUID": rw}).json()[0]
    assert b_doc["00201208"]["Value"] == [2]
    # STOW into a study A cannot see at all: it becomes A's own, B's is untouched
    hidden = w.studies["B_private"]
    r = w.stow("a_up", [ct(tmp_path, hidden, generate_uid(), "PAT^A_GUESS")], f"/studies/{hidden}")
    assert r.status_code == 200
    b_doc = w.get("b_up", "/studies", params={"StudyInstanceUID": hidden}).json()[0]
    assert b_doc["00201208"]["Value"] == [1]
    assert b_doc["00100010"]["Value"][0]["Alphabetic"] == "PAT^B_private"
    stores = w.srv.ctx.auth.store.audit_query(principal="a_up", event="store")
    assert len(stores) >= 3


# -- DIMSE --------------------------------------------------------------------------------
def _find(w: World, calling: str, **keys: str) -> list[str]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", w.dimse_port, ae_title="DICOMHUB")
    assert assoc.is_established
    q = pydicom.Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = keys.get("StudyInstanceUID", "")
    out = []
    for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status == 0xFF00 and ident is not None:
            out.append(str(ident.StudyInstanceUID))
    assoc.release()
    return sorted(out)


def _get(w: World, calling: str, study: str) -> tuple[int, int]:
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        w.dimse_port,
        ae_title="DICOMHUB",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    q = pydicom.Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    final = None
    for status, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
        if status:
            final = status
    assoc.release()
    assert final is not None
    return int(final.Status), len(received)


def test_dimse_find_and_get_see_only_own_and_granted(world: World) -> None:
    w = world
    # a device of A sees over DIMSE exactly what A's users see over DICOMweb
    assert _find(w, "DEVA") == study_list(w, "a_up")
    assert w.studies["B_granted"] in _find(w, "DEVA")
    for key in ("B_revoked", "B_expired"):  # (B_private's UID may have an A copy by now)
        assert _find(w, "DEVA", StudyInstanceUID=w.studies[key]) == []
        status, n = _get(w, "DEVA", w.studies[key])
        assert (status, n) == (0x0000, 0), key
    status, n = _get(w, "DEVA", w.studies["B_granted"])
    assert status == 0x0000 and n >= 1
    status, n = _get(w, "DEVA", w.studies["A_own"])
    assert status == 0x0000 and n == 1
    events = w.srv.ctx.auth.store.audit_query(principal="devA")
    assert {"association", "query", "retrieve"} <= {e["event"] for e in events}
    assert all(e["interface"] == "dimse" for e in events)


def test_dimse_move_only_moves_what_the_device_may_see(world: World, tmp_path: Path) -> None:
    """C-MOVE by device A to a registered pynetdicom Storage SCP: a granted study arrives,
    a hidden one yields no sub-operation."""
    w = world
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelMove,
    )

    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = free_port()
    scp = AE(ae_title="AMOVEDEST")
    scp.add_supported_context(CTImageStorage)
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        w.srv.ctx.nodes.add(f"a-dest-{port}", "AMOVEDEST", "127.0.0.1", port)
        results = {}
        for key in ("B_granted", "B_revoked"):
            ae = AE(ae_title="DEVA")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", w.dimse_port, ae_title="DICOMHUB")
            assert assoc.is_established
            q = pydicom.Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = w.studies[key]
            before = len(received)
            final = None
            for status, _ in assoc.send_c_move(
                q, "AMOVEDEST", StudyRootQueryRetrieveInformationModelMove
            ):
                if status:
                    final = status
            assoc.release()
            assert final is not None
            results[key] = (int(final.Status), len(received) - before)
        assert results["B_granted"][0] == 0x0000 and results["B_granted"][1] >= 1
        assert results["B_revoked"] == (0x0000, 0)
    finally:
        server.shutdown()
    moves = [
        e
        for e in w.srv.ctx.auth.store.audit_query(principal="devA", event="retrieve")
        if e["detail"].get("service") == "C-MOVE"
    ]
    assert moves


def test_dimse_store_lands_in_the_devices_subscriber(world: World, tmp_path: Path) -> None:
    w = world
    study = generate_uid()
    f = ct(tmp_path, study, generate_uid(), "PAT^DEVB")
    ae = AE(ae_title="DEVB")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", w.dimse_port, ae_title="DICOMHUB")
    assert assoc.is_established
    assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0x0000
    assoc.release()
    assert study_list(w, "b_up", StudyInstanceUID=study) == [study]
    assert study_list(w, "a_up", StudyInstanceUID=study) == []
    assert _find(w, "DEVA", StudyInstanceUID=study) == []
    assert w.srv.ctx.auth.store.audit_query(principal="devB", event="store", study=study)


def test_unknown_ae_and_wrong_address_are_rejected(world: World) -> None:
    w = world
    w.srv.ctx.auth.add_device(CLI_ADMIN, "A", "remote-ct", ["FARAWAY"], ["10.99.0.0/16"], "t")
    for calling in ("NOBODY", "FARAWAY"):
        ae = AE(ae_title=calling)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", w.dimse_port, ae_title="DICOMHUB")
        assert assoc.is_rejected, calling
        rsp = assoc.acceptor.primitive
        assert (rsp.result, rsp.result_source, rsp.diagnostic) == (0x01, 0x01, 0x03)
    failed = [e for e in w.srv.ctx.auth.store.audit_query(event="association") if e["outcome"] == 4]
    assert {e["detail"]["calling_ae"] for e in failed} >= {"NOBODY", "FARAWAY"}
