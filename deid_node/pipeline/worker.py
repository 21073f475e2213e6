"""Work done off the receiving thread: de-identify a file, forward a batch.

These functions run in worker processes (``[node] workers`` of them) so that
the CPU-bound work uses every core and never slows the SCP. Each process
keeps its own registry connection, patient cache and outgoing associations,
set up once by :func:`init_worker`. The main process alone writes the job
queue and the audit log, from the outcomes these functions return.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine

from deid_node.allocator import tune_allocator
from deid_node.config import Config, Destination
from deid_node.deid.engine import DeidSettings, PatientPseudonym, deidentify, patient_key
from deid_node.deid.gate import LeakFound, close_leaks
from deid_node.deid.leaks import identifying_values, profile_for
from deid_node.deid.pixels.settings import PixelSettings
from deid_node.logs import configure_logging
from deid_node.network.common import configure_dicom_libraries
from deid_node.network.scu import FORWARDED, Forwarder, OutgoingItem, SendOutcome
from deid_node.pipeline.dicomfile import (
    read_deferred,
    replace_file_meta,
    spool_copy,
    write_dataset_file,
    write_dataset_to,
)
from deid_node.pipeline.spool import Spool
from deid_node.registry.store import (
    find_patient,
    get_or_create_patient,
    open_registry,
    record_uids,
)
from deid_node.routing import NO_DESTINATION_REASON, choose_destinations
from deid_node.secrets_store import load_or_create_key


@dataclass(frozen=True)
class DeidOutcome:
    job_id: int
    ok: bool
    reason: str = ""
    transfer_syntax: str = ""
    patient_id_old: str = ""
    patient_id_new: str = ""
    study_uid: tuple[str, str] = ("", "")
    sop_uid: tuple[str, str] = ("", "")
    uid_rows: tuple[tuple[str, str, str], ...] = ()
    destinations: tuple[str, ...] = ()  # routed to, in configuration order
    leak_hits: int = 0  # original identifiers the leak gate found after de-identification


@dataclass
class WorkerState:
    config: Config
    spool: Spool
    registry: Engine
    settings: DeidSettings
    patients: dict[tuple[str, str], PatientPseudonym] = field(default_factory=dict)
    # UID -> the level it was written at ("study", "series", "other").
    recorded_uids: dict[str, str] = field(default_factory=dict)
    forwarder: Forwarder | None = None
    pixels: PixelSettings | None = None  # None: the Clean Pixel Data option is off


_STATE: WorkerState | None = None


def init_worker(config: Config) -> None:
    """Set up this process's connections; the pool runs it once per process."""
    global _STATE
    # Tesseract and numpy threads fight over 2 cores; one per worker process.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    # A spawned process starts with structlog's console defaults (on stdout):
    # log JSON lines on stderr like the main process.
    configure_logging(config.node.log_level)
    configure_dicom_libraries()
    tune_allocator()  # image-sized buffers reused, not faulted in anew for each image
    # Release this process's associations when the pool shuts it down: Python
    # waits for pynetdicom's threads before a process exits, which would
    # otherwise hold every stop for the idle-release time.
    multiprocessing.util.Finalize(None, shutdown_worker, exitpriority=10)
    key = load_or_create_key(config.key_path, create=False)
    _STATE = WorkerState(
        config=config,
        spool=Spool(config.data_dir),
        registry=open_registry(config.registry_url),
        settings=DeidSettings(
            uid_key=key,
            options=config.deid.options,
            uid_root=config.deid.uid_root,
            preset=config.deid.preset,
        ),
        pixels=pixel_settings(config),
    )


# How much lower than the node's main process the worker processes run (os.nice).
WORKER_NICENESS = 10


def init_pool_worker(config: Config) -> None:
    """:func:`init_worker` for a process of the node's worker pool, which also lowers
    the process's CPU priority.

    Receiving is latency-bound: a sender waits for each C-STORE response before
    it sends the next instance, so every millisecond the SCP threads wait for a
    core that a worker holds is lost for good, while a worker that waits a little
    catches up from the spool afterwards. On a small machine (2 cores shared by
    the sender, the node and the archive) the CPU-bound workers otherwise slow the
    receiver down; below it in priority they use what it leaves, and the node
    stays as fast at receiving as the hardware allows. Only the pool's processes
    are lowered: with ``workers = 0`` the work runs in the receiving process.
    """
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    init_worker(config)


