"""The lineage graph read back from the file transport's events (``<store>/lineage/events/*.json``): what fed a
dataset (upstream, transitively) and what it feeds (downstream).

Why read the events rather than keep an index: the events are the record (the same documents a collector such as
Marquez receives), one small file each, written once and never changed, so there is no second copy to drift or to
repair after a crash; a job writes two per run, so a store with thousands of runs holds a few MB that load in well
under a second. A file that does not parse (a write cut short) is skipped and counted.

The graph is the union over every run ever recorded: a job that once wrote a dataset stays among its upstream
(what fed it is history), with the time and state of its latest run.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from headwater.errors import HeadwaterError
from headwater.governance.lineage.datasets import DatasetRef
from headwater.governance.lineage.events import events_dir

log = logging.getLogger("headwater.lineage")


class LineageError(HeadwaterError):
    """A lineage question that cannot be answered as asked."""


class DatasetNotFoundError(LineageError):
    """No recorded run read or wrote the dataset."""


class AmbiguousDatasetError(LineageError):
    """The name matches datasets in several namespaces; name the namespace."""


@dataclass
class JobNode:
    namespace: str
    name: str
    inputs: set[DatasetRef] = field(default_factory=set)
    outputs: set[DatasetRef] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)
    last_event_time: str = ""
    last_state: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "runs": len(self.runs),
                "last_event_time": self.last_event_time, "last_state": self.last_state,
                "inputs": [_ds(d) for d in sorted(self.inputs)], "outputs": [_ds(d) for d in sorted(self.outputs)]}


def _ds(ref: DatasetRef) -> dict[str, str]:
    return {"namespace": ref.namespace, "name": ref.name}


@dataclass
class LineageGraph:
    jobs: dict[tuple[str, str], JobNode] = field(default_factory=dict)
    unreadable: int = 0

    @classmethod
    def load(cls, store_root: str) -> LineageGraph:
        graph = cls()
        for path in sorted(glob.glob(os.path.join(events_dir(store_root), "*.json"))):
            try:
                with open(path, encoding="utf-8") as f:
                    graph.add(json.load(f))
            except (OSError, ValueError, KeyError, TypeError):
                graph.unreadable += 1
        if graph.unreadable:
            log.warning("lineage: skipped %d unreadable event file(s) under %s", graph.unreadable,
                        events_dir(store_root))
        return graph

    def add(self, event: dict[str, Any]) -> None:
        job = event["job"]
        node = self.jobs.setdefault((job["namespace"], job["name"]), JobNode(job["namespace"], job["name"]))
        node.inputs.update(DatasetRef(d["namespace"], d["name"]) for d in event.get("inputs") or [])
        node.outputs.update(DatasetRef(d["namespace"], d["name"]) for d in event.get("outputs") or [])
        node.runs.add(event["run"]["runId"])
        if event["eventTime"] >= node.last_event_time:
            node.last_event_time, node.last_state = event["eventTime"], event.get("eventType") or ""

    def datasets(self) -> set[DatasetRef]:
        return {d for job in self.jobs.values() for d in (*job.inputs, *job.outputs)}

    def find(self, dataset: str, namespace: str | None = None) -> DatasetRef:
        """The dataset named ``dataset`` (its name, or ``namespace/name`` as printed) in ``namespace`` if given."""
        known = self.datasets()
        found = [d for d in known if (d.name == dataset or str(d) == dataset)
                 and (namespace is None or d.namespace == namespace)]
        if not found:
            where = f" in namespace {namespace!r}" if namespace else ""
            raise DatasetNotFoundError(f"no recorded run read or wrote a dataset {dataset!r}{where} "
                                       f"({len(known)} datasets known)")
        if len(found) > 1:
            spaces = ", ".join(sorted(d.namespace for d in found))
            raise AmbiguousDatasetError(f"{dataset!r} names datasets in several namespaces ({spaces}); "
                                        "give the namespace")
        return found[0]

    def _walk(self, start: DatasetRef, up: bool) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
        seen: dict[DatasetRef, tuple[int, set[str]]] = {}
        jobs: set[tuple[str, str]] = set()
        todo = deque([(start, 0)])
        while todo:
            current, depth = todo.popleft()
            for key, job in self.jobs.items():
                near, far = (job.outputs, job.inputs) if up else (job.inputs, job.outputs)
                if current not in near:
                    continue
                jobs.add(key)
                for ds in far:
                    if ds == start:
                        continue
                    if ds not in seen:
                        seen[ds] = (depth + 1, set())
                        todo.append((ds, depth + 1))
                    seen[ds][1].add(job.name)
        return ([{**_ds(d), "depth": depth, "via": sorted(via)}
                 for d, (depth, via) in sorted(seen.items(), key=lambda kv: (kv[1][0], kv[0]))], jobs)

    def lineage(self, dataset: DatasetRef) -> dict[str, Any]:
        """``{"dataset", "upstream", "downstream", "jobs"}``: datasets that fed it (depth 1: read by a job that
        wrote it) and that it feeds, transitively, and the jobs on those paths."""
        upstream, up_jobs = self._walk(dataset, up=True)
        downstream, down_jobs = self._walk(dataset, up=False)
        return {"dataset": _ds(dataset), "upstream": upstream, "downstream": downstream,
                "jobs": [self.jobs[k].to_json() for k in sorted(up_jobs | down_jobs)]}


def describe(answer: dict[str, Any]) -> str:
    """The answer of :meth:`LineageGraph.lineage` as text for the terminal."""
    ds = answer["dataset"]
    lines = [f"dataset {ds['namespace']} {ds['name']}"]
    for title, key in (("upstream (what fed it)", "upstream"), ("downstream (what it feeds)", "downstream")):
        lines.append(f"{title}:")
        lines += [f"  {'  ' * (d['depth'] - 1)}{d['namespace']} {d['name']}  (via {', '.join(d['via'])})"
                  for d in answer[key]] or ["  (none recorded)"]
    lines.append("jobs:")
    lines += [f"  {j['namespace']}.{j['name']}: {j['runs']} run(s), last {j['last_state']} at {j['last_event_time']}"
              for j in answer["jobs"]] or ["  (none)"]
    return "\n".join(lines)
