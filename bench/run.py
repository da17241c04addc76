"""``make bench``: dicomhub side by side with Orthanc — same machine, same run, same data.

Installs Orthanc if missing, generates the data, starts every server on a loopback
port, runs the workloads (STOW-RS, C-STORE, QIDO-RS, WADO-RS series, metadata, frames), prints
the table and writes ``bench/results/latest.json`` and ``docs/benchmarks.md``.
Everything it starts is stopped and its temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import pydicom
import requests

from bench import data, workloads
from bench.report import (
    Metric,
    cpu_table,
    debian_version,
    keep_sections,
    machine_facts,
    markdown,
    package_version,
    table,
    write_json,
)
from bench.servers import (
    REPO,
    Dicomhub,
    Orthanc,
    Server,
    StaticServer,
    ensure_orthanc,
    session,
    stop_all,
)

T = TypeVar("T")
PEER = "orthanc"
FRAME_BYTES = data.CT_SIZE * data.CT_SIZE * 2
DICOM_JSON = workloads.DICOM_JSON
FRAMES = workloads.FRAMES_ACCEPT
WORKLOADS = ("stow", "cstore", "qido", "wado", "metadata", "frames", "bigstudy")
CSTORE_ASSOCIATIONS = (1, 4)
#: CT instances sent with one association each (the "association per image" row)
CSTORE_EACH = 20
MULTIPART = workloads.MULTIPART_DICOM
QIDO_TARGET = "≥10× faster; p95 ≤20 ms at ≥100k inst."
_t0 = time.monotonic()


def log(msg: str) -> None:
    """Progress on stdout with the elapsed time."""
    print(f"[{time.monotonic() - _t0:6.1f}s] {msg}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` lowers the defaults for a smoke run."""
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="~2-minute smoke run")
    p.add_argument("--slices", type=int, help="CT slices (default 200)")
    p.add_argument(
        "--qido-studies",
        type=int,
        help="small studies (default 20000, i.e. 100k instances; quick 300)",
    )
    p.add_argument("--per-study", type=int, default=5, help="instances per small study")
    p.add_argument("--runs", type=int, help="runs per workload (default 5; quick 3)")
    p.add_argument("--qido-runs", type=int, help="runs of the QIDO queries (default 3)")
    p.add_argument("--queries", type=int, help="QIDO queries per kind and run (default 200)")
    p.add_argument("--frames", type=int, help="frame requests per run (default 50)")
    p.add_argument(
        "--big-gb", type=float, default=2.0, help="size of the big study (default 2.0 GB)"
    )
    p.add_argument(
        "--metadata-instances",
        type=int,
        default=500,
        help="instances in the series whose metadata is timed (default 500)",
    )
    p.add_argument(
        "--workers",
        help="comma-separated dicomhub worker counts to compare (default 1,2; quick 1)",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)",
    )
    p.add_argument("--no-orthanc", action="store_true", help="measure dicomhub only")
    p.add_argument("--dicomhub-log-level", default="warning", help="dicomhub --log-level")
    p.add_argument("--tmp-dir", type=Path, help="parent of the temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--json", type=Path, default=REPO / "bench" / "results" / "latest.json", help="results"
    )
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="report")
    p.add_argument("--no-doc", action="store_true", help="do not write the Markdown report")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "slices": 200,
        "qido_studies": 300 if quick else 20000,  # x 5: the roadmap's >=100k instances
        "runs": 3 if quick else 5,
        "qido_runs": 3,
        "queries": 50 if quick else 200,
        "frames": 20 if quick else 50,
        "workers": "1" if quick else "1,2",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.selected = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.selected) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    if args.runs < 3 or args.qido_runs < 3:
        p.error("--runs and --qido-runs must be at least 3")
    return args


