"""Registry tables: the mapping that keeps longitudinal studies linked.

The registry holds original identifiers next to their pseudonyms, so it is the
most sensitive store the node has. It may be shared by several nodes
(PostgreSQL) or embedded (SQLite); the unique constraints below are what make
concurrent first sight of a patient or UID safe across processes and nodes.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Issuer of Patient ID ("" when absent): the same ID from two issuers is two people.
    Column("issuer", String(64), nullable=False),
    Column("original_id", String(64), nullable=False),
    Column("pseudo_id", String(64), nullable=False, unique=True),
    Column("pseudo_name", String(64), nullable=False),
    Column("date_offset_days", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("issuer", "original_id", name="uq_patient_original"),
)

uid_map = Table(
    "uid_map",
    metadata,
    Column("original_uid", String(64), primary_key=True),
    Column("new_uid", String(64), nullable=False, index=True),
    # study, series, instance, or other (frame of reference, referenced UIDs, ...)
    Column("level", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_uid_map_level", "level"),  # version 2
)

schema_info = Table(
    "schema_info",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

# Raise it with every schema change and add the step in migrations.py.
SCHEMA_VERSION = 2
