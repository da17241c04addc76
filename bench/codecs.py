"""Codec benchmark: ratio and single-thread speed of every lossless encoder dicomhub has.

``.venv/bin/python -m bench.codecs [--write-docs]`` measures, per transfer syntax of
:mod:`dicomhub.codecs.registry` that has an encoder (HTJ2K .4.201 and RPCL .4.202,
JPEG-LS lossless .4.80, JPEG 2000 lossless .4.90, JPEG lossless SV1 .4.70, RLE .5) and
Deflated Explicit VR Little Endian (.1.99, whole files only):

* **Frame level** — ``registry.encode_frame`` / ``registry.decode_frame`` on canonical
  frames (:class:`~dicomhub.codecs.registry.PixelFormat`): compression ratio (raw
  canonical bytes / encoded bytes), encode and decode MB/s (10⁶ raw pixel bytes per
  second, median of ``--reps`` repetitions, one thread, repetitions interleaved over the
  syntaxes so drifts of the machine hit all alike).
* **Whole file** — ``transcode.transcode_bytes(path, uid)`` from an Explicit VR Little
  Endian instance (the cost of ingest re-encoding, a WADO-RS/C-GET transcode), time per
  instance, file-size ratio against Explicit VR Little Endian, and the read-back time
  (``transcode.canonical_pixels`` of the written file).

Data: (1) a generated CT volume (``--slices`` × 512×512 int16, PixelRepresentation 1,
BitsStored 12 by default, signed HU values: the phantom of :mod:`bench.data` — body,
fat, bone ring, lungs, spine, gaussian noise — made with a fixed seed, written only to a
temporary directory); (2) the real samples of ../shared/dicom-samples (MANIFEST.tsv rows
with ``pixel_decode`` ok), all decoded with ``canonical_pixels``, grouped by modality, a
seeded subset of them measured (``--sample-mb`` per modality, ``--frames-per-sample``;
``0`` for everything).

Every decoded frame and every written file is compared with the original pixels;
mismatches are counted and reported (there must be none).  Results: a table on stdout,
``bench/results/codecs-<timestamp>.json`` and, with ``--write-docs``, the section
"## Codecs (bench/codecs.py)" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from bench.data import CT_SIZE, phantom_slice
from bench.report import package_version
from dicomhub.codecs import registry
from dicomhub.codecs.registry import CodecError, PixelFormat
from dicomhub.codecs.transcode import canonical_pixels, transcode_bytes
from dicomhub.core import syntaxes as ts

REPO = Path(__file__).resolve().parent.parent
DOC_HEADING = "## Codecs (bench/codecs.py)"
MB = 1e6

#: The frame encoders measured by default, in the order of the tables.
FRAME_SYNTAXES: tuple[str, ...] = (
    ts.HTJ2K_LOSSLESS,
    ts.HTJ2K_RPCL,
    ts.JPEG_LS_LOSSLESS,
    ts.J2K_LOSSLESS,
    ts.JPEG_LOSSLESS_SV1,
    ts.RLE,
)
#: Whole-file view: the frame syntaxes, Deflated Explicit VR LE, and the baseline.
FILE_SYNTAXES: tuple[str, ...] = (*FRAME_SYNTAXES, ts.DEFLATED_ELE, ts.ELE)

SHORT_NAMES = {
    ts.HTJ2K_LOSSLESS: "HTJ2K lossless",
    ts.HTJ2K_RPCL: "HTJ2K RPCL",
    ts.HTJ2K: "HTJ2K",
    ts.JPEG_LS_LOSSLESS: "JPEG-LS lossless",
    ts.J2K_LOSSLESS: "JPEG 2000 lossless",
    ts.J2K: "JPEG 2000 (reversible)",
    ts.JPEG_LOSSLESS_SV1: "JPEG lossless SV1",
    ts.JPEG_LOSSLESS: "JPEG lossless",
    ts.RLE: "RLE lossless",
    ts.DEFLATED_ELE: "Deflated Explicit VR LE",
    ts.ELE: "Explicit VR LE (baseline)",
}

#: ../shared/DESIGN.md §6: median ms per 512×512 int16 CT frame (encode, decode) and ratio.
DESIGN_6: dict[str, tuple[str, str, str]] = {
    ts.HTJ2K_LOSSLESS: ("2.5", "1.7", "2.56"),
    ts.JPEG_LS_LOSSLESS: ("6.5–8", "5.8", "2.70"),
    ts.J2K_LOSSLESS: ("44", "37", "2.73"),
    ts.JPEG_LOSSLESS_SV1: ("11", "2–7", "2.42"),
    ts.RLE: ("3–7", "0.6", "1.8"),
}

Array = npt.NDArray[Any]
_t0 = time.monotonic()


def log(msg: str) -> None:
    """Progress on stdout with the elapsed time."""
    print(f"[{time.monotonic() - _t0:6.1f}s] {msg}", flush=True)


def short(uid: str) -> str:
    """``HTJ2K lossless (.4.201)``: a table label for a transfer syntax UID."""
    name = SHORT_NAMES.get(uid) or getattr(registry.get(uid), "name", uid)
    return f"{name} ({uid.removeprefix('1.2.840.10008.1.2')})"


# -- data --------------------------------------------------------------------------------
@dataclass
class Item:
    """One instance's canonical frames (the measured ones) and where it came from."""

    label: str
    group: str  # modality, or "CT phantom"
    fmt: PixelFormat
    frames: list[bytes]
    complete: bool  # every frame of the instance is in ``frames``
    path: Path | None = None  # the file (for the whole-file view)

    @property
    def raw_bytes(self) -> int:
        """Canonical bytes of the measured frames."""
        return sum(len(f) for f in self.frames)


