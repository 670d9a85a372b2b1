"""Quality-score alerts of a validation subtask: a warning in the log, optionally a webhook POST.

Invariants:
* The score watched is the subtask's cumulative dataset score (rows passing every rule / rows checked) since
  the attempt started; nothing is said before ``min_rows`` rows were checked, so one bad row in a tiny sample
  does not page anyone.
* One alert per crossing: when the score drops below the threshold it alerts once, and re-arms only after the
  score is back at or above it (logged too).
* A webhook is POSTed from a daemon thread with a short timeout, so a slow or dead endpoint never stalls the
  pipeline; its failure is logged (without the URL, which may carry a token) and otherwise ignored.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

import httpx

from headwater.core.quality import DATASET, QualityCounts

log = logging.getLogger("headwater.quality")

MIN_ROWS = 100
"""Rows a subtask must have checked before its score can alert."""


def _post(url: str, payload: dict[str, Any]) -> None:
    try:
        httpx.post(url, json=payload, timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("quality alert webhook of step %r failed: %s", payload.get("step"), type(exc).__name__)


class QualityAlert:
    def __init__(self, step_id: str, subtask: int, threshold: float, webhook: str | None,
                 min_rows: int = MIN_ROWS) -> None:
        self.step_id = step_id
        self.subtask = subtask
        self.threshold = threshold
        self.webhook = webhook
        self.min_rows = min_rows
        self.alerting = False
        self.sent: list[threading.Thread] = []

    def observe(self, counts: Mapping[str, QualityCounts]) -> None:
        """Look at the subtask's counts after a batch; alert on a crossing (see the module docstring)."""
        dataset = counts[DATASET]
        if dataset.checked < self.min_rows:
            return
        score = dataset.score
        if score < self.threshold and not self.alerting:
            self.alerting = True
            worst = sorted((c.score, name) for name, c in counts.items() if name != DATASET and c.checked)
            rules = ", ".join(f"{name} {s:.2%}" for s, name in worst[:3] if s < 1)
            log.warning("quality score of step %r (subtask %d) is %.2f%%, below the threshold %.2f%% after %d rows; "
                        "failing most: %s", self.step_id, self.subtask, 100 * score, 100 * self.threshold,
                        dataset.checked, rules or "-")
            if self.webhook is not None:
                payload = {
                    "step": self.step_id, "subtask": self.subtask, "score": score, "threshold": self.threshold,
                    "checked": dataset.checked, "failed": dataset.failed,
                    "rules": {name: {"checked": c.checked, "failed": c.failed, "score": c.score}
                              for name, c in counts.items() if name != DATASET},
                }
                thread = threading.Thread(target=_post, args=(self.webhook, payload), daemon=True,
                                          name=f"quality-alert-{self.step_id}")
                thread.start()
                self.sent.append(thread)
        elif score >= self.threshold and self.alerting:
            self.alerting = False
            log.info("quality score of step %r (subtask %d) is back at %.2f%%", self.step_id, self.subtask, 100 * score)

    def wait(self, timeout: float = 6.0) -> None:
        """Wait for webhook posts in flight (at the end of the run)."""
        for thread in self.sent:
            thread.join(timeout)
        self.sent.clear()
