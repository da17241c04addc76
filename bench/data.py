"""Synthetic test data: a CT phantom series and many small studies (never downloaded).

Every object is a proper DICOM Part 10 file (preamble, File Meta Information, Explicit
VR Little Endian) written with pydicom; the same files are sent to every server.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

CT_SIZE = 512
SMALL_SIZE = 64
PIXEL_SPACING_MM = 0.7
SLICE_THICKNESS_MM = 1.25


@dataclass
class Instance:
    """One generated file and its identifying UIDs."""

    path: Path
    sop_instance_uid: str
    size: int


@dataclass
class Series:
    """The CT phantom series (one study, one series)."""

    study_instance_uid: str
    series_instance_uid: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(i.size for i in self.instances)


@dataclass
class SmallStudy:
    """One small study for QIDO-RS: its matching keys and its files."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    paths: list[Path] = field(default_factory=list)


def _file_dataset(sop_class: str, sop_instance: str) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def _set_image(ds: Dataset, pixels: np.ndarray) -> None:
    """Monochrome signed 16-bit pixel module with a HU rescale (PS3.3 C.7.6.3, C.8.2.1)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds["PixelData"].VR = "OW"


def _phantom_grids() -> tuple[np.ndarray, np.ndarray]:
    half = CT_SIZE / 2
    yy, xx = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32)
    return xx - half + 0.5, yy - half + 0.5


def phantom_slice(
    index: int, n_slices: int, grids: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """One 512×512 slice in stored values (HU + 1024): body, fat, bone ring, lungs, spine."""
    x, y = grids
    t = index / max(1, n_slices - 1)  # 0 (feet side) .. 1 (head side)
    scale = 1.0 + 0.08 * np.sin(np.pi * t)
    a, b = 180.0 * scale, 125.0 * scale
    r_body = (x / a) ** 2 + (y / b) ** 2
    hu = np.full((CT_SIZE, CT_SIZE), -1000.0, dtype=np.float32)
    body = r_body <= 1.0
    hu[body] = -100.0  # subcutaneous fat
    hu[r_body <= 0.86] = 40.0  # soft tissue
    hu[(r_body <= 0.80) & (r_body > 0.72)] = 750.0  # bone ring (ribs)
    lung_size = 0.35 + 0.65 * np.sin(np.pi * t)  # lungs grow and shrink along z
    for cx in (-0.42 * a, 0.42 * a):
        r_lung = ((x - cx) / (0.3 * a * lung_size + 1)) ** 2 + (
            (y + 0.1 * b) / (0.55 * b * lung_size + 1)
        ) ** 2
        hu[r_lung <= 1.0] = -850.0
    r_spine = np.hypot(x, y - 0.62 * b)
    hu[r_spine <= 22] = 1100.0
    hu[r_spine <= 15] = 300.0  # cancellous core
    noise = rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    noise[~body] *= 0.3
    stored: np.ndarray = np.clip(np.rint(hu + noise + 1024.0), -2048, 4095).astype(np.int16)
    return stored


def make_ct_series(out_dir: Path, n_slices: int, seed: int = 1) -> Series:
    """Write a CT Image Storage series of ``n_slices`` 512×512 slices into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grids = _phantom_grids()
    series = Series(generate_uid(), generate_uid())
    frame_of_reference = generate_uid()
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    origin = -PIXEL_SPACING_MM * CT_SIZE / 2
    for i in range(n_slices):
        sop = generate_uid()
        ds = _file_dataset(CTImageStorage, sop)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
        ds.AccessionNumber = "BENCHCT0001"
        ds.Modality = "CT"
        ds.Manufacturer = "dicomhub-bench"
        ds.ReferringPhysicianName = "REFERRER^BENCH"
        ds.StudyDescription = "CT CHEST PHANTOM"
        ds.SeriesDescription = "AXIAL 1.25 MM"
        ds.PatientName = "PHANTOM^CT"
        ds.PatientID = "BENCH-CT-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{SLICE_THICKNESS_MM}"
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = series.study_instance_uid
        ds.SeriesInstanceUID = series.series_instance_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        z = -i * SLICE_THICKNESS_MM
        ds.ImagePositionPatient = [f"{origin:.2f}", f"{origin:.2f}", f"{z:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SliceLocation = f"{z:.2f}"
        ds.PixelSpacing = [f"{PIXEL_SPACING_MM}", f"{PIXEL_SPACING_MM}"]
        _set_image(ds, phantom_slice(i, n_slices, grids, rng))
        path = out_dir / f"CT{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        series.instances.append(Instance(path, sop, path.stat().st_size))
    return series


_SYLLABLES = (  # noqa: SIM905 - a word list reads best as one string
    "KA MO RI TA SE NU LO VE DA BI GO HA JU PE ZA WI NO RU TO MI "
    "BER CAN DEL FOR GAR HOL LIN MAR NOR PAR ROS SAN TER VAL WEB"
).split()
_GIVEN = (  # noqa: SIM905
    "ANNA JOHN MARIA PETER SOFIA LUCAS EMMA NOAH MIA LIAM OLGA IVAN "
    "YUKI KENJI AMIR LEILA PAUL CLARA HUGO INES"
).split()


def surnames() -> list[str]:
    """The surname pool: every pair of syllables (35 × 35 = 1225 names)."""
    return [a + b for a in _SYLLABLES for b in _SYLLABLES]


def plan_small_studies(n_studies: int, seed: int = 2) -> list[tuple[str, str, str, str]]:
    """(StudyInstanceUID, PatientID, PatientName, StudyDate) for each small study."""
    rng = np.random.default_rng(seed)
    names = surnames()
    n_patients = max(1, n_studies // 2)
    start = dt.date(2010, 1, 1).toordinal()
    span = dt.date(2024, 12, 31).toordinal() - start
    patients = [
        (
            f"P{p:07d}",
            f"{names[int(rng.integers(len(names)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}",
        )
        for p in range(n_patients)
    ]
    plan: list[tuple[str, str, str, str]] = []
    for _ in range(n_studies):
        pid, pname = patients[int(rng.integers(n_patients))]
        date = dt.date.fromordinal(start + int(rng.integers(span + 1))).strftime("%Y%m%d")
        plan.append((str(generate_uid()), pid, pname, date))
    return plan


def fixed_uid() -> str:
    """A random UID from :func:`generate_uid` that is always 64 characters long."""
    return str(generate_uid(entropy_srcs=[secrets.token_hex(16)]))


def _write_small_chunk(
    args: tuple[Path, Sequence[tuple[str, str, str, str]], int, int, int],
) -> list[SmallStudy]:
    """Write one chunk of studies.

    pydicom writes the first instance of each study; the others are the same bytes with
    a new SOP Instance UID (same length) and InstanceNumber patched in, which is ~50×
    faster than encoding every file and keeps ≥100k-instance runs short.
    """
    out_dir, plan, per_study, first_index, seed = args
    rng = np.random.default_rng(seed + first_index)
    width = len(str(per_study)) + len(str(per_study)) % 2  # even IS value length
    result: list[SmallStudy] = []
    for offset, (study_uid, pid, pname, date) in enumerate(plan):
        index = first_index + offset
        modality = "CT" if index % 3 else "MR"
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        template_uid = fixed_uid()
        ds = _file_dataset(sop_class, template_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + index % 10:02d}{index % 60:02d}00"
        ds.AccessionNumber = f"ACC{index:08d}"
        ds.Modality = modality
        ds.Manufacturer = "dicomhub-bench"
        ds.ReferringPhysicianName = "REFERRER^BENCH"
        ds.StudyDescription = f"{modality} ROUTINE"
        ds.SeriesDescription = f"{modality} SERIES"
        ds.PatientName = pname
        ds.PatientID = pid
        ds.PatientBirthDate = f"19{40 + index % 60:02d}0{1 + index % 9}15"
        ds.PatientSex = "F" if index % 2 else "M"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyID = str(index % 100000)
        ds.SeriesNumber = 1
        ds.InstanceNumber = str(per_study).ljust(width)
        ds.ImagePositionPatient = ["0", "0", "0"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["1", "1"]
        ds.SliceThickness = "5"
        pixels = rng.integers(900, 1200, size=(SMALL_SIZE, SMALL_SIZE), dtype=np.int16)
        _set_image(ds, pixels)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        template = buffer.getvalue()
        at = template.index(b"\x20\x00\x13\x00IS") + 8  # InstanceNumber value
        study_dir = out_dir / f"{index // 1000:04d}"
        study_dir.mkdir(parents=True, exist_ok=True)
        study = SmallStudy(study_uid, pid, pname, date)
        for j in range(per_study):
            data = template.replace(template_uid.encode(), fixed_uid().encode())
            data = data[:at] + str(j + 1).ljust(width).encode() + data[at + width :]
            path = study_dir / f"S{index:07d}_{j + 1:03d}.dcm"
            path.write_bytes(data)
            study.paths.append(path)
        result.append(study)
    return result


def make_small_studies(
    out_dir: Path, n_studies: int, per_study: int, seed: int = 2, workers: int | None = None
) -> list[SmallStudy]:
    """Write ``n_studies`` studies × ``per_study`` 64×64 instances, in parallel processes."""
    plan = plan_small_studies(n_studies, seed)
    chunk = 250
    jobs = [(out_dir, plan[i : i + chunk], per_study, i, seed) for i in range(0, len(plan), chunk)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) == 1:
        return [s for job in jobs for s in _write_small_chunk(job)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [s for part in pool.map(_write_small_chunk, jobs) for s in part]


def make_big_study(out_dir: Path, total_bytes: int, seed: int = 5) -> tuple[str, list[Path]]:
    """A study of ``total_bytes`` or more in multi-frame CT-like instances (300 frames of
    512×512 int16 each, ~157 MB, Enhanced-free Multi-frame Grayscale Word SC): the pixel
    values are drawn once and shared, every instance has its own UIDs.  Returns the
    StudyInstanceUID and the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = 300
    pixels = rng.integers(0, 4096, (frames, CT_SIZE, CT_SIZE), dtype=np.uint16).tobytes()
    study, series = generate_uid(), generate_uid()
    paths: list[Path] = []
    written = 0
    index = 0
    while written < total_bytes:
        sop = generate_uid()
        ds = _file_dataset("1.2.840.10008.5.1.4.1.1.7.3", sop)  # Multi-frame Grayscale Word SC
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "BIG^STUDY", "BIG0001", "OT"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.InstanceNumber = index + 1
        ds.Rows = ds.Columns = CT_SIZE
        ds.NumberOfFrames = frames
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
        path = out_dir / f"big{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written += path.stat().st_size
        paths.append(path)
        index += 1
    return str(study), paths
