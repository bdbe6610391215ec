"""Status answers kept in memory, rendered once: a warm status call reads neither the database nor pydantic.

- A terminal task never changes again (the ledger refuses to update one), so its answer is kept until evicted;
  unless its images' rendering changes (app/tasks/images.py: a copy about to be published in the organisation's
  store, a signed link's life), then until that moment, which every replica's cache honours alike.
- An open task's answer is kept until it is next due for an upstream refresh (`refreshed_at` + the refresh
  interval, whichever replica refreshed it): the same staleness the ledger itself allows, since the ledger row is
  not refreshed more often either. After that the call goes the usual way (ledger, then a claimed refresh).
- A task that was never refreshed (just submitted) is not kept.

Entries carry their tenant and end user: a task id of another tenant (or, for a token, of another end user) is a
miss, answered by the ledger read (a 404) as before.
The cache is per process and bounded (least recently used out); nothing needs invalidating, as nothing cached can
change before it expires.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass

from app.models.task import TERMINAL_STATUSES, Task

DEFAULT_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    tenant_id: str
    end_user: str | None
    body: bytes
    fresh_until: dt.datetime | None  # None: terminal


class TaskAnswers:
    def __init__(self, refresh_interval: dt.timedelta, size: int = DEFAULT_SIZE) -> None:
        self._refresh_interval = refresh_interval
        self._size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, tenant_id: str, task_id: str, now: dt.datetime, end_user: str | None = None) -> bytes | None:
        """The answer kept for the tenant's task (`end_user`: only if it is that end user's task)."""
        entry = self._entries.get(task_id)
        if entry is None or entry.tenant_id != tenant_id or (end_user is not None and entry.end_user != end_user):
            return None
        if entry.fresh_until is not None and entry.fresh_until <= now:
            del self._entries[task_id]
            return None
        self._entries.move_to_end(task_id)
        return entry.body

    def put(self, task: Task, body: bytes, *, until: dt.datetime | None = None) -> None:
        """Keep the answer of a terminal task (until `until` when its rendering changes, e.g. a kept copy about to
        be published or a signed link's life: app/tasks/images.py), or of an open one until its next refresh is
        due."""
        if task.status in TERMINAL_STATUSES:
            fresh_until = until
        elif task.refreshed_at is not None and task.upstream_task_id is not None:
            fresh_until = task.refreshed_at + self._refresh_interval
        else:
            return
        self._entries[task.id] = _Entry(task.tenant_id, task.end_user, body, fresh_until)
        self._entries.move_to_end(task.id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
