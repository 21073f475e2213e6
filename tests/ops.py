"""Helpers for the operations tests: read a node's /metrics and /health over HTTP."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too (503 from /health)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics as {(name, sorted labels): value}."""
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, text = http_get(f"http://127.0.0.1:{port}/health")
    return status, json.loads(text)


def metrics_port_from_log(log: Path) -> int | None:
    """The port a node logged for ``[metrics] port = 0``."""
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        if '"metrics_listening"' in line:
            found = re.search(r'"port": (\d+)', line)
            if found:
                return int(found.group(1))
    return None
