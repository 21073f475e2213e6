"""Durable file spool: what has been acknowledged lives here until forwarded.

Layout under ``data_dir``::

    spool/incoming/<job>.dcm    received, as the sender encoded it
    spool/outgoing/<job>.dcm    de-identified, waiting for the destination
    quarantine/<job>.dcm        kept with the reason in the queue and audit log

File names are opaque job ids: no UID or name of the original ever appears in a
path. A file is written to a hidden ``.<name>.part`` beside its final name,
fsynced, renamed into place and the folder fsynced, so after a crash it is
either complete or absent (leftover parts are deleted at start).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Spool:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "spool" / "incoming"

    @property
    def outgoing(self) -> Path:
        return self.root / "spool" / "outgoing"

    @property
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


def new_job_name() -> str:
    return uuid.uuid4().hex


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(dest: Path, *, durable: bool = True) -> Iterator[int]:
    """Write through the yielded descriptor; ``dest`` appears whole or not at all.

    The data goes to a hidden ``.part`` file beside ``dest``, which is renamed
    into place when the block ends without an error (and removed if it fails).
    ``durable`` fsyncs the file before, and the folder after, the rename.
    """
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
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


def write_durably(dest: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``dest`` so that it survives a crash once this returns."""
    with atomic_file(dest) as fd:
        for chunk in chunks:
            write_all(fd, chunk)


def move_durably(src: Path, dest: Path) -> None:
    os.replace(src, dest)
    fsync_dir(dest.parent)
