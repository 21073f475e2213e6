"""node.toml: defaults, the shipped example, every validation error, path resolution,
and what `deid-node serve` says when the file is wrong."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from deid_node.config import (
    Config,
    ConfigError,
    DeidConfig,
    ForwardConfig,
    load_config,
    parse_config,
)
from tests.conftest import DEID_NODE, REPO

MODIFIED = "RetainLongitudinalTemporalInformationModifiedDates"
FULL = "RetainLongitudinalTemporalInformationFullDates"

DEST = '[[destination]]\nname = "research"\nae_title = "RESEARCH"\nhost = "127.0.0.1"\nport = 104\n'


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


# -- defaults and the shipped file -------------------------------------------------------


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    node = config.node
    assert node.ae_title == "DEID_NODE"
    assert node.host == "0.0.0.0"
    assert node.port == 11112
    assert node.workers == 2
    assert node.max_associations == 32
    assert node.log_level == "info"
    # Relative defaults resolve against the file's folder, not the shell's.
    assert node.data_dir == tmp_path / "var"
    assert config.data_dir == tmp_path / "var"
    assert config.registry_url == f"sqlite:///{tmp_path / 'var' / 'registry.sqlite'}"
    assert config.queue_url == f"sqlite:///{tmp_path / 'var' / 'queue.sqlite'}"
    assert config.audit_url == f"sqlite:///{tmp_path / 'var' / 'audit.sqlite'}"
    assert config.key_path == tmp_path / "var" / "uid.key"

    assert config.deid == DeidConfig()
    assert config.deid.options == frozenset({MODIFIED, "CleanPixelData"})
    assert config.deid.uid_root == "2.25."
    assert config.deid.key_file is None
    assert (config.deid.date_shift_min_days, config.deid.date_shift_max_days) == (1, 365)
    assert config.deid.pseudonym_prefix == "DEID"
    assert config.deid.unknown_patient == "generate"

    assert config.forward == ForwardConfig()
    assert config.forward.retry_initial_seconds == 2.0
    assert config.forward.retry_max_seconds == 300.0
    assert config.forward.max_attempts == 0
    assert config.destinations == ()
    assert config.source == tmp_path / "node.toml"


def test_empty_tables_give_the_defaults_too(tmp_path: Path) -> None:
    config = _load(tmp_path, "[node]\n[registry]\n[deid]\n[forward]\n")
    assert config == _load(tmp_path, "")


def test_repository_node_toml_loads() -> None:
    config = load_config(REPO / "node.toml")
    assert [d.name for d in config.destinations] == ["research"]
    dest = config.destinations[0]
    assert (dest.ae_title, dest.host, dest.port) == ("RESEARCH_PACS", "127.0.0.1", 11113)
    assert config.node.ae_title == "DEID_NODE"
    assert config.node.data_dir == REPO / "var"
    assert config.registry_url == f"sqlite:///{REPO / 'var' / 'registry.sqlite'}"
    assert config.deid.options == frozenset({MODIFIED, "CleanPixelData"})
    # The file says its values are the defaults: they must be.
    assert config.deid == DeidConfig()
    assert config.forward == ForwardConfig()


# -- invalid values -------------------------------------------------------------------------

INVALID = {
    # wrong types
    "port-string": ('[node]\nport = "eleven"\n', "[node] port"),
    "port-float": ("[node]\nport = 11112.0\n", "[node] port"),
    "port-bool": ("[node]\nport = true\n", "[node] port"),
    "workers-string": ('[node]\nworkers = "2"\n', "[node] workers"),
    "ae-title-int": ("[node]\nae_title = 5\n", "[node] ae_title"),
    "data-dir-int": ("[node]\ndata_dir = 5\n", "[node] data_dir"),
    "options-string": ('[deid]\noptions = "Retain UIDs"\n', "[deid] options"),
    "options-int-item": ("[deid]\noptions = [1]\n", "[deid] options"),
    "registry-url-int": ("[registry]\nurl = 5\n", "[registry] url"),
    "retry-string": ('[forward]\nretry_initial_seconds = "2"\n', "[forward] retry_initial_seconds"),
    "dest-port-string": (DEST.replace("port = 104", 'port = "104"'), "[destination #1] port"),
    # out of range
    "port-negative": ("[node]\nport = -1\n", "[node] port"),
    "port-too-big": ("[node]\nport = 65536\n", "[node] port"),
    "dest-port-zero": (DEST.replace("port = 104", "port = 0"), "[destination #1] port"),
    "dest-port-too-big": (DEST.replace("port = 104", "port = 70000"), "[destination #1] port"),
    "workers-too-many": ("[node]\nworkers = 65\n", "[node] workers"),
    "max-assoc-zero": ("[node]\nmax_associations = 0\n", "[node] max_associations"),
    "log-level": ('[node]\nlog_level = "verbose"\n', "[node] log_level"),
    "retry-zero": ("[forward]\nretry_initial_seconds = 0\n", "[forward] retry_initial_seconds"),
    "retry-max-below-initial": (
        "[forward]\nretry_initial_seconds = 10\nretry_max_seconds = 5\n",
        "[forward] retry_max_seconds",
    ),
    "batch-size-zero": ("[forward]\nbatch_size = 0\n", "[forward] batch_size"),
    "max-attempts-negative": ("[forward]\nmax_attempts = -1\n", "[forward] max_attempts"),
    "shift-min-negative": ("[deid]\ndate_shift_min_days = -1\n", "[deid] date_shift_min_days"),
    "shift-max-below-min": (
        "[deid]\ndate_shift_min_days = 30\ndate_shift_max_days = 10\n",
        "[deid] date_shift_max_days",
    ),
    # AE titles
    "ae-title-17": ('[node]\nae_title = "ABCDEFGHIJKLMNOPQ"\n', "[node] ae_title"),
    "ae-title-backslash": ('[node]\nae_title = "DEID\\\\NODE"\n', "[node] ae_title"),
    "ae-title-blank": ('[node]\nae_title = "   "\n', "[node] ae_title"),
    "ae-title-non-ascii": ('[node]\nae_title = "DÉID"\n', "[node] ae_title"),
    "dest-ae-title-17": (
        DEST.replace('"RESEARCH"', '"RESEARCH_ARCHIVE1"'),
        "[destination #1] ae_title",
    ),
    "dest-ae-title-backslash": (
        DEST.replace('"RESEARCH"', '"RE\\\\SEARCH"'),
        "[destination #1] ae_title",
    ),
    # unknown keys, in every section
    "unknown-top-level": ("[nodes]\nport = 1\n", "[top level] nodes"),
    "unknown-node": ("[node]\nprot = 104\n", "[node] prot"),
    "unknown-registry": ('[registry]\nuri = "sqlite://"\n', "[registry] uri"),
    "unknown-deid": ('[deid]\nuid_prefix = "2.25."\n', "[deid] uid_prefix"),
    "unknown-forward": ("[forward]\nretries = 3\n", "[forward] retries"),
    "unknown-destination": (DEST + 'calling_ae = "X"\n', "[destination #1] calling_ae"),
    # [deid] options
    "unknown-option": ('[deid]\noptions = ["Retain Everything"]\n', "[deid] options"),
    "full-and-modified": (
        '[deid]\noptions = ["Retain Longitudinal Temporal Information with Full Dates",'
        ' "Retain Longitudinal Temporal Information with Modified Dates"]\n',
        "[deid] options",
    ),
    # uid_root
    "uid-root-leading-zero": ('[deid]\nuid_root = "1.02.3."\n', "[deid] uid_root"),
    "uid-root-first-leading-zero": ('[deid]\nuid_root = "01.2."\n', "[deid] uid_root"),
    "uid-root-letters": ('[deid]\nuid_root = "1.2.a."\n', "[deid] uid_root"),
    "uid-root-empty-component": ('[deid]\nuid_root = "1..2."\n', "[deid] uid_root"),
    "uid-root-too-long": ('[deid]\nuid_root = "' + "1." * 21 + '"\n', "[deid] uid_root"),
    "pseudonym-prefix": ('[deid]\npseudonym_prefix = "DE ID"\n', "[deid] pseudonym_prefix"),
    "unknown-patient-value": ('[deid]\nunknown_patient = "drop"\n', "[deid] unknown_patient"),
    "unknown-patient-type": ("[deid]\nunknown_patient = true\n", "[deid] unknown_patient"),
    # registry
    "registry-mysql": ('[registry]\nurl = "mysql://db/registry"\n', "[registry] url"),
    # destinations
    "dest-missing-host": (
        '[[destination]]\nname = "r"\nae_title = "R"\nport = 104\n',
        "[destination #1] host",
    ),
    "dest-missing-name": (
        '[[destination]]\nae_title = "R"\nhost = "127.0.0.1"\nport = 104\n',
        "[destination #1] name",
    ),
    "dest-missing-port": (
        '[[destination]]\nname = "r"\nae_title = "R"\nhost = "127.0.0.1"\n',
        "[destination #1] port",
    ),
    "dest-duplicate-name": (DEST + DEST, "[destination #2] name"),
    "dest-not-array": (
        '[destination]\nname = "r"\nae_title = "R"\nhost = "h"\nport = 1\n',
        "[[destination]]",
    ),
    # sections of the wrong kind
    "node-not-table": ('node = "x"\n', "[node]"),
    "registry-not-table": ("registry = 5\n", "[registry]"),
    "deid-not-table": ('deid = ["a"]\n', "[deid]"),
    "forward-not-table": ("forward = 1.5\n", "[forward]"),
    "dest-item-not-table": ("destination = [1]\n", "[destination #1]"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_value_names_section_and_key(tmp_path: Path, case: str) -> None:
    text, where = INVALID[case]
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert where in message, message
    assert str(tmp_path / "node.toml") in message, "the message names the file"
    assert "\n" not in message


def test_parse_config_message_has_no_file_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^\[node\] port: must be at most 65535"):
        parse_config({"node": {"port": 99999}}, tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "[node\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "[node]\nport = 1\nport = 2\n")  # a key twice


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("# r\xe9seau\n[node]\nport = 104\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_config(tmp_path)  # a folder, not a file


# -- accepted spellings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Retain Longitudinal Temporal Information with Modified Dates Option", MODIFIED),
        ("Retain Longitudinal Temporal Information with Modified Dates", MODIFIED),
        ("RetainLongitudinalTemporalInformationModifiedDates", MODIFIED),
        ("113107", MODIFIED),
        ("Retain Longitudinal Temporal Information with Full Dates Option", FULL),
        ("retain-uids", "RetainUIDs"),
        ("Retain UIDs Option", "RetainUIDs"),
        ("retain_safe_private", "RetainSafePrivate"),
        ("Clean Descriptors Option", "CleanDescriptors"),
        ("  clean pixel data  ", "CleanPixelData"),
    ],
)
def test_option_spellings(tmp_path: Path, spelling: str, canonical: str) -> None:
    config = _load(tmp_path, f"[deid]\noptions = [{spelling!r}]\n".replace("'", '"'))
    assert config.deid.options == frozenset({canonical})


def test_no_options_and_repeated_options(tmp_path: Path) -> None:
    assert _load(tmp_path, "[deid]\noptions = []\n").deid.options == frozenset()
    config = _load(tmp_path, '[deid]\noptions = ["retain-uids", "Retain UIDs Option", "113110"]\n')
    assert config.deid.options == frozenset({"RetainUIDs"})


def test_values_that_are_accepted(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[node]\nae_title = " ABCDEFGHIJKLMNOP "\nport = 0\nworkers = 0\nlog_level = "DEBUG"\n'
        '[deid]\nuid_root = "1.2.0.3"\ndate_shift_min_days = 7\ndate_shift_max_days = 7\n'
        'pseudonym_prefix = "RES_2-A"\nunknown_patient = "quarantine"\n'
        "[forward]\nretry_initial_seconds = 1\nretry_max_seconds = 1.5\n"
        + DEST
        + DEST.replace('"research"', '"second"').replace("port = 104", "port = 65535"),
    )
    assert config.node.ae_title == "ABCDEFGHIJKLMNOP"  # 16 characters once stripped
    assert config.node.port == 0 and config.node.workers == 0
    assert config.node.log_level == "debug"
    assert config.deid.uid_root == "1.2.0.3."  # a zero component is fine; the dot is added
    assert config.deid.date_shift_min_days == config.deid.date_shift_max_days == 7
    assert config.deid.unknown_patient == "quarantine"
    assert config.forward.retry_initial_seconds == 1.0
    assert isinstance(config.forward.retry_initial_seconds, float)
    assert [(d.name, d.port) for d in config.destinations] == [("research", 104), ("second", 65535)]


# -- paths ------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "deid"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = conf_dir / "node.toml"
    path.write_text(
        '[node]\ndata_dir = "data"\n'
        '[registry]\nurl = "sqlite:///db/registry.sqlite"\n'
        '[deid]\nkey_file = "keys/uid.key"\n'
    )
    # Loaded through a relative path from another folder.
    config = load_config(Path("..") / "etc" / "deid" / "node.toml")
    base = conf_dir.resolve()
    assert config.data_dir == base / "data"
    assert config.registry_url == f"sqlite:///{base / 'db' / 'registry.sqlite'}"
    assert config.key_path == base / "keys" / "uid.key"
    assert config.queue_url == f"sqlite:///{base / 'data' / 'queue.sqlite'}"


def test_absolute_and_special_registry_urls_are_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "abs" / "registry.sqlite"
    for url in (
        f"sqlite:///{absolute}",
        "sqlite:///:memory:",
        "postgresql+psycopg://deid@dbhost/registry",
    ):
        config = _load(tmp_path, f'[registry]\nurl = "{url}"\n')
        assert config.registry_url == url
    config = _load(tmp_path, f'[node]\ndata_dir = "{tmp_path / "d"}"\n')
    assert config.data_dir == tmp_path / "d"
    assert config.registry_url == f"sqlite:///{tmp_path / 'd' / 'registry.sqlite'}"


def test_toml_round_trip_of_the_repository_file_has_no_unknown_keys() -> None:
    # Every key the example documents is one the loader knows (parse_config would raise).
    raw = tomllib.loads((REPO / "node.toml").read_text(encoding="utf-8"))
    parse_config(raw, REPO)


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[node]\nport = "eleven"\n', "[node] port"),
        ("[node\n", "not valid TOML"),
        ("registry = 5\n", "[registry]"),
    ],
)
def test_serve_with_bad_config_exits_2_with_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = subprocess.run(
        [*DEID_NODE, "serve", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deid-node: configuration error:")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "var").exists(), "nothing is created from a bad configuration"


def test_serve_with_missing_config_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [*DEID_NODE, "serve", "-c", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no such configuration file" in result.stderr
    assert "Traceback" not in result.stderr


# -- presets ---------------------------------------------------------------------------


def test_tcia_preset_is_accepted_and_implies_its_options(tmp_path: Path) -> None:
    config = _load(tmp_path, '[deid]\npreset = "TCIA"\n')
    assert config.deid.preset == "tcia"
    assert "RetainSafePrivate" in config.deid.options_in_force
    assert "CleanDescriptors" in config.deid.options_in_force
    assert _load(tmp_path, "").deid.preset is None
    assert _load(tmp_path, "").deid.options_in_force == frozenset({MODIFIED, "CleanPixelData"})


def test_unknown_preset_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[deid\] preset"):
        _load(tmp_path, '[deid]\npreset = "hospital-x"\n')


def test_preset_reaches_the_output(tmp_path: Path) -> None:
    """`deidentify` with the TCIA preset writes what the preset says it did."""
    import sys

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\nworkers = 1\n[deid]\npreset = "tcia"\n'
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "deid_node",
            "deidentify",
            str(src),
            "-o",
            str(tmp_path / "out"),
            "-c",
            str(cfg),
            "-q",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (out,) = list((tmp_path / "out").glob("*.dcm"))
    ds = dcmread(out)
    assert "TCIA preset" in " ".join(ds.DeidentificationMethod)
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113111", "113105"} <= codes
