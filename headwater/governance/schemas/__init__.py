"""The schema registry: versioned Arrow schemas per source, stream and table, with compatibility modes.

- :mod:`~headwater.governance.schemas.codec`: schemas as JSON (never pickle) and their fingerprints;
- :mod:`~headwater.governance.schemas.compatibility`: the modes (backward, forward, full, none) and type widening;
- :mod:`~headwater.governance.schemas.registry`: :class:`SchemaRegistry` on SQLAlchemy (SQLite, PostgreSQL);
- :mod:`~headwater.governance.schemas.subjects`: a dataflow's subjects, checked when a job starts;
- :mod:`~headwater.governance.schemas.commands`: ``headwater schemas list|show|diff|mode``.

See docs/governance.md, "Schemas".
"""

from headwater.governance.schemas.compatibility import Compatibility, Problem, check_compatible, widens
from headwater.governance.schemas.registry import RegisteredSchema, SchemaRegistry, registry_url
from headwater.governance.schemas.subjects import (
    FirstBatchRecorder,
    JobSchemas,
    Subject,
    first_batch_schemas,
    flow_subjects,
)

__all__ = [
    "FirstBatchRecorder",
    "first_batch_schemas",
    "Compatibility", "JobSchemas", "Problem", "RegisteredSchema", "SchemaRegistry", "Subject", "check_compatible",
    "flow_subjects", "registry_url", "widens",
]