class Bench:
    """One benchmark run: data, servers, workloads and the collected numbers."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.servers: list[Server] = []
        self.static: StaticServer | None = None
        self.metrics: list[Metric] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self.rng = np.random.default_rng(args.seed)
        self.cpu: dict[str, dict[str, list[float]]] = {}  # phase -> server -> [seconds, ops]
        self.ct_stored = False
        self.dead: set[str] = set()
        self.load_start = [round(x, 2) for x in os.getloadavg()]
        self.sampler: MemorySampler | None = None

    # -- helpers -------------------------------------------------------------------------
    def metric(self, key: str, label: str, unit: str, higher: bool, target: str = "") -> Metric:
        """Create and register a table row."""
        m = Metric(key, label, unit, higher, target=target)
        self.metrics.append(m)
        return m

    def attempt(self, server: Server, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Run ``fn(*args)``; a failure becomes a note instead of ending the run."""
        if self.exited(server):
            return None
        try:
            return fn(*args)
        except (requests.RequestException, RuntimeError, ValueError, KeyError) as exc:
            if isinstance(exc, requests.ConnectionError) and server.proc is not None:
                # a server that is going away refuses connections before it exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(5)
            if self.exited(server):
                return None
            note = f"{server.name}: {what} failed: {exc}"
            log("ERROR " + note)
            self.notes.append(note[:500])
            return None

    def exited(self, server: Server) -> bool:
        """Whether the server's process has ended; noted once, with its log on stderr."""
        code = server.proc.poll() if server.proc is not None else None
        if code is None:
            return False
        if server.name not in self.dead:
            self.dead.add(server.name)
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            note = f"{server.name} stopped during the run ({how}); later measurements are missing"
            log("ERROR " + note)
            self.notes.append(note)
            print(f"--- end of {server.name}'s log ---\n{server.log_tail()}", file=sys.stderr)
        return True

    def measure(
        self, server: Server, phase: str, ops: int, fn: Callable[..., T], *args: Any
    ) -> T | None:
        """Like :meth:`attempt`, also adding the server's CPU time to ``phase`` (ops of it)."""
        before = server.cpu_seconds()
        result = self.attempt(server, phase, fn, *args)
        if result is not None:
            acc = self.cpu.setdefault(phase, {}).setdefault(server.name, [0.0, 0.0])
            acc[0] += server.cpu_seconds() - before
            acc[1] += ops
        return result

    def _medians_and_cpu(self, rows: Iterable[Metric], key: str, label: str, phase: str) -> None:
        """Each row's value per server is the median of its runs; then a row of the
        server CPU per operation of ``phase``."""
        for m in rows:
            m.values = {k: workloads.median(v) for k, v in m.runs.items()}
        cpu = self.metric(key, label, "ms", False)
        cpu.values = dict(self.cpu_ms_per_op().get(phase, {}))

    def cpu_ms_per_op(self) -> dict[str, dict[str, float]]:
        """Server CPU milliseconds per operation, by phase and server."""
        return {
            phase: {name: 1000 * sec / ops for name, (sec, ops) in by.items() if ops}
            for phase, by in self.cpu.items()
        }

    # -- phases --------------------------------------------------------------------------
    def generate(self) -> None:
        """Write the CT series and the small studies."""
        a = self.args
        log(f"generating CT phantom: {a.slices} × 512×512")
        self.ct = data.make_ct_series(self.tmp / "data" / "ct", a.slices, seed=a.seed)
        n = a.qido_studies * a.per_study
        log(f"generating {a.qido_studies} small studies × {a.per_study} = {n} instances")
        self.small = data.make_small_studies(
            self.tmp / "data" / "small", a.qido_studies, a.per_study, seed=a.seed + 1
        )
        log(f"data ready: CT {self.ct.total_bytes / 1e6:.1f} MB")

    def start_servers(self) -> None:
        """Start Orthanc, dicomhub (each worker count) and the static server."""
        a = self.args
        if not a.no_orthanc:
            ensure_orthanc()
            self.servers.append(Orthanc(self.tmp / "orthanc"))
        for w in a.worker_counts:
            name = "dicomhub" if w == 1 else f"dicomhub-w{w}"
            self.servers.append(Dicomhub(self.tmp / name, w, a.dicomhub_log_level))
        self.static = StaticServer(self.tmp / "static", [i.path for i in self.ct.instances])
        for s in [*self.servers, self.static]:
            s.start()
            log(f"started {s.name} {s.version} on port {s.port} (pid {s.proc and s.proc.pid})")
        # the table shows ours first, the peer last
        self.servers.sort(key=lambda s: (s.name == PEER, s.name))

    def stow_ct(self) -> None:
        """STOW-RS of the CT series, 4 clients and 1 client, study deleted before each run."""
        a = self.args
        bodies = workloads.stow_bodies([i.path for i in self.ct.instances], 50)
        n = len(self.ct.instances)
        rows = {
            4: self.metric(
                "stow_ct_4clients",
                "STOW-RS CT series, 4 clients × 50 inst./request",
                "inst/s",
                True,
                "≥2× Orthanc",
            ),
            1: self.metric(
                "stow_ct_1client", "STOW-RS CT series, 1 client × 50 inst./request", "inst/s", True
            ),
        }
        study = self.ct.study_instance_uid
        with session() as s:
            for run in range(a.runs):
                for clients, m in rows.items():
                    for srv in self.servers:
                        self.attempt(srv, "delete study", srv.delete_study, s, study)
                        secs = self.measure(
                            srv, "STOW-RS CT instance", n, workloads.stow, srv.base, bodies, clients
                        )
                        if secs:
                            m.runs.setdefault(srv.name, []).append(n / secs)
                log(
                    f"STOW-RS run {run + 1}/{a.runs}: "
                    + ", ".join(
                        f"{srv.name} {rows[4].runs.get(srv.name, [0])[-1]:.0f}"
                        f"/{rows[1].runs.get(srv.name, [0])[-1]:.0f}"
                        for srv in self.servers
                    )
                    + " inst/s (4/1 clients)"
                )
        self._medians_and_cpu(
            rows.values(),
            "stow_ct_cpu",
            "Server CPU per stored CT instance (all STOW-RS runs)",
            "STOW-RS CT instance",
        )
        self.ct_stored = True

    def cstore_ct(self) -> None:
        """C-STORE of the CT series with DCMTK storescu: 1 association, then 4 in parallel
        (4 processes, the series split in 4 consecutive groups); study deleted before each
        run, every instance checked to have arrived after it."""
        a = self.args
        paths = [i.path for i in self.ct.instances]
        n = len(paths)
        study = self.ct.study_instance_uid
        rows = {
            1: self.metric(
                "cstore_ct_1assoc",
                "C-STORE CT series, 1 association (storescu)",
                "inst/s",
                True,
                "≥1× Orthanc",
            ),
            4: self.metric(
                "cstore_ct_4assoc",
                "C-STORE CT series, 4 associations in parallel (storescu)",
                "inst/s",
                True,
            ),
        }
        each = self.metric(
            "cstore_ct_assoc_each",
            f"C-STORE, a new association per CT instance (storescu × {CSTORE_EACH})",
            "assoc/s",
            True,
        )
        groups = {
            k: [paths[i * n // k : (i + 1) * n // k] for i in range(k)] for k in CSTORE_ASSOCIATIONS
        }
        ready = [
            srv
            for srv in self.servers
            if self.attempt(srv, "C-STORE set-up", self._cstore_setup, srv) is not None
        ]
        complete: dict[str, bool] = {}  # server -> the last run left the whole series
        with session() as s:
            for run in range(a.runs):
                rates: dict[tuple[int, str], float] = {}
                for assocs, m in rows.items():
                    for srv in ready:
                        rate = self._cstore_run(
                            srv,
                            s,
                            study,
                            run,
                            f"{assocs} association(s)",
                            "C-STORE CT instance",
                            workloads.cstore,
                            groups[assocs],
                            n,
                        )
                        complete[srv.name] = rate is not None
                        if rate is not None:
                            m.runs.setdefault(srv.name, []).append(rate)
                            rates[assocs, srv.name] = rate
                for srv in ready:  # a modality that opens an association per image
                    complete[srv.name] = False  # only CSTORE_EACH instances are left
                    rate = self._cstore_run(
                        srv,
                        s,
                        study,
                        run,
                        "association per instance",
                        "C-STORE association of one CT instance",
                        workloads.cstore_each,
                        paths[:CSTORE_EACH],
                        CSTORE_EACH,
                    )
                    if rate is not None:
                        each.runs.setdefault(srv.name, []).append(rate)
                log(
                    f"C-STORE run {run + 1}/{a.runs}: "
                    + ", ".join(
                        f"{srv.name} {rates.get((1, srv.name), float('nan')):.0f}"
                        f"/{rates.get((4, srv.name), float('nan')):.0f}"
                        for srv in self.servers
                    )
                    + " inst/s (1/4 associations)"
                )
        self._medians_and_cpu(
            rows.values(),
            "cstore_ct_cpu",
            "Server CPU per stored CT instance (all C-STORE runs)",
            "C-STORE CT instance",
        )
        self._medians_and_cpu(
            [each],
            "cstore_assoc_cpu",
            "Server CPU per association of one CT instance",
            "C-STORE association of one CT instance",
        )
        # later workloads expect the series stored once: redo it where the last run did not
        bodies = workloads.stow_bodies(paths, 50)
        for srv in self.servers:
            if not complete.get(srv.name):
                log(f"{srv.name}: storing the CT series again with STOW-RS for later workloads")
                with session() as s:
                    self.attempt(srv, "delete study", srv.delete_study, s, study)
                self.attempt(srv, "CT ingest", workloads.stow, srv.base, bodies, 4)
        self.ct_stored = True

    def _cstore_run(
        self,
        srv: Server,
        s: requests.Session,
        study: str,
        run: int,
        what: str,
        phase: str,
        send: Callable[..., float],
        work: Any,
        expected: int,
    ) -> float | None:
        """Delete the study, time ``send(host, port, called AE, work)`` (server CPU into
        ``phase``) and check that the study then holds ``expected`` instances: the rate
        in instances per second, or ``None`` (a failure or a wrong count is noted)."""
        if not self.attempt(srv, "delete study", _delete_study, srv, s, study):
            return None
        port, called = srv.dicom_endpoint()
        secs = self.measure(srv, phase, expected, send, "127.0.0.1", port, called, work)
        stored = self.attempt(
            srv, "C-STORE check", workloads.study_instance_count, s, srv.base, study
        )
        if stored is not None and stored != expected:
            note = (
                f"{srv.name}: C-STORE run {run + 1}, {what}: "
                f"the study holds {stored} instances afterwards, expected {expected}"
            )
            log("ERROR " + note)
            self.notes.append(note)
            return None
        return expected / secs if secs and stored == expected else None

    def _cstore_setup(self, srv: Server) -> bool:
        """Make the server accept C-STORE from the bench's storescu (calling AE title)."""
        srv.dicom_endpoint()
        srv.allow_calling_ae(workloads.STORESCU_AET)
        return True

    def ingest_ct(self) -> None:
        """Store the CT series once, untimed (when the STOW-RS workload is skipped)."""
        bodies = workloads.stow_bodies([i.path for i in self.ct.instances], 50)
        for srv in self.servers:
            self.attempt(srv, "CT ingest", workloads.stow, srv.base, bodies, 4)
        self.ct_stored = True

    def load_small(self) -> None:
        """Load the small studies into every server (4 clients × 100 instances/request)."""
        paths = [p for st in self.small for p in st.paths]
        groups = [paths[i : i + 100] for i in range(0, len(paths), 100)]
        m = self.metric(
            "stow_small_load",
            "STOW-RS bulk load of the 64×64 instances, 4 clients × 100/request (1 run)",
            "inst/s",
            True,
        )
        for srv in self.servers:
            log(f"loading {len(paths)} small instances into {srv.name} ...")
            secs = self.measure(
                srv, "STOW-RS small instance", len(paths), workloads.stow, srv.base, groups, 4
            )
            if secs:
                m.runs[srv.name] = [len(paths) / secs]
                m.values[srv.name] = len(paths) / secs
            with session() as s:
                expected = len(paths) + (len(self.ct.instances) if self.ct_stored else 0)
                count = self.attempt(srv, "instance count", srv.instance_count, s)
                if count is not None and count != expected:
                    self.notes.append(
                        f"{srv.name}: holds {count} instances after loading, expected {expected}"
                    )
            log(f"  {srv.name}: {m.values.get(srv.name, float('nan')):.0f} inst/s, {count} inst.")

    def qido_plan(self) -> dict[str, list[tuple[str, int]]]:
        """The queries (same for every server) with the study count each must return."""
        q = self.args.queries
        rng = self.rng
        studies = self.small
        pick = [studies[int(i)] for i in rng.integers(len(studies), size=q)]
        by_pid: dict[str, int] = {}
        for st in studies:
            by_pid[st.patient_id] = by_pid.get(st.patient_id, 0) + 1
        names = [st.patient_name for st in studies]
        dates = sorted(st.study_date for st in studies)
        plan: dict[str, list[tuple[str, int]]] = {"PatientID": [], "PatientName": []}
        for st in pick:
            plan["PatientID"].append((f"PatientID={st.patient_id}", by_pid[st.patient_id]))
        for st in [studies[int(i)] for i in rng.integers(len(studies), size=q)]:
            family = st.patient_name.split("^")[0]
            expected = sum(1 for n in names if n.startswith(family))
            plan["PatientName"].append((f"PatientName={family}*", expected))
        plan["StudyDate"] = []
        start = dt.date(2010, 1, 1).toordinal()
        span = dt.date(2024, 12, 25).toordinal() - start
        for i in rng.integers(span, size=q):
            lo = dt.date.fromordinal(start + int(i))
            hi = lo + dt.timedelta(days=6)
            a, b = lo.strftime("%Y%m%d"), hi.strftime("%Y%m%d")
            expected = sum(1 for d in dates if a <= d <= b)
            plan["StudyDate"].append((f"StudyDate={a}-{b}", expected))
        plan["StudyInstanceUID"] = [
            (f"StudyInstanceUID={studies[int(i)].study_instance_uid}", 1)
            for i in rng.integers(len(studies), size=q)
        ]
        return plan

    def qido(self) -> None:
        """QIDO-RS study searches: p50/p95 per kind, median over runs; counts checked."""
        a = self.args
        plan = self.qido_plan()
        labels = {
            "PatientID": "by PatientID",
            "PatientName": "by PatientName wildcard (NAME*)",
            "StudyDate": "by StudyDate range (7 days)",
            "StudyInstanceUID": "by StudyInstanceUID",
        }
        n_inst = a.qido_studies * a.per_study + (a.slices if self.ct_stored else 0)
        rows: dict[str, tuple[Metric, Metric]] = {}
        for kind, label in labels.items():
            rows[kind] = (
                self.metric(f"qido_{kind}_p50", f"QIDO-RS {label}, p50", "ms", False, QIDO_TARGET),
                self.metric(f"qido_{kind}_p95", f"QIDO-RS {label}, p95", "ms", False),
            )
        wrong: dict[tuple[str, str], int] = {}
        mean_results = {k: float(np.mean([e for _, e in v])) for k, v in plan.items()}
        self.extra["qido"] = {"instances": n_inst, "mean_studies_per_answer": mean_results}
        with session() as s:
            for srv in self.servers:  # warm-up: a few of each kind, not timed
                for kind, queries in plan.items():
                    urls = [f"{srv.base}/studies?{qs}" for qs, _ in queries[:5]]
                    self.attempt(srv, f"QIDO-RS {kind} warm-up", workloads.qido, s, urls)
            for run in range(a.qido_runs):
                for kind, queries in plan.items():
                    p50, p95 = rows[kind]
                    for srv in self.servers:
                        urls = [f"{srv.base}/studies?{qs}" for qs, _ in queries]
                        res = self.measure(
                            srv, f"QIDO-RS {kind} query", len(urls), workloads.qido, s, urls
                        )
                        if res is None:
                            continue
                        lat, counts = res
                        p50.runs.setdefault(srv.name, []).append(workloads.percentile(lat, 50))
                        p95.runs.setdefault(srv.name, []).append(workloads.percentile(lat, 95))
                        bad = sum(1 for c, (_, e) in zip(counts, queries, strict=True) if c != e)
                        if bad and run == 0:
                            wrong[(srv.name, kind)] = bad
                            first = next(
                                (qs, c, e)
                                for c, (qs, e) in zip(counts, queries, strict=True)
                                if c != e
                            )
                            self.notes.append(
                                f"{srv.name}: QIDO-RS {kind}: {bad}/{len(queries)} answers "
                                f"with a wrong study count (e.g. `{first[0]}` → {first[1]}, "
                                f"expected {first[2]})"
                            )
                log(
                    f"QIDO-RS run {run + 1}/{a.qido_runs}: "
                    + "; ".join(
                        f"{k} "
                        + ", ".join(
                            f"{srv.name} {rows[k][0].runs.get(srv.name, [float('nan')])[-1]:.1f}"
                            for srv in self.servers
                        )
                        for k in plan
                    )
                    + " ms p50"
                )
        for p50, p95 in rows.values():
            p50.values = {k: workloads.median(v) for k, v in p50.runs.items()}
            p95.values = {k: workloads.median(v) for k, v in p95.runs.items()}
        self.extra["qido"]["wrong_counts"] = {f"{k[0]}:{k[1]}": v for k, v in wrong.items()}

    def wado(self) -> None:
        """WADO-RS series retrieve (MB/s), and the static sendfile limit with the same client."""
        a = self.args
        ct = self.ct
        m = self.metric(
            "wado_series",
            "WADO-RS series retrieve (multipart, streamed)",
            "MB/s",
            True,
            "≥1.0× Orthanc, ≥70 % of static",
        )
        static_runs: list[float] = []
        expected = ct.total_bytes
        path = f"/studies/{ct.study_instance_uid}/series/{ct.series_instance_uid}"
        accept = workloads.MULTIPART_DICOM
        assert self.static is not None
        targets: list[tuple[Server, str]] = [(srv, srv.base + path) for srv in self.servers]
        targets.append((self.static, self.static.origin + "/series"))
        with session() as s:
            for run in range(a.runs + 1):  # run 0 is the warm-up
                for srv, url in targets:
                    res = self.measure(
                        srv, "WADO-RS series", 1, workloads.retrieve_stream, s, url, accept
                    )
                    if res is None or run == 0:
                        continue
                    size, secs = res
                    if not expected <= size <= expected + 200 * len(ct.instances) + 1000:
                        self.notes.append(
                            f"{srv.name}: WADO-RS series returned {size} bytes for "
                            f"{expected} bytes of files"
                        )
                    mb_s = size / secs / 1e6
                    if srv is self.static:
                        static_runs.append(mb_s)
                    else:
                        m.runs.setdefault(srv.name, []).append(mb_s)
                if run:
                    log(
                        f"WADO-RS run {run}/{a.runs}: "
                        + ", ".join(
                            f"{srv.name} {m.runs.get(srv.name, [float('nan')])[-1]:.0f}"
                            for srv in self.servers
                        )
                        + f", static {static_runs[-1] if static_runs else float('nan'):.0f} MB/s"
                    )
        m.values = {k: workloads.median(v) for k, v in m.runs.items()}
        self.extra["static_limit_mb_s"] = workloads.median(static_runs) if static_runs else None
        self.extra["static_runs_mb_s"] = static_runs

    def metadata(self) -> None:
        """Series metadata (DICOM JSON) of a series of ``--metadata-instances`` small
        instances (stored once into every server first): ms per request."""
        a = self.args
        log(f"generating and storing a {a.metadata_instances}-instance series for metadata")
        (series_study,) = data.make_small_studies(
            self.tmp / "data" / "metadata", 1, a.metadata_instances, seed=a.seed + 7, workers=1
        )
        bodies = workloads.stow_bodies(series_study.paths, 100)
        for srv in self.servers:
            self.attempt(srv, "metadata series ingest", workloads.stow, srv.base, bodies, 4)
        first = pydicom.dcmread(series_study.paths[0], stop_before_pixels=True)
        series_uid = str(first.SeriesInstanceUID)
        expected = len(series_study.paths)
        m = self.metric(
            "metadata_series",
            f"WADO-RS series metadata ({expected} instances)",
            "ms",
            False,
            "≥3× Orthanc",
        )
        path = f"/studies/{series_study.study_instance_uid}/series/{series_uid}/metadata"
        sizes: dict[str, int] = {}
        with session() as s:
            for run in range(a.runs + 1):
                for srv in self.servers:
                    res = self.measure(
                        srv,
                        "series metadata",
                        1,
                        workloads.timed_get,
                        s,
                        srv.base + path,
                        DICOM_JSON,
                    )
                    if res is None:
                        continue
                    r, secs = res
                    if run == 0:
                        doc = r.json()
                        sizes[srv.name] = len(r.content)
                        if len(doc) != expected:
                            self.notes.append(
                                f"{srv.name}: series metadata has {len(doc)} objects, "
                                f"expected {expected}"
                            )
                        continue
                    m.runs.setdefault(srv.name, []).append(secs * 1000)
        m.values = {k: workloads.median(v) for k, v in m.runs.items()}
        self.extra["metadata_body_bytes"] = sizes
        log("series metadata: " + ", ".join(f"{k} {v:.1f} ms" for k, v in m.values.items()))

    def frames(self) -> None:
        """Single-frame retrieves over the CT series: p50/p95 ms; payload size checked."""
        a = self.args
        ct = self.ct
        p50 = self.metric("frames_p50", "WADO-RS single frame (512×512×2 B), p50", "ms", False)
        p95 = self.metric("frames_p95", "WADO-RS single frame, p95", "ms", False)
        picks = np.linspace(0, len(ct.instances) - 1, a.frames).round().astype(int)
        base_path = f"/studies/{ct.study_instance_uid}/series/{ct.series_instance_uid}/instances"
        paths = [f"{base_path}/{ct.instances[int(i)].sop_instance_uid}/frames/1" for i in picks]
        bad: dict[str, str] = {}
        with session() as s:
            for srv in self.servers:  # warm-up
                self.attempt(
                    srv, "frames warm-up", workloads.timed_get, s, srv.base + paths[0], FRAMES
                )
            for _run in range(a.runs):
                for srv in self.servers:
                    urls = [srv.base + path for path in paths]
                    res = self.measure(srv, "frame", len(urls), _get_all, s, urls, FRAMES)
                    if res is None:
                        continue
                    lat = [secs * 1000 for _, secs in res]
                    p50.runs.setdefault(srv.name, []).append(workloads.percentile(lat, 50))
                    p95.runs.setdefault(srv.name, []).append(workloads.percentile(lat, 95))
                    for r, _ in res:
                        payloads = workloads.multipart_payloads(r)
                        if len(payloads) != 1 or len(payloads[0]) != FRAME_BYTES:
                            bad.setdefault(
                                srv.name,
                                f"{[len(x) for x in payloads]} bytes, "
                                f"Content-Type {r.headers.get('content-type')}",
                            )
        for name, what in bad.items():
            self.notes.append(
                f"{name}: a frame response was not one {FRAME_BYTES}-byte part: {what}"
            )
        p50.values = {k: workloads.median(v) for k, v in p50.runs.items()}
        p95.values = {k: workloads.median(v) for k, v in p95.runs.items()}
        log("frames p50: " + ", ".join(f"{k} {v:.1f} ms" for k, v in p50.values.items()))

    def big_study(self) -> None:
        """A study of ``--big-gb`` GB (multi-frame instances of ~157 MB): STOW-RS one
        instance per request, streamed; then the whole study by WADO-RS, streamed; MB/s
        of each and the servers' peak RSS afterwards (memory must not grow with it)."""
        a = self.args
        target = int(a.big_gb * 1e9)
        log(f"generating a {a.big_gb:g} GB study of multi-frame instances")
        study, paths = data.make_big_study(self.tmp / "data" / "big", target, seed=a.seed + 11)
        total = sum(p.stat().st_size for p in paths)
        gb = f"{total / 1e9:.1f} GB"
        ingest = self.metric(
            "big_ingest", f"{gb} study: STOW-RS, 1 instance (~157 MB) per request", "MB/s", True
        )
        retrieve = self.metric("big_retrieve", f"{gb} study: WADO-RS study retrieve", "MB/s", True)
        pss = self.metric(
            "big_pss",
            f"Peak memory during the {gb} study (PSS of the server's processes, summed)",
            "MiB",
            False,
            "≤300 MiB",
        )
        rss = self.metric(
            "big_rss", f"Peak RSS after the {gb} study (VmHWM, summed per process)", "MiB", False
        )
        if self.sampler is not None:
            self.sampler.reset_window()
        with session() as s:
            for srv in self.servers:
                self.attempt(srv, "delete big study", srv.delete_study, s, study)
                secs = self.attempt(
                    srv, "big study STOW-RS", workloads.stow_files_streamed, srv.base, paths
                )
                if secs:
                    ingest.values[srv.name] = total / 1e6 / secs
                    ingest.runs[srv.name] = [ingest.values[srv.name]]
                url = f"{srv.base}/studies/{study}"
                got = self.attempt(
                    srv, "big study WADO-RS", workloads.retrieve_stream, s, url, MULTIPART
                )
                if got:
                    received, secs = got
                    if received < total:
                        self.notes.append(f"{srv.name}: big study retrieve got {received} bytes")
                    retrieve.values[srv.name] = received / 1e6 / secs
                    retrieve.runs[srv.name] = [retrieve.values[srv.name]]
                if not self.exited(srv):
                    rss.values[srv.name] = srv.peak_rss_mib()
                    rss.runs[srv.name] = [rss.values[srv.name]]
                    if self.sampler is not None:
                        self.sampler.sample()
                        pss.values[srv.name] = self.sampler.window.get(srv.name, 0.0)
                        pss.runs[srv.name] = [pss.values[srv.name]]
                self.attempt(srv, "delete big study", srv.delete_study, s, study)
        shutil.rmtree(self.tmp / "data" / "big", ignore_errors=True)
        if self.sampler is not None:
            by_process = {
                name: {k: round(v, 1) for k, v in sorted(procs.items())}
                for name, procs in self.sampler.window_by_process.items()
            }
            self.extra["big_pss_by_process_mib"] = by_process
            for name, procs in by_process.items():
                parts = ", ".join(f"{k} {v:.0f}" for k, v in procs.items())
                log(f"{name} at its peak PSS (MiB): {parts}")
        log(
            "big study: "
            + ", ".join(
                f"{k} {ingest.values.get(k, 0):.0f}/{retrieve.values.get(k, 0):.0f} MB/s, "
                f"peak PSS {pss.values.get(k, 0):.0f} MiB, VmHWM {rss.values.get(k, 0):.0f} MiB"
                for k in rss.values
            )
        )

    def memory(self) -> None:
        """Peak memory of each server (process tree) over the workloads: sampled PSS,
        and the kernel's VmHWM summed per process."""
        pss = self.metric(
            "peak_pss", "Peak memory over all workloads (PSS of the processes, summed)", "MiB",
            False,
        )  # fmt: skip
        m = self.metric(
            "peak_rss", "Peak RSS after all workloads (VmHWM, summed per process)", "MiB", False
        )
        if self.sampler is not None:
            self.sampler.sample()
        for srv in self.servers:
            if self.exited(srv):
                continue
            m.values[srv.name] = srv.peak_rss_mib()
            m.runs[srv.name] = [m.values[srv.name]]
            if self.sampler is not None and srv.name in self.sampler.peak:
                pss.values[srv.name] = self.sampler.peak[srv.name]
                pss.runs[srv.name] = [pss.values[srv.name]]
        log(
            "peak memory: "
            + ", ".join(
                f"{k} PSS {pss.values.get(k, 0):.0f} MiB, VmHWM {v:.0f} MiB"
                for k, v in m.values.items()
            )
        )

    # -- output --------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """Everything but the metrics, for JSON and Markdown."""
        a = self.args
        orthanc = next((s for s in self.servers if isinstance(s, Orthanc)), None)
        dicomhub = next((s for s in self.servers if isinstance(s, Dicomhub)), None)
        return {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - _t0, 1),
            "machine": {
                **machine_facts(self.tmp),
                "load_average_start": self.load_start,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            },
            "versions": {
                "dicomhub": dicomhub.version if dicomhub else package_version("dicomhub"),
                "uvicorn": package_version("uvicorn"),
                "orthanc": orthanc.version if orthanc else "?",
                "orthanc_deb": debian_version("orthanc"),
                "orthanc_dicomweb": orthanc.plugin_version if orthanc else "?",
                "requests": package_version("requests"),
                "pydicom": package_version("pydicom"),
                "numpy": package_version("numpy"),
                "storescu": workloads.storescu_version(),
            },
            "params": {
                "quick": a.quick,
                "slices": a.slices,
                "ct_mb": self.ct.total_bytes / 1e6,
                "qido_studies": a.qido_studies,
                "per_study": a.per_study,
                "runs": a.runs,
                "qido_runs": a.qido_runs,
                "queries": a.queries,
                "frames": a.frames,
                "metadata_instances": a.metadata_instances,
                "big_gb": a.big_gb,
                "per_request": 50,
                "dicomhub_workers": a.worker_counts,
                "dicomhub_log_level": a.dicomhub_log_level,
                "workloads": a.selected,
                "storescu_options": " ".join(["storescu", *workloads.STORESCU_OPTIONS]),
                "storescu_aet": workloads.STORESCU_AET,
                "dicomhub_auth": any(
                    isinstance(s, Dicomhub) and s.authenticated for s in self.servers
                ),
                "orthanc_config": orthanc.config if orthanc else None,
            },
            "servers": {
                s.name: {"port": s.port, "version": s.version, "command": s.command_line}
                for s in self.servers
            },
            "server_cpu_ms_per_op": self.cpu_ms_per_op(),
            "notes": self.notes,
            **self.extra,
        }

    def server_names(self) -> list[str]:
        """Column order: dicomhub variants, then Orthanc."""
        return [s.name for s in self.servers]


def _get_all(
    s: requests.Session, urls: list[str], accept: str
) -> list[tuple[requests.Response, float]]:
    """GET each URL in turn: responses and seconds each."""
    return [workloads.timed_get(s, url, accept) for url in urls]


def _delete_study(srv: Server, s: requests.Session, study: str) -> bool:
    """Delete the study (absent is fine); True once done."""
    srv.delete_study(s, study)
    return True


class MemorySampler:
    """The memory of each server over the run: its processes' PSS summed, sampled every
    ``interval`` s on a thread of its own.  VmHWM (the kernel's peak RSS) has no
    equivalent for a tree of processes that share pages (forked workers): summed over
    them it counts every shared page once per process."""

    def __init__(self, servers: list[Server], interval: float = 0.25) -> None:
        self.servers = servers
        self.interval = interval
        self.peak: dict[str, float] = {}
        self.window: dict[str, float] = {}
        #: PSS by process name at each server's peak of the window (where memory goes)
        self.window_by_process: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reset_window(self) -> None:
        """Start a new window (e.g. one workload); :attr:`window` holds its peaks."""
        self.sample()
        self.window = {}
        self.window_by_process = {}
        self.sample()

    def sample(self) -> None:
        for srv in self.servers:
            if srv.proc is None or srv.proc.poll() is not None:
                continue
            by_process = srv.pss_by_process()
            mib = sum(by_process.values())
            self.peak[srv.name] = max(self.peak.get(srv.name, 0.0), mib)
            if mib > self.window.get(srv.name, 0.0):
                self.window[srv.name] = mib
                self.window_by_process[srv.name] = by_process

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark; 0 on success."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGHUP, _raise_on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="dicomhub-bench-", dir=args.tmp_dir))
    log(f"working directory {tmp}")
    bench = Bench(args, tmp)
    try:
        bench.generate()
        bench.start_servers()
        bench.sampler = MemorySampler(bench.servers)
        bench.sampler.start()
        selected = args.selected
        if "stow" in selected:
            bench.stow_ct()
        if "cstore" in selected:
            bench.cstore_ct()  # leaves the CT series stored once, as stow_ct does
        elif "stow" not in selected and {"wado", "metadata", "frames"} & set(selected):
            bench.ingest_ct()
        if "qido" in selected:
            bench.load_small()
            bench.qido()
        if "wado" in selected:
            bench.wado()
        if "metadata" in selected:
            bench.metadata()
        if "frames" in selected:
            bench.frames()
        if "bigstudy" in selected:
            bench.big_study()
        bench.memory()
        for srv in bench.servers:
            bench.exited(srv)
        results = bench.results()
        names = bench.server_names()
        write_json(args.json, results, bench.metrics)
        if not args.no_doc:
            args.doc.parent.mkdir(parents=True, exist_ok=True)
            text = markdown(results, bench.metrics, names)
            if args.doc.exists():
                text = keep_sections(args.doc.read_text(), text)
            args.doc.write_text(text)
        print()
        print(table(bench.metrics, names))
        static = results.get("static_limit_mb_s")
        if static:
            print(f"\nstatic sendfile limit: {static:.0f} MB/s")
        print("\nserver CPU ms per operation:")
        print(cpu_table(results["server_cpu_ms_per_op"], names))
        for note in bench.notes:
            print(f"note: {note}")
        print(f"\nresults: {args.json}" + ("" if args.no_doc else f"\nreport:  {args.doc}"))
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if bench.sampler is not None:
            bench.sampler.stop()
        stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            # Orthanc needs a moment to release its SQLite files after it exits
            for _ in range(10):
                shutil.rmtree(tmp, ignore_errors=True)
                if not tmp.exists():
                    break
                time.sleep(0.5)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
