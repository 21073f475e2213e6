"""The running node: SCP, dispatcher and workers, wired together.

Data flows one way: the SCP spools and records a job, then hands it to the
dispatcher; the dispatcher thread gives jobs to the worker pool (de-identify,
then forward) and turns each outcome into a queue state change and audit
events. Only this thread writes job states after reception, so there is one
writer and no lost update.

The database is the durable record; the dispatcher's work lists live in memory
(a deque per stage, a heap of retries) so that the per-instance path never
queries it. They are loaded from the database at start, and reconciled with it
every few seconds, which also picks up jobs released from quarantine by the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import os
import random
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

from pydicom.filereader import read_file_meta_info

from deid_node.allocator import tune_allocator
from deid_node.audit import AuditEvent, AuditLog
from deid_node.config import Config, Destination
from deid_node.logs import get_logger
from deid_node.metrics import NodeMetrics
from deid_node.metrics import serve as serve_metrics
from deid_node.network.access import AccessControl
from deid_node.network.scp import ReceiveContext, build_scp, start_scp
from deid_node.network.scu import FORWARDED, QUARANTINE, OutgoingItem, SendOutcome
from deid_node.pipeline import routed, worker
from deid_node.pipeline.backpressure import Backpressure
from deid_node.pipeline.grouping import StudyGate
from deid_node.pipeline.queue import DEIDENTIFIED, QUARANTINED, RECEIVED, Job, JobQueue
from deid_node.pipeline.spool import FreeFiles, Spool, move_durably
from deid_node.registry.store import open_registry
from deid_node.secrets_store import load_or_create_key
from deid_node.security_checks import log_security_posture, tls_contexts

log = get_logger("deid_node.node")

DEID_CRASH_LIMIT = 3  # a file that kills its worker this often is quarantined
STATUS_RETRY_LIMIT = 10  # retryable C-STORE statuses (not outages) before quarantine
DROP_LIMIT = 5  # sends of one instance answered by a dropped association, before quarantine
NO_RESPONSE = "no C-STORE response"  # scu.Forwarder's reason for exactly that


def prepare_data_dir(config: Config) -> Spool:
    """Create ``data_dir`` owner-only, its spool, and the UID key; clean leftovers."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(PermissionError):
        os.chmod(config.data_dir, 0o700)
    spool = Spool(config.data_dir)
    spool.create()
    load_or_create_key(config.key_path, create=config.deid.key_file is None)
    return spool


RECONCILE_SECONDS = 5.0


@dataclass
class _Work:
    """What the dispatcher knows about, by stage; every job is in one place."""

    to_deid: deque[Job] = field(default_factory=deque)
    to_forward: deque[Job] = field(default_factory=deque)
    waiting: list[tuple[float, int, Job]] = field(default_factory=list)  # retry heap
    deid: dict[int, Job] = field(default_factory=dict)  # in flight
    forward: dict[int, Job] = field(default_factory=dict)  # in flight
    deid_tasks: int = 0
    forward_tasks: int = 0
    order: itertools.count = field(default_factory=itertools.count)
    # [forward] mode = "study": de-identified jobs wait here for their study to be
    # stable, then go to `groups`, each sent as one task (one association).
    gate: StudyGate | None = None
    groups: deque[list[Job]] = field(default_factory=deque)

    def known(self) -> set[int]:
        ids = {j.id for j in self.to_deid} | {j.id for j in self.to_forward}
        ids |= {j.id for _, _, j in self.waiting}
        if self.gate is not None:
            ids |= self.gate.ids() | {j.id for g in self.groups for j in g}
        return ids | set(self.deid) | set(self.forward)

    def hold(self, job: Job, until: float) -> None:
        heapq.heappush(self.waiting, (until, next(self.order), job))

    def release_due(self, now: float) -> None:
        while self.waiting and self.waiting[0][0] <= now:
            _, _, job = heapq.heappop(self.waiting)
            (self.to_deid if job.state == RECEIVED else self.to_forward).append(job)


