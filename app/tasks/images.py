"""What a completed task's images are shown as: the one seam between a task's rendering and where its images are.

Every rendering of a task's result (the status answer, kept rendered by app/tasks/cache.py; the event stream, which
sends the status answer; a webhook's event, app/webhooks/events.py) takes its URLs from `ShownImages` when the
results feature gives one (app/results: links to the copies kept in the organisation's store), and the ledger's
upstream URLs otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.models.task import Task


@dataclass(frozen=True, slots=True)
class ShownImages:
    urls: list[str]  # one per image of the result, in its order
    expires_at: dt.datetime | None  # when the first of these URLs stops working
    # Until when an answer rendered with these URLs may be handed out again (a copy about to be published, a signed
    # link's life): None for as long as the task itself (nothing will change).
    fresh_until: dt.datetime | None


# Given a completed task, its images as callers are to see them; None: the ledger's own URLs.
ImageView = Callable[[Task], Awaitable[ShownImages | None]]
