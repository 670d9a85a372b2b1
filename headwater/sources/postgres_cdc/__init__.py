"""PostgreSQL change data capture: :class:`PostgresCdcSource` (snapshot + pgoutput logical replication).

Modules: :mod:`.source` (the source, its options, schema discovery, administration, dead-letter replay),
:mod:`.partition` (snapshot, streaming, positions, reconnects), :mod:`.changes` (the changelog schema and batch
building), :mod:`.convert` (PostgreSQL text → Arrow), :mod:`.pgoutput` (the protocol decoder).
"""

from headwater.sources.postgres_cdc.partition import PostgresCdcPartition, PostgresCdcPosition
from headwater.sources.postgres_cdc.source import PostgresCdcSource

__all__ = ["PostgresCdcPartition", "PostgresCdcPosition", "PostgresCdcSource"]