def ct_format(bits_stored: int) -> PixelFormat:
    """The Image Pixel module of the generated CT slices."""
    return PixelFormat(CT_SIZE, CT_SIZE, 1, 16, bits_stored, 1, "MONOCHROME2")


def ct_volume(n_slices: int, bits_stored: int, seed: int) -> list[Array]:
    """``n_slices`` signed HU slices of the :mod:`bench.data` phantom (fixed seed).

    Air −1000, fat −100, soft tissue 40, bone ring 750, lungs −850, spine 1100/300 HU,
    gaussian noise σ 12 HU inside the body (3.6 outside); clipped to the BitsStored range.
    """
    rng = np.random.default_rng(seed)
    half = CT_SIZE / 2
    yy, xx = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32)
    grids = (xx - half + 0.5, yy - half + 0.5)
    lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    out = []
    for i in range(n_slices):
        stored = phantom_slice(i, n_slices, grids, rng).astype(np.int32) - 1024
        out.append(np.clip(stored, lo, hi).astype("<i2"))
    return out


def write_ct_files(slices: Sequence[Array], fmt: PixelFormat, out_dir: Path) -> list[Path]:
    """CT Image Storage Part 10 files (Explicit VR LE) of the slices, for the whole-file view."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i, arr in enumerate(slices):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(CTImageStorage)
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.Modality = "CT"
        ds.PatientName = "PHANTOM^CODECS"
        ds.PatientID = "BENCH-CODECS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = ["-179.2", "-179.2", f"{-1.25 * i:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.SliceThickness = "1.25"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = fmt.photometric_interpretation
        ds.Rows, ds.Columns = fmt.rows, fmt.columns
        ds.BitsAllocated = fmt.bits_allocated
        ds.BitsStored = fmt.bits_stored
        ds.HighBit = fmt.bits_stored - 1
        ds.PixelRepresentation = fmt.pixel_representation
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(arr, dtype="<i2").tobytes()
        ds["PixelData"].VR = "OW"
        path = out_dir / f"CT{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def samples_dir() -> Path:
    """DICOMHUB_SAMPLES, else ../shared/dicom-samples next to the checkout, else /work/shared
    (as tests/conftest.py)."""
    if os.environ.get("DICOMHUB_SAMPLES"):
        return Path(os.environ["DICOMHUB_SAMPLES"])
    for candidate in (REPO.parent / "shared" / "dicom-samples", Path("/work/shared/dicom-samples")):
        if (candidate / "MANIFEST.tsv").exists():
            return candidate
    return REPO.parent / "shared" / "dicom-samples"


@dataclass
class SampleSet:
    """The decoded samples and how the measured subset was chosen."""

    items: list[Item] = field(default_factory=list)
    manifest_ok: int = 0
    decoded: int = 0
    decode_failed: dict[str, str] = field(default_factory=dict)
    by_modality: dict[str, dict[str, float]] = field(default_factory=dict)


def load_samples(root: Path, cap_mb: float, max_frames: int, seed: int) -> SampleSet:
    """Decode every sample with ``pixel_decode`` ok; keep a seeded subset of their frames.

    Samples are visited in a seeded random order; each modality takes up to
    ``max_frames`` frames of a sample while its measured raw bytes stay within
    ``cap_mb`` (at least one frame per modality); 0 lifts either limit.
    """
    with open(root / "MANIFEST.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["pixel_decode"] == "ok"]
    rows.sort(key=lambda r: r["file"])
    random.Random(seed).shuffle(rows)
    out = SampleSet(manifest_ok=len(rows))
    used: Counter[str] = Counter()
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        group = row["modality"] or "(none)"
        path = root / row["file"]
        try:
            pixels = canonical_pixels(path)
            frames = list(pixels.frames)
        except Exception as exc:  # a sample that does not decode is reported, not fatal
            out.decode_failed[row["file"]] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        out.decoded += 1
        fmt = pixels.format
        stats[group]["samples"] += 1
        stats[group]["frames"] += len(frames)
        stats[group]["raw_bytes"] += sum(len(f) for f in frames)
        k = len(frames) if not max_frames else min(len(frames), max_frames)
        if cap_mb and frames:
            room = int(cap_mb * MB) - used[group]
            k = min(k, max(room, 0) // max(len(frames[0]), 1))
            if k == 0 and used[group] == 0:
                k = 1
        if k <= 0:
            continue
        kept = frames[:k]
        used[group] += sum(len(f) for f in kept)
        out.items.append(Item(row["file"], group, fmt, kept, k == len(frames), path))
    out.by_modality = {g: dict(c) for g, c in sorted(stats.items())}
    return out


# -- frame level -------------------------------------------------------------------------
@dataclass
class Tally:
    """Frame-level numbers of one syntax over one group of items."""

    items: int = 0
    frames: int = 0
    raw_bytes: int = 0
    encoded_bytes: int = 0
    encode_s: list[float] = field(default_factory=list)  # per repetition
    decode_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # process CPU time of the timed calls (threads show as > wall)
    wall_s: float = 0.0
    checked: int = 0  # frame decodes compared with the original
    mismatches: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> items

    @property
    def ratio(self) -> float | None:
        """Raw canonical bytes / encoded bytes."""
        return self.raw_bytes / self.encoded_bytes if self.encoded_bytes else None

    def mb_s(self, times: list[float]) -> float | None:
        """MB of raw pixel data per second, from the median repetition."""
        if not times or not self.raw_bytes:
            return None
        return self.raw_bytes / MB / max(statistics.median(times), 1e-12)

    def ms_per_frame(self, times: list[float]) -> float | None:
        """Median repetition's time divided by the frames."""
        if not times or not self.frames:
            return None
        return 1000 * statistics.median(times) / self.frames

    def summary(self) -> dict[str, Any]:
        """JSON form with the derived numbers."""
        return {
            **asdict(self),
            "ratio": self.ratio,
            "encode_mb_s": self.mb_s(self.encode_s),
            "decode_mb_s": self.mb_s(self.decode_s),
            "encode_ms_per_frame": self.ms_per_frame(self.encode_s),
            "decode_ms_per_frame": self.ms_per_frame(self.decode_s),
            "cpu_per_wall": self.cpu_s / self.wall_s if self.wall_s else None,
        }


