"""dicomhub's DICOM application entity (PS3.7, PS3.8) on pynetdicom.

Presentation contexts: Verification; every storage SOP class pynetdicom knows with every
transfer syntax the codecs decode (SCP, and SCU role for C-GET); Patient and Study Root
Query/Retrieve FIND/GET/MOVE; Storage Commitment Push Model.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom.transport import ThreadedAssociationServer

from dicomhub.dimse import command, reactor, receive, transport
from dicomhub.dimse.handlers import DimseHandlers

if TYPE_CHECKING:
    from dicomhub.config import Settings
    from dicomhub.context import Context

log = logging.getLogger(__name__)

#: Environment variable carrying the settings (JSON) to DIMSE worker processes.
WORKER_SETTINGS_ENV = "DICOMHUB_DIMSE_WORKER_SETTINGS"

# Transfer syntaxes we accept for storage: those the codecs can decode (docs/conformance.md).
STORAGE_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
]
#: Seconds before a DIMSE worker process that exited is started again.
WORKER_RESTART_DELAY = 2.0
QUERY_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
QUERY_RETRIEVE_MODELS = (
    "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # Patient Root GET
    "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root MOVE
    "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root GET
)


def build_ae(settings: Settings) -> AE:
    """The configured application entity with its supported presentation contexts."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.require_called_aet = False
    ae.add_supported_context(VERIFICATION, QUERY_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(
            cx.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model, QUERY_TRANSFER_SYNTAXES)
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, QUERY_TRANSFER_SYNTAXES)
    return ae


def _shared_socket_server(listening: socket.socket) -> type[ThreadedAssociationServer]:
    """A pynetdicom server class that accepts on ``listening`` (already bound and
    listening, shared with other processes) instead of binding its own socket."""

    class SharedSocketServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            if self.socket is not None:
                self.socket.close()  # the one TCPServer made; never bound
            self.socket = listening
            self.server_address = listening.getsockname()

        def server_activate(self) -> None:
            pass  # listening already

    return SharedSocketServer


def listening_socket(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A non-blocking listening TCP socket for several accepting processes: whichever is
    free takes the next association; the others' accept() finds nothing and goes back to
    waiting (socketserver treats that OSError as "no request")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class DimseServer:
    """Runs the AE's association server in background threads.

    With ``dimse_workers`` > 1 the main process opens the listening socket and starts
    ``dimse_workers - 1`` worker processes (``python -m dicomhub.dimse.worker``) that
    accept on the same socket: associations spread over processes, hence over cores
    (one Python process runs one core at a time).  ``listen`` is how a worker receives
    the inherited socket.
    """

    def __init__(self, ctx: Context, listen: socket.socket | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.ae = build_ae(self.settings)
        self.handlers = DimseHandlers(ctx, self.settings.ae_title)
        self._server: Any = None
        self._tls_server: Any = None
        self._listen = listen
        self._is_worker = listen is not None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The bound DICOM TLS port, if TLS is on."""
        return int(self._tls_server.server_address[1]) if self._tls_server else None

    def tls_context(self) -> ssl.SSLContext:
        """TLS for DICOM (PS3.15 Annex B.9, BCP 195): TLS 1.2+, client certificates
        required when a CA bundle is configured."""
        s = self.settings
        if not s.tls_cert or not s.tls_key:
            raise ValueError("DICOM TLS needs tls_cert and tls_key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(s.tls_cert), str(s.tls_key))
        if s.tls_ca:
            context.load_verify_locations(cafile=str(s.tls_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def start(self) -> None:
        """Start listening (non-blocking)."""
        # C-STORE bodies are kept as received bytes, never decoded and re-encoded
        _config.LOG_HANDLER_LEVEL = "none"
        reactor.install()
        command.install()
        receive.install()
        transport.install()
        host = self.settings.dimse_host or self.settings.host
        spawn = self._listen is None and self.settings.dimse_workers > 1
        if spawn:
            self._listen = listening_socket(host, self.settings.dimse_port)
        if self._listen is not None:
            server = self.ae.make_server(
                self._listen.getsockname()[:2],
                evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
                server_class=_shared_socket_server(self._listen),
            )
            self.ae._servers.append(server)  # as AE.start_server does (stop() needs it)
            threading.Thread(target=server.serve_forever, name="DimseAcceptor", daemon=True).start()
            self._server = server
        else:
            self._server = self.ae.start_server(
                (host, self.settings.dimse_port),
                block=False,
                evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
            )
        log.info(
            "DIMSE: %s listening on %s:%s (pid %d)",
            self.settings.ae_title,
            host,
            self.port,
            os.getpid(),
        )
        if spawn:
            self._spawn_workers()
        if self.settings.tls_port and not self._is_worker:  # TLS: main process only
            self._tls_server = self.ae.start_server(
                (host, self.settings.tls_port),
                block=False,
                evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
                ssl_context=self.tls_context(),
            )
            log.info("DICOM TLS: listening on %s:%s", host, self.tls_port)

    def _spawn_workers(self) -> None:
        """Start the worker processes on the shared socket, with these very settings, and
        a thread that restarts any that dies."""
        for _ in range(self.settings.dimse_workers - 1):
            self._workers.append(self._spawn_worker())
        log.info("DIMSE: %d worker processes started", len(self._workers))
        self._stopping.clear()
        threading.Thread(target=self._supervise, name="DimseWorkers", daemon=True).start()

    def _spawn_worker(self) -> subprocess.Popen[bytes]:
        assert self._listen is not None
        fd = self._listen.fileno()
        env = dict(os.environ)
        env[WORKER_SETTINGS_ENV] = self.settings.model_dump_json()
        command = [sys.executable, "-m", "dicomhub.dimse.worker", "--fd", str(fd)]
        return subprocess.Popen([*command, "--parent", str(os.getpid())], pass_fds=(fd,), env=env)

    def _supervise(self) -> None:
        """Restart a worker process that exits while the server runs (a crash, the OOM
        killer): its associations are lost, the next ones are served.  At most one restart
        per worker every :data:`WORKER_RESTART_DELAY` seconds, so a worker that cannot
        start does not spin."""
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(list(self._workers)):
                code = proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                log.warning(
                    "DIMSE worker process %d exited with status %s; restarting it", proc.pid, code
                )
                if self._stopping.wait(WORKER_RESTART_DELAY):
                    return
                with self._workers_lock:
                    if self._stopping.is_set():
                        return
                    self._workers[i] = self._spawn_worker()

    def stop(self) -> None:
        """Stop accepting and close associations (and stop the worker processes)."""
        with self._workers_lock:
            self._stopping.set()
        for proc in self._workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._workers = []
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
