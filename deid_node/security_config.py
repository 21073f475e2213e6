"""node.toml sections for access control, TLS and back-pressure.

Kept apart from :mod:`deid_node.config` so that the security settings can be
read in one place. The dataclasses here have no dependency on the rest of the
configuration; the parse functions use its helpers (imported when called,
because :mod:`deid_node.config` imports this module for its dataclasses).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowedCaller:
    """A calling AE title the SCP accepts, optionally only from some addresses."""

    ae_title: str
    hosts: tuple[IPNetwork, ...] = ()  # empty: from any address


@dataclass(frozen=True)
class NodeTLS:
    """DICOM TLS for the Storage SCP (the port then speaks TLS only)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # CAs whose client certificates are trusted
    require_client_cert: bool = False


@dataclass(frozen=True)
class DestinationTLS:
    """DICOM TLS towards one destination."""

    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None  # client certificate, for archives that ask for one
    key_file: Path | None = None
    check_hostname: bool = True


@dataclass(frozen=True)
class Limits:
    """When the SCP answers C-STORE with 0xA700 instead of taking more."""

    min_free_disk_mb: int = 1024  # free space under data_dir below this: refuse
    max_queue_depth: int = 0  # jobs received but not yet forwarded; 0 = no limit


TLS_KEYS = {"cert_file", "key_file", "ca_file", "require_client_cert"}
DESTINATION_TLS_KEYS = {
    "tls",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_check_hostname",
}


def _existing_file(section: str, key: str, base: Path, value: str) -> Path:
    from deid_node.config import ConfigError, _path

    path = _path(base, value)
    if not path.is_file():
        raise ConfigError(f"[{section}] {key}: no such file: {path}")
    return path


def parse_allowed_callers(raw: dict[str, Any]) -> tuple[AllowedCaller, ...]:
    """``[[allowed_caller]]`` tables; one AE title listed twice merges its hosts."""
    from deid_node.config import ConfigError, _ae_title, _check_keys, _get

    tables = raw.get("allowed_caller", [])
    if not isinstance(tables, list):
        raise ConfigError("[[allowed_caller]]: must be an array of tables ([[allowed_caller]])")
    merged: dict[str, list[IPNetwork] | None] = {}
    for i, t in enumerate(tables):
        where = f"allowed_caller #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"[{where}]: must be a table, got {type(t).__name__}")
        _check_keys(where, t, {"ae_title", "hosts"})
        if "ae_title" not in t:
            raise ConfigError(f"[{where}] ae_title: required")
        ae = _ae_title(where, "ae_title", _get(where, t, "ae_title", str, ""))
        hosts_raw = _get(where, t, "hosts", list, [])
        networks: list[IPNetwork] = []
        for h in hosts_raw:
            if not isinstance(h, str):
                raise ConfigError(f"[{where}] hosts: each entry is a string, got {h!r}")
            try:
                networks.append(ipaddress.ip_network(h.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"[{where}] hosts: {h!r} is not an IP address or CIDR network"
                ) from None
        if ae in merged:
            before = merged[ae]
            # An entry without hosts allows every address; it wins over a list.
            merged[ae] = None if before is None or not networks else before + networks
        else:
            merged[ae] = networks or None
    return tuple(AllowedCaller(ae, tuple(nets or ())) for ae, nets in merged.items())


def parse_node_tls(raw: dict[str, Any], base: Path) -> NodeTLS | None:
    """``[tls]``: off unless the table is there; then cert and key are required."""
    from deid_node.config import ConfigError, _check_keys, _get, _section

    if "tls" not in raw:
        return None
    t = _section(raw, "tls")
    _check_keys("tls", t, TLS_KEYS)
    for key in ("cert_file", "key_file"):
        if key not in t:
            raise ConfigError(f"[tls] {key}: required when [tls] is present")
    ca = _get("tls", t, "ca_file", str, "")
    require = _get("tls", t, "require_client_cert", bool, False)
    if require and not ca:
        raise ConfigError("[tls] ca_file: required when require_client_cert = true")
    return NodeTLS(
        cert_file=_existing_file("tls", "cert_file", base, _get("tls", t, "cert_file", str, "")),
        key_file=_existing_file("tls", "key_file", base, _get("tls", t, "key_file", str, "")),
        ca_file=_existing_file("tls", "ca_file", base, ca) if ca else None,
        require_client_cert=require,
    )


def parse_destination_tls(where: str, t: dict[str, Any], base: Path) -> DestinationTLS | None:
    """The ``tls*`` keys of one ``[[destination]]``."""
    from deid_node.config import ConfigError, _get

    enabled = _get(where, t, "tls", bool, False)
    others = sorted(k for k in t if k in DESTINATION_TLS_KEYS and k != "tls")
    if not enabled:
        if others:
            raise ConfigError(f"[{where}] {others[0]}: set tls = true to use TLS settings")
        return None

    def file(key: str) -> Path | None:
        value = _get(where, t, key, str, "")
        return _existing_file(where, key, base, value) if value else None

    cert, key = file("tls_cert_file"), file("tls_key_file")
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise ConfigError(f"[{where}] {missing}: a client certificate needs both cert and key")
    return DestinationTLS(
        ca_file=file("tls_ca_file"),
        cert_file=cert,
        key_file=key,
        check_hostname=_get(where, t, "tls_check_hostname", bool, True),
    )


def parse_limits(raw: dict[str, Any]) -> Limits:
    from deid_node.config import _check_keys, _get, _section

    t = _section(raw, "limits")
    _check_keys("limits", t, {"min_free_disk_mb", "max_queue_depth"})
    return Limits(
        min_free_disk_mb=_get("limits", t, "min_free_disk_mb", int, 1024, minimum=0),
        max_queue_depth=_get("limits", t, "max_queue_depth", int, 0, minimum=0),
    )
