"""Prometheus metrics and a health check, served over HTTP by the node.

Everything is counted in the node's main process: the SCP threads see every
reception and the dispatcher sees every worker outcome, so the worker processes
need no shared-memory metrics (prometheus_client's multiprocess mode) at all.

PHI rule: label values are only stage names, job states and the configured
destination names. Nothing read from a dataset ever becomes a label or a value.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from deid_node.config import ConfigError
from deid_node.logs import get_logger

log = get_logger("deid_node.metrics")

STAGES = ("receive", "deidentify", "forward")
# Receive is milliseconds (spool + record); the later stages include queueing.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class _QueueCollector:
    """Job counts per state, read from the queue database at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "deid_node_queue_jobs", "Jobs in the node's queue, by state", labels=["state"]
        )
        try:
            counts = self._counts()
        except Exception as exc:  # the scrape must not fail because the queue is busy
            log.warning("metrics_queue_unreadable", error=type(exc).__name__)
            return []
        for state, n in counts.items():
            family.add_metric([state], n)
        return [family]

    def describe(self) -> Iterable[Metric]:
        return []  # never call the queue while registering


class NodeMetrics:
    """The node's counters, gauges and histograms, in a registry of their own.

    A registry per node (not prometheus_client's global one) keeps nodes started
    in one process (tests, embedding) from sharing or clashing on metrics.
    """

    def __init__(self, destinations: Iterable[str] = ()) -> None:
        destinations = list(destinations)
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "deid_node_received", "Instances received and spooled (C-STORE success)", registry=r
        )
        self.deidentified = Counter("deid_node_deidentified", "Instances de-identified", registry=r)
        self.forwarded = Counter(
            "deid_node_forwarded",
            "Instances confirmed by a destination",
            ["destination"],
            registry=r,
        )
        self.failed = Counter(
            "deid_node_forward_failed",
            "Failed forwarding attempts that were scheduled for a retry",
            ["destination"],
            registry=r,
        )
        self.leak_hits = Counter(
            "deid_node_leak_gate_hits",
            "Original identifiers the leak gate found in de-identified instances "
            "(one per kind of value and element), by what it did",
            ["action"],
            registry=r,
        )
        self.quarantined = Counter(
            "deid_node_quarantined",
            "Instances quarantined, by the stage that gave up on them",
            ["stage"],
            registry=r,
        )
        self.destination_up = Gauge(
            "deid_node_destination_up",
            "1 when the destination's last answer was good (or none yet), 0 when it was an outage",
            ["destination"],
            registry=r,
        )
        self.latency = Histogram(
            "deid_node_stage_latency_seconds",
            "receive: spooling and recording an instance before the sender is answered; "
            "deidentify and forward: seconds from reception until the stage was done",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Every series exists from the start, so a rate() never misses its first step.
        for stage in STAGES:
            self.latency.labels(stage)
        for stage in ("deidentify", "forward"):
            self.quarantined.labels(stage)
        for name in destinations:
            self.forwarded.labels(name)
            self.failed.labels(name)
            self.destination_up.labels(name).set(1)
        self._destinations: dict[str, bool] = dict.fromkeys(destinations, True)

    def watch_queue(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_QueueCollector(counts))  # type: ignore[arg-type]

    def set_destination(self, name: str, up: bool) -> None:
        self._destinations[name] = up
        self.destination_up.labels(name).set(1 if up else 0)

    def destinations(self) -> dict[str, bool]:
        return dict(self._destinations)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _handler(metrics: NodeMetrics, health: Callable[[], tuple[bool, dict[str, Any]]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "deid-node"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.render())
            elif path in ("/health", "/healthz"):
                try:
                    healthy, body = health()
                except Exception as exc:
                    healthy, body = False, {"status": "error", "error": type(exc).__name__}
                data = json.dumps(body, sort_keys=True).encode() + b"\n"
                self._send(200 if healthy else 503, "application/json", data)
            else:
                self._send(404, "text/plain; charset=utf-8", b"try /metrics or /health\n")

        def _send(self, code: int, content_type: str, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the operational log

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(
    metrics: NodeMetrics,
    host: str,
    port: int,
    health: Callable[[], tuple[bool, dict[str, Any]]],
) -> ThreadingHTTPServer:
    """Serve /metrics and /health (also /healthz) on ``host:port`` in a daemon thread.

    Port 0 picks a free port; the one chosen is logged (``metrics_listening``).
    ``health`` returns (healthy, JSON body): 200 when healthy, 503 otherwise.
    """
    try:
        server = _Server((host, port), _handler(metrics, health))
    except OSError as exc:
        raise ConfigError(
            f"[metrics] port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("metrics_listening", host=host, port=server.server_address[1])
    return server
