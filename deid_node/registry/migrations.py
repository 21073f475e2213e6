"""Ordered schema migrations of the registry, run by the node itself at start.

The registry must survive every upgrade of the node: it is what links a
patient's future studies to the past ones. Each migration is a plain function
that moves the schema from one version to the next without dropping data; they
run in order, in one transaction with the version update, under the lock that
serialises schema work across processes and nodes (PostgreSQL: an advisory
lock; SQLite: BEGIN IMMEDIATE). A failed migration rolls back and leaves the
registry as it was. PostgreSQL and SQLite both run DDL inside a transaction.

A new registry is created directly at the latest version from
:mod:`deid_node.registry.models`; the migrations must lead to the same schema,
which the tests check.

To change the schema: change ``models.py``, raise ``SCHEMA_VERSION``, and append
the function that brings a registry of the previous version to it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, insert, inspect, select, text, update

from deid_node.logs import get_logger
from deid_node.registry.models import SCHEMA_VERSION, metadata, schema_info

log = get_logger("deid_node.registry")


def _v2_index_uid_level(conn: Connection) -> None:
    """Index uid_map.level: the crosswalk selects study, series and instance rows."""
    # Plain DDL, not the models' Index: a migration stays what it was when written.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_uid_map_level ON uid_map (level)"))


# MIGRATIONS[n] brings a registry of version n + 1 to version n + 2.
MIGRATIONS: list[Callable[[Connection], None]] = [_v2_index_uid_level]
assert len(MIGRATIONS) == SCHEMA_VERSION - 1, "one migration per schema version after 1"


class RegistryVersionError(RuntimeError):
    """The registry was written by a newer node than this one."""


def current_version(conn: Connection) -> int | None:
    """The registry's schema version; None for an empty database."""
    tables = set(inspect(conn).get_table_names())
    if "schema_info" not in tables:
        # Version 1 created its tables and schema_info together; patients
        # without schema_info can only be a version-1 setup cut short.
        return 1 if "patients" in tables else None
    version = conn.execute(select(schema_info.c.version)).scalar()
    return 1 if version is None else int(version)


def upgrade(conn: Connection) -> tuple[int | None, int]:
    """Create or migrate the schema on ``conn`` (inside the caller's locked
    transaction); return (version found, version now)."""
    found = current_version(conn)
    if found is None:
        metadata.create_all(conn)
        conn.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
        return None, SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise RegistryVersionError(
            f"registry schema version {found} is newer than this node understands "
            f"({SCHEMA_VERSION}); upgrade the node"
        )
    if found == SCHEMA_VERSION:
        return found, found
    metadata.create_all(conn, tables=[schema_info], checkfirst=True)
    for version in range(found, SCHEMA_VERSION):
        MIGRATIONS[version - 1](conn)
    if conn.execute(select(schema_info.c.version)).scalar() is None:
        conn.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
    else:
        conn.execute(update(schema_info).values(version=SCHEMA_VERSION))
    log.info("registry_migrated", from_version=found, to_version=SCHEMA_VERSION)
    return found, SCHEMA_VERSION
