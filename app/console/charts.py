"""The console's charts: inline SVG drawn here from service data, no chart library and no script.

Each chart scales to its container (a viewBox, width 100%), names itself for screen readers (role="img" and a
label with its numbers), and carries a <title> per bar for a pointer's tooltip. Colours are attributes, not inline
styles, so the console's Content-Security-Policy (style-src 'self') lets them through.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

ACCENT = "#2f6fde"
ALERT = "#c2410c"
AXIS = "#6b7280"
WIDTH = 720
BAR_WIDTH = 480  # narrower: its labels stay readable when a phone scales it down
HEIGHT = 180
PAD_LEFT = 36
PAD_BOTTOM = 22


def columns(
    title: str,
    labels: Sequence[str],
    values: Sequence[int],
    *,
    overlay: Sequence[int] | None = None,
    overlay_name: str = "",
    every: int = 1,
) -> Markup:
    """A column per value (e.g. per hour or per day), `overlay` drawn over it in the alert colour (a part of it,
    e.g. the failed among the tasks made); a label under every `every`-th column."""
    top = max([*values, 1])
    n = max(len(values), 1)
    step = (WIDTH - PAD_LEFT) / n
    plot = HEIGHT - PAD_BOTTOM
    total = sum(values)
    summary = f"{title}: {total} in all" + (f", {sum(overlay)} {overlay_name}" if overlay is not None else "")
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(summary)}" '
        'preserveAspectRatio="none">',
        f'<line x1="{PAD_LEFT}" y1="{plot}" x2="{WIDTH}" y2="{plot}" stroke="{AXIS}" stroke-width="1"/>',
        f'<text x="{PAD_LEFT - 4}" y="12" text-anchor="end" font-size="11" fill="{AXIS}">{top}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{plot}" text-anchor="end" font-size="11" fill="{AXIS}">0</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = PAD_LEFT + i * step + step * 0.1
        w = step * 0.8
        h = plot * value / top
        tip = f"{label}: {value}"
        if overlay is not None:
            tip += f" ({overlay[i]} {overlay_name})"
        parts.append(
            f'<rect x="{x:.1f}" y="{plot - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{ACCENT}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if overlay is not None and overlay[i]:
            oh = plot * overlay[i] / top
            parts.append(
                f'<rect x="{x:.1f}" y="{plot - oh:.1f}" width="{w:.1f}" height="{oh:.1f}" fill="{ALERT}">'
                f"<title>{escape(tip)}</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11" '
                f'fill="{AXIS}">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def bars(title: str, items: dict[str, int], *, alert: frozenset[str] = frozenset()) -> Markup:
    """A horizontal bar per item, largest first; the items named in `alert` in the alert colour."""
    rows = sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))
    if not rows:
        return Markup('<p class="muted">None.</p>')
    top = max(value for _, value in rows) or 1
    row_h = 24
    height = row_h * len(rows)
    label_w = 150
    width = BAR_WIDTH
    summary = f"{title}: " + ", ".join(f"{name} {value}" for name, value in rows)
    parts = [f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(summary)}">']
    for i, (name, value) in enumerate(rows):
        y = i * row_h
        w = (width - label_w - 50) * value / top
        colour = ALERT if name in alert else ACCENT
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" font-size="13" fill="#111827">'
            f"{escape(name)}</text>"
            f'<rect x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row_h - 8}" fill="{colour}">'
            f"<title>{escape(name)}: {value}</title></rect>"
            f'<text x="{label_w + max(w, 1) + 6:.1f}" y="{y + 16}" font-size="13" fill="#111827">{value}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
