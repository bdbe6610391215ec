"""Rendering of the sandbox's generated images (small PNG gradients) and sniffing of uploaded ones."""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image

_PALETTE = [
    ((236, 112, 99), (52, 73, 94)),
    ((93, 173, 226), (244, 208, 63)),
    ((88, 214, 141), (125, 60, 152)),
    ((245, 176, 65), (33, 97, 140)),
]


def dimensions(size: str, long_side: int) -> tuple[int, int]:
    """Width and height for an aspect ratio like `16:9` (`auto` renders square), long side `long_side`."""
    if size == "auto" or ":" not in size:
        return long_side, long_side
    w_part, h_part = size.split(":", 1)
    w, h = int(w_part), int(h_part)
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


def render_png(size: str, long_side: int, variant: int) -> bytes:
    """A decodable PNG of the given aspect ratio; `variant` picks colours so a task's images differ."""
    return _render(size, long_side, variant % len(_PALETTE))


@lru_cache(maxsize=256)
def _render(size: str, long_side: int, variant: int) -> bytes:
    width, height = dimensions(size, long_side)
    start, end = _PALETTE[variant]
    mask = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", (width, height), end), Image.new("RGB", (width, height), start), mask)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
