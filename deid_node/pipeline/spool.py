"""Durable file spool: what has been acknowledged lives here until forwarded.

Layout under ``data_dir``::

    spool/incoming/<job>.dcm    received, as the sender encoded it
    spool/outgoing/<job>.dcm    de-identified, waiting for the destination
    quarantine/<job>.dcm        kept with the reason in the queue and audit log

File names are opaque job ids: no UID or name of the original ever appears in a
path. A file is written to a hidden ``.<name>.part`` beside its final name,
fsynced, renamed into place and the folder fsynced, so after a crash it is
either complete or absent (leftover parts are deleted at start).

Received files are not deleted once de-identified but emptied and kept as
hidden ``.<id>.free`` files for the next instances (:class:`FreeFiles`): see
there why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Spool:
    root: Path

    # Paths made once: they are asked for on every instance received and done.
    @functools.cached_property
    def incoming(self) -> Path:
        return self.root / "spool" / "incoming"

    @functools.cached_property
    def outgoing(self) -> Path:
        return self.root / "spool" / "outgoing"

    @functools.cached_property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def create(self) -> None:
        for d in (self.incoming, self.outgoing, self.quarantine):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def clean_tmp(self) -> int:
        """Delete half-written files left by a crash; return how many."""
        count = 0
        for folder in (self.incoming, self.outgoing, self.quarantine):
            for p in folder.glob(".*.part"):
                p.unlink(missing_ok=True)
                count += 1
        return count


class FreeFiles:
    """Emptied spool files of one folder, kept to receive the next instances.

    Each received instance used to be a new file, deleted once de-identified.
    On ext4 without a journal (as on the machines this was measured on),
    allocating an inode scans past every inode freed in the last half minute
    of its block group, so at a hundred instances a second the file creation
    alone took 0.7 ms, on the receiving path where the sender waits. Emptying a
    done file (its data blocks are freed as by a deletion, so nothing of the
    instance remains) and renaming it to a hidden ``.<id>.free`` name lets the
    next instance take it over by a rename instead. :meth:`fill` provides
    ``limit`` of them at start, so that a burst received faster than it is
    de-identified needs no new file either; at most ``limit`` are kept, done
    files beyond that are deleted. The pool lives in the main process only (the
    SCP threads take, the dispatcher gives back; deque operations are atomic).
    """

    def __init__(self, folder: Path, limit: int = 256) -> None:
        self.folder = folder
        self.limit = limit
        self._names: deque[Path] = deque()

    def fill(self) -> None:
        """Take over the emptied files left from the last run and create the rest
        of ``limit`` (empty, owner-only)."""
        for path in sorted(self.folder.glob(".*.free")):
            if len(self._names) >= self.limit:
                path.unlink(missing_ok=True)
                continue
            os.truncate(path, 0)  # empty already, unless someone wrote to it
            self._names.append(path)
        while len(self._names) < self.limit:
            path = self.folder / f".{uuid.uuid4().hex}.free"
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
            self._names.append(path)

    def take(self) -> Path | None:
        """An emptied file to write the next instance into, or None."""
        try:
            return self._names.popleft()
        except IndexError:
            return None

    def recycle(self, path: Path) -> None:
        """Empty ``path`` (a file no longer needed) and keep it, or delete it."""
        if len(self._names) >= self.limit:
            path.unlink(missing_ok=True)
            return
        free = self.folder / f".{uuid.uuid4().hex}.free"
        try:
            os.truncate(path, 0)
            os.rename(path, free)
        except FileNotFoundError:
            return
        self._names.append(free)


def new_job_name() -> str:
    return uuid.uuid4().hex


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(dest: Path, *, durable: bool = True, reuse: Path | None = None) -> Iterator[int]:
    """Write through the yielded descriptor; ``dest`` appears whole or not at all.

    The data goes to a hidden ``.part`` file beside ``dest``, which is renamed
    into place when the block ends without an error (and removed if it fails).
    ``durable`` fsyncs the file before, and the folder after, the rename.
    ``reuse`` names an emptied file (:class:`FreeFiles`) in the same folder to
    become the ``.part`` file instead of a new one.
    """
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
    if reuse is not None:
        with contextlib.suppress(OSError):  # gone: a new file it is
            os.rename(reuse, tmp)
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        yield fd
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, dest)
    if durable:
        fsync_dir(dest.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_durably(dest: Path, chunks: Iterable[bytes], *, reuse: Path | None = None) -> None:
    """Write ``chunks`` to ``dest`` so that it survives a crash once this returns
    (into the emptied file ``reuse``, if given: see :func:`atomic_file`)."""
    with atomic_file(dest, reuse=reuse) as fd:
        for chunk in chunks:
            write_all(fd, chunk)


def move_durably(src: Path, dest: Path) -> None:
    os.replace(src, dest)
    fsync_dir(dest.parent)
