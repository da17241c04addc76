"""Server processes under test: dicomhub, Orthanc and a static sendfile server.

Each server runs as a child process in its own session (process group), on a free
loopback port, with its data in a fresh temporary directory; :func:`stop_all` (also
registered with :mod:`atexit`) ends every process this module started.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import requests.auth

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))

_started: list[Server] = []
_tokens: dict[str, str] = {}  # origin -> bearer token, for servers that require one


class _BearerAuth(requests.auth.AuthBase):
    """Adds the bearer token registered for the request's origin, if any."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        url = r.url or ""
        for origin, token in _tokens.items():
            if url.startswith(origin + "/"):
                r.headers["Authorization"] = f"Bearer {token}"
        return r


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port that is free on all interfaces (Orthanc binds 0.0.0.0), below the
    ephemeral range: a port the kernel handed out for binding to port 0 can be taken by
    the local end of an outgoing connection (the bench's own clients) before the server
    binds it (seen: "Address already in use" at a server's start)."""
    low = min(_ephemeral_low(), 32768)
    first = max(low - 12000, 1024)
    for _ in range(200 if first < low else 0):  # none below the range: as the kernel says
        port = random.randrange(first, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def session() -> requests.Session:
    """A client session: no proxies from the environment, no content encoding, tokens."""
    s = requests.Session()
    s.trust_env = False
    s.headers["Accept-Encoding"] = "identity"
    s.auth = _BearerAuth()
    return s


def ensure_orthanc() -> None:
    """Install Debian's ``orthanc``, ``orthanc-dicomweb`` and ``dcmtk`` (storescu for the
    C-STORE workload) if they are missing."""
    missing = [
        pkg
        for pkg in ("orthanc", "orthanc-dicomweb", "dcmtk")
        if subprocess.run(
            ["dpkg", "-s", pkg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode
        != 0
    ]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def dicomweb_plugin() -> Path:
    """Where Debian put libOrthancDicomWeb.so."""
    for d in PLUGIN_DIRS:
        for candidate in sorted(d.glob("libOrthancDicomWeb.so*")):
            return candidate
    out = subprocess.run(
        ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if "libOrthancDicomWeb.so" in line:
            return Path(line)
    raise FileNotFoundError("libOrthancDicomWeb.so not found (is orthanc-dicomweb installed?)")


def _descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` (each page shared by n processes counts 1/n)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@functools.cache
def _serve_supports(option: str) -> bool:
    """Whether ``dicomhub serve`` knows a command-line option (the CLI grows over time)."""
    out = subprocess.run(
        [str(VENV_BIN / "dicomhub"), "serve", "--help"], capture_output=True, text=True
    )
    return option in out.stdout


class Server:
    """A child process serving HTTP on a loopback port."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"
        self.version = "?"
        self.command_line: list[str] = []

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The DICOMweb root URL (no trailing slash)."""
        return f"{self.origin}/dicom-web"

    def command(self) -> list[str]:
        """The command line to start."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment of the process."""
        return dict(os.environ)

    def ready_url(self) -> str:
        """URL that answers 200 once the server is up."""
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command_line = self.command()
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self.command_line,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        _started.append(self)
        deadline = time.monotonic() + timeout
        with session() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start-up: {self.log_tail()}")
                with contextlib.suppress(requests.RequestException):
                    if s.get(self.ready_url(), timeout=2).status_code == 200:
                        self.on_ready(s)
                        return
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s: {self.log_tail()}")

    def on_ready(self, s: requests.Session) -> None:
        """Hook called once the server answers (e.g. to read its version)."""

    def log_tail(self, n: int = 2000) -> str:
        """The end of the server's log, secrets replaced by ``<redacted>``."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        for secret in self.secrets():
            text = text.replace(secret, "<redacted>")
        return text[-n:]

    def secrets(self) -> list[str]:
        """Strings that must not appear in output or results."""
        return list(_tokens.values())

    def pids(self) -> list[int]:
        """The process and its descendants (workers)."""
        return _descendants(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def peak_rss_mib(self) -> float:
        """Peak resident set size (VmHWM), summed over the process tree, in MiB."""
        return sum(_status_kib(p, "VmHWM") for p in self.pids()) / 1024

    def pss_mib(self) -> float:
        """Memory the process tree holds now, pages shared among its processes (or with
        any other) counted once in all (PSS summed), in MiB."""
        return sum(_pss_kib(p) for p in self.pids()) / 1024

    def pss_by_process(self) -> dict[str, float]:
        """PSS in MiB by process name (``/proc/<pid>/comm``: ``dicomhub-http``,
        ``dicomhub-dimse``, ...), processes of the same name summed; the name carries
        ``×n`` when n processes share it."""
        kib: dict[str, int] = {}
        count: dict[str, int] = {}
        for pid in self.pids():
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            kib[name] = kib.get(name, 0) + _pss_kib(pid)
            count[name] = count.get(name, 0) + 1
        return {
            (f"{name} ×{count[name]}" if count[name] > 1 else name): v / 1024
            for name, v in kib.items()
        }

    def rss_mib(self) -> float:
        """Current resident set size summed over the process tree, in MiB."""
        return sum(_status_kib(p, "VmRSS") for p in self.pids()) / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the process and its live descendants."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        return total / os.sysconf("SC_CLK_TCK")

    def delete_study(self, s: requests.Session, study_uid: str) -> None:
        """Delete a study if it is present."""
        raise NotImplementedError

    def dicom_endpoint(self) -> tuple[int, str]:
        """The DICOM (DIMSE) port on 127.0.0.1 and the called AE title."""
        raise NotImplementedError(f"{self.name} has no DICOM port")

    def allow_calling_ae(self, ae_title: str) -> None:
        """Let a DICOM peer calling as ``ae_title`` from 127.0.0.1 store instances."""

    def instance_count(self, s: requests.Session) -> int:
        """Number of stored instances."""
        raise NotImplementedError

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds."""
        proc = self.proc
        if proc is None:
            return
        tree = self.pids()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # workers that outlived their parent: only our own, still in our process group
        for pid in tree:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == proc.pid:
                    os.kill(pid, signal.SIGKILL)
        self.proc = None
        if self in _started:
            _started.remove(self)


class Dicomhub(Server):
    """``dicomhub serve`` on a fresh data directory (SQLite default)."""

    def __init__(self, workdir: Path, workers: int = 1, log_level: str = "warning") -> None:
        self.name = "dicomhub" if workers == 1 else f"dicomhub-w{workers}"
        super().__init__(workdir)
        self.workers = workers
        self.log_level = log_level
        self.dimse_port = free_port()
        self.ae_title = "DICOMHUB"  # the default of the ``ae_title`` setting
        self.authenticated = False
        self.devices: dict[str, str] = {}  # calling AE title -> registered device name

    def command(self) -> list[str]:
        """``dicomhub serve --data-dir … --http-port … [--workers N]``."""
        cmd = [
            str(VENV_BIN / "dicomhub"),
            "serve",
            "--data-dir",
            str(self.workdir / "data"),
            "--http-port",
            str(self.port),
            "--log-level",
            self.log_level,
        ]
        # always explicit: since session 10 the default (0) is one worker per core
        cmd += ["--workers", str(self.workers)]
        if _serve_supports("--dimse-workers"):  # the same number of cores for DIMSE
            cmd += ["--dimse-workers", str(self.workers)]
        if _serve_supports("--dimse-port"):
            # the DIMSE edge listens too (default 11112): give each instance its own port
            cmd += ["--dimse-port", str(self.dimse_port)]
        return cmd

    def env(self) -> dict[str, str]:
        """No DICOMHUB_* settings leak in from the caller's environment.

        Tokens live long enough for the longest run (the default is one hour).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMHUB_")}
        env["DICOMHUB_TOKEN_TTL"] = "86400"
        return env

    def ready_url(self) -> str:
        """``/health``."""
        return f"{self.origin}/health"

    def on_ready(self, s: requests.Session) -> None:
        """Read the version from /health; log in as the first-start admin if DICOMweb
        requires authentication (password from ``<data-dir>/initial-admin-password``,
        token from ``POST /auth/token``, as the server's start-up message tells users)."""
        self.version = str(s.get(self.ready_url(), timeout=5).json().get("version", "?"))
        if s.get(f"{self.base}/studies?limit=1", timeout=30).status_code != 401:
            return
        password_file = self.workdir / "data" / "initial-admin-password"
        password = password_file.read_text().strip()
        r = s.post(
            f"{self.origin}/auth/token",
            data={"grant_type": "password", "username": "admin", "password": password},
            timeout=30,
        )
        if r.status_code != 200:
            raise RuntimeError(f"{self.name}: POST /auth/token -> {r.status_code} {r.text[:200]}")
        _tokens[self.origin] = str(r.json()["access_token"])
        self.authenticated = True

    def delete_study(self, s: requests.Session, study_uid: str) -> None:
        """``DELETE /dicom-web/studies/{uid}`` (404 when absent is fine)."""
        r = s.delete(f"{self.base}/studies/{study_uid}", timeout=120)
        if r.status_code not in (200, 202, 204, 404):
            raise RuntimeError(f"{self.name}: DELETE study -> {r.status_code} {r.text[:200]}")

    def dicom_endpoint(self) -> tuple[int, str]:
        """``--dimse-port`` and the default AE title."""
        if not _serve_supports("--dimse-port"):
            raise RuntimeError("this dicomhub has no DIMSE edge (no serve --dimse-port)")
        return self.dimse_port, self.ae_title

    def allow_calling_ae(self, ae_title: str) -> None:
        """Register a device for the AE title, as an operator does on the server's host.

        dicomhub's DIMSE edge rejects associations from calling AE titles that are not a
        registered device (A-ASSOCIATE-RJ, calling AE title not recognised); a device
        stores into its subscriber's studies.  ``dicomhub device add`` on the data
        directory, in the subscriber ``default`` that also holds the admin's STOW-RS
        uploads, allowed from 127.0.0.1 only.  The API key it prints is not kept.
        """
        if ae_title in self.devices:
            return
        name = f"bench-{ae_title.lower()}"
        cmd = [
            str(VENV_BIN / "dicomhub"),
            "device",
            "add",
            name,
            "--data-dir",
            str(self.workdir / "data"),
            "--subscriber",
            "default",
            "--ae-title",
            ae_title,
            "--address",
            "127.0.0.1",
            "--json",
        ]
        r = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env(), cwd=self.workdir, timeout=120
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"{self.name}: dicomhub device add -> exit status {r.returncode}: "
                f"{r.stderr.strip()[-300:]}"
            )
        self.devices[ae_title] = name

    def secrets(self) -> list[str]:
        """Tokens and the first-start admin password."""
        found = super().secrets()
        with contextlib.suppress(OSError):
            found.append((self.workdir / "data" / "initial-admin-password").read_text().strip())
        return [x for x in found if x]

    def instance_count(self, s: requests.Session) -> int:
        """From /health if it tells, else the sum of NumberOfStudyRelatedInstances (QIDO-RS)."""
        health = s.get(self.ready_url(), timeout=30).json()
        if "instances" in health:
            return int(health["instances"])
        total, offset, page = 0, 0, 5000
        while True:
            r = s.get(
                f"{self.base}/studies?includefield=00201208&limit={page}&offset={offset}",
                headers={"Accept": "application/dicom+json"},
                timeout=300,
            )
            if r.status_code == 204 or not r.content:
                return total
            r.raise_for_status()
            studies = r.json()
            total += sum(int(st["00201208"]["Value"][0]) for st in studies)
            if len(studies) < page:
                return total
            offset += page


class Orthanc(Server):
    """Debian's Orthanc with the DICOMweb plugin, on a fresh storage and index."""

    name = "orthanc"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.dicom_port = free_port()
        self.dicom_aet = "ORTHANC"
        self.config_path = workdir / "orthanc.json"
        self.config: dict[str, Any] = {}
        self.plugin_version = "?"

    def write_config(self) -> None:
        """Orthanc's JSON configuration: defaults plus ports, paths and DICOMweb."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = {
            "Name": "bench-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.dicom_aet,  # its default; C-STORE from any AE title is accepted
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def command(self) -> list[str]:
        """``Orthanc <config>``."""
        self.write_config()
        return [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(self.config_path)]

    def env(self) -> dict[str, str]:
        """TCP_NODELAY=1 (DESIGN §5)."""
        return {**os.environ, "TCP_NODELAY": "1"}

    def ready_url(self) -> str:
        """``/system``."""
        return f"{self.origin}/system"

    def on_ready(self, s: requests.Session) -> None:
        """Read Orthanc's and the plugin's versions."""
        self.version = str(s.get(self.ready_url(), timeout=5).json().get("Version", "?"))
        r = s.get(f"{self.origin}/plugins/dicom-web", timeout=5)
        if r.ok:
            self.plugin_version = str(r.json().get("Version", "?"))

    def delete_study(self, s: requests.Session, study_uid: str) -> None:
        """Find the study's Orthanc ID with /tools/lookup, then DELETE /studies/{id}."""
        r = s.post(f"{self.origin}/tools/lookup", data=study_uid, timeout=30)
        r.raise_for_status()
        for item in r.json():
            if item.get("Type") == "Study":
                d = s.delete(f"{self.origin}/studies/{item['ID']}", timeout=120)
                d.raise_for_status()

    def dicom_endpoint(self) -> tuple[int, str]:
        """``DicomPort`` and ``DicomAet``."""
        return self.dicom_port, self.dicom_aet

    def instance_count(self, s: requests.Session) -> int:
        """From /statistics."""
        return int(s.get(f"{self.origin}/statistics", timeout=30).json()["CountInstances"])


class StaticServer(Server):
    """A minimal asyncio server that sends files with ``loop.sendfile`` (the machine limit)."""

    name = "static"

    def __init__(self, workdir: Path, files: list[Path]) -> None:
        super().__init__(workdir)
        self.list_path = workdir / "files.txt"
        self.files = files

    def command(self) -> list[str]:
        """``python -m bench.static``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.list_path.write_text("\n".join(str(f) for f in self.files))
        return [
            sys.executable,
            "-m",
            "bench.static",
            "--port",
            str(self.port),
            "--files",
            str(self.list_path),
        ]

    def env(self) -> dict[str, str]:
        """The repository on PYTHONPATH so ``bench`` imports from any cwd."""
        path = os.environ.get("PYTHONPATH", "")
        return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}

    def ready_url(self) -> str:
        """``/health``."""
        return f"{self.origin}/health"


def stop_all() -> None:
    """Stop every server this module started (idempotent)."""
    for server in list(reversed(_started)):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(stop_all)
