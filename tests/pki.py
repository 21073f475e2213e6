"""Throw-away certificate authorities for the TLS tests, made with the openssl CLI.

Each test session gets its own keys; nothing here is ever used outside tests.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA with a server certificate for 127.0.0.1/localhost and a client one."""

    ca: Path
    server: Pair
    client: Pair


def make_authority(folder: Path, name: str) -> Authority:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = f"{name}-ca.key", f"{name}-ca.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name} test CA", "-keyout", ca_key, "-out", ca,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip

    def issue(role: str, ext: str) -> Pair:
        key, csr, cert = f"{name}-{role}.key", f"{name}-{role}.csr", f"{name}-{role}.pem"
        (folder / f"{name}-{role}.ext").write_text(ext)
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name} {role}",
            "-keyout", key, "-out", csr,
            cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-out", cert, "-extfile", f"{name}-{role}.ext",
            cwd=folder,
        )  # fmt: skip
        return Pair(folder / cert, folder / key)

    server = issue(
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = issue("client", "extendedKeyUsage=clientAuth\n")
    return Authority(folder / ca, server, client)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Authority]:
    """Two unrelated authorities: ``trusted`` (the site's) and ``other``."""
    folder = tmp_path_factory.mktemp("pki")
    return {
        "trusted": make_authority(folder, "trusted"),
        "other": make_authority(folder, "other"),
    }
