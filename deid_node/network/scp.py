"""Storage SCP: receive, spool durably, acknowledge.

The C-STORE handler never decodes the dataset: it checks its structure
(:mod:`deid_node.network.checks`: lengths, VRs, SOP UIDs, no values), writes the
bytes exactly as the sender encoded them (with a file meta header built from the
presentation context) and records a job. A data set that could never be read is
refused with status C000 and the reason as error comment. Success is returned
only after file and job are durable; any failure returns an error status with a
comment, and the association goes on. De-identification happens later, in
workers, so that receiving never waits for it.
"""

from __future__ import annotations

import copy
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from deid_node.logs import get_logger
from deid_node.network import negotiation
from deid_node.network.access import AccessControl
from deid_node.network.checks import dataset_problem
from deid_node.network.common import (
    DIRECT_SEND_HANDLER,
    NODELAY_HANDLER,
    configure_dicom_libraries,
)
from deid_node.network.reactor import WAKE_HANDLER
from deid_node.pipeline.backpressure import Backpressure
from deid_node.pipeline.dicomfile import file_meta_bytes
from deid_node.pipeline.queue import Job, JobQueue
from deid_node.pipeline.spool import FreeFiles, Spool, new_job_name, write_durably

log = get_logger("deid_node.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass
class ReceiveContext:
    spool: Spool
    queue: JobQueue
    on_received: Callable[[Job], None]  # hands the job to the dispatcher
    backpressure: Backpressure | None = None  # disk floor and queue depth limit
    on_stored_seconds: Callable[[float], None] | None = None  # receive latency (metrics)
    free: FreeFiles | None = None  # emptied incoming files to write into


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


def handle_store(event: evt.Event, ctx: ReceiveContext) -> int | Dataset:
    request = event.request
    sop_class = str(request.AffectedSOPClassUID or "").strip()
    sop_instance = str(request.AffectedSOPInstanceUID or "").strip()
    if not sop_class or not sop_instance:
        return _failure(STATUS_CANNOT_UNDERSTAND, "C-STORE without SOP Class or Instance UID")
    started = time.monotonic()
    calling_ae = event.assoc.requestor.ae_title
    if ctx.backpressure is not None:
        refusal = ctx.backpressure.refusal()
        if refusal is not None:
            return _failure(STATUS_OUT_OF_RESOURCES, refusal)
    transfer_syntax = str(event.context.transfer_syntax)
    name = new_job_name()
    path = ctx.spool.incoming / f"{name}.dcm"
    try:
        meta = file_meta_bytes(sop_class, sop_instance, transfer_syntax, calling_ae)
        body = event.encoded_dataset(include_meta=False)
        # Refuse what could never be read, while the sender can still hear it.
        problem = dataset_problem(body, transfer_syntax)
        if problem is None:
            reuse = ctx.free.take() if ctx.free is not None else None
            write_durably(path, [meta, body], reuse=reuse)
            job = ctx.queue.add(name, calling_ae, sop_class, transfer_syntax)
    except Exception as exc:  # disk full, database locked, ...: say so, lose nothing
        path.unlink(missing_ok=True)
        log.error("store_failed", calling_ae=calling_ae, error=type(exc).__name__)
        return _failure(STATUS_OUT_OF_RESOURCES, f"could not spool instance: {type(exc).__name__}")
    if problem is not None:
        log.warning("store_refused", calling_ae=calling_ae, reason=problem)  # tags, no values
        return _failure(STATUS_CANNOT_UNDERSTAND, problem)
    log.debug("received", job=job.id, calling_ae=calling_ae, bytes=len(body))
    if ctx.backpressure is not None:
        ctx.backpressure.added()
    ctx.on_received(job)
    if ctx.on_stored_seconds is not None:
        ctx.on_stored_seconds(time.monotonic() - started)
    return STATUS_SUCCESS


def _on_accepted(event: evt.Event) -> None:
    log.info(
        "association_accepted",
        calling_ae=event.assoc.requestor.ae_title,
        address=event.assoc.requestor.address,
    )


def _on_released(event: evt.Event) -> None:
    log.info("association_released", calling_ae=event.assoc.requestor.ae_title)


def _on_aborted(event: evt.Event) -> None:
    calling_ae = event.assoc.requestor.ae_title
    if not calling_ae:  # a connection that never asked for an association (a probe)
        log.info("connection_closed_without_association")
        return
    log.warning("association_aborted", calling_ae=calling_ae)


def build_scp(ae_title: str, max_associations: int) -> AE:
    """An AE that accepts C-ECHO and C-STORE of any storage SOP class and syntax."""
    configure_dicom_libraries()
    # A router must take private and newer storage SOP classes too.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    negotiation.install()  # ... but only in transfer syntaxes we can read
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = 131072  # large PDUs: fewer reactor turns per instance
    ae.require_called_aet = True
    ae.network_timeout = 120
    ae.dimse_timeout = 120
    # A connection that never asks for an association (port probe, health
    # check, scanner) must not hold one of max_associations for long.
    ae.acse_timeout = 10
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


class _Contexts(list):  # type: ignore[type-arg]
    """The server's supported presentation contexts, copied cheaply per association.

    pynetdicom gives each association its own copy of them, by ``deepcopy``: for
    every storage SOP class in every transfer syntax (171 contexts, 7,654 UIDs)
    that cost 160 ms of CPU per association here, before the association was
    even accepted (a modality that opens one per series, or per image, paid it
    each time). Negotiation only sets a context's own fields, and its UIDs are
    immutable strings, so each copy is the object's fields with its own lists.
    """

    def __deepcopy__(self, memo: dict[int, object]) -> list[PresentationContext]:
        return [_clone(cx) for cx in self]


def _clone(cx: PresentationContext) -> PresentationContext:
    new = copy.copy(cx)
    for name, value in vars(cx).items():
        if isinstance(value, list | dict | set):
            setattr(new, name, copy.copy(value))
    return new


def start_scp(  # type: ignore[no-untyped-def]
    ae: AE,
    host: str,
    port: int,
    ctx: ReceiveContext,
    *,
    ssl_context: ssl.SSLContext | None = None,
    access: AccessControl | None = None,
):
    handlers = [
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_RELEASED, _on_released),
        (evt.EVT_ABORTED, _on_aborted),
        NODELAY_HANDLER,
        DIRECT_SEND_HANDLER,
        WAKE_HANDLER,
        negotiation.EARLY_CLOSE_HANDLER,
    ]
    if access is not None and not access.open:
        handlers.append((evt.EVT_REQUESTED, access.on_requested))
    server = ae.start_server(
        (host, port), block=False, evt_handlers=handlers, ssl_context=ssl_context
    )
    server.contexts = _Contexts(server.contexts)
    return server
