"""dicomhub's DICOM application entity (PS3.7, PS3.8) on pynetdicom.

Presentation contexts: Verification; every storage SOP class pynetdicom knows with every
transfer syntax the codecs decode (SCP, and SCU role for C-GET); Patient and Study Root
Query/Retrieve FIND/GET/MOVE; Storage Commitment Push Model.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, AllStoragePresentationContexts, _config

from dicomhub.dimse.handlers import DimseHandlers

if TYPE_CHECKING:
    from dicomhub.config import Settings
    from dicomhub.context import Context

log = logging.getLogger(__name__)

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


class DimseServer:
    """Runs the AE's association server in background threads."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.ae = build_ae(self.settings)
        self.handlers = DimseHandlers(ctx, self.settings.ae_title)
        self._server: Any = None
        self._tls_server: Any = None

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
        host = self.settings.dimse_host or self.settings.host
        self._server = self.ae.start_server(
            (host, self.settings.dimse_port),
            block=False,
            evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
        )
        log.info("DIMSE: %s listening on %s:%s", self.settings.ae_title, host, self.port)
        if self.settings.tls_port:
            self._tls_server = self.ae.start_server(
                (host, self.settings.tls_port),
                block=False,
                evt_handlers=self.handlers.bindings(),  # type: ignore[arg-type]
                ssl_context=self.tls_context(),
            )
            log.info("DICOM TLS: listening on %s:%s", host, self.tls_port)

    def stop(self) -> None:
        """Stop accepting and close associations."""
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
