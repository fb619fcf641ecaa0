"""The text charts: what a user sees in the dashboard and in audit reports."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
from rich.console import Console
from rich.text import Text

from muvo_doctor.face.chart import downsample, line_chart

ESC = "\x1b["


def _shown(chart: Text, *, color: bool = False) -> str:
    """What a terminal (colour or not) shows of the chart, printed as the report prints it."""
    con = Console(file=io.StringIO(), width=200, force_terminal=color, color_system="256" if color else None)
    con.print(chart)
    return con.file.getvalue().rstrip("\n")


def _loss(n: int = 120) -> tuple[list[int], list[float]]:
    xs = list(range(n))
    return xs, [0.34 + 0.4 * math.exp(-i / 15) for i in xs]


def test_renders_series_title_and_baseline_label() -> None:
    out = _shown(
        line_chart(
            {"train/loss": _loss()},
            title="loss",
            baseline=0.325,
            baseline_label="prior H(p)=0.325",
            width=70,
            height=14,
            color=False,
        )
    )
    lines = out.splitlines()
    assert "loss" in lines[0]
    assert "train/loss" in out and "prior H(p)=0.325" in out
    assert len(lines) <= 14
    assert max(len(line) for line in lines) <= 70
    # The baseline is a horizontal rule across the plot area, not only a legend entry.
    assert any(line.count("─") > 30 and ("┼" in line or "├" in line) for line in lines[1:-3])
    # Step axis shows whole numbers.
    assert " 50" in out and "33.2" not in out


def test_no_ansi_without_color_and_ansi_with_color() -> None:
    series = {"train/loss": _loss()}
    # Even printed on a colour terminal, a chart made without colour has none.
    assert ESC not in _shown(line_chart(series, baseline=0.3, color=False), color=True)
    coloured = _shown(line_chart(series, baseline=0.3, color=True), color=True)
    assert ESC + "94m" in coloured  # the first series in its palette colour (xterm 12, bright blue)
    assert ESC + "91m" in coloured  # the baseline in red (xterm 9, bright red)
    plain = _shown(line_chart(series, baseline=0.3, color=False))
    # Colour changes nothing else (bar trailing blanks, which a terminal does not show).
    assert [ln.rstrip() for ln in Text.from_ansi(coloured).plain.splitlines()] == plain.splitlines()


def test_nan_inf_are_dropped_not_drawn() -> None:
    xs = list(range(10))
    ys = [1.0, math.nan, 0.9, math.inf, 0.8, -math.inf, 0.7, 0.6, math.nan, 0.5]
    out = _shown(line_chart({"train/loss": (xs, ys)}, width=50, height=10, color=False))
    assert "nan" not in out.lower() and "inf" not in out.lower()
    assert "train/loss" in out
    # y axis spans the finite values only.
    assert "1.0" in out


def test_empty_and_all_nan_give_a_framed_placeholder() -> None:
    for series in ({}, {"x": ([], [])}, {"x": ([1, 2], [math.nan, math.nan])}):
        out = _shown(line_chart(series, title="grad", width=40, height=8, color=False))
        assert "no data yet" in out and "grad" in out
        assert len(out.splitlines()) <= 8


def test_single_point_and_constant_series() -> None:
    out = _shown(line_chart({"a": ([5], [0.2])}, width=40, height=8, color=False))
    assert out.splitlines()[-1] == "▄ a"
    assert any(ch in out for ch in "▖▗▘▝▄▀")
    out = _shown(line_chart({"a": ([1, 2, 3], [0.0, 0.0, 0.0])}, width=40, height=8, color=False))
    assert "no data" not in out


def test_log_scale_labels_decades_and_drops_nonpositive() -> None:
    xs = list(range(50))
    out = _shown(
        line_chart(
            {"grad/norm/head.0": (xs, [1e-4 * (i + 1) for i in xs]), "grad/norm/enc": (xs, [0.0] * 50)},
            log_y=True,
            width=60,
            height=12,
            color=False,
        )
    )
    assert "0.001" in out or "1e-3" in out
    assert "grad/norm/head.0" in out
    # The all-zero series has no point on a log axis: it is left out of the legend.
    assert "grad/norm/enc" not in out


def test_downsample_keeps_extremes_and_order() -> None:
    x = np.arange(100_000, dtype=np.float64)
    y = np.zeros_like(x)
    y[12_345] = 50.0
    y[77_777] = -7.0
    dx, dy = downsample(x, y, 160)
    assert len(dx) <= 160
    assert dy.max() == 50.0 and dy.min() == -7.0
    assert np.all(np.diff(dx) > 0)


def test_huge_series_renders_quickly() -> None:
    import time

    n = 500_000
    x = np.arange(n)
    y = np.sin(x / 1000.0)
    t = time.perf_counter()
    out = _shown(line_chart({"s": (x, y)}, width=80, height=15, color=False))
    assert time.perf_counter() - t < 2.0
    assert len(out.splitlines()) <= 15


def test_plotext_not_imported_by_the_package() -> None:
    code = "import muvo_doctor.face.chart, muvo_doctor.core.doctor, sys; print('plotext' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_width_is_ours_not_the_terminals(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    out = _shown(line_chart({"a": ([1, 2, 3], [1.0, 2.0, 3.0])}, width=100, height=8, color=False))
    assert max(len(line) for line in out.splitlines()) > 90