def pixel_settings(config: Config) -> PixelSettings | None:
    """The pixel pass's settings, or None where Clean Pixel Data is not in force."""
    return config.pixels if "CleanPixelData" in config.deid.options_in_force else None


def warm_up() -> int:
    """Task used to start every pool process up front (imports done, state ready)."""
    import time

    _state()
    time.sleep(0.2)  # keep this process busy so the next warm-up starts another
    return os.getpid()


def warm_up_pixels() -> int:
    """Task that loads the pixel pass's heavy parts (the detector's and recogniser's
    ONNX sessions, Presidio's analyzer: 1-2 s) before the first image needs them,
    so that it is not held up; submitted once per worker after the node has started."""
    import time

    start = time.monotonic()
    if _state().pixels is not None:
        from deid_node.deid.pixels.models import DETECTOR_FILE, RECOGNISER_FILE, session
        from deid_node.deid.pixels.phi import analyzer

        session(DETECTOR_FILE)
        session(RECOGNISER_FILE)
        analyzer().analyze(text="warm up 01/02/2003", language="en")
        structlog.get_logger().info(
            "pixel_pass_loaded", seconds=round(time.monotonic() - start, 2), pid=os.getpid()
        )
    time.sleep(max(0.0, 0.5 - (time.monotonic() - start)))  # let the next worker take one
    return os.getpid()


def shutdown_worker() -> None:
    global _STATE
    if _STATE is not None:
        if _STATE.forwarder is not None:
            _STATE.forwarder.close()
        _STATE.registry.dispose()
        _STATE = None


def _state() -> WorkerState:
    if _STATE is None:
        raise RuntimeError("worker not initialised")
    return _STATE


UNKNOWN_PATIENT_REASON = "patient not in the pseudonym table"


class UnknownPatient(LookupError):
    """The patient is not in the registry and ``[deid] unknown_patient`` is "quarantine"."""


def _patient(state: WorkerState, issuer: str, original_id: str) -> PatientPseudonym:
    key = (issuer, original_id)
    found = state.patients.get(key) if original_id else None
    if found is None and state.config.deid.unknown_patient == "quarantine":
        found = find_patient(state.registry, issuer, original_id)
        if found is None:
            raise UnknownPatient  # carries nothing: the ID is PHI
        state.patients[key] = found
    elif found is None:
        found = get_or_create_patient(
            state.registry,
            issuer,
            original_id,
            prefix=state.config.deid.pseudonym_prefix,
            min_offset_days=state.config.deid.date_shift_min_days,
            max_offset_days=state.config.deid.date_shift_max_days,
        )
        if original_id:
            state.patients[key] = found
    return found


def _cut_short(ds: Dataset) -> bool:
    """Whether the file ends inside its last element.

    pydicom keeps whatever bytes there are of a value that the end of the file
    cuts off, without an error; a deferred value (large pixel data) is checked
    when it is copied instead.
    """
    if not ds:
        return False
    # Plain ints: max over the tags themselves compares in Python, a few hundred
    # comparisons an instance.
    elem = ds.get_item(max(map(int, ds.keys())), keep_deferred=True)
    return (
        isinstance(elem, RawDataElement)
        and elem.value is not None
        and elem.length != 0xFFFFFFFF
        and len(elem.value) < elem.length
    )


