"""OpenLineage lineage: dataset naming (:mod:`.datasets`), column lineage from the logical plan (:mod:`.columns`),
run events and their transports (:mod:`.events`), and the graph read back from stored events (:mod:`.graph`)."""
