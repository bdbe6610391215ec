"""The sandbox's live state: config, clock, RNG, tasks, uploads and call counters."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.sandbox.config import SandboxConfig
from app.sandbox.tasks import RESULT_STYLES, ResultStyle, Task


@dataclass(frozen=True)
class Upload:
    """An uploaded reference image, served back at its URL."""

    id: str
    file_name: str
    owner: str
    mime_type: str
    data: bytes
    purpose: str


@dataclass
class Stats:
    """Call counters for tests and ops (`GET /_control/stats`)."""

    calls: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    by_key: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    status_by_task: Counter[str] = field(default_factory=Counter)

    def count(self, kind: str, key: str | None = None) -> None:
        self.calls[kind] += 1
        if key is not None:
            self.by_key[key][kind] += 1

    def as_dict(self) -> dict[str, Any]:
        kinds = ("create", "status", "upload", "file", "unauthorized", "forbidden", "invalid")
        return {
            **{kind: self.calls[kind] for kind in kinds},
            "faults": dict(self.faults),
            "by_key": {key: dict(counts) for key, counts in self.by_key.items()},
            "status_by_task": dict(self.status_by_task),
        }


# Sweeping costs a pass over every task: do it once per this many new tasks.
FORGET_CHECK_EVERY = 1000


@dataclass
class SandboxState:
    """Everything a sandbox app instance remembers; lives on `app.state.sandbox`."""

    config: SandboxConfig
    clock: Callable[[], float]
    rng: random.Random = field(init=False)
    tasks: dict[str, Task] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    _style_turn: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def forget_expired(self) -> None:
        """Drop tasks whose results have expired, so a long-running sandbox does not grow without bound."""
        if len(self.tasks) < FORGET_CHECK_EVERY or len(self.tasks) % FORGET_CHECK_EVERY:
            return
        now = self.clock()
        for task_id in [t.id for t in self.tasks.values() if t.expires_at <= now]:
            del self.tasks[task_id]

    def next_result_style(self) -> ResultStyle:
        """The configured result style; `mixed` rotates through all of them, one per task."""
        if self.config.result_style != "mixed":
            return self.config.result_style
        style = RESULT_STYLES[self._style_turn % len(RESULT_STYLES)]
        self._style_turn += 1
        return style

    def reset(self) -> None:
        """Forget tasks, uploads and counters; reseed the RNG so fault draws repeat."""
        self.tasks.clear()
        self.uploads.clear()
        self.stats = Stats()
        self._style_turn = 0
        self.rng = random.Random(self.config.seed)