def _same(decoded: Array, original: Array) -> bool:
    return (
        decoded.shape == original.shape
        and decoded.dtype == original.dtype
        and bool(np.array_equal(decoded, original))
    )


def measure_frames(
    items: Sequence[Item], uids: Sequence[str], reps: int, what: str
) -> dict[str, dict[str, Tally]]:
    """Encode and decode every frame of ``items`` in every syntax, ``reps`` times.

    Returns ``{uid: {group: Tally}}``.  An item a syntax cannot carry
    (``encode_problem``) or whose encoding raises :class:`CodecError` is skipped for that
    syntax in every repetition, with the reason; a decode that fails or differs from the
    original counts as a mismatch.
    """
    tallies: dict[str, dict[str, Tally]] = {u: defaultdict(Tally) for u in uids}
    excluded: dict[str, set[int]] = {u: set() for u in uids}
    clock, cpu = time.perf_counter, time.process_time
    for rep in range(reps):
        for uid in uids:
            enc_t: dict[str, float] = defaultdict(float)
            dec_t: dict[str, float] = defaultdict(float)
            for index, item in enumerate(items):
                tally = tallies[uid][item.group]
                if index in excluded[uid]:
                    continue
                if rep == 0:
                    problem = registry.encode_problem(uid, item.fmt)
                    if problem is not None:
                        excluded[uid].add(index)
                        tally.skipped[problem] = tally.skipped.get(problem, 0) + 1
                        continue
                enc_sum = dec_sum = cpu_sum = 0.0
                encoded = checked = bad = 0
                try:
                    for data in item.frames:
                        arr = item.fmt.array(data)
                        c0, t0 = cpu(), clock()
                        blob = registry.encode_frame(uid, arr, item.fmt)
                        t1 = clock()
                        try:
                            decoded = registry.decode_frame(uid, blob, item.fmt)
                        except CodecError:
                            decoded = None
                        t2, c2 = clock(), cpu()
                        enc_sum += t1 - t0
                        dec_sum += t2 - t1
                        cpu_sum += c2 - c0
                        encoded += len(blob)
                        checked += 1
                        if decoded is None or not _same(decoded, arr):
                            bad += 1
                except CodecError as exc:
                    excluded[uid].add(index)
                    reason = str(exc)[:160] or "encoder failed"
                    tally.skipped[reason] = tally.skipped.get(reason, 0) + 1
                    if rep:  # cannot happen with deterministic encoders; keep it visible
                        tally.mismatches += 1
                    continue
                enc_t[item.group] += enc_sum
                dec_t[item.group] += dec_sum
                tally.cpu_s += cpu_sum
                tally.wall_s += enc_sum + dec_sum
                tally.checked += checked
                tally.mismatches += bad
                if rep == 0:
                    tally.items += 1
                    tally.frames += len(item.frames)
                    tally.raw_bytes += item.raw_bytes
                    tally.encoded_bytes += encoded
            for group in enc_t:
                tallies[uid][group].encode_s.append(enc_t[group])
                tallies[uid][group].decode_s.append(dec_t[group])
        log(f"{what}: repetition {rep + 1}/{reps} done")
    return {u: dict(g) for u, g in tallies.items()}


