"""The harness's pure helpers (bench/report.py): figures, before/after selection and the markdown table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load()


def test_figure_takes_median_and_range_and_drops_nans() -> None:
    f = report.figure("hop", [3.0, 1.0, math.nan, 2.0, 10.0], "ms", better="lower")
    assert (f["median"], f["min"], f["max"], f["n"]) == (2.5, 1.0, 10.0, 4)
    assert report.figure("none", [])["median"] is None


def test_percentile_is_nearest_rank() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert report.percentile(xs, 0.5) == 50.0
    assert report.percentile(xs, 0.99) == 99.0
    assert math.isnan(report.percentile([], 0.5))


def test_spread_text_and_numbers() -> None:
    assert report.spread_text(report.figure("x", [1234.4])) == "1,234"
    assert report.spread_text(report.figure("x", [1.0, 2.0, 3.0])) == "2.00 (1.00\u20133.00)"
    assert report.spread_text(None) == "\u2013"
    assert report.number(0.01234) == "0.0123"


@pytest.mark.parametrize(
    ("before", "after", "better", "expected"),
    [
        (10.0, 5.0, "lower", "\u00d70.50 better"),
        (10.0, 5.0, "higher", "\u00d70.50 worse"),
        (10.0, 10.2, "lower", "\u2248"),
        (10.0, 20.0, "", "\u00d72.00"),
    ],
)
def test_change_text(before: float, after: float, better: str, expected: str) -> None:
    b = report.figure("x", [before], better=better)
    a = report.figure("x", [after], better=better)
    assert report.change_text(b, a) == expected


def _result(ts: str, mode: str, value: float, name: str) -> dict:
    return {
        "timestamp": ts,
        "mode": mode,
        "git_commit": "abc1234def",
        "_file": name,
        "sections": {"engine": {"figures": {"rps": report.figure("runs/s", [value], better="higher")}}},
    }


def test_baselines_pick_first_and_previous_of_the_same_mode(tmp_path: Path) -> None:
    runs = [
        _result("2026-12-01T10:00:00Z", "quick", 10.0, "a.json"),
        _result("2026-12-01T11:00:00Z", "full", 11.0, "b.json"),
        _result("2026-12-01T12:00:00Z", "quick", 12.0, "c.json"),
        _result("2026-12-01T13:00:00Z", "quick", 13.0, "d.json"),
    ]
    for r in runs:
        (tmp_path / r["_file"]).write_text(json.dumps({k: v for k, v in r.items() if k != "_file"}))
    history = report.load_results(tmp_path)
    assert [r["_file"] for r in history] == ["a.json", "b.json", "c.json", "d.json"]
    first, previous = report.baselines(history, history[-1])
    assert (first["_file"], previous["_file"]) == ("a.json", "c.json")
    assert report.baselines(history, history[0]) == (None, None)
    first, previous = report.baselines(history, history[2])
    assert (first["_file"], previous) == ("a.json", None)


def test_markdown_puts_first_previous_and_latest_side_by_side(tmp_path: Path) -> None:
    history = [
        _result("2026-12-01T10:00:00Z", "quick", 10.0, "a.json"),
        _result("2026-12-01T12:00:00Z", "quick", 12.0, "c.json"),
        _result("2026-12-01T13:00:00Z", "quick", 20.0, "d.json"),
    ]
    text = report.render_markdown(history[-1], history, ["# Benchmarks"])
    row = next(line for line in text.splitlines() if line.startswith("| runs/s"))
    assert row.split(" | ")[2:] == ["10.0", "12.0", "20.0", "\u00d72.00 better |"]
    alone = report.render_markdown(history[0], history[:1], ["# Benchmarks"])
    assert "first run of this mode" in alone
    assert "latest vs first" not in alone
