"""DICOM TLS with real peers: DCMTK storescu/storescp built with OpenSSL, and the node.

Certificates come from two throw-away authorities made at test time (tests/pki.py):
``trusted`` is the site's CA, ``other`` an unrelated one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deid_node.config import ConfigError, load_config
from tests.conftest import (
    Archive,
    dcmtk_env,
    free_port,
    require_dcmtk,
    wait_for_port,
    wait_until,
)
from tests.pki import Authority


def _require_tls_dcmtk() -> None:
    require_dcmtk()
    out = subprocess.run(["storescu", "--help"], capture_output=True, text=True).stdout
    if "+tls" not in out:
        pytest.skip("this DCMTK build has no TLS support")


def node_tls(a: Authority, *, require_client_cert: bool = True) -> str:
    return f"""
[tls]
cert_file = "{a.server.cert}"
key_file = "{a.server.key}"
ca_file = "{a.ca}"
require_client_cert = {"true" if require_client_cert else "false"}
"""


def storescu_tls(port: int, files: list[Path], tls_args: list[str]) -> subprocess.CompletedProcess:
    """storescu -v; its log (on stderr) is returned as ``stdout`` for the checks."""
    result = subprocess.run(
        [
            *("storescu", "-v", *tls_args, "-aet", "MODALITY", "-aec", "DEID_NODE"),
            *("127.0.0.1", str(port), *map(str, files)),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    result.stdout = result.stdout + result.stderr
    return result


class TlsArchive(Archive):
    """storescp speaking DICOM TLS with a given server certificate."""

    def __init__(self, port: int, folder: Path, server: Authority, trust: Authority) -> None:
        super().__init__(port=port, folder=folder)
        self.server, self.trust = server, trust

    def start(self) -> None:
        _require_tls_dcmtk()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *("storescp", "--fork", "-aet", self.ae_title, "-od", str(self.folder), "+xa"),
                *("+tls", str(self.server.server.key), str(self.server.server.cert)),
                *("+cf", str(self.trust.ca), "-rc", str(self.port)),  # client cert required
            ],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)


@pytest.fixture
def tls_node(make_node, archive, pki):  # type: ignore[no-untyped-def]
    _require_tls_dcmtk()
    node = make_node(archive.port, extra=node_tls(pki["trusted"]))
    node.start()
    return node


def test_storescu_over_tls_with_client_certificate_is_received_and_forwarded(
    tls_node, archive, pki, study
):  # type: ignore[no-untyped-def]
    t = pki["trusted"]
    result = storescu_tls(
        tls_node.port, study[:3], ["+tls", str(t.client.key), str(t.client.cert), "+cf", str(t.ca)]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("Received Store Response (Success)") == 3
    assert wait_until(lambda: len(archive.files()) == 3, 60), tls_node.log_text()[-2000:]


def test_client_without_certificate_is_refused_when_client_certs_are_required(
    tls_node, archive, pki, study
):  # type: ignore[no-untyped-def]
    t = pki["trusted"]
    anonymous = storescu_tls(tls_node.port, study[:1], ["+tla", "+cf", str(t.ca)])
    assert anonymous.returncode != 0
    assert "Store Response" not in anonymous.stdout
    # The refusal ended that connection only: a proper client gets through.
    good = storescu_tls(
        tls_node.port, study[:1], ["+tls", str(t.client.key), str(t.client.cert), "+cf", str(t.ca)]
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert wait_until(lambda: len(archive.files()) == 1, 60)


def test_client_certificate_from_another_ca_is_refused(tls_node, archive, pki, study):  # type: ignore[no-untyped-def]
    t, o = pki["trusted"], pki["other"]
    result = storescu_tls(
        tls_node.port, study[:1], ["+tls", str(o.client.key), str(o.client.cert), "+cf", str(t.ca)]
    )
    assert result.returncode != 0
    assert "Store Response" not in result.stdout


def test_client_that_trusts_another_ca_refuses_the_node(tls_node, pki, study):  # type: ignore[no-untyped-def]
    t, o = pki["trusted"], pki["other"]
    result = storescu_tls(
        tls_node.port, study[:1], ["+tls", str(t.client.key), str(t.client.cert), "+cf", str(o.ca)]
    )
    assert result.returncode != 0
    assert "certificate verify failed" in result.stdout + result.stderr


def test_plain_client_gets_nothing_from_a_tls_port(tls_node, study):  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [
            *("storescu", "-to", "5", "-aet", "MODALITY", "-aec", "DEID_NODE"),
            *("127.0.0.1", str(tls_node.port), str(study[0])),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


def _destination_tls(a: Authority, client: Authority | None) -> str:
    lines = ["tls = true", f'tls_ca_file = "{a.ca}"']
    if client is not None:
        lines += [
            f'tls_cert_file = "{client.client.cert}"',
            f'tls_key_file = "{client.client.key}"',
        ]
    return "\n".join(lines) + "\n"


def _make_tls_forwarding_node(make_node, archive_port: int, dest_tls: str):  # type: ignore[no-untyped-def]
    node = make_node(archive_port)
    # The [[destination]] table is last in the file: its TLS keys go at the end.
    node.config_path.write_text(node.config_path.read_text() + dest_tls)
    return node


def test_node_forwards_over_mutual_tls(make_node, tmp_path, pki, study):  # type: ignore[no-untyped-def]
    t = pki["trusted"]
    archive = TlsArchive(free_port(), tmp_path / "tls-archive", server=t, trust=t)
    archive.start()
    try:
        node = _make_tls_forwarding_node(make_node, archive.port, _destination_tls(t, t))
        node.start()
        result = storescu_tls(node.port, study[:4], [])
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_until(lambda: len(archive.files()) == 4, 60), node.log_text()[-3000:]
    finally:
        archive.stop()


def test_archive_whose_certificate_does_not_verify_gets_nothing_and_nothing_is_lost(
    make_node, tmp_path, pki, study
):  # type: ignore[no-untyped-def]
    t, o = pki["trusted"], pki["other"]
    port = free_port()
    impostor = TlsArchive(port, tmp_path / "impostor", server=o, trust=t)
    impostor.start()
    try:
        node = _make_tls_forwarding_node(make_node, port, _destination_tls(t, t))
        node.start()
        result = storescu_tls(node.port, study[:3], [])
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_until(lambda: "forward_retry" in node.log_text(), 60)
        assert impostor.files() == []
        assert '"forwarded"' not in node.log_text()
    finally:
        impostor.stop()
    # The jobs waited in the queue: the real archive (same port) gets all of them.
    real = TlsArchive(port, tmp_path / "real", server=t, trust=t)
    assert wait_until(lambda: _port_free(port), 10)
    real.start()
    try:
        assert wait_until(lambda: len(real.files()) == 3, 60), node.log_text()[-3000:]
    finally:
        real.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as storescp binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- configuration -----------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_missing_certificate_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[tls]\ncert_file = "nope.pem"\nkey_file = "nope.key"\n')
    with pytest.raises(ConfigError, match=r"\[tls\] cert_file: no such file"):
        load_config(path)


def test_destination_tls_keys_need_tls_true(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    path = _write(
        tmp_path,
        '[[destination]]\nname = "a"\nae_title = "A"\nhost = "127.0.0.1"\nport = 104\n'
        f'tls_ca_file = "{pki["trusted"].ca}"\n',
    )
    with pytest.raises(ConfigError, match=r"tls_ca_file: set tls = true"):
        load_config(path)


def test_destination_client_cert_without_key_is_refused(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    path = _write(
        tmp_path,
        '[[destination]]\nname = "a"\nae_title = "A"\nhost = "127.0.0.1"\nport = 104\n'
        f'tls = true\ntls_cert_file = "{pki["trusted"].client.cert}"\n',
    )
    with pytest.raises(ConfigError, match=r"\[destination #1\] tls_key_file"):
        load_config(path)


def test_require_client_cert_needs_a_ca(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    a = pki["trusted"]
    path = _write(
        tmp_path,
        f'[tls]\ncert_file = "{a.server.cert}"\nkey_file = "{a.server.key}"\n'
        "require_client_cert = true\n",
    )
    with pytest.raises(ConfigError, match=r"\[tls\] ca_file: required"):
        load_config(path)


def test_key_that_does_not_match_the_certificate_stops_the_node_at_start(
    tmp_path: Path, pki
) -> None:  # type: ignore[no-untyped-def]
    t, o = pki["trusted"], pki["other"]
    path = _write(
        tmp_path,
        f'[node]\nport = {free_port()}\nhost = "127.0.0.1"\ndata_dir = "data"\n'
        f'[tls]\ncert_file = "{t.server.cert}"\nkey_file = "{o.server.key}"\n',
    )
    result = subprocess.run(
        [sys.executable, "-m", "deid_node", "serve", "-c", str(path)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "[tls]" in result.stderr and "cannot load" in result.stderr