def total(groups: dict[str, Tally]) -> Tally:
    """One syntax's tallies summed over groups (times per repetition summed)."""
    out = Tally()
    for t in groups.values():
        out.items += t.items
        out.frames += t.frames
        out.raw_bytes += t.raw_bytes
        out.encoded_bytes += t.encoded_bytes
        out.cpu_s += t.cpu_s
        out.wall_s += t.wall_s
        out.checked += t.checked
        out.mismatches += t.mismatches
        for reason, n in t.skipped.items():
            out.skipped[reason] = out.skipped.get(reason, 0) + n
        for name in ("encode_s", "decode_s"):
            mine, theirs = getattr(out, name), getattr(t, name)
            if theirs:
                if not mine:
                    mine.extend([0.0] * len(theirs))
                for i, value in enumerate(theirs):
                    mine[i] += value
    return out


# -- whole file --------------------------------------------------------------------------
@dataclass
class FileTally:
    """Whole-file numbers of one syntax: ``transcode_bytes`` from Explicit VR LE."""

    instances: int = 0
    raw_bytes: int = 0  # canonical pixel bytes
    ele_bytes: int = 0  # the same instances as Explicit VR Little Endian files
    out_bytes: int = 0
    transcode_ms: list[float] = field(default_factory=list)  # per instance
    read_ms: list[float] = field(default_factory=list)  # canonical_pixels of the output
    mismatches: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Explicit VR LE file bytes / file bytes in this syntax."""
        return self.ele_bytes / self.out_bytes if self.out_bytes else None

    def mb_s(self, times_ms: list[float]) -> float | None:
        """Raw pixel MB per second over all instances."""
        spent = sum(times_ms) / 1000
        return self.raw_bytes / MB / spent if spent and self.raw_bytes else None

    def summary(self) -> dict[str, Any]:
        """JSON form with the derived numbers."""
        med = statistics.median
        return {
            **asdict(self),
            "ratio": self.ratio,
            "transcode_ms_median": med(self.transcode_ms) if self.transcode_ms else None,
            "read_ms_median": med(self.read_ms) if self.read_ms else None,
            "transcode_mb_s": self.mb_s(self.transcode_ms),
            "read_mb_s": self.mb_s(self.read_ms),
        }


def measure_files(
    sources: Sequence[tuple[Item, Path]], uids: Sequence[str], tmp: Path, what: str
) -> dict[str, FileTally]:
    """``transcode_bytes`` of each Explicit VR LE source into every syntax (instance-major,
    so drifts hit all syntaxes alike); the written file is read back with
    ``canonical_pixels`` and compared frame by frame with the item's frames."""
    tallies = {u: FileTally() for u in uids}
    out_path = tmp / "readback.dcm"
    clock = time.perf_counter
    for n, (item, src) in enumerate(sources, 1):
        ele_size = src.stat().st_size
        for uid in uids:
            tally = tallies[uid]
            if registry.get(uid) and registry.encode_problem(uid, item.fmt) is not None:
                reason = str(registry.encode_problem(uid, item.fmt))
                tally.skipped[reason] = tally.skipped.get(reason, 0) + 1
                continue
            try:
                t0 = clock()
                data = transcode_bytes(src, uid)
                t1 = clock()
            except CodecError as exc:
                reason = str(exc)[:120]
                tally.skipped[reason] = tally.skipped.get(reason, 0) + 1
                continue
            out_path.write_bytes(data)
            try:
                t2 = clock()
                pixels = canonical_pixels(out_path)
                frames = list(pixels.frames)
                t3 = clock()
                ok = pixels.transfer_syntax_uid == uid and frames == item.frames
            except CodecError:
                t3, ok = t2, False
            tally.instances += 1
            tally.raw_bytes += item.raw_bytes
            tally.ele_bytes += ele_size
            tally.out_bytes += len(data)
            tally.transcode_ms.append(1000 * (t1 - t0))
            tally.read_ms.append(1000 * (t3 - t2))
            tally.mismatches += 0 if ok else 1
        if n % 25 == 0 or n == len(sources):
            log(f"{what}: {n}/{len(sources)} instances")
    out_path.unlink(missing_ok=True)
    return tallies


# -- report ------------------------------------------------------------------------------
def fmt_num(value: float | None) -> str:
    """Three significant digits (all digits of numbers ≥ 1000), '—' for none."""
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def fmt_ratio(value: float | None) -> str:
    """A compression ratio with two decimals."""
    return "—" if value is None else f"{value:.2f}"


