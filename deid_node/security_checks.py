"""Start-up checks of the security settings, and the warnings an operator must see.

A certificate that does not load, or a key that does not match it, is found
when the node starts (as a :class:`ConfigError` naming the key), not when the
first modality or archive connects.
"""

from __future__ import annotations

import ssl

from deid_node.config import Config, ConfigError
from deid_node.logs import get_logger
from deid_node.network.tls import client_context, server_context

log = get_logger("deid_node.security")


def tls_contexts(config: Config) -> ssl.SSLContext | None:
    """The SCP's SSL context (None without [tls]); every destination's is tried too."""
    server = None
    if config.tls is not None:
        try:
            server = server_context(config.tls)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"[tls] cert_file/key_file/ca_file: cannot load: {_why(exc)}"
            ) from None
    for i, dest in enumerate(config.destinations):
        if dest.tls is None:
            continue
        try:
            client_context(dest.tls)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"[destination #{i + 1}] tls_ca_file/tls_cert_file/tls_key_file: "
                f"cannot load: {_why(exc)}"
            ) from None
    return server


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or type(exc).__name__)


def log_security_posture(config: Config) -> None:
    if not config.allowed_callers:
        log.warning(
            "access_control_off",
            hint="no [[allowed_caller]] configured: any calling AE title is accepted",
        )
    if config.tls is None:
        log.warning("tls_off", hint="the Storage SCP accepts unencrypted connections")
    plain = [d.name for d in config.destinations if d.tls is None]
    if plain:
        log.info("destinations_without_tls", destinations=plain)
    limits = config.limits
    log.info(
        "limits",
        min_free_disk_mb=limits.min_free_disk_mb,
        max_queue_depth=limits.max_queue_depth,
        max_associations=config.node.max_associations,
    )
