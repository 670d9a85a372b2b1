"""Governance over the engine: the schema registry (:mod:`headwater.governance.schemas`), OpenLineage lineage of
every run (:mod:`headwater.governance.lineage`) and the audit entries of job runs (:mod:`headwater.governance.job`);
the audit log itself is the store's (:mod:`headwater.store.audit`). See docs/governance.md."""
