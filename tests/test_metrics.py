"""The node's /metrics and /health endpoints, read over HTTP from a running
`deid-node serve` while storescu sends and storescp (the archive) is up, down,
and back."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from deid_node.config import ConfigError, parse_config
from deid_node.metrics import NodeMetrics, serve
from tests.conftest import DEID_NODE, REPO, Archive, free_port, storescu, wait_until
from tests.ops import health, http_get, metrics_port_from_log, sample, scrape
from tests.studies import Phi, make_study

PHI = Phi()
METRICS_PORT_0 = """
[metrics]
enabled = true
port = 0
"""


def _start(make_node, archive_port: int):  # type: ignore[no-untyped-def]
    node = make_node(archive_port, extra=METRICS_PORT_0)
    node.start()
    assert wait_until(lambda: metrics_port_from_log(node.log_path) is not None, 30)
    port = metrics_port_from_log(node.log_path)
    assert port is not None
    return node, port


def test_counters_gauges_and_latency_of_one_study(
    archive: Archive, make_node, study: list[Path]
) -> None:
    node, port = _start(make_node, archive.port)
    status, body = health(port)
    assert status == 200 and body["status"] == "ok"
    assert body["destinations"] == {"research": "up"}

    storescu(node.port, study)
    n = len(study)

    def forwarded() -> float:
        return sample(scrape(port), "deid_node_forwarded_total", destination="research")

    assert wait_until(lambda: forwarded() == n, 60), node.log_text()[-3000:]
    s = scrape(port)
    assert sample(s, "deid_node_received_total") == n
    assert sample(s, "deid_node_deidentified_total") == n
    assert sample(s, "deid_node_forward_failed_total", destination="research") == 0
    assert sample(s, "deid_node_quarantined_total", stage="deidentify") == 0
    assert sample(s, "deid_node_destination_up", destination="research") == 1
    for stage in ("receive", "deidentify", "forward"):
        assert sample(s, "deid_node_stage_latency_seconds_count", stage=stage) == n
        total = sample(s, "deid_node_stage_latency_seconds_sum", stage=stage)
        assert 0 < total < 60 * n
    assert sample(s, "deid_node_queue_jobs", state="forwarded") == n
    assert sample(s, "deid_node_queue_jobs", state="received") == 0
    status, body = health(port)
    assert status == 200
    assert body["queue"]["forwarded"] == n and body["queue_depth"] == 0

    # No identifier of the data in any name, label or value.
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    for value in (PHI.patient_id, PHI.name, PHI.accession, "VANDERBILT", "1.2.826", "2.25."):
        assert value not in text
    assert http_get(f"http://127.0.0.1:{port}/nothing")[0] == 404


def test_destination_down_then_back(tmp_path: Path, make_node) -> None:
    archive = Archive(port=free_port(), folder=tmp_path / "archive")  # not started yet
    node, port = _start(make_node, archive.port)
    files = make_study(tmp_path / "s", series=1, per_series=3)
    storescu(node.port, files)
    try:

        def down() -> bool:
            s = scrape(port)
            return (
                sample(s, "deid_node_destination_up", destination="research") == 0
                and sample(s, "deid_node_forward_failed_total", destination="research") > 0
                and sample(s, "deid_node_queue_jobs", state="deidentified") == len(files)
            )

        assert wait_until(down, 60), node.log_text()[-3000:]
        status, body = health(port)
        # Down destination: still healthy (the node receives and queues), but it says so.
        assert status == 200
        assert body["status"] == "degraded" and body["destinations"] == {"research": "down"}
        assert body["queue_depth"] == len(files)

        archive.start()
        assert wait_until(
            lambda: (
                sample(scrape(port), "deid_node_forwarded_total", destination="research")
                == len(files)
            ),
            60,
        ), node.log_text()[-3000:]
        s = scrape(port)
        assert sample(s, "deid_node_destination_up", destination="research") == 1
        assert health(port)[1]["status"] == "ok"
        assert len(archive.files()) == len(files)
    finally:
        archive.stop()


def test_quarantine_is_counted_by_stage(tmp_path: Path, archive: Archive, make_node) -> None:
    node = make_node(
        archive.port, extra=METRICS_PORT_0 + '\n[deid]\nunknown_patient = "quarantine"\n'
    )
    node.start()
    assert wait_until(lambda: metrics_port_from_log(node.log_path) is not None, 30)
    port = metrics_port_from_log(node.log_path)
    assert port is not None
    storescu(node.port, make_study(tmp_path / "s", series=1, per_series=2))
    assert wait_until(
        lambda: sample(scrape(port), "deid_node_quarantined_total", stage="deidentify") == 2, 60
    ), node.log_text()[-3000:]
    s = scrape(port)
    assert sample(s, "deid_node_quarantined_total", stage="forward") == 0
    assert sample(s, "deid_node_deidentified_total") == 0
    assert sample(s, "deid_node_queue_jobs", state="quarantined") == 2
    assert archive.files() == []


def test_unhealthy_answers_503_and_port_zero_is_free() -> None:
    state = {"answer": "healthy"}

    def check() -> tuple[bool, dict]:
        if state["answer"] == "broken":
            raise OSError("database gone")
        return state["answer"] == "healthy", {"status": state["answer"]}

    server = serve(NodeMetrics(["a"]), "127.0.0.1", 0, check)
    port = server.server_address[1]
    try:
        assert port != 0
        assert health(port) == (200, {"status": "healthy"})
        state["answer"] = "sick"
        assert health(port) == (503, {"status": "sick"})
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 503
        state["answer"] = "broken"
        assert health(port) == (503, {"status": "error", "error": "OSError"})
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
        pass  # closed with the node


def test_metrics_config() -> None:
    cfg = parse_config({}, Path("/tmp"))
    assert not cfg.metrics.enabled and cfg.metrics.host == "127.0.0.1"
    assert cfg.metrics.port == 9110
    cfg = parse_config({"metrics": {"enabled": True, "port": 0}}, Path("/tmp"))
    assert cfg.metrics.enabled and cfg.metrics.port == 0
    with pytest.raises(ConfigError, match=r"\[metrics\] port"):
        parse_config({"metrics": {"port": 70000}}, Path("/tmp"))
    with pytest.raises(ConfigError, match=r"\[metrics\] enabled"):
        parse_config({"metrics": {"enabled": "yes"}}, Path("/tmp"))
    with pytest.raises(ConfigError, match=r"\[metrics\] path: unknown key"):
        parse_config({"metrics": {"path": "/m"}}, Path("/tmp"))


def test_metrics_port_in_use_is_a_clear_configuration_error(archive: Archive, make_node) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = make_node(archive.port, extra=f"\n[metrics]\nenabled = true\nport = {port}\n")
        result = subprocess.run(
            [*DEID_NODE, "serve", "-c", str(node.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"[metrics] port: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
