"""Governance: the schema registry (:mod:`headwater.governance.schemas`); see docs/governance.md."""
