"""Governance over the engine: OpenLineage lineage of every run (:mod:`headwater.governance.lineage`) and the
audit entries of job runs (:mod:`headwater.governance.job`); the audit log itself is the store's
(:mod:`headwater.store.audit`). See docs/governance.md."""
