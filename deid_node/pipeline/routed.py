"""The dispatcher's routing steps: one de-identification, one job per destination.

The worker evaluates the routing rules on the original dataset and returns the
destination names with the outcome. Here the instance's own job takes the first
destination; each further destination gets a copy: a new job row in state
``deidentified`` whose spool file is a hard link to the same output (no second
de-identification, no extra disk). The copies are inserted in the same
transaction that marks the instance de-identified, and their links are made and
fsynced before it, so a crash leaves either all of an instance's destination
jobs or none (the instance is then de-identified again from its received file).
A link whose row never committed is removed by the spool recovery at start.

From then on each destination's job has its own state, attempts, backoff and
quarantine, so one destination being down holds back nobody else. Audit events
of a copy are recorded under the instance's job, with the destination's name.

These are functions of the :class:`~deid_node.pipeline.node.Node` rather than
methods so that node.py only calls them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from deid_node.config import Config, Destination
from deid_node.network.scu import SendOutcome
from deid_node.pipeline import worker
from deid_node.pipeline.queue import DEIDENTIFIED, RECEIVED, Copy, Job
from deid_node.pipeline.spool import fsync_dir, new_job_name

if TYPE_CHECKING:
    from deid_node.pipeline.node import Node, _Work


GONE_REASON = "destination no longer configured"


def destination_gone(config: Config, name: str) -> bool:
    """Whether jobs for ``name`` have nowhere to go since the configuration changed.

    With a single destination that takes everything, they go there (a renamed
    archive). Otherwise sending them elsewhere could break a routing rule, so
    they are quarantined with :data:`GONE_REASON`.
    """
    dests = config.destinations
    if any(d.name == name for d in dests):
        return False
    return not (len(dests) == 1 and dests[0].route is None)


def streaming_destinations(config: Config, up: dict[str, bool]) -> tuple[Destination, ...]:
    """Destinations a de-identification task may send to right away.

    None in study mode (sending waits for the study); otherwise those that did
    not fail last time.
    """
    if config.forward.mode == "study":
        return ()
    return tuple(d for d in config.destinations if up.get(d.name, True))


def forwardable(work: _Work, jobs: list[Job]) -> None:
    """Hand de-identified jobs to forwarding: now, or once their study is stable."""
    if work.gate is None:
        work.to_forward.extend(jobs)
        return
    for job in jobs:
        if job.attempts:  # a retry: its study was stable when it was first sent
            work.to_forward.append(job)
        else:
            work.gate.add(job)


def mark_deidentified(
    node: Node, by_id: dict[int, Job], done: list[worker.DeidOutcome]
) -> list[Job]:
    """Record the de-identified jobs and their copies; return all of them as they now are."""
    assert node.queue is not None
    rows = []
    copies: list[Copy] = []
    for o in done:
        job = by_id[o.job_id]
        first = o.destinations[0] if o.destinations else None
        rows.append((o.job_id, o.transfer_syntax, first, o.study_uid[1] or None))
        for dest in o.destinations[1:]:
            copy = Copy(new_job_name(), job, dest)
            os.link(
                node.spool.outgoing / f"{job.name}.dcm", node.spool.outgoing / f"{copy.name}.dcm"
            )
            copies.append(copy)
    if copies:
        fsync_dir(node.spool.outgoing)
    ids = node.queue.mark_deidentified(rows, copies)
    updated = []
    for o in done:
        job = dataclasses.replace(
            by_id[o.job_id],
            state=DEIDENTIFIED,
            destination=o.destinations[0] if o.destinations else None,
            transfer_syntax=o.transfer_syntax,
            attempts=0,
            next_attempt_at=0.0,
            study_uid=o.study_uid[1] or None,
        )
        updated.append(job)
    first_of = {j.id: j for j in updated}
    for c in copies:
        parent = first_of[c.parent.id]
        updated.append(
            dataclasses.replace(
                parent,
                id=ids[(parent.id, c.destination)],
                name=c.name,
                destination=c.destination,
                parent_id=parent.id,
            )
        )
    return updated


def record_sends(node: Node, jobs: list[Job], sends: dict[str, list[SendOutcome]]) -> None:
    """Record what a de-identification task sent; queue the rest for forwarding.

    The worker sent under the instance's job id; each outcome is matched here
    with the job of its destination.
    """
    by_dest: dict[str, dict[int, Job]] = {}
    for job in jobs:
        by_dest.setdefault(job.destination or "", {})[job.instance_id] = job
    handled: set[int] = set()
    for dest_name, outcomes in sends.items():
        mine = by_dest.get(dest_name, {})
        pairs = [(mine[o.job_id], o) for o in outcomes if o.job_id in mine]
        if not pairs:
            continue
        handled |= {j.id for j, _ in pairs}
        node._on_forwarded(
            node._destination(dest_name),
            [j for j, _ in pairs],
            [dataclasses.replace(o, job_id=j.id) for j, o in pairs],
        )
    forwardable(node._work, [j for j in jobs if j.id not in handled])


def _pending_since(work: _Work) -> float | None:
    """Earliest arrival among jobs whose de-identification is still to come."""
    times = [j.received_at for j in work.to_deid]
    times += [j.received_at for j in work.deid.values()]
    times += [j.received_at for _, _, j in work.waiting if j.state == RECEIVED]
    return min(times) if times else None


def submit_stable_studies(node: Node, now: float) -> None:
    """Study mode: send each stable study to its destination as one task."""
    work = node._work
    if work.gate is None:
        return
    if work.gate.groups and any(
        now >= last + work.gate.stable_seconds for last in work.gate.last_arrival.values()
    ):
        work.groups.extend(work.gate.take_stable(now, _pending_since(work)))
    workers = max(1, node.config.node.workers)
    while work.groups and work.forward_tasks < workers:
        group = work.groups.popleft()
        if destination_gone(node.config, group[0].destination or ""):
            node._quarantine(group, node.spool.outgoing, GONE_REASON)
            continue
        if not node._submit_group(node._destination(group[0].destination or ""), group):
            work.groups.appendleft(group)
            return
