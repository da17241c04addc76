"""Concurrent STOW-RS into one study: counters, series rows and files stay consistent.

What came in: 8 clients at once, each storing 6 copies of pydicom's CT_small into the same
new study and series (new SOP Instance UIDs), and each also re-sending one instance that
all clients share (identical content): 49 distinct instances in the end.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import LiveServer, http
from integration.helpers import stow_body


def test_parallel_stores_into_one_study(server: LiveServer, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()

    def copy(name: str, sop: str) -> Path:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        out = tmp_path / name
        ds.save_as(out)
        return out

    shared = copy("shared.dcm", generate_uid())
    batches = [
        [copy(f"c{c}_{i}.dcm", generate_uid()) for i in range(6)] + [shared] for c in range(8)
    ]

    def send(files: list[Path]) -> int:
        body, ctype = stow_body(files)
        r = http.post(
            server.url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=120
        )
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, batches))
    assert statuses == [200] * 8
    r = http.get(server.url + "/studies", params={"StudyInstanceUID": study}, timeout=30)
    doc = r.json()[0]
    assert doc["00201208"]["Value"] == [49]
    assert doc["00201206"]["Value"] == [1]
    series_docs = http.get(f"{server.url}/studies/{study}/series", timeout=30).json()
    assert len(series_docs) == 1 and series_docs[0]["00201209"]["Value"] == [49]
    files = list((server.ctx.settings.data_dir / "storage" / "objects").rglob("*.dcm"))
    assert len(files) == 49
    assert server.ctx.index.count_instances() == 49
