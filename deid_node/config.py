"""node.toml: load, validate, and resolve paths.

Every key has a default, so an empty file is a valid configuration. Validation
happens once at start and fails with :class:`ConfigError`, whose message names
the key and what is wrong with it, so that an administrator never has to read a
traceback to fix a typo.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deid_node.deid.gate import GATE_MODES
from deid_node.deid.pixels.settings import ENGINES, FILLS, POLICIES, PixelSettings, Template
from deid_node.deid.presets import canonical_preset, options_in_force
from deid_node.deid.profile import canonical_option
from deid_node.routing import Route, parse_route
from deid_node.security_config import (
    DESTINATION_TLS_KEYS,
    AllowedCaller,
    DestinationTLS,
    Limits,
    NodeTLS,
    parse_allowed_callers,
    parse_destination_tls,
    parse_limits,
    parse_node_tls,
)


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "DEID_NODE"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: Path = Path("var")
    workers: int = 2
    max_associations: int = 32
    log_level: str = "info"


@dataclass(frozen=True)
class DeidConfig:
    options: frozenset[str] = frozenset(
        {"RetainLongitudinalTemporalInformationModifiedDates", "CleanPixelData"}
    )
    uid_root: str = "2.25."
    key_file: Path | None = None
    date_shift_min_days: int = 1
    date_shift_max_days: int = 365
    pseudonym_prefix: str = "DEID"
    preset: str | None = None
    # "generate": a patient not in the registry gets a new pseudonym; "quarantine":
    # only patients already there (imported) are de-identified, others quarantined.
    unknown_patient: str = "generate"
    # The leak gate (deid_node.deid.gate): "clean" takes out what it finds,
    # "quarantine" refuses the instance. It cannot be turned off.
    leak_gate: str = "clean"

    @property
    def options_in_force(self) -> frozenset[str]:
        """The configured options together with those the preset implies."""
        return options_in_force(self.options, self.preset)


@dataclass(frozen=True)
class ForwardConfig:
    retry_initial_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    max_attempts: int = 0
    batch_size: int = 32
    idle_release_seconds: float = 5.0
    connect_timeout_seconds: float = 10.0
    dimse_timeout_seconds: float = 60.0
    # "instance": send each instance as soon as it is de-identified; "study": hold a
    # study's instances until none has arrived for stable_seconds, then send them
    # together in one association.
    mode: str = "instance"
    stable_seconds: float = 60.0


FORWARD_MODES = ("instance", "study")


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: Prometheus /metrics and /health over HTTP (off unless enabled)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9110  # 0: pick a free port and log it


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    # Which instances go here (None: all of them); see deid_node/routing.py.
    route: Route | None = None
    # Receives the instances that match no other destination.
    fallback: bool = False
    # Per-destination overrides of [forward]; None: use [forward]'s value.
    retry_initial_seconds: float | None = None
    retry_max_seconds: float | None = None
    max_attempts: int | None = None

    def retry_settings(self, forward: ForwardConfig) -> tuple[float, float, int]:
        """(retry_initial_seconds, retry_max_seconds, max_attempts) in force here."""
        return (
            forward.retry_initial_seconds
            if self.retry_initial_seconds is None
            else self.retry_initial_seconds,
            forward.retry_max_seconds if self.retry_max_seconds is None else self.retry_max_seconds,
            forward.max_attempts if self.max_attempts is None else self.max_attempts,
        )

    tls: DestinationTLS | None = None


@dataclass(frozen=True)
class Config:
    node: NodeSettings = field(default_factory=NodeSettings)
    registry_url: str = ""
    deid: DeidConfig = field(default_factory=DeidConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    destinations: tuple[Destination, ...] = ()
    source: Path | None = None
    pixels: PixelSettings = field(default_factory=PixelSettings)
    tls: NodeTLS | None = None  # [tls]: the SCP speaks DICOM TLS
    allowed_callers: tuple[AllowedCaller, ...] = ()  # empty: any caller
    limits: Limits = field(default_factory=Limits)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def queue_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'queue.sqlite'}"

    @property
    def audit_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'audit.sqlite'}"

    @property
    def key_path(self) -> Path:
        return self.deid.key_file or self.data_dir / "uid.key"


UNKNOWN_PATIENT_CHOICES = ("generate", "quarantine")

_TOP_LEVEL = {
    "node",
    "registry",
    "deid",
    "forward",
    "destination",
    "tls",
    "allowed_caller",
    "limits",
    "pixels",
    "metrics",
}


def _check_keys(section: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"[{section}] {key}: unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}]: must be a table, got {type(table).__name__} {table!r}")
    return table


def _get(
    section: str,
    table: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a port of `true` is a typo, not a number.
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"[{section}] {key}: expected {_kind_name(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise ConfigError(
            f"[{section}] {key}: expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}"
        )
    if minimum is not None and value < minimum:
        raise ConfigError(f"[{section}] {key}: must be at least {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"[{section}] {key}: must be at most {maximum}, got {value!r}")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _ae_title(section: str, key: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isascii():
        raise ConfigError(
            f"[{section}] {key}: an AE title is 1 to 16 ASCII characters without a backslash, "
            f"got {value!r}"
        )
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the configuration file, not the shell."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rest = url[len(prefix) :]
        if rest and rest != ":memory:":
            return prefix + str(_path(base, rest))
    return url


_DESTINATION_ROUTING_KEYS = {
    "route",
    "fallback",
    "retry_initial_seconds",
    "retry_max_seconds",
    "max_attempts",
}


def _destination_routing(where: str, t: dict[str, Any], forward: ForwardConfig) -> dict[str, Any]:
    """The routing and retry keys of one [[destination]], validated."""
    route = None
    if "route" in t:
        try:
            route = parse_route(t["route"])
        except ValueError as exc:
            raise ConfigError(f"[{where}] {exc}") from None
    fallback = _get(where, t, "fallback", bool, False)
    if fallback and route is not None:
        raise ConfigError(f"[{where}] fallback: a fallback destination has no route")
    num = (int, float)
    initial = _get(where, t, "retry_initial_seconds", num, None, minimum=0.01)
    maximum = _get(where, t, "retry_max_seconds", num, None, minimum=0.01)
    eff_initial = forward.retry_initial_seconds if initial is None else float(initial)
    eff_max = forward.retry_max_seconds if maximum is None else float(maximum)
    if eff_max < eff_initial:
        raise ConfigError(f"[{where}] retry_max_seconds: must not be below retry_initial_seconds")
    return {
        "route": route,
        "fallback": fallback,
        "retry_initial_seconds": None if initial is None else float(initial),
        "retry_max_seconds": None if maximum is None else float(maximum),
        "max_attempts": _get(where, t, "max_attempts", int, None, minimum=0),
    }


def parse_config(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths resolve against ``base_dir``."""
    _check_keys("top level", raw, _TOP_LEVEL)

    n = _section(raw, "node")
    _check_keys(
        "node",
        n,
        {"ae_title", "host", "port", "data_dir", "workers", "max_associations", "log_level"},
    )
    log_level = _get("node", n, "log_level", str, "info").lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        raise ConfigError(
            f"[node] log_level: one of debug, info, warning, error; got {log_level!r}"
        )
    node = NodeSettings(
        ae_title=_ae_title("node", "ae_title", _get("node", n, "ae_title", str, "DEID_NODE")),
        host=_get("node", n, "host", str, "0.0.0.0"),
        port=_get("node", n, "port", int, 11112, minimum=0, maximum=65535),
        data_dir=_path(base_dir, _get("node", n, "data_dir", str, "var")),
        workers=_get("node", n, "workers", int, 2, minimum=0, maximum=64),
        max_associations=_get("node", n, "max_associations", int, 32, minimum=1, maximum=1000),
        log_level=log_level,
    )

    r = _section(raw, "registry")
    _check_keys("registry", r, {"url"})
    registry_url = _get("registry", r, "url", str, "")
    if not registry_url:
        registry_url = f"sqlite:///{node.data_dir / 'registry.sqlite'}"
    if not registry_url.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            f"[registry] url: a SQLAlchemy URL for SQLite or PostgreSQL, got "
            f"{registry_url.split(':', 1)[0]!r}"
        )
    registry_url = _resolve_sqlite_url(registry_url, base_dir)

    d = _section(raw, "deid")
    _check_keys(
        "deid",
        d,
        {
            "options",
            "uid_root",
            "key_file",
            "date_shift_min_days",
            "date_shift_max_days",
            "pseudonym_prefix",
            "preset",
            "unknown_patient",
            "leak_gate",
        },
    )
    try:
        preset = canonical_preset(_get("deid", d, "preset", str, ""))
    except ValueError as exc:
        raise ConfigError(f"[deid] preset: {exc}") from None
    option_names = _get("deid", d, "options", list, list(DeidConfig().options))
    options: set[str] = set()
    for name in option_names:
        if not isinstance(name, str):
            raise ConfigError(f"[deid] options: each option is a string, got {name!r}")
        try:
            options.add(canonical_option(name))
        except ValueError as exc:
            raise ConfigError(f"[deid] options: {exc}") from None
    if {
        "RetainLongitudinalTemporalInformationFullDates",
        "RetainLongitudinalTemporalInformationModifiedDates",
    } <= options:
        raise ConfigError(
            "[deid] options: Retain Longitudinal Temporal Information with Full Dates and with "
            "Modified Dates exclude each other; choose one"
        )
    uid_root = _get("deid", d, "uid_root", str, "2.25.")
    if not uid_root.endswith("."):
        uid_root += "."
    parts = uid_root[:-1].split(".")
    if len(uid_root) > 40 or not all(
        p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts
    ):
        raise ConfigError(
            f"[deid] uid_root: digits and dots, no leading zeros, at most 40 characters; "
            f"got {uid_root!r}"
        )
    key_file = _get("deid", d, "key_file", str, "")
    min_days = _get("deid", d, "date_shift_min_days", int, 1, minimum=0, maximum=36500)
    max_days = _get("deid", d, "date_shift_max_days", int, 365, minimum=0, maximum=36500)
    if max_days < min_days:
        raise ConfigError(
            f"[deid] date_shift_max_days: must not be below date_shift_min_days ({min_days}), "
            f"got {max_days}"
        )
    prefix = _get("deid", d, "pseudonym_prefix", str, "DEID")
    if not prefix.isascii() or not prefix.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"[deid] pseudonym_prefix: letters, digits, - and _, got {prefix!r}")
    if len(prefix) > 40:
        raise ConfigError("[deid] pseudonym_prefix: at most 40 characters")
    unknown_patient = _get("deid", d, "unknown_patient", str, "generate")
    if unknown_patient not in UNKNOWN_PATIENT_CHOICES:
        raise ConfigError(
            f"[deid] unknown_patient: one of {', '.join(UNKNOWN_PATIENT_CHOICES)}; "
            f"got {unknown_patient!r}"
        )
    leak_gate = _get("deid", d, "leak_gate", str, "clean")
    if leak_gate not in GATE_MODES:
        raise ConfigError(
            f"[deid] leak_gate: one of {', '.join(GATE_MODES)} (it cannot be turned off); "
            f"got {leak_gate!r}"
        )
    deid = DeidConfig(
        options=frozenset(options),
        uid_root=uid_root,
        key_file=_path(base_dir, key_file) if key_file else None,
        date_shift_min_days=min_days,
        date_shift_max_days=max_days,
        pseudonym_prefix=prefix,
        preset=preset,
        unknown_patient=unknown_patient,
        leak_gate=leak_gate,
    )

    f = _section(raw, "forward")
    _check_keys("forward", f, set(ForwardConfig.__dataclass_fields__))
    num = (int, float)
    forward = ForwardConfig(
        retry_initial_seconds=float(
            _get("forward", f, "retry_initial_seconds", num, 2.0, minimum=0.01)
        ),
        retry_max_seconds=float(_get("forward", f, "retry_max_seconds", num, 300.0, minimum=0.01)),
        max_attempts=_get("forward", f, "max_attempts", int, 0, minimum=0),
        batch_size=_get("forward", f, "batch_size", int, 32, minimum=1, maximum=1000),
        idle_release_seconds=float(_get("forward", f, "idle_release_seconds", num, 5.0, minimum=0)),
        connect_timeout_seconds=float(
            _get("forward", f, "connect_timeout_seconds", num, 10.0, minimum=0.1)
        ),
        dimse_timeout_seconds=float(
            _get("forward", f, "dimse_timeout_seconds", num, 60.0, minimum=0.1)
        ),
        mode=_get("forward", f, "mode", str, "instance"),
        stable_seconds=float(_get("forward", f, "stable_seconds", num, 60.0, minimum=0.1)),
    )
    if forward.mode not in FORWARD_MODES:
        raise ConfigError(
            f"[forward] mode: one of {', '.join(FORWARD_MODES)}; got {forward.mode!r}"
        )
    if forward.retry_max_seconds < forward.retry_initial_seconds:
        raise ConfigError("[forward] retry_max_seconds: must not be below retry_initial_seconds")

    dests_raw = raw.get("destination", [])
    if not isinstance(dests_raw, list):
        raise ConfigError("[[destination]]: must be an array of tables ([[destination]])")
    destinations: list[Destination] = []
    for i, t in enumerate(dests_raw):
        where = f"destination #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"[{where}]: must be a table, got {type(t).__name__} {t!r}")
        _check_keys(
            where,
            t,
            {"name", "ae_title", "host", "port"} | _DESTINATION_ROUTING_KEYS | DESTINATION_TLS_KEYS,
        )
        for key in ("name", "ae_title", "host", "port"):
            if key not in t:
                raise ConfigError(f"[{where}] {key}: required")
        dest = Destination(
            name=_get(where, t, "name", str, ""),
            ae_title=_ae_title(where, "ae_title", _get(where, t, "ae_title", str, "")),
            host=_get(where, t, "host", str, ""),
            port=_get(where, t, "port", int, 0, minimum=1, maximum=65535),
            **_destination_routing(where, t, forward),
            tls=parse_destination_tls(where, t, base_dir),
        )
        if any(dest.name == other.name for other in destinations):
            raise ConfigError(f"[{where}] name: {dest.name!r} is used twice")
        destinations.append(dest)

    return Config(
        node=node,
        registry_url=registry_url,
        deid=deid,
        forward=forward,
        destinations=tuple(destinations),
        source=source,
        tls=parse_node_tls(raw, base_dir),
        allowed_callers=parse_allowed_callers(raw),
        limits=parse_limits(raw),
        pixels=_pixels(raw),
        metrics=_parse_metrics(raw),
    )


