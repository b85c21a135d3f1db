"""What a suite report records and shows: the model's description, a Markdown table, comparisons."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule

from callbacks.plotting import pyplot, save_figure


def describe_model(model: LightningModule, precision: str = "32-true") -> dict[str, Any]:
    """What silently changes numbers when it drifts: activation, preprocessing, tokenizer, precision."""
    info: dict[str, Any] = {"class": type(model).__qualname__, "precision": precision}
    backbone = getattr(model, "backbone", None)
    clip = getattr(backbone, "model", None)
    if clip is not None:
        from open_clip.model import get_model_preprocess_cfg

        info["model_name"] = backbone.model_name
        info["quick_gelu"] = bool((backbone.model_cfg or {}).get("quick_gelu", False))
        info["preprocess"] = get_model_preprocess_cfg(clip)
        tokenizer = backbone.tokenizer
        info["tokenizer"] = type(tokenizer).__name__
        info["context_length"] = getattr(tokenizer, "context_length", None)
    info["versions"] = {
        name: importlib.metadata.version(name) for name in ("torch", "open_clip_torch", "lightning", "vlzoo")
    }
    info["python"] = platform.python_version()
    return info


COUNTS = ("items", "skipped", "macro_groups", "ties", "unmatched", "rerank_k")
"""Figures that are counts, not fractions."""


def to_markdown(results: dict[str, dict]) -> str:
    """One row per benchmark: its figures in % and the items they cover (with skipped items, ties and unmatched
    answers when there are any)."""
    lines = ["| benchmark | figures | items |", "|---|---|---|"]
    for name, figures in results.items():
        shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in figures.items() if k not in COUNTS)
        notes = ", ".join(f"{figures[k]} {k}" for k in COUNTS[1:] if figures.get(k) and k != "macro_groups")
        lines.append(f"| {name} | {shown} | {figures['items']}{f' ({notes})' if notes else ''} |")
    return "\n".join(lines)


def compare(reports: list[str | Path], out_dir: str | Path) -> str:
    """Side-by-side Markdown table of several suite JSON reports (written to ``out_dir/compare.md``)
    and one PNG bar chart per benchmark family (the name before ``/``). Returns the table."""
    plt = pyplot()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {Path(r).stem: json.loads(Path(r).read_text())["benchmarks"] for r in reports}
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for run, results in runs.items():
        for name, figures in results.items():
            for metric, value in figures.items():
                if metric not in COUNTS:
                    rows.setdefault((name, metric), {})[run] = value
    lines = ["| benchmark | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for (name, metric), values in rows.items():
        cells = [f"{100 * values[r]:.1f}" if r in values else "–" for r in runs]
        lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "compare.md").write_text(table + "\n")
    families = sorted({name.split("/")[0] for name, _ in rows})
    for family in families:
        keys = [k for k in rows if k[0].split("/")[0] == family]
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(keys) * len(runs)), 3.5))
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            ax.bar(
                [k + i * width for k in range(len(keys))],
                [100 * rows[key].get(run, float("nan")) for key in keys],
                width,
                label=run,
            )
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
        ax.set_xticklabels([f"{n.split('/', 1)[-1]}\n{m}" for n, m in keys], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("%")
        ax.set_title(family)
        ax.legend(fontsize=7)
        save_figure(fig, out / f"{family}.png")
    return table