def deidentify_file(
    state: WorkerState,
    src: Path,
    dst: Path | int,
    job_id: int = 0,
    *,
    durable: bool = True,
    calling_ae: str = "",
    destinations: Sequence[Destination] = (),
) -> DeidOutcome:
    """Read ``src``, de-identify it, write ``dst`` durably. Reasons carry no PHI.

    ``dst`` is a path (written whole or not at all) or an open descriptor (an
    in-memory file the streaming path sends from; ``durable`` does not apply).

    With ``destinations``, their routing rules are evaluated on the original
    dataset first (it is decoded here anyway); an instance that none of them
    takes is not de-identified and fails with :data:`NO_DESTINATION_REASON`.
    """
    try:
        ds = read_deferred(src)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        return DeidOutcome(job_id, False, f"unreadable DICOM ({type(exc).__name__})")
    if _cut_short(ds):
        return DeidOutcome(job_id, False, "unreadable DICOM (file ends inside an element)")
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip():
            return DeidOutcome(job_id, False, f"missing {keyword}")
    chosen: tuple[str, ...] = ()
    if destinations:
        try:
            chosen = choose_destinations(destinations, calling_ae, ds)
        except Exception as exc:  # a value that cannot be decoded for comparison
            return DeidOutcome(job_id, False, f"cannot evaluate routing ({type(exc).__name__})")
        if not chosen:
            return DeidOutcome(job_id, False, NO_DESTINATION_REASON)
    try:
        issuer, original_id = patient_key(ds)
        patient = _patient(state, issuer, original_id)
        needles = identifying_values(ds, profile_for(state.settings.options, state.settings.preset))
        if state.pixels is not None:
            # Imported here: OpenCV and the models load in the worker processes
            # only, never in the node's main process (memory).
            from deid_node.deid.pixels.clean import clean_pixel_data

            try:
                clean_pixel_data(ds, state.pixels)
            except Exception as exc:  # undecodable pixels, an unsupported layout, ...
                return DeidOutcome(job_id, False, f"cannot clean pixel data ({type(exc).__name__})")
        result = deidentify(ds, patient, state.settings)
        replace_file_meta(ds, state.config.node.ae_title)
        gate = close_leaks(ds, needles, state.config.deid.leak_gate)
        if isinstance(dst, int):
            write_dataset_to(ds, src, dst)
        else:
            write_dataset_file(ds, src, dst, durable=durable)
    except UnknownPatient:
        return DeidOutcome(job_id, False, UNKNOWN_PATIENT_REASON)
    except LeakFound as exc:  # its message names tags only
        return DeidOutcome(job_id, False, str(exc), leak_hits=exc.hits)
    except OSError as exc:
        raise OSError(f"cannot write de-identified file: {type(exc).__name__}") from None
    except Exception as exc:  # a value that breaks its VR, a bad sequence, ...
        return DeidOutcome(job_id, False, f"cannot de-identify ({type(exc).__name__})")
    rows = [
        (result.study_uid[0], result.study_uid[1], "study"),
        (result.series_uid[0], result.series_uid[1], "series"),
        (result.sop_instance_uid[0], result.sop_instance_uid[1], "instance"),
    ]
    levels = {r[0] for r in rows}
    rows += [(o, n, "other") for o, n in result.uid_map.items() if o not in levels]
    return DeidOutcome(
        job_id,
        True,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        patient_id_old=original_id,
        patient_id_new=patient.pseudo_id,
        study_uid=result.study_uid,
        sop_uid=result.sop_instance_uid,
        uid_rows=tuple(rows),
        destinations=chosen,
        leak_hits=gate.hits,
    )


def record_outcome_uids(state: WorkerState, outcomes: list[DeidOutcome]) -> None:
    """Write the UID mappings of a batch to the registry in one transaction.

    Study, series and frame-of-reference UIDs repeat across a study: each is
    written once per process; instance UIDs are unique anyway. A UID first seen as a
    reference ("other") is written again when it turns up as a study, series or
    instance, so that the crosswalk lists it at its level.
    """
    rows = []
    for o in outcomes:
        for row in o.uid_rows:
            uid, level = row[0], row[2]
            seen = state.recorded_uids.get(uid)
            if not uid or seen == level or (seen is not None and seen != "other"):
                continue
            rows.append(row)
            if level != "instance":
                state.recorded_uids[uid] = level
    record_uids(state.registry, rows)
    if len(state.recorded_uids) > 100_000:
        state.recorded_uids.clear()


def deidentify_jobs(
    jobs: list[tuple[int, str, str]],
    *,
    durable: bool = True,
    outputs: Mapping[int, int | Path] | None = None,
) -> list[DeidOutcome]:
    """Task: de-identify ``(job_id, spool name, calling AE)`` from incoming to outgoing
    (or, with ``outputs``, into the descriptor or file given for each job id).

    Each outcome names the destinations the instance is routed to.
    """
    state = _state()
    outcomes = []
    for job_id, name, calling_ae in jobs:
        src = state.spool.incoming / f"{name}.dcm"
        dst = state.spool.outgoing / f"{name}.dcm" if outputs is None else outputs[job_id]
        outcomes.append(
            deidentify_file(
                state,
                src,
                dst,
                job_id,
                durable=durable,
                calling_ae=calling_ae,
                destinations=state.config.destinations,
            )
        )
    # Before the outcomes reach the queue: a job is never marked de-identified
    # unless its UID mapping is in the registry.
    record_outcome_uids(state, outcomes)
    return outcomes


