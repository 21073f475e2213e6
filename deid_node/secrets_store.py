"""The UID hashing key: generated once, kept owner-only in ``data_dir``.

Nodes that share a registry must share this key (configure ``[deid] key_file``),
otherwise the same original UID maps to different new UIDs on each node.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class KeyFileError(RuntimeError):
    """The key file exists but is unusable (wrong permissions or content)."""


def load_or_create_key(path: Path, *, create: bool = True) -> bytes:
    """Return the key in ``path``; create a 256-bit key there if absent and allowed."""
    if not path.exists():
        if not create:
            raise KeyFileError(f"{path}: key file not found")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: key file is readable by others (mode {mode:o}); run chmod 600 on it"
        )
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: key file must hold hexadecimal digits") from None
    if len(key) < 16:
        raise KeyFileError(f"{path}: key must be at least 128 bits (32 hex digits)")
    return key
