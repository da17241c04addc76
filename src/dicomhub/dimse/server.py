"""dicomhub's DICOM application entity (PS3.7, PS3.8) on pynetdicom.

Presentation contexts: Verification; every storage SOP class pynetdicom knows with every
transfer syntax the codecs decode (SCP, and SCU role for C-GET); Patient and Study Root
Query/Retrieve FIND/GET/MOVE; Storage Commitment Push Model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicomhub.balancer import (
    Balancer,
    ChannelReceiver,
    WorkerProcess,
    listening_socket,
    python_worker,
)
from dicomhub.dimse import command, reactor, receive, transport
from dicomhub.dimse.handlers import DimseHandlers
from dicomhub.dimse.lean import LeanAssociation, LeanServer, NoRequest, lean_request

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


#: Abstract syntaxes of the storage SOP classes the AE accepts.
STORAGE_SOP_CLASSES = frozenset(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax
)


def _lean_capable(
    base: type[ThreadedAssociationServer],
    handlers: DimseHandlers,
    on_lean_close: Callable[[], None] | None,
) -> type[ThreadedAssociationServer]:
    """``base`` routing each new connection, on a thread of its own, to
    dicomhub.dimse.lean when its A-ASSOCIATE-RQ asks for storage only, else to
    pynetdicom (which reads the request itself: it was only peeked at)."""

    class LeanCapableServer(base):  # type: ignore[valid-type, misc]
        def process_request(self, request: Any, client_address: Any) -> None:
            threading.Thread(
                target=self._route, args=(request, client_address), daemon=True
            ).start()

        def _route(self, request: Any, client_address: Any) -> None:
            try:
                primitive = lean_request(request, self.ae.acse_timeout, STORAGE_SOP_CLASSES)
            except NoRequest as exc:
                log.info("connection from %s closed: %s", client_address[0], exc)
                with contextlib.suppress(OSError):
                    request.close()
                if on_lean_close is not None:
                    on_lean_close()
                return
            if primitive is None:
                self.process_request_thread(request, client_address)
                return
            LeanServer.serve(
                LeanAssociation(
                    request, client_address, primitive, self.ae, handlers, on_lean_close
                )
            )

    return LeanCapableServer


def _handed_over_server(address: tuple[str, int]) -> type[ThreadedAssociationServer]:
    """A pynetdicom server class that listens on nothing: the associations it serves are
    connections handed over by the main process (:meth:`process_request`), whose
    listening address is ``address``."""

    class HandedOverServer(ThreadedAssociationServer):
        def server_bind(self) -> None:
            self.server_address = address  # for the associations' acceptor address

        def server_activate(self) -> None:
            pass  # the main process listens

        def shutdown(self) -> None:
            # no serve_forever loop to stop (socketserver's shutdown would wait for one)
            self.server_close()
            with contextlib.suppress(ValueError):
                self.ae._servers.remove(self)

    return HandedOverServer


class DimseServer:
    """Runs the AE's association server in background threads.

    With ``dimse_workers`` > 1 the main process listens and hands each association to
    one of ``dimse_workers`` worker processes (``python -m dicomhub.dimse.worker``), the
    one with the fewest open associations (:mod:`dicomhub.balancer`): associations
    spread over processes, hence over cores (one Python process runs one core at a
    time).  ``channel`` is how a worker receives its connections.
    """

    def __init__(
        self,
        ctx: Context,
        channel: int | None = None,
        spawn: Callable[[socket.socket], WorkerProcess] | None = None,
    ) -> None:
        """``channel``: this is a worker serving what comes over it; ``spawn``: how the
        main process starts its ``dimse_workers`` (default: ``python -m
        dicomhub.dimse.worker``; ``dicomhub serve`` forks them from its zygote)."""
        self.ctx = ctx
        self.settings = ctx.settings
        self.ae = build_ae(self.settings)
        self.handlers = DimseHandlers(ctx, self.settings.ae_title)
        self._server: Any = None
        self._tls_server: Any = None
        self._channel = channel
        self._is_worker = channel is not None
        self._listen: socket.socket | None = None
        self._balancer: Balancer | None = None
        self._spawn = spawn
        #: set when this worker should stop (its main process has gone)
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        if self._listen is not None:
            return int(self._listen.getsockname()[1])
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
        if self._channel is not None:
            self._serve_handed_over(host)
        elif self.settings.dimse_workers > 1:
            self._listen = listening_socket(host, self.settings.dimse_port, backlog=128)
            self._balancer = Balancer(
                self._listen,
                self._spawn or self.python_worker_for(self.settings),
                self.settings.dimse_workers,
                "DIMSE worker",
            )
            self._balancer.start()
        else:
            server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer
            if self.settings.dimse_lean_storage:
                server_class = _lean_capable(server_class, self.handlers, None)
            server = self.ae.make_server(
                (host, self.settings.dimse_port),
                evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
                server_class=server_class,
            )
            self.ae._servers.append(server)  # as AE.start_server does (stop() needs it)
            threading.Thread(target=server.serve_forever, name="DimseAcceptor", daemon=True).start()
            self._server = server
        if not self._is_worker:
            log.info(
                "DIMSE: %s listening on %s:%s (pid %d%s)",
                self.settings.ae_title,
                host,
                self.port,
                os.getpid(),
                f", {self.settings.dimse_workers} worker processes" if self._balancer else "",
            )
        if self.settings.tls_port and not self._is_worker:  # TLS: main process only
            self._tls_server = self.ae.start_server(
                (host, self.settings.tls_port),
                block=False,
                evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
                ssl_context=self.tls_context(),
            )
            log.info("DICOM TLS: listening on %s:%s", host, self.tls_port)

    @staticmethod
    def python_worker_for(settings: Settings) -> Callable[[socket.socket], WorkerProcess]:
        """Start a DIMSE worker as ``python -m dicomhub.dimse.worker`` (``settings``
        passed in the environment)."""
        env = {**os.environ, WORKER_SETTINGS_ENV: settings.model_dump_json()}
        return python_worker("dicomhub.dimse.worker", env)

    def _serve_handed_over(self, host: str) -> None:
        """Worker: serve the connections that come over the channel from the main
        process, and report each one's end."""
        assert self._channel is not None

        def take(sock: socket.socket) -> None:
            sock.setblocking(True)
            try:
                peer = sock.getpeername()
            except OSError:  # the peer left already
                sock.close()
                receiver.closed()
                return
            # a thread per association, as when the server accepts it itself
            self._server.process_request(sock, peer)

        receiver = ChannelReceiver(self._channel, take, self.stopping.set)
        server = self.ae.make_server(
            (host, self.settings.dimse_port),
            evt_handlers=[
                *self.handlers.bindings(),
                (evt.EVT_CONN_CLOSE, lambda _event: receiver.closed()),
            ],  # type: ignore[arg-type]
            server_class=self._worker_server_class(host, receiver.closed),
        )
        self.ae._servers.append(server)  # as AE.start_server does (stop() needs it)
        self._server = server
        threading.Thread(
            target=receiver.run, args=(self.stopping,), name="DimseChannel", daemon=True
        ).start()

    def _worker_server_class(
        self, host: str, closed: Callable[[], None]
    ) -> type[ThreadedAssociationServer]:
        cls = _handed_over_server((host, self.settings.dimse_port))
        if self.settings.dimse_lean_storage:
            cls = _lean_capable(cls, self.handlers, closed)
        return cls

    def stop(self) -> None:
        """Stop accepting and close associations (and stop the worker processes)."""
        self.stopping.set()
        if self._balancer is not None:
            self._balancer.stop()
            self._balancer = None
        if self._listen is not None:
            self._listen.close()
            self._listen = None
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