def forward_jobs(dest: Destination, items: list[OutgoingItem]) -> list[SendOutcome]:
    """Task: send a batch to one destination over this process's association."""
    state = _state()
    if state.forwarder is None:
        state.forwarder = Forwarder(state.config.node.ae_title, state.config.forward)
    return state.forwarder.send(dest, items)


def deidentify_and_forward(
    jobs: list[tuple[int, str, str, str]], dests: tuple[Destination, ...]
) -> tuple[list[DeidOutcome], dict[str, list[SendOutcome]]]:
    """Task for the streaming path: de-identify ``(job_id, name, sop_class, calling AE)``
    and send each instance to those of its routed destinations that are in ``dests``.

    While a destination is up, sending right after writing saves a second
    round trip through the dispatcher per instance. The outputs are written to
    in-memory files (memfd) and sent from there: until the dispatcher records the
    outcome, the received file (fsynced, still in the incoming spool) is the
    durable copy. Only an output that must wait in the outgoing spool is written
    there, durably, before returning: one not delivered to all its destinations
    (for its retries), or one routed to several (the dispatcher links each
    further destination's job to it). Creating, renaming and deleting a spool
    file per image cost more than the rest of the write (bench/throughput.py,
    perf: inode allocation on ext4 scans past every recently deleted inode).
    Large instances beyond :data:`MEMORY_OUTPUT_BYTES` a batch are written to the
    outgoing spool durably instead, and sent from there.
    The sends are returned by destination name, with the job ids given.
    """
    plain = [(job_id, name, ae) for job_id, name, _, ae in jobs]
    if not dests:
        return deidentify_jobs(plain), {}
    state = _state()
    info = {job_id: (name, sop_class) for job_id, name, sop_class, _ in jobs}
    outputs = _output_places(state, jobs)
    try:
        outcomes = deidentify_jobs(plain, outputs=outputs)
        items = {
            o.job_id: OutgoingItem(
                o.job_id,
                _sendable(outputs[o.job_id]),
                info[o.job_id][1],
                o.transfer_syntax,
            )
            for o in outcomes
            if o.ok
        }
        sends: dict[str, list[SendOutcome]] = {}
        delivered: dict[int, int] = {}
        for dest in dests:
            batch = [items[o.job_id] for o in outcomes if o.ok and dest.name in o.destinations]
            if batch:
                sends[dest.name] = forward_jobs(dest, batch)
                for s in sends[dest.name]:
                    if s.result == FORWARDED:
                        delivered[s.job_id] = delivered.get(s.job_id, 0) + 1
        for o in outcomes:
            fd = outputs[o.job_id]
            if (
                o.ok
                and isinstance(fd, int)
                and (
                    len(o.destinations) > 1
                    or delivered.get(o.job_id, 0) < max(1, len(o.destinations))
                )
            ):
                spool_copy(fd, state.spool.outgoing / f"{info[o.job_id][0]}.dcm")
    finally:
        for place in outputs.values():
            if isinstance(place, int):
                os.close(place)
    return outcomes, sends


# The most bytes of received instances one streaming task holds as in-memory
# outputs. Memory files cannot be written back to disk under pressure as spool
# files can: a batch of large instances (tomosynthesis, long cine loops) goes to
# the outgoing spool, written durably, as the part of a batch beyond this does.
MEMORY_OUTPUT_BYTES = 64 << 20


def _output_places(
    state: WorkerState, jobs: list[tuple[int, str, str, str]]
) -> dict[int, int | Path]:
    """Where each job's output is written: an in-memory file while the batch's
    received bytes stay within :data:`MEMORY_OUTPUT_BYTES`, else its outgoing spool
    file (durable, so it can wait there for a retry as it is)."""
    places: dict[int, int | Path] = {}
    held = 0
    for job_id, name, _, _ in jobs:
        try:
            size = (state.spool.incoming / f"{name}.dcm").stat().st_size
        except OSError:
            size = 0  # gone: de-identification reports it
        if held + size <= MEMORY_OUTPUT_BYTES:
            held += size
            places[job_id] = os.memfd_create("deid-node-output", os.MFD_CLOEXEC)
        else:
            places[job_id] = state.spool.outgoing / f"{name}.dcm"
    return places


def _sendable(place: int | Path) -> Path:
    """The path the forwarder reads an output from (an in-memory file by its fd)."""
    return Path(f"/proc/self/fd/{place}") if isinstance(place, int) else place
