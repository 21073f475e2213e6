"""Real peers for the tests: DCMTK storescp as the research archive, storescu as
the modality, and the node itself as a separate `deid-node serve` process.

Everything binds to 127.0.0.1 and every process a test starts is stopped by its
fixture, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pki import pki  # noqa: F401  (session fixture: throw-away CAs for TLS tests)
from tests.studies import make_study

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus" / "pseudo-phi-burned-in"
DEID_NODE = [sys.executable, "-m", "deid_node"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def dcmtk_env() -> dict[str, str]:
    # Debian's DCMTK leaves Nagle on unless told (see shared/FIELD-NOTES.md).
    return {**os.environ, "TCP_NODELAY": "1"}


def require_dcmtk() -> None:
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run scripts/setup.sh (installs dcmtk)")


@dataclass
class Archive:
    """A DCMTK storescp acting as the research archive."""

    port: int
    folder: Path
    ae_title: str = "RESEARCH_PACS"
    proc: subprocess.Popen | None = None
    # One file per instance received, even for a SOP Instance UID seen before
    # (to count duplicate deliveries); otherwise files are named by the UID.
    unique_filenames: bool = False

    def start(self) -> None:
        require_dcmtk()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "storescp",
                "--fork",
                "-aet",
                self.ae_title,
                "-od",
                str(self.folder),
                "+xa",  # accept every transfer syntax DCMTK knows
                "+uf" if self.unique_filenames else "-uf",  # unique names, or by SOP UID
                str(self.port),
            ],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # --fork leaves children per association: end the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())


@dataclass
class NodeProcess:
    """`deid-node serve` in its own process, as an administrator runs it."""

    config_path: Path
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*DEID_NODE, "serve", "-c", str(self.config_path)],
            cwd=REPO,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            if sig == signal.SIGKILL and self.proc.poll() is None:
                # SIGKILL the whole group: workers die with the node, as in a crash.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            else:
                stop_process(self.proc, sig)
            self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*DEID_NODE, *args, "-c", str(self.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


DEFAULT_FORWARD = """\
retry_initial_seconds = 0.5
retry_max_seconds = 2
idle_release_seconds = 1
connect_timeout_seconds = 3"""


def write_config(
    path: Path,
    *,
    port: int,
    archive_port: int = 0,
    data_dir: Path,
    workers: int = 1,
    extra: str = "",
    forward: str | None = None,
    destinations: str | None = None,
) -> None:
    """``forward``, when given, replaces the body of the [forward] table;
    ``destinations``, the one [[destination]] at ``archive_port``."""
    if forward is None:
        forward = DEFAULT_FORWARD
    if destinations is None:
        destinations = f"""[[destination]]
name = "research"
ae_title = "RESEARCH_PACS"
host = "127.0.0.1"
port = {archive_port}"""
    path.write_text(
        f"""
[node]
ae_title = "DEID_NODE"
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"
workers = {workers}
log_level = "info"

[registry]
url = "sqlite:///{data_dir}/registry.sqlite"

[pixels]
preload = false  # loaded on first use: most tests never see burned-in text

[forward]
{forward}

{destinations}
{extra}
"""
    )


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    a = Archive(port=free_port(), folder=tmp_path / "archive")
    a.start()
    yield a
    a.stop()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    started: list[NodeProcess] = []

    def factory(
        archive_port: int, *, workers: int = 1, extra: str = "", forward: str | None = None
    ) -> NodeProcess:
        port = free_port()
        data_dir = tmp_path / "node-data"
        cfg = tmp_path / "node.toml"
        write_config(
            cfg,
            port=port,
            archive_port=archive_port,
            data_dir=data_dir,
            workers=workers,
            extra=extra,
            forward=forward,
        )
        node = NodeProcess(cfg, port, data_dir, tmp_path / "node.log")
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop(signal.SIGKILL)


def storescu(port: int, files: list[Path], *, calling: str = "MODALITY") -> None:
    require_dcmtk()
    result = subprocess.run(
        ["storescu", "-aet", calling, "-aec", "DEID_NODE", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    """A three-series CT study of one synthetic patient, 12 instances."""
    return make_study(tmp_path / "study", series=3, per_series=4)
