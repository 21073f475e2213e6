"""Study grouping for ``[forward] mode = "study"``: send a study once it is stable.

De-identified jobs are held here, grouped by destination and (de-identified)
Study Instance UID, until no instance of the study has arrived for
``stable_seconds``; the group then goes out as one forward task, so the archive
receives the whole study in one association (like Orthanc's stable-study event).

Nothing here is persisted: the arrival times are the jobs' ``received_at`` and
the study is the job's ``study_uid``, both in the queue. After a restart the
dispatcher loads the de-identified jobs back in, and the clock of each study
resumes from its last arrival, as if the node had not stopped.

An instance of a study that arrives after the study was sent forms a new group
and is sent on its own once stable again: the archive then receives that study
in two associations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deid_node.pipeline.queue import Job

GroupKey = tuple[str, str]  # (destination, study)


def group_key(job: Job) -> GroupKey:
    # A job without a study (an older queue) is a group of its own.
    return (job.destination or "", job.study_uid or f"job:{job.id}")


@dataclass
class StudyGate:
    stable_seconds: float
    groups: dict[GroupKey, list[Job]] = field(default_factory=dict)
    last_arrival: dict[GroupKey, float] = field(default_factory=dict)

    def add(self, job: Job) -> None:
        key = group_key(job)
        self.groups.setdefault(key, []).append(job)
        self.last_arrival[key] = max(self.last_arrival.get(key, 0.0), job.received_at)

    def ids(self) -> set[int]:
        return {j.id for jobs in self.groups.values() for j in jobs}

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self.groups.values())

    def take_stable(self, now: float, pending_since: float | None) -> list[list[Job]]:
        """Remove and return the groups that are stable at ``now``.

        ``pending_since`` is the earliest arrival among jobs not de-identified
        yet (their study is not known): a study is held while such a job arrived
        within its stable window, since that job may belong to it.
        """
        ready = []
        for key, last in list(self.last_arrival.items()):
            due = last + self.stable_seconds
            if now >= due and (pending_since is None or pending_since >= due):
                ready.append(self.groups.pop(key))
                del self.last_arrival[key]
        return ready

    def next_due(self, now: float) -> float | None:
        """Seconds until the next group becomes stable by the clock; None if none will.

        Groups already due but held by jobs still being de-identified are not
        counted: the results of those jobs wake the dispatcher.
        """
        future = [
            last + self.stable_seconds - now
            for last in self.last_arrival.values()
            if last + self.stable_seconds > now
        ]
        return min(future) if future else None
