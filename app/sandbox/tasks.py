"""Sandbox tasks: an in-memory record per task whose status is a pure function of the clock."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.contract import MAX_IMAGES, GenerationRequest
from app.sandbox.config import SandboxConfig

ResultStyle = Literal["result", "url", "images"]
RESULT_STYLES: tuple[ResultStyle, ...] = ("result", "url", "images")
RESULT_TTL_SECONDS = 86400


@dataclass(frozen=True)
class Task:
    """One generation task; timings and outcome are fixed at creation, so config changes never rewrite it."""

    id: str
    owner: str
    model: str
    size: str
    images: int
    created_at: float
    queued_until: float
    finishes_at: float
    fails: bool
    result_style: ResultStyle
    queued_status: str
    client_business_id: str | None = None

    def status_at(self, now: float, *, held: bool = False) -> tuple[str, int]:
        """Status and progress at task-clock time `now`: queued, then in_progress 1..99, then completed or failed.

        `held`: the task clock stands still at `now`. A task created at that very instant (i.e. during the hold)
        has not started, whatever its timings: without this a zero-second task would end while held.
        """
        if now < self.queued_until or (held and self.created_at >= now):
            return self.queued_status, 0
        if now < self.finishes_at:
            fraction = (now - self.queued_until) / (self.finishes_at - self.queued_until)
            return "in_progress", min(99, 1 + int(99 * fraction))
        return ("failed", 0) if self.fails else ("completed", 100)

    @property
    def completed_at(self) -> int:
        return int(self.finishes_at)

    @property
    def expires_at(self) -> int:
        return self.completed_at + RESULT_TTL_SECONDS

    def image_available(self, index: int, now: float, *, held: bool = False) -> bool:
        """Whether image `index` can be downloaded at `now` (completed and not yet expired)."""
        done = self.status_at(now, held=held)[0] == "completed"
        return done and 0 <= index < self.images and now < self.expires_at

    def create_payload(self) -> dict[str, Any]:
        """The create answer: always the queued phase, whatever the timings."""
        body = self._base(self.queued_status, 0)
        body["metadata"] = {}
        return body

    def payload(self, now: float, image_url: Callable[[int], str], *, held: bool = False) -> dict[str, Any]:
        """The status answer at `now`, with results shaped by the task's result style."""
        status, progress = self.status_at(now, held=held)
        body = self._base(status, progress)
        if status == "failed":
            body["error"] = {
                "code": "generation_failed",
                "message": "call upstream API failed: upstream returned status 422 (sandbox)",
            }
        elif status == "completed":
            body["completed_at"] = self.completed_at
            body["expires_at"] = self.expires_at
            urls = [image_url(i) for i in range(self.images)]
            if self.result_style == "result":
                body["result"] = {"type": "image", "data": [{"url": u} for u in urls]}
                body["url"] = urls[0]
            elif self.result_style == "url":
                # The documented top-level `url` holds one image only, whatever n was.
                body["url"] = urls[0]
            else:
                body["images"] = [{"url": u} for u in urls]
        return body

    def _base(self, status: str, progress: int) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id}
        if self.client_business_id is not None:
            body["client_business_id"] = self.client_business_id
        body.update(
            {
                "object": "generation.task",
                "model": self.model,
                "status": status,
                "progress": progress,
                "created_at": int(self.created_at),
            }
        )
        return body


def images_for(request: GenerationRequest) -> int:
    """How many images a completed task returns, before the `fewer` and `extra` faults.

    `n`, except with `metadata.sequential_image_generation` = `auto`: the upstream then makes *up to* `max_images`
    images (15 less the reference images when no cap is sent), even for n=1, and never fewer than `n`. The sandbox
    always makes the most, the case a quota must cover.
    """
    meta = request.metadata
    if meta is None or meta.sequential_image_generation != "auto":
        return request.n
    options = meta.sequential_image_generation_options
    room = MAX_IMAGES - len(request.image_urls or [])
    cap = options.max_images if options is not None and options.max_images is not None else room
    return max(request.n, min(cap, room))


def new_task(
    *,
    owner: str,
    model: str,
    size: str,
    n: int,
    client_business_id: str | None,
    faults: set[str],
    config: SandboxConfig,
    result_style: ResultStyle,
    now: float,
) -> Task:
    """A task whose timings and outcome follow the config and the faults chosen for its create call; it makes `n`
    images (`images_for` of the request), one fewer with the `fewer` fault, 15 whatever was asked with the `extra`
    fault (an upstream that ignores the cap it was sent)."""
    total = config.task_seconds * (config.slow_factor if "slow" in faults else 1.0)
    return Task(
        id=f"img_{uuid.uuid4().hex}",
        owner=owner,
        model=model,
        size=size,
        images=MAX_IMAGES if "extra" in faults else max(1, n - 1) if "fewer" in faults else n,
        created_at=now,
        queued_until=now + min(config.queue_seconds, total),
        finishes_at=now + total,
        fails="fail" in faults,
        result_style=result_style,
        queued_status=config.queued_status,
        client_business_id=client_business_id,
    )
