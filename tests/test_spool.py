"""The spool's emptied files: received instances are written into them, done ones
are emptied and kept, nothing of an instance remains in them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from deid_node.pipeline.spool import FreeFiles, Spool, atomic_file, write_durably


def test_fill_provides_empty_owner_only_files(tmp_path: Path) -> None:
    free = FreeFiles(tmp_path, limit=5)
    free.fill()
    files = sorted(tmp_path.glob(".*.free"))
    assert len(files) == 5
    for path in files:
        assert path.stat().st_size == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    taken = [free.take() for _ in range(5)]
    assert sorted(p for p in taken if p is not None) == files
    assert free.take() is None  # empty pool: the writer creates a new file


def test_fill_takes_over_files_left_from_the_last_run(tmp_path: Path) -> None:
    left = tmp_path / ".left-over.free"
    left.write_bytes(b"should not be there")
    free = FreeFiles(tmp_path, limit=3)
    free.fill()
    assert left.stat().st_size == 0
    assert len(list(tmp_path.glob(".*.free"))) == 3


def test_written_into_a_free_file_then_recycled_empty(tmp_path: Path) -> None:
    free = FreeFiles(tmp_path, limit=2)
    free.fill()
    dest = tmp_path / "job1.dcm"
    reuse = free.take()
    assert reuse is not None
    inode = reuse.stat().st_ino
    write_durably(dest, [b"DICM", b"instance bytes"], reuse=reuse)
    assert dest.read_bytes() == b"DICMinstance bytes"
    assert dest.stat().st_ino == inode  # the same file, no new inode
    assert not reuse.exists()
    assert not list(tmp_path.glob(".*.part"))

    free.recycle(dest)
    assert not dest.exists()
    kept = sorted(tmp_path.glob(".*.free"))
    assert len(kept) == 2 and all(p.stat().st_size == 0 for p in kept)
    free.recycle(tmp_path / "gone.dcm")  # already deleted: nothing happens

    third = tmp_path / "job2.dcm"
    third.write_bytes(b"more")
    free.recycle(third)  # the pool is full: deleted
    assert not third.exists()
    assert len(list(tmp_path.glob(".*.free"))) == 2


def test_a_vanished_free_file_means_a_new_file(tmp_path: Path) -> None:
    dest = tmp_path / "job.dcm"
    with atomic_file(dest, reuse=tmp_path / ".missing.free") as fd:
        os.write(fd, b"data")
    assert dest.read_bytes() == b"data"


def test_clean_tmp_leaves_free_files_for_the_pool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.create()
    (spool.incoming / ".abc.free").touch()
    (spool.incoming / ".job.dcm.1234.part").write_bytes(b"half")
    assert spool.clean_tmp() == 1
    assert (spool.incoming / ".abc.free").exists()