def md_table(head: list[str], rows: Iterable[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ct_table(res: dict[str, dict[str, Any]]) -> str:
    """Frame-level table of the CT volume."""
    rows = []
    for uid, s in res.items():
        rows.append(
            [
                short(uid),
                fmt_ratio(s["ratio"]),
                fmt_num(s["encode_mb_s"]),
                fmt_num(s["decode_mb_s"]),
                fmt_num(s["encode_ms_per_frame"]),
                fmt_num(s["decode_ms_per_frame"]),
                f"{s['mismatches']} / {s['checked']}",
            ]
        )
    head = ["Transfer syntax", "Ratio", "Enc MB/s", "Dec MB/s", "Enc ms/frame"]
    return md_table([*head, "Dec ms/frame", "Mismatches / frames checked"], rows)


def samples_table(res: dict[str, dict[str, Any]]) -> str:
    """Frame-level table of the samples, all modalities together."""
    rows = []
    for uid, s in res.items():
        skipped = sum(s["skipped"].values())
        rows.append(
            [
                short(uid),
                f"{s['items']} ({s['frames']})",
                f"{s['raw_bytes'] / MB:.1f}",
                fmt_ratio(s["ratio"]),
                fmt_num(s["encode_mb_s"]),
                fmt_num(s["decode_mb_s"]),
                str(skipped),
                f"{s['mismatches']} / {s['checked']}",
            ]
        )
    head = ["Transfer syntax", "Samples (frames)", "Raw MB", "Ratio", "Enc MB/s", "Dec MB/s"]
    return md_table([*head, "Samples skipped", "Mismatches / frames checked"], rows)


def modality_table(
    by_uid: dict[str, dict[str, dict[str, Any]]], measured: dict[str, dict[str, int]]
) -> str:
    """Ratio (enc/dec MB/s) per modality and syntax."""
    uids = list(by_uid)
    rows = []
    for g, m in measured.items():
        cells = [g, f"{m['items']} ({m['frames']})", f"{m['raw_bytes'] / MB:.1f}"]
        for u in uids:
            s = by_uid[u].get(g)
            if not s or not s["items"]:
                cells.append("—")
            else:
                cells.append(
                    f"{fmt_ratio(s['ratio'])} ({fmt_num(s['encode_mb_s'])}/"
                    f"{fmt_num(s['decode_mb_s'])})"
                )
        rows.append(cells)
    head = ["Modality", "Samples (frames)", "Raw MB", *[SHORT_NAMES.get(u, u) for u in uids]]
    return md_table(head, rows)


def file_table(ct: dict[str, dict[str, Any]], smp: dict[str, dict[str, Any]]) -> str:
    """Whole-file table: CT volume and samples side by side (columns of what was run)."""
    head = ["Transfer syntax"]
    if ct:
        head += ["CT file ratio", "CT transcode ms/inst.", "CT read ms/inst."]
    if smp:
        head += ["Samples (instances)", "Samples file ratio", "Samples transcode MB/s"]
        head += ["Samples read MB/s"]
    rows = []
    for uid in dict.fromkeys([*ct, *smp]):
        c, s = ct.get(uid), smp.get(uid)
        row = [short(uid)]
        if ct:
            row += [fmt_ratio(c["ratio"]), fmt_num(c["transcode_ms_median"])] if c else ["—"] * 2
            row += [fmt_num(c["read_ms_median"])] if c else ["—"]
        if smp:
            row += [str(s["instances"]), fmt_ratio(s["ratio"])] if s else ["—"] * 2
            row += [fmt_num(s["transcode_mb_s"]), fmt_num(s["read_mb_s"])] if s else ["—"] * 2
        mism = sum(x["mismatches"] for x in (c, s) if x)
        checked = sum(x["instances"] for x in (c, s) if x)
        rows.append([*row, f"{mism} / {checked}"])
    return md_table([*head, "Mismatches / instances"], rows)


def skip_summary(res: dict[str, dict[str, Any]]) -> str:
    """Why samples were skipped: reason (syntax name removed) -> samples, syntaxes."""
    reasons: dict[str, dict[str, int]] = defaultdict(dict)
    for uid, s in res.items():
        entry = registry.get(uid)
        for reason, n in s["skipped"].items():
            text = reason.removeprefix(entry.name if entry else "").lstrip(": ")
            reasons[text][SHORT_NAMES.get(uid, uid)] = n
    parts = []
    for text, by in sorted(reasons.items(), key=lambda kv: -max(kv[1].values())):
        names = "all" if len(by) == len(res) else ", ".join(by)
        counts = sorted(set(by.values()))
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        parts.append(f"{text} ({n} samples; {names})")
    return "; ".join(parts)


def _relation(ours: float, theirs: str) -> str:
    """'faster', 'slower' or 'similar' for ms ``ours`` against a DESIGN value or range."""
    parts = [float(p) for p in theirs.replace("–", "-").split("-")]
    lo, hi = min(parts), max(parts)
    if ours < 0.8 * lo:
        return "faster"
    if ours > 1.25 * hi:
        return "slower"
    return "similar"


def design_sentence(ct: dict[str, dict[str, Any]]) -> str:
    """One sentence comparing the CT frame numbers with ../shared/DESIGN.md §6."""
    parts, faster, slower = [], 0, 0
    for uid, (enc, dec, ratio) in DESIGN_6.items():
        s = ct.get(uid)
        if not s or s["encode_ms_per_frame"] is None:
            continue
        e, d = s["encode_ms_per_frame"], s["decode_ms_per_frame"]
        for rel in (_relation(e, enc), _relation(d, dec)):
            faster += rel == "faster"
            slower += rel == "slower"
        parts.append(
            f"{SHORT_NAMES[uid]} {fmt_num(e)}/{fmt_num(d)} ms at {s['ratio']:.2f} "
            f"(DESIGN {enc}/{dec} ms at {ratio})"
        )
    if not parts:
        return ""
    n = 2 * len(parts)
    return (
        "Against ../shared/DESIGN.md §6 (median encode/decode ms per 512×512 int16 CT frame "
        "and ratio; its phantom and machine are not recorded, and its JPEG 2000 row is "
        "pylibjpeg-openjpeg where the registry uses imagecodecs/OpenJPEG): "
        + "; ".join(parts)
        + f" — {faster} of {n} timings are faster here by more than 20 %, {slower} slower "
        "by more than 25 %, the rest within that band."
    )


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and the codec library versions."""
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import imagecodecs

    libs = {}
    for name in ("htj2k", "jpeg2k", "jpegls", "jpeg8"):
        with_version = getattr(imagecodecs, f"{name}_version", None)
        if with_version is not None:
            libs[name] = str(with_version())
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "imagecodecs": package_version("imagecodecs"),
        "imagecodecs_libs": libs,
        "pydicom": package_version("pydicom"),
        "numpy": package_version("numpy"),
        "pyjpegls": package_version("pyjpegls"),
        "pylibjpeg-rle": package_version("pylibjpeg-rle"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(doc: dict[str, Any]) -> str:
    """The "## Codecs (bench/codecs.py)" section of docs/benchmarks.md."""
    m, p = doc["machine"], doc["params"]
    libs = ", ".join(f"{v}" for v in m["imagecodecs_libs"].values())
    cpu_wall = doc.get("cpu_per_wall_max")
    ct_mb = p["slices"] * CT_SIZE * CT_SIZE * 2 / MB
    s = doc.get("samples") or {}
    sel = s.get("selection", {})
    text = f"""{DOC_HEADING}

Generated by `.venv/bin/python -m bench.codecs --write-docs` on {doc["date"]}
({doc["duration_s"]:.0f} s); raw numbers in `bench/results/{doc["json_name"]}` (not
committed). `make bench` rewrites this page without this section: run the command
again afterwards.

| | |
|---|---|
| CPU | {m["cpu_model"]}, {m["cores"]} cores ({m["cores_usable"]} usable) |
| Python | {m["python"]} |
| Codecs | imagecodecs {m["imagecodecs"]} ({libs}), pyjpegls {m["pyjpegls"]}, \
pylibjpeg-rle {m["pylibjpeg-rle"]} |
| Other | pydicom {m["pydicom"]}, numpy {m["numpy"]} |
| Load average (1/5/15 min) | {m["load_average_start"]} at the start, \
{m["load_average_end"]} at the end |

Method: `registry.encode_frame` / `registry.decode_frame` on canonical frames, one
thread (process CPU / wall time of the timed calls ≤ {cpu_wall or 0:.2f}), MB = 10⁶
bytes of raw canonical pixel data, MB/s and ms/frame from the median of {p["reps"]}
repetitions (interleaved over the syntaxes), ratio = raw canonical bytes / encoded
bytes. Every decoded frame is compared with the original (dtype, shape, values); the
whole-file view decodes every written file again with `canonical_pixels` and compares
all frames. Whole file = `transcode_bytes(path, uid)` of an Explicit VR Little Endian
instance, median ms per instance (CT) or raw MB/s over all instances (samples); the
file ratio is the Explicit VR LE file size over the file size in the syntax.

### CT volume, frame level

Generated, never written to the repository: {p["slices"]} slices of 512×512 int16
({ct_mb:.1f} MB), PixelRepresentation 1, BitsStored {p["bits_stored"]}, signed HU
(the `bench/data.py` phantom: air −1000, fat −100, soft tissue 40, bone ring 750,
lungs −850, spine 1100/300 HU, gaussian noise σ 12 HU in the body), seed {p["seed"]}.

{ct_table(doc["ct"]["frames"]) if doc.get("ct") else "(not run)"}

{design_sentence(doc["ct"]["frames"]) if doc.get("ct") else ""}
"""
    if s:
        text += f"""
### Real samples, frame level

../shared/dicom-samples: {s["manifest_ok"]} files with `pixel_decode` ok in MANIFEST.tsv,
{s["decoded"]} decoded with `canonical_pixels` ({len(s["decode_failed"])} failed).
Measured: {sel.get("items", 0)} samples, {sel.get("frames", 0)} frames,
{sel.get("raw_bytes", 0) / MB:.1f} MB of {sel.get("all_raw_bytes", 0) / MB:.1f} MB
(seeded order, ≤ {p["frames_per_sample"] or "all"} frames per sample,
≤ {p["sample_mb"] or "unlimited"} MB per modality; `--sample-mb 0 --frames-per-sample 0`
measures all). Per syntax over every sample it can encode (`encode_problem` is None,
no `CodecError`): aggregate ratio = Σ raw / Σ encoded.

{samples_table(s["frames_total"])}

Skipped: {skip_summary(s["frames_total"]) or "none"}.

Per modality: ratio (encode/decode MB/s); — where the syntax cannot carry the images
(e.g. BitsAllocated 1 or 32, YBR photometrics for JPEG 2000).

{modality_table(s["frames"], s["measured_by_modality"])}
"""
    files_ct = (doc.get("ct") or {}).get("files") or {}
    files_s = s.get("files") or {}
    if files_ct or files_s:
        text += f"""
### Whole file (`transcode_bytes` from Explicit VR Little Endian)

Samples: the measured samples whose every frame is in the measured subset, written as
Explicit VR Little Endian first (not timed).

{file_table(files_ct, files_s)}
"""
    mism = doc["mismatches_total"]
    text += f"""
Lossless check: {mism} mismatches in {doc["checks_total"]:,} frame decodes and file
read-backs{" — every encoding decoded to the original pixels" if mism == 0 else ""}.

Run it: `.venv/bin/python -m bench.codecs` (`--help` for the options; `--write-docs`
rewrites this section, `--sample-mb 0 --frames-per-sample 0` measures every sample).
"""
    return text


def write_docs(doc_path: Path, section: str) -> None:
    """Replace the codecs section of ``doc_path``, or insert it before "## Running it"."""
    text = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == DOC_HEADING), None)
    block = section.rstrip("\n") + "\n\n"
    if start is not None:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [block]
    else:
        at = next((i for i, ln in enumerate(lines) if ln.rstrip() == "## Running it"), None)
        if at is None:
            lines.append(("\n" if text and not text.endswith("\n\n") else "") + block)
        else:
            lines.insert(at, block)
    doc_path.write_text("".join(lines).rstrip("\n") + "\n")


# -- main --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="bench.codecs",
        description="Codec ratio and speed (frame level and whole file) on a CT phantom "
        "and the real samples; see the module docstring.",
    )
    p.add_argument("--slices", type=int, default=50, help="CT slices (default 50)")
    p.add_argument("--bits-stored", type=int, choices=(12, 16), default=12)
    p.add_argument("--reps", type=int, default=3, help="repetitions, median (default 3, ≥3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--syntaxes",
        help="comma-separated frame syntax UIDs (default: "
        + ",".join(u.removeprefix("1.2.840.10008.1.2") for u in FRAME_SYNTAXES)
        + "; a leading '.' is short for 1.2.840.10008.1.2)",
    )
    p.add_argument("--samples", type=Path, default=None, help="dicom-samples directory")
    p.add_argument(
        "--sample-mb", type=float, default=12.0, help="raw MB measured per modality (0: all)"
    )
    p.add_argument(
        "--frames-per-sample", type=int, default=4, help="frames measured per sample (0: all)"
    )
    p.add_argument("--no-ct", action="store_true", help="skip the CT volume")
    p.add_argument("--no-samples", action="store_true", help="skip the real samples")
    p.add_argument("--no-files", action="store_true", help="skip the whole-file view")
    p.add_argument("--json", type=Path, help="results (default bench/results/codecs-<ts>.json)")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3")
    if args.slices < 1:
        p.error("--slices must be at least 1")
    uids = []
    for raw in (args.syntaxes or "").split(","):
        if not raw.strip():
            continue
        uid = "1.2.840.10008.1.2" + raw.strip() if raw.strip().startswith(".") else raw.strip()
        entry = registry.get(uid)
        if entry is None or not entry.encapsulated or entry.encoder is None or not entry.lossless:
            p.error(f"{uid}: not a lossless encapsulated syntax with an encoder in the registry")
        uids.append(uid)
    args.frame_uids = uids or list(FRAME_SYNTAXES)
    args.file_uids = [*args.frame_uids, ts.DEFLATED_ELE, ts.ELE]
    return args


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Measure everything; the results document."""
    started = time.monotonic()
    doc: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            "slices": args.slices,
            "bits_stored": args.bits_stored,
            "reps": args.reps,
            "seed": args.seed,
            "sample_mb": args.sample_mb,
            "frames_per_sample": args.frames_per_sample,
            "frame_syntaxes": args.frame_uids,
            "file_syntaxes": args.file_uids,
        },
    }
    checks = mismatches = 0
    cpu_wall: list[float] = []
    if not args.no_ct:
        fmt = ct_format(args.bits_stored)
        log(f"CT volume: {args.slices} × 512×512 int16, BitsStored {args.bits_stored}")
        slices = ct_volume(args.slices, args.bits_stored, args.seed)
        items = [
            Item(f"CT slice {i + 1}", "CT phantom", fmt, [a.tobytes()], True)
            for i, a in enumerate(slices)
        ]
        frames = measure_frames(items, args.frame_uids, args.reps, "CT frames")
        ct_res = {u: total(g).summary() for u, g in frames.items()}
        doc["ct"] = {"frames": ct_res}
        for s in ct_res.values():
            checks += s["checked"]
            mismatches += s["mismatches"]
            if s["cpu_per_wall"]:
                cpu_wall.append(s["cpu_per_wall"])
        print("\nCT volume, frame level\n" + ct_table(ct_res) + "\n", flush=True)
        if not args.no_files:
            paths = write_ct_files(slices, fmt, tmp / "ct")
            files = measure_files(
                [(item, path) for item, path in zip(items, paths, strict=True)],
                args.file_uids,
                tmp,
                "CT whole files",
            )
            doc["ct"]["files"] = {u: t.summary() for u, t in files.items()}
            for t in files.values():
                checks += t.instances
                mismatches += t.mismatches
    if not args.no_samples:
        root = args.samples or samples_dir()
        if not (root / "MANIFEST.tsv").exists():
            log(f"no samples: {root}/MANIFEST.tsv missing; skipped")
        else:
            log(f"decoding the samples of {root}")
            ss = load_samples(root, args.sample_mb, args.frames_per_sample, args.seed)
            all_raw = sum(int(v["raw_bytes"]) for v in ss.by_modality.values())
            measured = sum(i.raw_bytes for i in ss.items)
            log(
                f"{ss.decoded}/{ss.manifest_ok} samples decoded ({all_raw / MB:.0f} MB); "
                f"measuring {len(ss.items)} of them, {measured / MB:.1f} MB"
            )
            frames = measure_frames(ss.items, args.frame_uids, args.reps, "sample frames")
            by_uid = {u: {g: t.summary() for g, t in gs.items()} for u, gs in frames.items()}
            totals = {u: total(gs).summary() for u, gs in frames.items()}
            for s in totals.values():
                checks += s["checked"]
                mismatches += s["mismatches"]
                if s["cpu_per_wall"]:
                    cpu_wall.append(s["cpu_per_wall"])
            groups: dict[str, dict[str, int]] = {}
            for i in ss.items:
                g = groups.setdefault(i.group, {"items": 0, "frames": 0, "raw_bytes": 0})
                g["items"] += 1
                g["frames"] += len(i.frames)
                g["raw_bytes"] += i.raw_bytes
            groups = dict(sorted(groups.items()))
            doc["samples"] = {
                "root": str(root),
                "manifest_ok": ss.manifest_ok,
                "decoded": ss.decoded,
                "decode_failed": ss.decode_failed,
                "measured_by_modality": groups,
                "decoded_by_modality": ss.by_modality,
                "selection": {
                    "items": len(ss.items),
                    "frames": sum(len(i.frames) for i in ss.items),
                    "raw_bytes": measured,
                    "all_raw_bytes": all_raw,
                    "files": [i.label for i in ss.items],
                },
                "frames": by_uid,
                "frames_total": totals,
            }
            print("\nReal samples, frame level\n" + samples_table(totals), flush=True)
            print("\n" + modality_table(by_uid, groups) + "\n", flush=True)
            if not args.no_files:
                sources = []
                for n, item in enumerate(i for i in ss.items if i.complete and i.path):
                    assert item.path is not None
                    try:
                        ele = transcode_bytes(item.path, ts.ELE)
                    except CodecError as exc:
                        log(f"{item.label}: not written as Explicit VR LE: {exc}")
                        continue
                    src = tmp / "samples" / f"{n:04d}.dcm"
                    src.parent.mkdir(parents=True, exist_ok=True)
                    src.write_bytes(ele)
                    sources.append((item, src))
                files = measure_files(sources, args.file_uids, tmp, "sample whole files")
                doc["samples"]["files"] = {u: t.summary() for u, t in files.items()}
                for t in files.values():
                    checks += t.instances
                    mismatches += t.mismatches
    doc["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["cpu_per_wall_max"] = max(cpu_wall) if cpu_wall else None
    doc["checks_total"] = checks
    doc["mismatches_total"] = mismatches
    doc["design_comparison"] = design_sentence((doc.get("ct") or {}).get("frames") or {})
    doc["duration_s"] = round(time.monotonic() - started, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every encoding decoded to the original pixels, else 1."""
    args = parse_args(argv)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path: Path = args.json or REPO / "bench" / "results" / f"codecs-{stamp}.json"
    # pydicom warns about odd values in some samples (e.g. UIDs with leading zeros)
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    tmp = Path(tempfile.mkdtemp(prefix="dicomhub-bench-codecs-"))
    try:
        doc = run(args, tmp)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["json_name"] = json_path.name
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = json_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp_json.replace(json_path)
    files_ct = (doc.get("ct") or {}).get("files") or {}
    files_s = (doc.get("samples") or {}).get("files") or {}
    if files_ct or files_s:
        print("\nWhole file (transcode_bytes from Explicit VR LE)")
        print(file_table(files_ct, files_s))
    if doc["design_comparison"]:
        print("\n" + doc["design_comparison"])
    print(
        f"\nlossless check: {doc['mismatches_total']} mismatches in "
        f"{doc['checks_total']} frame decodes / file read-backs"
    )
    print(f"results: {json_path}  ({doc['duration_s']:.0f} s)")
    if args.write_docs:
        write_docs(args.doc, markdown(doc))
        print(f"report:  {args.doc} ({DOC_HEADING})")
    return 0 if doc["mismatches_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
