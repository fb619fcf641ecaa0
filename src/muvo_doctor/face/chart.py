"""Terminal line charts as rich ``Text``, drawn by plotext.

This is the only module that imports plotext, and it does so inside :func:`line_chart`, so
importing muvo_doctor (or any command that never draws) does not pay for it.

Both plotext APIs are supported: 6.x (``plt.figure.signal(...)`` / ``figure.build().string()``)
and 5.x (``plt.plot`` / ``plt.build()``). The legend is drawn by us, one line under the chart:
plotext's boxed legend covers a third of a 15-row chart and hides the curves it explains.
plotext writes colours as ANSI codes; they are read into styled ``Text`` here, once, so the report
and the dashboard print the chart as any other renderable.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Text

# xterm-256 colour codes: series in turn, then the baseline (red, so it reads as "the floor").
PALETTE = (12, 10, 14, 13, 11, 208, 6, 5)
BASELINE_COLOR = 9
# plotext keeps one global figure; a chart is built start to finish under this lock.
_LOCK = threading.Lock()


def _clean(xs: Sequence[float], ys: Sequence[float], log_y: bool) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(xs, dtype=np.float64).reshape(-1)
    y = np.asarray(ys, dtype=np.float64).reshape(-1)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    keep = np.isfinite(x) & np.isfinite(y)
    if log_y:
        keep &= y > 0
    return x[keep], y[keep]


def downsample(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to about ``points`` points, keeping each bucket's minimum and maximum.

    Spikes survive (a plain stride would skip them); the output stays in x order.
    """
    n = len(y)
    if n <= points or points < 4:
        return x, y
    buckets = max(points // 2, 2)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    idx: list[int] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        seg = y[lo:hi]
        a, b = lo + int(np.argmin(seg)), lo + int(np.argmax(seg))
        idx.extend((a, b) if a <= b else (b, a))
    sel = np.unique(np.asarray(idx, dtype=np.int64))
    return x[sel], y[sel]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4g}"


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions (in log10 units) and labels for a log axis spanning [lo, hi] (log10 units)."""
    first, last = math.floor(lo), math.ceil(hi)
    mult = (1, 2, 5) if last - first <= 2 else (1,)
    pos = [d + math.log10(m) for d in range(first, last + 1) for m in mult]
    pos = [p for p in pos if lo - 1e-9 <= p <= hi + 1e-9]
    if len(pos) < 2:
        pos = [lo, hi]
    step = max(1, math.ceil(len(pos) / 5))
    pos = pos[::step]
    return pos, [_fmt(10**p) for p in pos]


def _x_ticks(lo: float, hi: float, width: int) -> tuple[list[float], list[str]]:
    """About one tick per 14 columns at round numbers; integer labels for integer axes (steps)."""
    count = max(2, min(8, width // 14))
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if lo == int(lo) and hi == int(hi):
        step = max(1.0, round(step))
    first = math.ceil(lo / step) * step
    pos = [first + i * step for i in range(int((hi - first) / step) + 1)]
    labels = [str(int(p)) if float(p).is_integer() else _fmt(p) for p in pos]
    return pos, labels


def _legend(labels: list[tuple[str, str, int]], width: int, color: bool) -> Text:
    """One or more lines ``▄ name  ─ baseline`` wrapped at ``width``."""
    lines: list[Text] = []
    cur, cur_len = Text(), 0
    for symbol, label, code in labels:
        item_len = len(symbol) + 1 + len(label)
        if cur_len and cur_len + 2 + item_len > width:
            lines.append(cur)
            cur, cur_len = Text(), 0
        if cur_len:
            cur.append("  ")
            cur_len += 2
        cur.append(symbol, style=Style(color=Color.from_ansi(code)) if color else None)
        cur.append(" " + label)
        cur_len += item_len
    if cur_len:
        lines.append(cur)
    return Text("\n").join(lines)


def _empty(title: str, width: int, height: int, message: str) -> Text:
    inner = max(width - 2, len(message) + 2)
    rows = [title.center(inner + 2).rstrip()] if title else []
    rows.append("┌" + "─" * inner + "┐")
    body = max(height - len(rows) - 1, 1)
    for i in range(body):
        text = message if i == body // 2 else ""
        rows.append("│" + text.center(inner) + "│")
    rows.append("└" + "─" * inner + "┘")
    return Text("\n".join(rows), no_wrap=True, overflow="crop")


def _limits(
    clean: list[tuple[str, np.ndarray, np.ndarray]],
    tr: Callable[[np.ndarray], np.ndarray],
    base: float | None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The x and y ranges to draw (y in axis units, padded 5%, the baseline inside)."""
    ys_all = np.concatenate([tr(y) for _, _, y in clean])
    xs_all = np.concatenate([x for _, x, _ in clean])
    y_lo, y_hi = float(ys_all.min()), float(ys_all.max())
    if base is not None:
        y_lo, y_hi = min(y_lo, base), max(y_hi, base)
    pad = (y_hi - y_lo) * 0.05 or (abs(y_hi) * 0.5 if y_hi else 1.0)
    x_lo, x_hi = float(xs_all.min()), float(xs_all.max())
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    return (x_lo, x_hi), (y_lo - pad, y_hi + pad)


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    baseline: float | None = None,
    baseline_label: str = "",
    log_y: bool = False,
    width: int = 80,
    height: int = 15,
    color: bool = True,
) -> Text:
    """Draw named ``(x, y)`` series (and an optional horizontal baseline) as a text chart.

    Non-finite points are dropped (and non-positive ones on a log axis); series longer than
    about ``2 * width`` points are downsampled keeping each bucket's min and max; an empty
    input gives a framed "no data yet" box of the same size.

    Args:
        series: name -> (x values, y values); names appear in the legend under the chart.
        title: printed centred above the chart.
        baseline: a y value drawn as a horizontal line across the chart (e.g. the prior's loss).
        baseline_label: its legend text (defaults to the value).
        log_y: logarithmic y axis (ticks labelled in the original units).
        width: total width in terminal columns.
        height: total height in rows, legend included.
        color: ANSI colours; False gives plain text.

    Returns:
        The chart as styled rich ``Text`` (plain when ``color`` is False), lines joined by
        ``\\n``, without a trailing newline; it neither wraps nor overflows its ``width``.
    """
    width = max(int(width), 20)
    height = max(int(height), 5)
    points = width * 2
    clean: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, (xs, ys) in series.items():
        x, y = _clean(xs, ys, log_y)
        if len(y):
            x, y = downsample(x, y, points)
            clean.append((name, x, y))
    if baseline is not None and (not math.isfinite(baseline) or (log_y and baseline <= 0)):
        baseline = None
    if not clean:
        return _empty(title, width, height, "no data yet")

    labels = [("▄", name, PALETTE[i % len(PALETTE)]) for i, (name, _, _) in enumerate(clean)]
    if baseline is not None:
        labels.append(("─", baseline_label or f"baseline {_fmt(baseline)}", BASELINE_COLOR))
    legend = _legend(labels, width, color)
    legend_rows = legend.plain.count("\n") + 1
    plot_height = max(height - legend_rows, 4)

    tr = np.log10 if log_y else (lambda a: a)
    (x_lo, x_hi), (y_lo, y_hi) = _limits(clean, tr, None if baseline is None else float(tr(baseline)))
    ticks = _log_ticks(y_lo, y_hi) if log_y else None
    xticks = _x_ticks(x_lo, x_hi, width)

    with _LOCK:
        import plotext as plt  # lazy: plotext stays out of the import path of everything else

        if hasattr(plt, "clear_figure"):
            text = _draw_v5(plt, clean, tr, baseline, log_y, title, width, plot_height, color,
                            (x_lo, x_hi), (y_lo, y_hi), ticks, xticks)  # fmt: skip
        else:
            text = _draw_v6(plt, clean, tr, baseline, log_y, title, width, plot_height, color,
                            (x_lo, x_hi), (y_lo, y_hi), ticks, xticks)  # fmt: skip
    lines = [ln.rstrip() for ln in text.rstrip("\n").split("\n")]
    chart = Text.from_ansi("\n".join(lines), no_wrap=True, overflow="crop")
    if not color:
        chart = Text(chart.plain, no_wrap=True, overflow="crop")
    chart.append("\n")
    chart.append_text(legend)
    return chart


