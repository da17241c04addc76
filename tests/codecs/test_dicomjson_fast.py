"""The fast DICOM JSON converter gives exactly pydicom's JSON (PS3.18 Annex F).

What came in: every readable sample of ../shared/dicom-samples and pydicom's own test
files; for each, the metadata the reader stores is compared with the reference built
element by element with pydicom's ``DataElement.to_json_dict``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import MANIFEST
from dicomhub.codecs import dicomjson_fast
from dicomhub.codecs.reader import _json_dataset, _json_element

CHARSETS = Path(pydicom.__file__).parent / "data" / "charset_files"
FILES = (
    [s.path for s in MANIFEST]
    + [
        Path(str(get_testdata_file(n)))
        for n in (
            "CT_small.dcm",
            "MR_small.dcm",
            "rtplan.dcm",
            "test-SR.dcm",
            "ExplVR_BigEnd.dcm",
            "emri_small_big_endian.dcm",
        )
    ]
    + sorted(CHARSETS.glob("*.dcm"))  # Specific Character Sets: Japanese, Korean, Greek …
)


def _read(path: Path) -> pydicom.Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def test_same_json_as_pydicom_for_every_sample() -> None:
    checked = 0
    mismatches: dict[str, list[str]] = {}
    for path in FILES:
        fast_ds, ref_ds = _read(path), _read(path)
        if fast_ds is None or ref_ds is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = dicomjson_fast.convert(fast_ds, "B", 1024, _json_element)
            ref = _json_dataset(ref_ds, "B", 1024)
        if fast != ref:
            mismatches[str(path)] = [
                f"{k}: {fast.get(k)} != {ref.get(k)}"[:300]
                for k in sorted(set(fast) | set(ref))
                if fast.get(k) != ref.get(k)
            ][:5]
        checked += 1
    assert checked > 300
    if mismatches:
        pytest.fail("\n".join(f"{k}: {v}" for k, v in mismatches.items()))
