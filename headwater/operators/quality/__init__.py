"""Data-quality operators: validation with quarantine (:mod:`.validate`), drift profiles (:mod:`.profile`) and
quality-score alerts (:mod:`.alerts`)."""
