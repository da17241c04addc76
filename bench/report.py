"""Results: machine facts, the comparison table, JSON and docs/benchmarks.md."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Metric:
    """One row of the table: a value per server (median of runs)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, float] = field(default_factory=dict)
    runs: dict[str, list[float]] = field(default_factory=dict)
    target: str = ""


def machine_facts(data_dir: Path) -> dict[str, Any]:
    """CPU, cores, RAM, OS, kernel and the filesystem holding the servers' data."""
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kib / 1024**2, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "data_filesystem": _filesystem(data_dir),
        "fsync_ms": fsync_latency_ms(data_dir),
    }


def fsync_latency_ms(directory: Path, n: int = 20) -> float:
    """Median ms to write 512 KiB, fsync it and fsync its directory (the durable-store cost)."""
    target = directory / "fsync-probe"
    target.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(512 * 1024)
    times = []
    try:
        for i in range(n):
            start = time.perf_counter()
            fd = os.open(target / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            dfd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    times.sort()
    return round(times[len(times) // 2], 2)


def _filesystem(path: Path) -> str:
    best, fstype, device = "", "?", "?"
    resolved = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, kind = line.split()[:3]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype, device = mount, kind, dev
    except OSError:
        pass
    return f"{fstype} ({device} on {best})"


def package_version(name: str) -> str:
    """Installed version of a Python distribution, or '?'."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def debian_version(pkg: str) -> str:
    """Installed version of a Debian package, or '?'."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(m: Metric, server: str, peer: str = "orthanc") -> float | None:
    """How many times better ``server`` is than ``peer`` (>1: better)."""
    a, b = m.values.get(server), m.values.get(peer)
    if a is None or b is None or not a or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b if m.higher_is_better else b / a


def table(metrics: list[Metric], servers: list[str], peer: str = "orthanc") -> str:
    """The comparison as a Markdown table."""
    ours = [s for s in servers if s != peer]
    head = ["Workload", "Unit", *servers, *[f"{s} vs {peer}" for s in ours], "Target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        cells = [m.label, m.unit + (" ↑" if m.higher_is_better else " ↓")]
        cells += [_fmt(m.values.get(s)) for s in servers]
        for s in ours:
            r = ratio(m, s, peer)
            cells.append("—" if r is None else f"{r:.2f}×")
        cells.append(m.target)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(cpu: dict[str, dict[str, float]], servers: list[str]) -> str:
    """Server CPU milliseconds per operation as a Markdown table."""
    lines = ["| Operation | " + " | ".join(servers) + " |", "|" + "---|" * (len(servers) + 1)]
    for phase, by in cpu.items():
        lines.append(f"| {phase} | " + " | ".join(_fmt(by.get(s)) for s in servers) + " |")
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any], metrics: list[Metric]) -> None:
    """Write every number, every run and the parameters as JSON (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**results, "metrics": [asdict(m) for m in metrics]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)


def markdown(results: dict[str, Any], metrics: list[Metric], servers: list[str]) -> str:
    """docs/benchmarks.md: machine, versions, methodology, table, notes."""
    m = results["machine"]
    v = results["versions"]
    p = results["params"]
    notes: list[str] = results.get("notes", [])
    static = results.get("static_limit_mb_s")
    wado = next((x for x in metrics if x.key == "wado_series"), None)
    static_lines = []
    if static and wado:
        for s in servers:
            if s in wado.values:
                static_lines.append(f"{s} {100 * wado.values[s] / static:.0f} %")
    n_small = p["qido_studies"] * p["per_study"]
    workers = ", ".join(
        "one process (`--workers 1 --dimse-workers 1`, column `dicomhub`)"
        if w == 1
        else f"{w} HTTP and {w} DIMSE worker processes forked from a zygote (`--workers {w}`, "
        f"column `dicomhub-w{w}`: the default, one per usable core, on {w} cores)"
        for w in p["dicomhub_workers"]
    )
    load = (
        f"{m['load_average_start']} at the start, {m['load_average_end']} at the end "
        "(other work on the machine shows here)"
        if "load_average_start" in m
        else "not recorded"
    )
    auth = (
        "- **Authentication.** dicomhub requires it: every request carries a bearer token of\n"
        "  the first-start `admin` user (`POST /auth/token`, password grant), so token\n"
        "  verification, access checks and one audit event per request are in every\n"
        "  number. Orthanc runs without authentication (`AuthenticationEnabled` false).\n"
        if p.get("dicomhub_auth")
        else ""
    )
    text = f"""# Benchmarks: dicomhub and Orthanc, same machine, same run, same data

Generated by `make bench` (`bench/run.py`) on {results["date"]}; every number below
comes from that one run. Raw numbers, every run and all parameters:
`bench/results/latest.json` (not committed). The machine is shared and noisy (±20–50 %
between runs is normal here): compare columns within one table, not across dates.

## Machine and versions

| | |
|---|---|
| CPU | {m["cpu_model"]} |
| Cores | {m["cores"]} ({m["cores_usable"]} usable) |
| RAM | {m["ram_gib"]} GiB |
| OS / kernel | {m["os"]} / {m["kernel"]} |
| Servers' data on | {m["data_filesystem"]} |
| Load average (1/5/15 min) | {load} |
| Durable write here | {m["fsync_ms"]} ms median to write 512 KiB + fsync file + fsync directory |
| dicomhub | {v["dicomhub"]} (Python {m["python"]}, uvicorn {v["uvicorn"]}, SQLite index) |
| Orthanc | {v["orthanc"]} (Debian {v["orthanc_deb"]}), DICOMweb plugin {v["orthanc_dicomweb"]} |
| Client | requests {v["requests"]}, pydicom {v["pydicom"]}, numpy {v["numpy"]}; \
DCMTK storescu {v.get("storescu", "?")} |

## Methodology

- **Servers.** All run at the same time on loopback ports, each on a fresh temporary
  directory, and are measured one after the other (round-robin within each run, so
  drifts of the machine hit all alike). dicomhub is started as users do,
  `dicomhub serve --data-dir … --http-port …` (SQLite index, fsync on), with
  {workers}, log level `{p["dicomhub_log_level"]}`. Orthanc {v["orthanc"]} runs with
  its defaults (SQLite index, `SyncStorageArea` = fsync on, 50 HTTP threads,
  `TCP_NODELAY=1`) plus the DICOMweb plugin at `/dicom-web/`.
{auth}- **Data (generated, never downloaded).** A CT phantom series: {p["slices"]} slices of
  512×512 int16 (MONOCHROME2, RescaleIntercept −1024; an elliptic body with fat,
  a bone ring, lungs and spine, gaussian noise), CT Image Storage, Explicit VR Little
  Endian, {p["ct_mb"]:.1f} MB in total. For QIDO-RS, {p["qido_studies"]:,} small studies
  × {p["per_study"]} instances = {n_small:,} instances of 64×64 pixels with varied
  PatientName, PatientID and StudyDate (2010–2024). The same files go to every server.
- **Client.** Python `requests` on the same 2 cores (it competes with the server for
  CPU, equally for both), `Accept-Encoding: identity`, keep-alive sessions.
- **STOW-RS.** `POST /studies` with multipart/related bodies of {p["per_request"]}
  instances (`type="application/dicom"`): 4 parallel clients (threads, one body each at
  a time) and 1 client; instances/s over the whole series. The study is deleted
  before each run (dicomhub: `DELETE /dicom-web/studies/{{uid}}`; Orthanc:
  `/tools/lookup` then `DELETE /studies/{{id}}`), so each run ingests fresh.
  {p["runs"]} runs, median. The small studies are then loaded once the same way
  (4 clients × 100 instances per request), also reported.
- **C-STORE.** The same CT series sent to each server's DICOM port by DCMTK
  `storescu` {v.get("storescu", "")}: 1 association (one `storescu` process sending
  every file) and 4 associations in parallel (4 processes, the series split into 4
  groups of consecutive slices); instances/s from the start of the processes until
  the last one has exited (association release included). The same options for both
  servers: `{p.get("storescu_options", "storescu -xe -R")}` (Explicit VR Little Endian
  proposed first, i.e. sent as stored, no conversion; CT Image Storage only;
  storescu's default 16 KiB receive PDU, the data PDUs being bounded by what each
  server announces: Orthanc's default `MaximumPduLength` 16 KiB, dicomhub's default
  `max_pdu` 256 KiB) and `TCP_NODELAY=1` in storescu's environment (DCMTK then
  disables Nagle's algorithm; without it every C-STORE waits ~50 ms for a delayed
  ACK). Called AE titles: `DICOMHUB` (dicomhub's `ae_title` default) and `ORTHANC`.
  dicomhub accepts associations only from registered devices: the calling AE title
  is registered once with `dicomhub device add … --subscriber default --ae-title
  {p.get("storescu_aet", "BENCHSTORESCU")} --address 127.0.0.1` on its data
  directory, as an operator would; Orthanc accepts C-STORE from any AE title by
  default (`DicomAlwaysAllowStore`). The study is deleted before each run; a run
  counts only if every `storescu` exits with status 0 and prints no error, and
  QIDO-RS then shows the study with all {p["slices"]} instances
  (`NumberOfStudyRelatedInstances`). {p["runs"]} runs, median; server CPU per
  instance over all C-STORE runs. The last
  run leaves the series stored once for the retrieve workloads.
- **QIDO-RS.** `GET /studies?…` with {p["queries"]} different queries per kind and
  run, sequential, {p["qido_runs"]} runs: by PatientID, by PatientName prefix
  wildcard (`NAME*`, the `*` sent unencoded), by StudyDate range (7 days), by
  StudyInstanceUID. p50 and p95 per run, median over runs. Each answer's study count
  is checked against the generated data.
- **WADO-RS series.** `GET /studies/{{s}}/series/{{se}}` with Accept
  `multipart/related; type="application/dicom"`, body streamed in 1 MiB chunks and
  counted; MB/s = 10⁶ bytes/s; {p["runs"]} runs, median, after one warm-up.
  The static limit is the same files sent by a trivial asyncio server with
  `loop.sendfile` as one multipart body, read by the same client.
- **Series metadata.** `GET /studies/{{s}}/series/{{se}}/metadata` (DICOM JSON) of a
  series of {p.get("metadata_instances", "the CT")} small instances (64×64, stored once
  beforehand by STOW-RS), whole body, ms; {p["runs"]} runs, median, after one warm-up.
- **Frames.** {p["frames"]} single-frame requests `/instances/{{i}}/frames/1` over the
  series, Accept `multipart/related; type="application/octet-stream";
  transfer-syntax=1.2.840.10008.1.2.1`; each payload checked to be 512·512·2 bytes;
  p50/p95 per run, median over {p["runs"]} runs.
- **Big study.** A study of {p.get("big_gb", 2.0):g} GB or more in multi-frame
  instances (300 frames of 512×512 16-bit, ~157 MB each) sent by STOW-RS one instance per
  request, the body streamed from disk; then the whole study by WADO-RS, streamed and
  counted; one run; MB/s of each, and the servers' peak memory during it (1 run, last
  workload, so it is also the peak of the whole run).
- **Memory.** Each server's memory is sampled every 0.25 s during the whole run: the
  proportional set size (PSS, /proc/<pid>/smaps_rollup) summed over its processes —
  a page shared by n processes counts 1/n in each, so the sum is what the server holds;
  the peak over the big study carries the ≤300 MiB target, the peak over the run is
  shown too.  Beside it, the kernel's peak RSS (VmHWM) summed over the processes: for a
  single process about the same, for forked workers an overcount (every shared page
  counted once per process).

## Results

Ratios: for throughput dicomhub/Orthanc, for latency and memory Orthanc/dicomhub
(speedup); above 1× dicomhub is better. ↑ higher is better, ↓ lower is better.
Targets are the roadmap's, for reference, not assertions.

{table(metrics, servers)}

Static sendfile limit for the same series and client: {_fmt(static)} MB/s
({"; ".join(static_lines) or "—"} of it).

### Server CPU per operation (ms)

User + system CPU time of the server's processes (from /proc) during the timed
requests, divided by the operations served: where a server spends its cores, apart
from waiting on the disk or the client.

{cpu_table(results.get("server_cpu_ms_per_op", {}), servers)}
"""
    if notes:
        text += "\n## Notes from this run\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    text += """
## Running it

```
make bench                          # default run (~15 min on 2 cores, QIDO at 100k)
make bench ARGS=--quick             # smoke run (~2 min)
make bench ARGS="--workloads stow,cstore"   # ingest only (~2 min)
.venv/bin/python -m bench.run --help
.venv/bin/python -m bench.report    # re-render this page from bench/results/latest.json
.venv/bin/python -m bench.report --also bench/results/qido-100k.json   # … plus another run
```

`make bench` installs Debian's `orthanc`, `orthanc-dicomweb` and `dcmtk` if they are missing
(apt-get), generates the data in a temporary directory, starts and stops every server
itself, and overwrites this page and `bench/results/latest.json`.
"""
    return text


def additional_run(doc: dict[str, Any]) -> str:
    """A section for another run's results (same machine, other parameters)."""
    p = doc["params"]
    metrics = [Metric(**m) for m in doc["metrics"]]
    servers = list(doc["servers"])
    n = p["qido_studies"] * p["per_study"]
    load = doc["machine"].get("load_average_start"), doc["machine"].get("load_average_end")
    return f"""
## Additional run: {", ".join(p["workloads"])} at {n:,} small instances

`bench.run --workloads {",".join(p["workloads"])} --qido-studies {p["qido_studies"]} --workers \
{",".join(str(w) for w in p["dicomhub_workers"])}`
on {doc["date"]} ({doc["duration_s"] / 60:.0f} min; load average {load[0]} at the start,
{load[1]} at the end). Same method as above; only these parameters differ.

{table(metrics, servers)}

Server CPU per operation (ms):

{cpu_table(doc.get("server_cpu_ms_per_op", {}), servers)}
"""


#: Sections written by other benchmarks (bench/codecs.py) that a re-render keeps.
KEPT_SECTIONS = ("## History", "## Additional run", "## Codecs")  # "## Notes" belong to one run


def keep_sections(old: str, new: str) -> str:
    """``new`` with the :data:`KEPT_SECTIONS` of ``old`` carried over (before "## Running it")."""
    for heading in KEPT_SECTIONS:
        start = old.find("\n" + heading)
        if start < 0 or ("\n" + heading) in new:
            continue
        end = old.find("\n## ", start + 1)
        section = old[start : end if end >= 0 else len(old)]
        marker = "\n## Running it\n"
        new = new.replace(marker, section + marker, 1) if marker in new else new + section
    return new


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown report from a results JSON (no servers, no measuring)."""
    import argparse

    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(prog="bench.report", description=main.__doc__)
    parser.add_argument("json", nargs="?", type=Path, default=repo / "bench/results/latest.json")
    parser.add_argument("markdown", nargs="?", type=Path, default=repo / "docs/benchmarks.md")
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="results of another run (e.g. QIDO at 100k instances) to add as a section",
    )
    args = parser.parse_args(argv)
    doc = json.loads(args.json.read_text())
    metrics = [Metric(**m) for m in doc.pop("metrics")]
    text = markdown(doc, metrics, list(doc["servers"]))
    extra = "".join(additional_run(json.loads(path.read_text())) for path in args.also)
    if extra:
        text = text.replace("\n## Running it\n", extra + "\n## Running it\n", 1)
    if args.markdown.exists():
        text = keep_sections(args.markdown.read_text(), text)
    args.markdown.write_text(text)
    print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
