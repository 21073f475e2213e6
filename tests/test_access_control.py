"""The calling-AE allow-list, with DCMTK echoscu/storescu as callers."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from deid_node.config import ConfigError, load_config
from deid_node.network.access import AccessControl
from deid_node.security_config import AllowedCaller
from tests.conftest import dcmtk_env, require_dcmtk, storescu, wait_until


def echoscu(port: int, calling: str) -> subprocess.CompletedProcess:
    require_dcmtk()
    return subprocess.run(
        ["echoscu", "-v", "-aet", calling, "-aec", "DEID_NODE", "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


ALLOW = """
[[allowed_caller]]
ae_title = "CT_SCANNER_1"
hosts = ["10.0.0.5", "127.0.0.0/8"]

[[allowed_caller]]
ae_title = "MR_ELSEWHERE"
hosts = ["10.1.0.0/16"]

[[allowed_caller]]
ae_title = "MODALITY"
"""


def test_listed_callers_get_in_and_unknown_ones_are_rejected_with_reason_3(
    make_node, archive, study
):  # type: ignore[no-untyped-def]
    node = make_node(archive.port, extra=ALLOW)
    node.start()
    assert echoscu(node.port, "CT_SCANNER_1").returncode == 0
    storescu(node.port, study[:2], calling="MODALITY")  # listed without hosts: any address

    stranger = echoscu(node.port, "STRANGER")
    out = stranger.stdout + stranger.stderr
    assert stranger.returncode != 0
    assert "Rejected Permanent, Source: Service User" in out
    assert "Calling AE Title Not Recognized" in out

    # Listed, but only for 10.1/16: from 127.0.0.1 it is as unknown as a stranger.
    elsewhere = echoscu(node.port, "MR_ELSEWHERE")
    assert elsewhere.returncode != 0
    assert "Calling AE Title Not Recognized" in elsewhere.stdout + elsewhere.stderr

    # A wrong called AE title keeps its own reason (7).
    wrong_called = subprocess.run(
        ["echoscu", "-v", "-aet", "CT_SCANNER_1", "-aec", "SOMEONE", "127.0.0.1", str(node.port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr

    assert wait_until(lambda: len(archive.files()) == 2, 60)
    log = node.log_text()
    assert log.count('"association_rejected"') == 2
    assert '"rejected_total": 2' in log
    assert '"calling_ae": "MR_ELSEWHERE"' in log and '"address": "127.0.0.1"' in log
    assert "access_control_off" not in log
    node.stop()
    assert '"associations_rejected": 2' in node.log_text()


def test_without_allow_list_any_caller_is_accepted_and_a_warning_says_so(make_node, archive):  # type: ignore[no-untyped-def]
    node = make_node(archive.port)
    node.start()
    assert echoscu(node.port, "WHOEVER").returncode == 0
    assert "access_control_off" in node.log_text()


def test_allows_matches_ae_title_and_address() -> None:
    ac = AccessControl(
        [
            AllowedCaller("CT", (ipaddress.ip_network("10.1.0.0/16"),)),
            AllowedCaller("ANY"),
            AllowedCaller("V6", (ipaddress.ip_network("fd00::/8"),)),
        ]
    )
    assert ac.allows("CT", "10.1.2.3")
    assert ac.allows("CT  ", "10.1.2.3")  # AE titles are space-padded on the wire
    assert ac.allows("CT", "::ffff:10.1.2.3")  # dual-stack socket
    assert not ac.allows("CT", "10.2.0.1")
    assert not ac.allows("CT", "not an address")
    assert not ac.allows("ct", "10.1.2.3")  # AE titles are case-sensitive
    assert ac.allows("ANY", "192.0.2.1")
    assert ac.allows("V6", "fd00::1") and not ac.allows("V6", "10.1.2.3")
    assert not ac.allows("OTHER", "10.1.2.3")
    assert AccessControl([]).allows("OTHER", "192.0.2.1")


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_config(path)


def test_allowed_caller_config(tmp_path: Path) -> None:
    cfg = _load(tmp_path, ALLOW + '\n[[allowed_caller]]\nae_title = "CT_SCANNER_1"\n')
    by_ae = {c.ae_title: c.hosts for c in cfg.allowed_callers}
    assert by_ae["CT_SCANNER_1"] == ()  # listed again without hosts: any address
    assert by_ae["MR_ELSEWHERE"] == (ipaddress.ip_network("10.1.0.0/16"),)
    with pytest.raises(ConfigError, match=r"\[allowed_caller #1\] hosts: '10.0.0.300'"):
        _load(tmp_path, '[[allowed_caller]]\nae_title = "A"\nhosts = ["10.0.0.300"]\n')
    with pytest.raises(ConfigError, match=r"\[allowed_caller #1\] ae_title: required"):
        _load(tmp_path, '[[allowed_caller]]\nhosts = ["10.0.0.1"]\n')
    with pytest.raises(ConfigError, match=r"\[allowed_caller #1\] ae_title: an AE title"):
        _load(tmp_path, '[[allowed_caller]]\nae_title = "THIS_IS_FAR_TOO_LONG"\n')
