"""Orthanc (Debian's `Orthanc` binary) as a real PACS peer for the tests.

Each server gets its own JSON configuration and storage folder in the test's
tmp_path, free loopback ports, no authentication and no remote access. Orthanc
has no bind-address option and listens on every interface, so tests talk to it
on 127.0.0.1 only. It takes over a second to exit after SIGTERM: ``stop`` waits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import dcmtk_env, free_port, stop_process, wait_for_port, wait_until


def require_orthanc() -> None:
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc not found: run scripts/setup.sh (installs orthanc)")


@dataclass
class OrthancServer:
    folder: Path
    ae_title: str
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        require_orthanc()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": self.ae_title,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [],
            "SaveJobs": False,
            "StorageCompression": False,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            ["Orthanc", str(path)],
            env=dcmtk_env(),  # TCP_NODELAY=1: Orthanc leaves Nagle on otherwise
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.http_port, timeout=60, proc=self.proc)
        wait_for_port(self.dicom_port, timeout=60, proc=self.proc)
        assert wait_until(lambda: self._ready(), 30), self.log_text()[-2000:]

    def _ready(self) -> bool:
        try:
            return "Version" in self.get("/system")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
            self.proc = None

    def log_text(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(req, timeout=120) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict | list | str) -> Any:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return self.request("POST", path, body)