def _pixels(raw: dict[str, Any]) -> PixelSettings:
    """[pixels]: how the Clean Pixel Data option masks burned-in text."""
    p = _section(raw, "pixels")
    if "ocr_modalities" in p:
        raise ConfigError(
            "[pixels] ocr_modalities: no longer used (every frame is searched by the text "
            "detector); remove it"
        )
    _check_keys(
        "pixels", p, {"policy", "engine", "padding", "fill", "allow", "template", "preload"}
    )
    policy = _get("pixels", p, "policy", str, "phi")
    if policy not in POLICIES:
        raise ConfigError(f"[pixels] policy: one of {', '.join(POLICIES)}; got {policy!r}")
    fill = _get("pixels", p, "fill", str, "black")
    if fill not in FILLS:
        raise ConfigError(f"[pixels] fill: one of {', '.join(FILLS)}; got {fill!r}")
    engine = _get("pixels", p, "engine", str, "deid-node")
    if engine not in ENGINES:
        raise ConfigError(f"[pixels] engine: one of {', '.join(ENGINES)}; got {engine!r}")
    default = PixelSettings()
    allow = _get("pixels", p, "allow", list, [])
    if not all(isinstance(w, str) and w.strip() and " " not in w.strip() for w in allow):
        raise ConfigError('[pixels] allow: a list of single words that may stay, such as "SPOT"')
    raw_templates = p.get("template", [])
    if not isinstance(raw_templates, list):
        raise ConfigError("[[pixels.template]]: must be an array of tables")
    templates = []
    for i, t in enumerate(raw_templates):
        where = f"pixels.template #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"[{where}]: must be a table")
        _check_keys(where, t, {"modality", "manufacturer", "model", "rows", "columns", "boxes"})
        boxes = t.get("boxes")
        if not isinstance(boxes, list) or not boxes:
            raise ConfigError(f"[{where}] boxes: required, a list of [x1, y1, x2, y2]")
        parsed = []
        for box in boxes:
            ok = (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in box)
                and box[0] < box[2]
                and box[1] < box[3]
            )
            if not ok:
                raise ConfigError(
                    f"[{where}] boxes: each box is [x1, y1, x2, y2] in pixels with x1 < x2 "
                    f"and y1 < y2, got {box!r}"
                )
            parsed.append((box[0], box[1], box[2], box[3]))
        templates.append(
            Template(
                boxes=tuple(parsed),
                modality=_get(where, t, "modality", str, ""),
                manufacturer=_get(where, t, "manufacturer", str, ""),
                model=_get(where, t, "model", str, ""),
                rows=_get(where, t, "rows", int, 0, minimum=0),
                columns=_get(where, t, "columns", int, 0, minimum=0),
            )
        )
    return PixelSettings(
        policy=policy,
        padding=_get("pixels", p, "padding", int, default.padding, minimum=0, maximum=64),
        engine=engine,
        fill=fill,
        allow=tuple(sorted({w.strip().lower() for w in allow})),
        templates=tuple(templates),
        preload=_get("pixels", p, "preload", bool, False),
    )


def _parse_metrics(raw: dict[str, Any]) -> MetricsConfig:
    m = _section(raw, "metrics")
    _check_keys("metrics", m, set(MetricsConfig.__dataclass_fields__))
    return MetricsConfig(
        enabled=_get("metrics", m, "enabled", bool, False),
        host=_get("metrics", m, "host", str, "127.0.0.1"),
        port=_get("metrics", m, "port", int, 9110, minimum=0, maximum=65535),
    )


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` naming the problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(raw, path.resolve().parent, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
