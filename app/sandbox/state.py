"""The sandbox's live state: config, clocks, RNG, tasks, uploads, call counters and the file-URL secret."""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.sandbox.config import SandboxConfig, key_fingerprint
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
    """Call counters for tests and ops (`GET /_control/stats`); keys appear only as `key_fingerprint`s."""

    calls: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    by_key: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    status_by_task: Counter[str] = field(default_factory=Counter)

    def count(self, kind: str, key: str | None = None) -> None:
        self.calls[kind] += 1
        if key is not None:
            self.by_key[key_fingerprint(key)][kind] += 1

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
# 128 bits of HMAC-SHA256 in a file URL: not guessable, short enough for a URL.
CAPABILITY_HEX_CHARS = 32


class SandboxState:
    """Everything a sandbox app instance remembers; lives on `app.state.sandbox`.

    Two clocks: `clock` is the wall clock (unix seconds, injectable), `task_now()` the task clock that drives task
    progress. They differ by the time spent held (`config.hold`): the task clock stands still during a hold and
    then goes on from where it stopped, so tasks progress as if the held period had not passed.
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._config = config
        self.rng = random.Random(config.seed)
        self.tasks: dict[str, Task] = {}
        self.uploads: dict[str, Upload] = {}
        self.stats = Stats()
        self._style_turn = 0
        # Per process, never configured: file URLs live exactly as long as the in-memory files they point at.
        self._secret = secrets.token_bytes(32)
        self._held_since: float | None = None  # wall-clock start of the current hold
        self._held_total = 0.0  # seconds held in earlier, finished holds
        self._sync_hold()

    @property
    def config(self) -> SandboxConfig:
        return self._config

    @config.setter
    def config(self, value: SandboxConfig) -> None:
        self._config = value
        self._sync_hold()  # a hold starts or ends at the instant the config says so

    def _sync_hold(self) -> None:
        """Start or end a hold if `config.hold` changed since the last look.

        Replacing the config (PATCH, the hold routes, `state.config = ...`) calls this at once; a config mutated in
        place (`state.config.hold = True`) is noticed at the next task-clock reading.
        """
        if self._config.hold and self._held_since is None:
            self._held_since = self.clock()
        elif not self._config.hold and self._held_since is not None:
            self._held_total += self.clock() - self._held_since
            self._held_since = None

    @property
    def held(self) -> bool:
        self._sync_hold()
        return self._held_since is not None

    def task_now(self) -> float:
        """The task clock: the wall clock minus all time held; it stands still while held."""
        self._sync_hold()
        now = self.clock() if self._held_since is None else self._held_since
        return now - self._held_total

    def capability(self, *parts: str) -> str:
        """An unguessable path token for one file: HMAC of its identity under the per-process secret."""
        message = "/".join(parts).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:CAPABILITY_HEX_CHARS]

    def capability_ok(self, token: str, *parts: str) -> bool:
        return hmac.compare_digest(token.encode(), self.capability(*parts).encode())

    def forget_expired(self) -> None:
        """Drop tasks whose results have expired, so a long-running sandbox does not grow without bound."""
        if len(self.tasks) < FORGET_CHECK_EVERY or len(self.tasks) % FORGET_CHECK_EVERY:
            return
        now = self.task_now()
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
        """Forget tasks, uploads and counters; reseed the RNG so fault draws repeat (config and clocks stay)."""
        self.tasks.clear()
        self.uploads.clear()
        self.stats = Stats()
        self._style_turn = 0
        self.rng = random.Random(self.config.seed)