def _draw_v6(plt, clean, tr, baseline, log_y, title, width, height, color, xlim, ylim, ticks, xticks) -> str:  # type: ignore[no-untyped-def]
    plt.terminal.limit(False, False)  # our size, not the (maybe absent) terminal's
    fig = plt.figure
    fig.clear()
    fig.theme("simple")  # no frame colours: readable on dark and light terminals
    fig.plot_size(width, height)
    if title:
        fig.title(title)
    for i, (_, x, y) in enumerate(clean):
        mk = plt.marker(pixel=plt.pixel(foreground=PALETTE[i % len(PALETTE)]))
        s = fig.signal(x.tolist(), tr(y).tolist(), marker=mk)
        s.lines()
        fig.draw(s)
    if baseline is not None:
        b = float(np.log10(baseline)) if log_y else baseline
        fig.line(b, pixel=plt.pixel(foreground=BASELINE_COLOR))
    fig.ruler("x").lim(*xlim)
    fig.ruler("x").ticks(*xticks)
    fig.ruler("y").lim(*ylim)
    if ticks is not None:
        fig.ruler("y").ticks(*ticks)
    return str(fig.build().string(colorless=not color))


def _draw_v5(plt, clean, tr, baseline, log_y, title, width, height, color, xlim, ylim, ticks, xticks) -> str:  # type: ignore[no-untyped-def]
    plt.clear_figure()
    plt.limit_size(False, False)
    plt.theme("clear")
    plt.plotsize(width, height)
    if title:
        plt.title(title)
    for i, (_, x, y) in enumerate(clean):
        plt.plot(x.tolist(), tr(y).tolist(), color=PALETTE[i % len(PALETTE)], marker="hd")
    if baseline is not None:
        plt.hline(float(np.log10(baseline)) if log_y else baseline, color=BASELINE_COLOR)
    plt.xlim(*xlim)
    plt.xticks(*xticks)
    plt.ylim(*ylim)
    if ticks is not None:
        plt.yticks(*ticks)
    text = str(plt.build())
    return text if color else str(plt.uncolorize(text))