class Node:
    """One deid-node process. ``start()`` returns once the SCP is listening."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.data_dir)
        self._free = FreeFiles(self.spool.incoming)  # done received files, emptied
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._results: SimpleQueue[tuple[str, Any, Future]] = SimpleQueue()
        self._work = _Work()
        if config.forward.mode == "study":
            self._work.gate = StudyGate(config.forward.stable_seconds)
        self._incoming: SimpleQueue[Job] = SimpleQueue()  # from the SCP threads
        self._last_reconcile = 0.0
        self._dest_up: dict[str, bool] = {}  # last word from each destination
        self._crashes: dict[int, int] = {}
        self._drops: dict[int, int] = {}  # per job: sends that got no response
        self._dispatcher: threading.Thread | None = None
        self._server: Any = None
        self._executor: Executor | None = None
        self.queue: JobQueue | None = None
        self.audit: AuditLog | None = None
        self.access = AccessControl(config.allowed_callers)
        self.backpressure = Backpressure(config.limits, config.data_dir)
        self.metrics = NodeMetrics(d.name for d in config.destinations)
        self._metrics_server: Any = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        server_tls = tls_contexts(cfg)  # ConfigError before anything starts
        tune_allocator()  # received PDUs and data sets reuse heap memory
        prepare_data_dir(cfg)
        removed = self.spool.clean_tmp()
        self._free.fill()
        open_registry(cfg.registry_url).dispose()  # create or upgrade the schema once
        self.queue = JobQueue(cfg.queue_url)
        self.audit = AuditLog(cfg.audit_url)
        self.metrics.watch_queue(self.queue.counts)
        if cfg.metrics.enabled:  # before any thread: a port in use stops the start cleanly
            self._metrics_server = serve_metrics(
                self.metrics, cfg.metrics.host, cfg.metrics.port, self.health
            )
        recovered, orphans = self._recover_spool()
        self._executor = self._new_executor()
        ae = build_scp(cfg.node.ae_title, cfg.node.max_associations)
        self.backpressure.reset_depth(self.queue.pending_count())
        receive_latency = self.metrics.latency.labels("receive").observe
        ctx = ReceiveContext(
            self.spool,
            self.queue,
            self._job_received,
            self.backpressure,
            on_stored_seconds=receive_latency,
            free=self._free,
        )
        self._server = start_scp(
            ae, cfg.node.host, cfg.node.port, ctx, ssl_context=server_tls, access=self.access
        )
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="dispatcher")
        self._dispatcher.start()
        counts = self.queue.counts()
        log.info(
            "node_started",
            ae_title=cfg.node.ae_title,
            host=cfg.node.host,
            port=self.port,
            workers=cfg.node.workers,
            destinations=[d.name for d in cfg.destinations],
            resumed_received=counts[RECEIVED],
            resumed_deidentified=counts[DEIDENTIFIED],
            tmp_files_removed=removed,
            jobs_recovered_from_spool=recovered,
            stale_files_removed=orphans,
        )
        if not cfg.destinations:
            log.warning("no_destination", hint="de-identified files wait in the outgoing spool")
        log_security_posture(cfg)

    def _job_received(self, job: Job) -> None:
        self._incoming.put(job)
        self._wake.set()
        self.metrics.received.inc()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the node receives and its dispatcher runs.

        A destination that is down does not make the node unhealthy: it keeps
        receiving and queues durably, which is its job during an archive outage;
        the body says which destinations are down ("status": "degraded").
        """
        assert self.queue is not None
        running = (
            self._dispatcher is not None
            and self._dispatcher.is_alive()
            and not self._stopping.is_set()
        )
        queue = self.queue.counts()
        destinations = {n: "up" if up else "down" for n, up in self.metrics.destinations().items()}
        status = "ok" if "down" not in destinations.values() else "degraded"
        if self._stopping.is_set():
            status = "stopping"
        elif self._dispatcher is None:
            status = "starting"
        elif not running:
            status = "dispatcher_stopped"
        body = {
            "status": status,
            "queue": queue,
            "queue_depth": queue[RECEIVED] + queue[DEIDENTIFIED],
            "destinations": destinations,
        }
        return running, body

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.node.port
        return int(self._server.server_address[1])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight work finish, leave the queue consistent."""
        if self._stopping.is_set():
            return
        log.info("node_stopping")
        if self._server is not None:
            self._server.shutdown()  # no new associations from here on
            # C-STOREs already being received finish and get their response;
            # later ones are refused (0xA700), so that senders finish quickly
            # and know to send those again.
            self.backpressure.stop_accepting()
            # Let senders finish what they are sending; an instance cut off
            # mid-transfer was never acknowledged, so its sender sends it again.
            # Only established associations can be sending: an acceptor still
            # waiting for an A-ASSOCIATE-RQ (a port probe, a client that never
            # spoke) would otherwise hold the stop for the whole deadline.
            deadline = time.monotonic() + min(timeout, 10.0)
            while (
                any(a.is_established for a in self._server.active_associations)
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            for assoc in self._server.active_associations:
                assoc.abort()
        self._stopping.set()
        self._wake.set()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._drain_results()
        if self.config.node.workers == 0:
            worker.shutdown_worker()
        if self.queue is not None:
            self.queue.dispose()
        if self.audit is not None:
            self.audit.dispose()
        log.info(
            "node_stopped",
            associations_rejected=self.access.rejected,
            stores_refused=self.backpressure.refused,
        )

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop_requested.set()

    def wait(self) -> None:
        while not self._stop_requested.wait(1.0):
            pass

    # -- executor -----------------------------------------------------------------

    def _new_executor(self) -> Executor:
        n = self.config.node.workers
        if n == 0:
            worker.init_worker(self.config)
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="deid-worker")
        pool = ProcessPoolExecutor(
            max_workers=n,
            mp_context=get_context("spawn"),
            initializer=worker.init_pool_worker,
            initargs=(self.config,),
        )
        # Processes start on demand; start them all now, so that the first
        # images do not wait for n interpreters to import pydicom.
        warm = [pool.submit(worker.warm_up) for _ in range(n)]
        for f in warm:
            f.result(timeout=120)
        if worker.pixel_settings(self.config) is not None and self.config.pixels.preload:
            # Not waited for: the node listens meanwhile, and the first images
            # queue behind these few seconds instead of each paying them.
            for _ in range(n):
                pool.submit(worker.warm_up_pixels)
        return pool

    def _recover_spool(self) -> tuple[int, int]:
        """Make the spool and the queue agree after any stop, clean or not.

        An incoming file without a job was written and fsynced, so it may have
        been acknowledged: it becomes a job again (its file meta says who sent
        it). A file of a quarantined job goes back to quarantine/ unless a copy
        is there (a quarantine retry cut short). Any other file whose job has
        moved on is a leftover: deleted.
        """
        assert self.queue is not None
        states = self.queue.states_by_name()
        recovered = removed = 0
        for path in [*self.spool.incoming.glob("*.dcm"), *self.spool.outgoing.glob("*.dcm")]:
            kept = self.spool.quarantine / path.name
            if states.get(path.stem) == QUARANTINED and not kept.exists():
                move_durably(path, kept)
        for path in self.spool.incoming.glob("*.dcm"):
            state = states.get(path.stem)
            if state is None:
                try:
                    meta = read_file_meta_info(path)
                except Exception:
                    meta = None
                self.queue.add(
                    path.stem,
                    str(getattr(meta, "SourceApplicationEntityTitle", "") or "(recovered)"),
                    str(getattr(meta, "MediaStorageSOPClassUID", "") or ""),
                    str(getattr(meta, "TransferSyntaxUID", "") or ""),
                )
                recovered += 1
            elif state != RECEIVED:
                path.unlink(missing_ok=True)
                removed += 1
        for path in self.spool.outgoing.glob("*.dcm"):
            if states.get(path.stem) != DEIDENTIFIED:
                path.unlink(missing_ok=True)  # redone from incoming, or already sent
                removed += 1
        return recovered, removed

    # -- dispatching ------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._idle_wait())
            self._wake.clear()
            try:
                self._drain_results()
                if self._stopping.is_set():
                    break
                self._take_incoming()
                now = time.time()
                if now - self._last_reconcile >= RECONCILE_SECONDS:
                    self._reconcile(now)
                self._work.release_due(now)
                self._submit_deid()
                routed.submit_stable_studies(self, now)
                self._submit_forward()
            except Exception as exc:
                log.error("dispatcher_error", error=type(exc).__name__)
                time.sleep(0.5)

    def _idle_wait(self) -> float:
        wait = RECONCILE_SECONDS
        if self._work.waiting:
            wait = min(wait, max(0.0, self._work.waiting[0][0] - time.time()))
        if self._work.gate is not None:
            wait = min(wait, self._work.gate.next_due(time.time()) or wait)
        return max(0.01, wait)

    def _take_incoming(self) -> None:
        while True:
            try:
                self._work.to_deid.append(self._incoming.get_nowait())
            except Empty:
                return

    def _reconcile(self, now: float) -> None:
        """Pick up jobs the database has and the work lists do not (start, CLI)."""
        assert self.queue is not None
        self._last_reconcile = now
        self._take_incoming()
        self.backpressure.reset_depth(self.queue.pending_count())
        for job in self.queue.in_states((RECEIVED, DEIDENTIFIED), exclude=self._work.known()):
            if job.state == RECEIVED and job.attempts == 0 and job.received_at > now - 2.0:
                continue  # just stored: the SCP thread is handing it over itself
            if job.next_attempt_at > now:
                self._work.hold(job, job.next_attempt_at)
            elif job.state == RECEIVED:
                self._work.to_deid.append(job)
            else:
                routed.forwardable(self._work, [job])

    @staticmethod
    def _take(items: deque[Job], n: int) -> list[Job]:
        return [items.popleft() for _ in range(min(n, len(items)))]

    def _submit(self, kind: str, fn: Any, *args: Any) -> bool:
        assert self._executor is not None
        try:
            future = self._executor.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError):
            self._restart_executor()
            return False
        future.add_done_callback(lambda f: (self._results.put((kind, args, f)), self._wake.set()))
        return True

    def _restart_executor(self) -> None:
        log.error("worker_pool_broken", action="restarting")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()

    def _submit_deid(self) -> None:
        workers = max(1, self.config.node.workers)
        work = self._work
        while work.deid_tasks < 2 * workers and work.to_deid:
            # Small batches while the queue is short (latency), larger when long.
            size = max(1, min(16, len(work.to_deid) // workers))
            jobs = self._take(work.to_deid, size)
            for j in jobs:
                work.deid[j.id] = j
            # Send in the same task to the destinations that answer; after an
            # outage, de-identify only and let the retry schedule send.
            dests = routed.streaming_destinations(self.config, self._dest_up)
            quads = [(j.id, j.name, j.sop_class_uid, j.calling_ae) for j in jobs]
            if not self._submit("deid", worker.deidentify_and_forward, quads, dests):
                for j in reversed(jobs):
                    work.deid.pop(j.id, None)
                    work.to_deid.appendleft(j)
                return
            work.deid_tasks += 1

    def _submit_forward(self) -> None:
        if not self.config.destinations:
            return
        workers = max(1, self.config.node.workers)
        work = self._work
        while work.forward_tasks < workers and work.to_forward:
            jobs = self._take(work.to_forward, self.config.forward.batch_size)
            by_dest: dict[str, list[Job]] = {}
            for j in jobs:
                by_dest.setdefault(j.destination or self.config.destinations[0].name, []).append(j)
            for dest_name, group in by_dest.items():
                if routed.destination_gone(self.config, dest_name):
                    self._quarantine(group, self.spool.outgoing, routed.GONE_REASON)
                    continue
                if not self._submit_group(self._destination(dest_name), group):
                    work.to_forward.extend(group)
                    return

    def _submit_group(self, dest: Destination, group: list[Job]) -> bool:
        """Send ``group`` to ``dest`` as one forwarding task; False (nothing changed)
        when the pool would not take it, for the caller to put the jobs back."""
        work = self._work
        items = [
            OutgoingItem(
                j.id, self.spool.outgoing / f"{j.name}.dcm", j.sop_class_uid, j.transfer_syntax
            )
            for j in group
        ]
        for j in group:
            work.forward[j.id] = j
        if not self._submit("forward", worker.forward_jobs, dest, items):
            for j in group:
                work.forward.pop(j.id, None)
            return False
        work.forward_tasks += 1
        return True

    def _destination(self, name: str) -> Destination:
        for d in self.config.destinations:
            if d.name == name:
                return d
        return self.config.destinations[0]  # destination removed from the config

    # -- outcomes ---------------------------------------------------------------

    def _drain_results(self) -> None:
        while True:
            try:
                kind, args, future = self._results.get_nowait()
            except Empty:
                return
            if kind == "deid":
                self._work.deid_tasks -= 1
                quads, _dests = args
                found = (self._work.deid.pop(job_id, None) for job_id, _, _, _ in quads)
                jobs = [j for j in found if j is not None]
                try:
                    outcomes, sends = future.result()
                    done = self._on_deidentified(jobs, outcomes, to_forward=False)
                    routed.record_sends(self, done, sends)
                except BrokenProcessPool:
                    self._on_crash(jobs)
                    self._restart_executor()
                except Exception as exc:
                    log.error("deid_task_failed", error=type(exc).__name__, jobs=len(jobs))
                    self._on_crash(jobs)
            else:
                self._work.forward_tasks -= 1
                dest, items = args
                found = (self._work.forward.pop(i.job_id, None) for i in items)
                jobs = [j for j in found if j is not None]
                try:
                    outcomes = future.result()
                except BrokenProcessPool:
                    self._restart_executor()
                    outcomes = [
                        SendOutcome(j.id, "retry", "worker crashed", None, True) for j in jobs
                    ]
                except Exception as exc:
                    outcomes = [
                        SendOutcome(j.id, "retry", type(exc).__name__, None, True) for j in jobs
                    ]
                self._on_forwarded(dest, jobs, outcomes)

    def _received_event(self, job: Job, sop_uid_old: str = "") -> AuditEvent:
        return AuditEvent(
            kind="received",
            job_id=job.id,
            at=datetime.fromtimestamp(job.received_at, UTC),
            calling_ae=job.calling_ae,
            sop_uid_old=sop_uid_old or None,
        )

    def _on_crash(self, jobs: list[Job]) -> None:
        assert self.queue is not None
        for j in jobs:
            self._crashes[j.id] = self._crashes.get(j.id, 0) + 1
            if self._crashes[j.id] >= DEID_CRASH_LIMIT:
                self._quarantine(
                    [j],
                    self.spool.incoming,
                    "worker crashed de-identifying this file",
                    received=True,
                )
            else:
                at = time.time() + 1.0
                self.queue.schedule_retry([j.id], "worker crashed", at)
                self._work.hold(dataclasses.replace(j, attempts=j.attempts + 1), at)

    def _quarantine(
        self, jobs: list[Job], folder: Path, reason: str, *, received: bool = False
    ) -> None:
        assert self.queue is not None and self.audit is not None
        events: list[AuditEvent] = []
        for j in jobs:
            self._crashes.pop(j.id, None)  # a retry from quarantine starts afresh
            src = folder / f"{j.name}.dcm"
            if src.exists():
                move_durably(src, self.spool.quarantine / src.name)
            if received:
                events.append(self._received_event(j))
            events.append(
                AuditEvent(
                    kind="quarantined",
                    job_id=j.instance_id,
                    destination=None if received else j.destination,
                    detail=reason,
                )
            )
        self.audit.record(events)
        self.queue.set_state([j.id for j in jobs], QUARANTINED, reason=reason)
        self.backpressure.removed(len(jobs))
        stage = "deidentify" if folder == self.spool.incoming else "forward"
        self.metrics.quarantined.labels(stage).inc(len(jobs))
        log.warning("quarantined", jobs=[j.id for j in jobs], reason=reason)

    def _on_deidentified(
        self, jobs: list[Job], outcomes: list[worker.DeidOutcome], *, to_forward: bool = True
    ) -> list[Job]:
        """Record de-identified jobs; return them as they now are (for sending)."""
        assert self.queue is not None and self.audit is not None
        by_id = {j.id: j for j in jobs}
        done = [o for o in outcomes if o.ok]
        events: list[AuditEvent] = []
        for o in done:
            job = by_id[o.job_id]
            events.append(self._received_event(job, o.sop_uid[0]))
            events.append(
                AuditEvent(
                    kind="deidentified",
                    job_id=o.job_id,
                    calling_ae=job.calling_ae,
                    patient_id_old=o.patient_id_old,
                    patient_id_new=o.patient_id_new,
                    study_uid_old=o.study_uid[0],
                    study_uid_new=o.study_uid[1],
                    sop_uid_old=o.sop_uid[0],
                    sop_uid_new=o.sop_uid[1],
                )
            )
        self.audit.record(events)
        updated = routed.mark_deidentified(self, by_id, done)
        for o in done:
            self._free.recycle(self.spool.incoming / f"{by_id[o.job_id].name}.dcm")
        if to_forward:
            routed.forwardable(self._work, updated)
        self._count_done("deidentify", [by_id[o.job_id] for o in done])
        for o in outcomes:
            if o.leak_hits:
                self.metrics.leak_hits.labels("cleaned" if o.ok else "quarantined").inc(o.leak_hits)
        for o in outcomes:
            if not o.ok:
                self._quarantine([by_id[o.job_id]], self.spool.incoming, o.reason, received=True)
        if done:
            log.info("deidentified", count=len(done))
        return updated

    def _count_done(self, stage: str, jobs: list[Job], destination: str = "") -> None:
        """Count jobs through ``stage`` and observe their latency since reception."""
        if not jobs:
            return
        if stage == "forward":
            self.metrics.forwarded.labels(destination).inc(len(jobs))
        else:
            self.metrics.deidentified.inc(len(jobs))
        histogram = self.metrics.latency.labels(stage)
        now = time.time()
        for j in jobs:
            histogram.observe(max(0.0, now - j.received_at))

    def _backoff(self, attempts: int, dest: Destination) -> float:
        initial, cap, _ = dest.retry_settings(self.config.forward)
        delay = min(cap, initial * (2**attempts))
        return delay * random.uniform(0.8, 1.0)

    def _on_forwarded(
        self, dest: Destination, jobs: list[Job], outcomes: list[SendOutcome]
    ) -> None:
        assert self.queue is not None and self.audit is not None
        by_id = {j.id: j for j in jobs}
        if outcomes:
            self._dest_up[dest.name] = not any(o.connection_problem for o in outcomes)
            self.metrics.set_destination(dest.name, self._dest_up[dest.name])
        sent = [o.job_id for o in outcomes if o.result == FORWARDED]
        self.audit.record(
            AuditEvent(kind="forwarded", job_id=by_id[i].instance_id, destination=dest.name)
            for i in sent
        )
        self.queue.set_state(sent, "forwarded", destination=dest.name)
        self.backpressure.removed(len(sent))
        self._count_done("forward", [by_id[i] for i in sent], dest.name)
        for i in sent:
            (self.spool.outgoing / f"{by_id[i].name}.dcm").unlink(missing_ok=True)
        if sent:
            log.info("forwarded", destination=dest.name, count=len(sent))

        for o in outcomes:
            if o.result == QUARANTINE:
                self._quarantine([by_id[o.job_id]], self.spool.outgoing, o.reason)
        retry = [o for o in outcomes if o.result == "retry"]
        # An instance on which the destination drops the association (a file it
        # cannot parse crashes its handler) looks like an outage, which is retried
        # forever, and takes the rest of each batch down with it: count such
        # drops per job and quarantine after a few.
        for o in [o for o in retry if o.reason == NO_RESPONSE]:
            self._drops[o.job_id] = self._drops.get(o.job_id, 0) + 1
            if self._drops[o.job_id] >= DROP_LIMIT:
                retry.remove(o)
                self._drops.pop(o.job_id)
                reason = f"{dest.name} dropped the association on this instance {DROP_LIMIT} times"
                self._quarantine([by_id[o.job_id]], self.spool.outgoing, reason)
        for i in sent:
            self._drops.pop(i, None)
        if not retry:
            return
        _, _, max_attempts = dest.retry_settings(self.config.forward)
        give_up, later = [], []
        for o in retry:
            attempts = by_id[o.job_id].attempts + 1
            capped = max_attempts and attempts >= max_attempts
            if capped or (not o.connection_problem and attempts >= STATUS_RETRY_LIMIT):
                give_up.append(o)
            else:
                later.append(o)
        for o in give_up:
            self._quarantine(
                [by_id[o.job_id]], self.spool.outgoing, f"gave up after retries: {o.reason}"
            )
        if later:
            attempts = min(by_id[o.job_id].attempts for o in later)
            delay = self._backoff(attempts, dest)
            at = time.time() + delay
            self.queue.schedule_retry([o.job_id for o in later], later[0].reason, at)
            for o in later:
                job = by_id[o.job_id]
                self._work.hold(dataclasses.replace(job, attempts=job.attempts + 1), at)
            self.audit.record(
                AuditEvent(
                    kind="retry",
                    job_id=by_id[o.job_id].instance_id,
                    destination=dest.name,
                    detail=o.reason,
                )
                for o in later
            )
            self.metrics.failed.labels(dest.name).inc(len(later))
            log.warning(
                "forward_retry",
                destination=dest.name,
                count=len(later),
                attempt=attempts + 1,
                delay_seconds=round(delay, 2),
                reason=later[0].reason,
            )
