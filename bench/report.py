"""Pure helpers of the harness (bench/run_all.py): figures with median and spread, the results files, the markdown.

A *figure* is one number the harness reports, with its spread over repetitions:
    {"label": str, "unit": str, "median": float, "min": float, "max": float, "n": int,
     "better": "lower" | "higher" | "", "command": str}
Sections return {"figures": {key: figure}, "details": [markdown lines], ...}; a results file (bench/results/*.json)
holds one harness run: when, which commit, the machine, the load average and every section. docs/benchmarks.md puts
the latest run's figures next to the first and the previous run of the same mode (quick or full), so each later
optimisation shows its before and after.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Figure = dict[str, Any]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..1); NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))]


def figure(label: str, values: Iterable[float], unit: str = "", *, better: str = "", command: str = "") -> Figure:
    """Median and spread (min, max) of repeated measurements of one figure; NaNs are dropped."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {
        "label": label,
        "unit": unit,
        "median": round(statistics.median(xs), 3) if xs else None,
        "min": round(min(xs), 3) if xs else None,
        "max": round(max(xs), 3) if xs else None,
        "n": len(xs),
        "better": better,
        "command": command,
    }


def number(value: float | None) -> str:
    """A figure's number with sensible precision: 3 significant digits below 100, whole numbers above."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    v = float(value)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def spread_text(f: Figure | None) -> str:
    """`median (min-max)`; just the median when there was one measurement or no spread."""
    if not f or f.get("median") is None:
        return "\u2013"
    text = number(f["median"])
    if f.get("n", 0) > 1 and f.get("min") != f.get("max"):
        text += f" ({number(f['min'])}\u2013{number(f['max'])})"
    return text


def change_text(before: Figure | None, after: Figure | None) -> str:
    """after / before as a ratio, marked better or worse when the figure says which way is better."""
    if not before or not after or not before.get("median") or after.get("median") is None:
        return ""
    ratio = after["median"] / before["median"]
    if abs(ratio - 1) < 0.05:
        return "≈"
    text = f"\u00d7{ratio:.2f}"
    better = after.get("better") or before.get("better")
    if better:
        good = ratio < 1 if better == "lower" else ratio > 1
        text += " better" if good else " worse"
    return text


def flat_figures(result: dict[str, Any]) -> dict[str, Figure]:
    """Every figure of a results file, keyed `section.key`."""
    out: dict[str, Figure] = {}
    for name, section in result.get("sections", {}).items():
        for key, fig in (section.get("figures") or {}).items():
            out[f"{name}.{key}"] = fig
    return out


def load_results(directory: Path) -> list[dict[str, Any]]:
    """Every results file in `directory`, oldest first (by the timestamp inside, then the file name)."""
    results = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        data["_file"] = path.name
        results.append(data)
    return sorted(results, key=lambda r: (r.get("timestamp", ""), r["_file"]))


def baselines(history: list[dict[str, Any]], latest: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """The first and the previous run of the same mode before `latest` (None where there is none)."""
    same = [r for r in history if r.get("mode") == latest.get("mode") and r.get("_file") != latest.get("_file")]
    same = [r for r in same if r.get("timestamp", "") <= latest.get("timestamp", "")]
    if not same:
        return None, None
    return same[0], (same[-1] if len(same) > 1 else None)


def run_title(result: dict[str, Any] | None) -> str:
    if result is None:
        return "\u2013"
    dirty = "+changes" if result.get("git_dirty") else ""
    return f"{result.get('timestamp', '?')[:16].replace('T', ' ')} `{result.get('git_commit', '?')[:7]}{dirty}`"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def comparison_table(latest: dict[str, Any], first: dict | None, previous: dict | None) -> list[str]:
    """One row per figure of the latest run: first run, previous run, latest, and latest against the first.

    Without a first run (this is the first of its mode) only the latest column is shown.
    """
    now, old, prev = flat_figures(latest), flat_figures(first or {}), flat_figures(previous or {})
    header = ["figure", "unit"]
    if first is not None:
        header.append(f"first: {run_title(first)}")
    if previous is not None:
        header.append(f"previous: {run_title(previous)}")
    header.append(f"latest: {run_title(latest)}")
    if first is not None:
        header.append("latest vs first")
    rows = []
    for key, fig in now.items():
        row = [fig["label"], fig.get("unit", "")]
        if first is not None:
            row.append(spread_text(old.get(key)))
        if previous is not None:
            row.append(spread_text(prev.get(key)))
        row.append(spread_text(fig))
        if first is not None:
            row.append(change_text(old.get(key), fig))
        rows.append(row)
    return table(header, rows)


def machine_lines(result: dict[str, Any]) -> list[str]:
    m = result.get("machine", {})
    load = result.get("load_average", {})
    return [
        f"- date: {result.get('timestamp', '?')} (UTC); commit `{result.get('git_commit', '?')}`"
        + (" with uncommitted changes" if result.get("git_dirty") else ""),
        f"- command: `{result.get('command', '?')}` (mode {result.get('mode', '?')}); harness wall time "
        f"{number(result.get('wall_seconds'))} s",
        f"- machine: {m.get('cores', '?')} cores, {m.get('cpu_model', '?')}, {m.get('memory_gib', '?')} GiB memory, "
        f"{m.get('os', '?')}",
        f"- Python {m.get('python', '?')}; PostgreSQL {m.get('postgres', '?')} (embedded)",
        f"- load average (1, 5, 15 min) at the start {load.get('start', '?')}, at the end {load.get('end', '?')}; "
        "per section below",
    ]


def render_markdown(latest: dict[str, Any], history: list[dict[str, Any]], preamble: Sequence[str]) -> str:
    """docs/benchmarks.md: the preamble, the machine, the before/after table, then each section's details."""
    first, previous = baselines(history, latest)
    lines = [*preamble, "", "## This run", "", *machine_lines(latest), ""]
    lines += ["## Figures: first, previous and latest run of this mode", ""]
    if first is None:
        lines += ["This is the first run of this mode: later runs show it as the *first* (before) column.", ""]
    lines += [*comparison_table(latest, first, previous), ""]
    lines += ["Each cell is the median over the repetitions, with the range (min\u2013max) in brackets.", ""]
    for name, section in latest.get("sections", {}).items():
        lines += [f"## {section.get('title', name)}", ""]
        if section.get("command"):
            lines += ["The same measurement on its own:", "", "```bash", section["command"], "```", ""]
        if section.get("load_average"):
            lines += [f"Load average (1, 5, 15 min) at the start of this section: {section['load_average']}.", ""]
        lines += [*section.get("details", []), ""]
    return "\n".join(lines).rstrip() + "\n"
