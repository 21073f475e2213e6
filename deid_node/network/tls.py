"""SSL contexts for DICOM TLS (PS3.15 Annex B), for the SCP and for destinations.

Both sides require TLS 1.2 or later (BCP 195). The server context defers the
handshake to the association's own thread: pynetdicom wraps an accepted socket
in the thread that accepts connections, so a client that connects and never
completes a handshake would otherwise stop the node from accepting anyone.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from deid_node.security_config import DestinationTLS, NodeTLS

# Reads and writes on a TLS connection (the handshake included) give up after
# this long without progress; an idle association is not affected, because
# pynetdicom reads only once select() says there is data.
TLS_SOCKET_TIMEOUT = 30.0


class _DeferredHandshakeContext(ssl.SSLContext):
    """A server context whose handshake happens on the first read.

    OpenSSL completes a pending handshake inside the first SSL_read, which the
    association thread does when the A-ASSOCIATE-RQ is due; a failed or stalled
    handshake then ends that one connection (as a closed transport) and nothing
    else.
    """

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if kwargs.get("server_side"):
            sock.settimeout(TLS_SOCKET_TIMEOUT)
            kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(settings: NodeTLS) -> ssl.SSLContext:
    """The Storage SCP's context: its certificate, and client checks if asked."""
    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.cert_file, settings.key_file)
    if settings.ca_file is not None:
        ctx.load_verify_locations(cafile=settings.ca_file)
        # With a CA but no requirement, a certificate a client offers is still checked.
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(settings: DestinationTLS) -> ssl.SSLContext:
    """A destination's context: the archive's certificate must verify."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca_file is not None:
        ctx.load_verify_locations(cafile=settings.ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = settings.check_hostname
    if settings.cert_file is not None and settings.key_file is not None:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    return ctx
