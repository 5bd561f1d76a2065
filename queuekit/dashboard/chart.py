"""The throughput chart: server-drawn SVG bars, one per minute, failures in red on top.

No script and no chart library: a page stays one request, and the dashboard needs no
build step.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from ..features.throughput import Series

WIDTH, HEIGHT, TOP = 720, 90, 14  # TOP: room above the bars for the peak label


def svg(line: Series) -> str:
    """``line`` as an SVG fragment; every bar has a tooltip with its minute and counts."""
    count = len(line.processed)
    top = max(max(line.processed, default=0), 1)
    step = WIDTH / max(count, 1)
    bars = []
    for i, (done, failed) in enumerate(zip(line.processed, line.failed, strict=True)):
        if not done and not failed:
            continue
        x = i * step
        when = datetime.fromtimestamp(line.start + 60 * i).strftime("%H:%M")
        tip = f"{when}: {done} processed, {failed} failed"
        height = HEIGHT * done / top
        bars.append(
            f'<g><title>{escape(tip)}</title>'
            f'<rect class="done" x="{x:.1f}" y="{TOP + HEIGHT - height:.1f}" '
            f'width="{max(step - 0.5, 0.5):.1f}" height="{height:.1f}"/>'
            + (f'<rect class="failed" x="{x:.1f}" y="{TOP + HEIGHT - HEIGHT * failed / top:.1f}" '
               f'width="{max(step - 0.5, 0.5):.1f}" height="{HEIGHT * failed / top:.1f}"/>'
               if failed else "")
            + "</g>"
        )  # fmt: skip
    first = datetime.fromtimestamp(line.start).strftime("%H:%M")
    total = sum(line.processed)
    label = f"{escape(line.queue)}: {total} processed in {count} min, peak {top}/min"
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {TOP + HEIGHT + 14}" role="img" '
        f'aria-label="{label}"><title>{label}</title>'
        f'<line class="axis" x1="0" y1="{TOP + HEIGHT}" x2="{WIDTH}" y2="{TOP + HEIGHT}"/>'
        + "".join(bars)
        + f'<text x="0" y="{TOP + HEIGHT + 12}">{first}</text>'
        f'<text x="{WIDTH}" y="{TOP + HEIGHT + 12}" text-anchor="end">now</text>'
        f'<text x="{WIDTH}" y="10" text-anchor="end">{top}/min</text></svg>'
    )
