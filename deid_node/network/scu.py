"""Forwarding SCU: send de-identified files to a destination over C-STORE.

One association per destination is kept open and reused while the presentation
contexts it has cover what is to be sent; it is released after
``idle_release_seconds`` without use. A file goes out exactly as written when
the destination accepts its transfer syntax (raw bytes, no decode); otherwise it
is decoded and sent in an uncompressed syntax the destination accepted.

Each file gets one of three outcomes: ``forwarded`` (the destination confirmed
it), ``retry`` (association refused, timeout, out of resources: try again later)
or ``quarantine`` (a status that retrying cannot fix).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from deid_node.config import Destination, ForwardConfig
from deid_node.logs import get_logger
from deid_node.network.common import (
    DIRECT_SEND_HANDLER,
    NODELAY_HANDLER,
    UNCOMPRESSED,
    configure_dicom_libraries,
)
from deid_node.network.reactor import WAKE_HANDLER
from deid_node.network.tls import client_context

log = get_logger("deid_node.scu")

FORWARDED = "forwarded"
RETRY = "retry"
QUARANTINE = "quarantine"

MAX_CONTEXTS = 128

# Statuses that say "not now" rather than "never": out of resources and the
# general failures a busy or restarting archive returns.
_RETRYABLE = {0x0110, 0x0210, 0x0211, 0x0212, 0x0213}
_WARNINGS_STORED = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class OutgoingItem:
    job_id: int
    path: Path
    sop_class_uid: str
    transfer_syntax: str


@dataclass(frozen=True)
class SendOutcome:
    job_id: int
    result: str  # FORWARDED, RETRY or QUARANTINE
    reason: str = ""
    status: int | None = None
    connection_problem: bool = False


def classify_status(status: int) -> str:
    if status == 0x0000 or status in _WARNINGS_STORED:
        return FORWARDED
    if 0xA700 <= status <= 0xA7FF or status in _RETRYABLE:
        return RETRY
    return QUARANTINE


def _contexts_for(needed: set[tuple[str, str]]) -> list[PresentationContext]:
    """One exact context per (SOP class, syntax), plus an uncompressed fallback.

    The fallback is proposed for uncompressed files too: a destination that
    takes only Implicit VR Little Endian rejects an Explicit VR context, and
    without the fallback the association would carry nothing it can send.
    """
    contexts: list[PresentationContext] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(sop: str, syntaxes: tuple[str, ...]) -> None:
        if (sop, syntaxes) not in seen and len(contexts) < MAX_CONTEXTS:
            seen.add((sop, syntaxes))
            contexts.append(build_context(sop, list(syntaxes)))

    for sop, ts in sorted(needed):
        add(sop, (ts,))
    for sop, _ts in sorted(needed):
        add(sop, tuple(str(u) for u in UNCOMPRESSED))
    return contexts


def _accepted(assoc: Association) -> dict[tuple[str, str], int]:
    return {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id
        for cx in assoc.accepted_contexts
    }


def _covers(assoc: Association, needed: set[tuple[str, str]]) -> bool:
    accepted = _accepted(assoc)
    for sop, ts in needed:
        if (sop, ts) in accepted:
            continue
        if not any((sop, str(u)) in accepted for u in UNCOMPRESSED):
            return False
    return True


class Forwarder:
    """Associations to destinations, reused across batches; one per destination."""

    def __init__(self, calling_ae: str, settings: ForwardConfig) -> None:
        configure_dicom_libraries()
        # Send stored files as raw bytes when the syntax matches (no decode).
        _config.STORE_SEND_CHUNKED_DATASET = True
        self.settings = settings
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = settings.connect_timeout_seconds
        self.ae.connection_timeout = settings.connect_timeout_seconds
        self.ae.dimse_timeout = settings.dimse_timeout_seconds
        self.ae.network_timeout = settings.dimse_timeout_seconds
        self.ae.maximum_pdu_size = 0
        self._assocs: dict[str, Association] = {}
        self._needed: dict[str, set[tuple[str, str]]] = {}
        self._last_used: dict[str, float] = {}
        self._tls: dict[str, ssl.SSLContext] = {}  # per destination, built once
        self._lock = threading.RLock()
        self._reaper: threading.Thread | None = None
        self._closed = threading.Event()

    # -- association management -------------------------------------------------

    def _start_reaper(self) -> None:
        if self._reaper is None and self.settings.idle_release_seconds > 0:
            self._reaper = threading.Thread(
                target=self._reap_loop, name="scu-idle-release", daemon=True
            )
            self._reaper.start()

    def _reap_loop(self) -> None:
        interval = max(0.2, min(1.0, self.settings.idle_release_seconds / 2))
        while not self._closed.wait(interval):
            self.release_idle()

    def release_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            for name in list(self._assocs):
                if now - self._last_used.get(name, 0) >= self.settings.idle_release_seconds:
                    self._release(name)

    def _release(self, name: str) -> None:
        assoc = self._assocs.pop(name, None)
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:  # the peer may already be gone
                assoc.abort()

    def _association(self, dest: Destination, needed: set[tuple[str, str]]) -> Association:
        assoc = self._assocs.get(dest.name)
        if assoc is not None and assoc.is_established and _covers(assoc, needed):
            return assoc
        self._release(dest.name)
        wanted = self._needed.setdefault(dest.name, set())
        wanted |= needed
        if len(_contexts_for(wanted)) >= MAX_CONTEXTS:
            wanted.clear()
            wanted |= needed
        assoc = self.ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            contexts=_contexts_for(wanted),
            evt_handlers=[NODELAY_HANDLER, DIRECT_SEND_HANDLER, WAKE_HANDLER],
            tls_args=self._tls_args(dest),
        )
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "association failed"
            if dest.tls is not None and not assoc.is_rejected:
                reason += " over TLS (certificate not trusted, or archive down)"
            if assoc.is_aborted:
                reason = "association aborted"
            raise ConnectionError(reason)
        self._assocs[dest.name] = assoc
        return assoc

    def _tls_args(self, dest: Destination) -> tuple[ssl.SSLContext, str] | None:
        """DICOM TLS towards ``dest``; the host name is what its certificate must name."""
        if dest.tls is None:
            return None
        ctx = self._tls.get(dest.name)
        if ctx is None:
            ctx = self._tls[dest.name] = client_context(dest.tls)
        return ctx, dest.host

    # -- sending -----------------------------------------------------------------

    def send(self, dest: Destination, items: Sequence[OutgoingItem]) -> list[SendOutcome]:
        """Send ``items`` to ``dest``; one outcome per item, in order."""
        with self._lock:
            self._start_reaper()
            needed = {(i.sop_class_uid, i.transfer_syntax) for i in items}
            try:
                assoc = self._association(dest, needed)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ConnectionError) else type(exc).__name__
                log.warning("destination_unavailable", destination=dest.name, reason=reason)
                return [
                    SendOutcome(i.job_id, RETRY, f"{dest.name}: {reason}", None, True)
                    for i in items
                ]
            accepted = _accepted(assoc)  # fixed for the association's life
            outcomes: list[SendOutcome] = []
            for item in items:
                if not assoc.is_established:
                    outcomes.append(SendOutcome(item.job_id, RETRY, "association lost", None, True))
                    continue
                outcomes.append(self._send_one(assoc, accepted, item))
            self._last_used[dest.name] = time.monotonic()
            if not assoc.is_established:
                self._assocs.pop(dest.name, None)
            return outcomes

    def _send_one(
        self, assoc: Association, accepted: dict[tuple[str, str], int], item: OutgoingItem
    ) -> SendOutcome:
        try:
            if (item.sop_class_uid, item.transfer_syntax) in accepted:
                status_ds = assoc.send_c_store(item.path)
            elif any((item.sop_class_uid, str(u)) in accepted for u in UNCOMPRESSED):
                ds = dcmread(item.path)
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    ds.decompress()
                else:
                    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
                status_ds = assoc.send_c_store(ds)
            else:
                return SendOutcome(
                    item.job_id,
                    QUARANTINE,
                    "destination accepted no presentation context for this SOP class",
                )
        except (OSError, RuntimeError, ConnectionError) as exc:
            return SendOutcome(item.job_id, RETRY, f"send failed: {type(exc).__name__}", None, True)
        except Exception as exc:  # decode or encode problem: retrying will not help
            return SendOutcome(item.job_id, QUARANTINE, f"cannot send: {type(exc).__name__}")
        status = getattr(status_ds, "Status", None)
        if status is None:
            # No response (timeout, abort, or an empty response): never success.
            return SendOutcome(item.job_id, RETRY, "no C-STORE response", None, True)
        result = classify_status(int(status))
        comment = str(getattr(status_ds, "ErrorComment", "") or "")[:64]
        reason = "" if result == FORWARDED else f"status 0x{int(status):04X} {comment}".strip()
        return SendOutcome(item.job_id, result, reason, int(status))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for name in list(self._assocs):
                self._release(name)
