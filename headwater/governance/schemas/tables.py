"""The schema registry's two SQL tables (SQLAlchemy Core); see :mod:`headwater.governance.schemas.registry`.

Names carry a ``headwater_`` prefix so the registry can share a PostgreSQL database with other applications.
"""

from __future__ import annotations

import sqlalchemy as sa

METADATA = sa.MetaData()

SUBJECTS = sa.Table(
    "headwater_schema_subjects", METADATA,
    sa.Column("subject", sa.String(512), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

VERSIONS = sa.Table(
    "headwater_schema_versions", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("schema_json", sa.Text, nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("registered_by", sa.String(256), nullable=False, default=""),
    sa.UniqueConstraint("subject", "version", name="headwater_schema_version_unique"),
    sa.UniqueConstraint("subject", "fingerprint", name="headwater_schema_fingerprint_unique"),
)
