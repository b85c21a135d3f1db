"""The study's table and figure: one row per model, one column per reported figure, chance marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callbacks.plotting import pyplot, save_figure
from callbacks.suite.report import COUNTS


def reported(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(benchmark, figure) columns: the config's ``report`` mapping, else every non-count figure, in order."""
    chosen = report.get("report")
    if chosen:
        return [(b, f) for b, figures in chosen.items() for f in figures]
    columns: dict[tuple[str, str], None] = {}
    for row in report["rows"].values():
        for name, figures in row["benchmarks"].items():
            columns.update({(name, k): None for k in figures if k not in COUNTS})
    return list(columns)


def _cell(row: dict[str, Any], benchmark: str, figure: str) -> str:
    value = row["benchmarks"].get(benchmark, {}).get(figure)
    if value is None:
        return "–"
    std = row.get("std", {}).get(benchmark, {}).get(figure)
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def study_table(report: dict[str, Any]) -> str:
    """Markdown: models as rows, (benchmark, figure) as columns, in %; chance as the last row."""
    columns = reported(report)
    chance = report.get("chance", {})
    header = ["model"] + [f"{b.split('/')[-1]} {f.replace('_accuracy', '')}" for b, f in columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, row in report["rows"].items():
        lines.append("| " + " | ".join([name] + [_cell(row, b, f) for b, f in columns]) + " |")
    cells = [f"{100 * chance[f'{b}/{f}']:.1f}" if f"{b}/{f}" in chance else "–" for b, f in columns]
    lines.append("| chance | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_figure(report: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: one group per (benchmark, figure), one bar per model, chance as a black tick per group."""
    plt = pyplot()
    columns, rows = reported(report), list(report["rows"].items())
    chance = report.get("chance", {})
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.2 * len(columns) * len(rows))), 4.5))
    for i, (name, row) in enumerate(rows):
        values = [100 * row["benchmarks"].get(b, {}).get(f, float("nan")) for b, f in columns]
        ax.bar([k + i * width for k in range(len(columns))], values, width, label=name)
    for k, (b, f) in enumerate(columns):
        if f"{b}/{f}" in chance:
            level = 100 * chance[f"{b}/{f}"]
            ax.hlines(level, k - width / 2, k + 0.8 - width / 2, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(columns))])
    ax.set_xticklabels([f"{b.split('/')[-1]}\n{f}" for b, f in columns], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("%  (dashed: chance)")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path)
    return Path(path)
