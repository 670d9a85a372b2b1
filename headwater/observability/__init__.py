"""Observability of running jobs: Prometheus metrics (:mod:`.definitions`, :mod:`.collector`, :mod:`.exporter`).

This package sits on top of the engine: it reads the figures the engine reports (subtask metrics, checkpoint
statistics) and never reaches into the runtime. The runner registers every job with :data:`EXPORTER`.
"""

from headwater.observability.collector import JobSnapshot, families
from headwater.observability.definitions import METRICS, MetricDef, exported_names
from headwater.observability.exporter import EXPORTER, MetricsExporter

__all__ = ["EXPORTER", "METRICS", "JobSnapshot", "MetricDef", "MetricsExporter", "exported_names", "families"]
