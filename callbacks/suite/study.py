"""A controlled study as one command: train or load models, then score them all on the same benchmarks.

    python -m callbacks.suite study --config configs/eval/erroneous_agreements.yaml [--out DIR] [--seeds N]
                                    [--fast-dev-run]

The config (YAML) has three parts:

* ``benchmarks``: suite specs (``{kind: shapesworld, ...}``), loaded once and scored for every model;
* ``steps``: named steps run in order, each making one output that later entries name as ``${step}``:
  ``fit`` (``{config, args}``: ``train.py fit`` of a config with ``--key value`` overrides; output: its last
  checkpoint, or with ``output: hf`` the transformers folder a :class:`zoo.CausalLM` exports),
  ``export_open_clip`` (a CLIP checkpoint → an open_clip weights file, to start a fine-tune from),
  ``shapesworld_instructions`` (ShapesWorld's LLaVA instruction JSON, as the LLaVA configs generate it:
  ``{n, seed, stage, split}``) and ``llava_captions`` (LLaVA instruction JSON → an image–caption file,
  :mod:`datamodules.llava_captions`). A step
  whose output exists is reused, so an interrupted study resumes where it stopped; its ``step.json`` records the
  settings it was made with, and a step whose settings changed since (or a fast-dev-run's) is refused by name;
* ``evaluate``: rows ``{name, checkpoint, module, scorer, generation, both_images, image_space, rerank_with}``
  (see :mod:`callbacks.suite.generative`; ``image_space``: a CLIP checkpoint whose image embeddings give a
  generative row its image–image cosines; ``rerank_with``: a CLIP checkpoint whose top 10 a ``vqascore`` row
  reranks on retrieval sets).

``--fast-dev-run`` trains every ``fit`` step for 2 steps on a few samples and scores a few items (a smoke test of
the whole study), under ``<out_dir>/fast_dev_run`` unless ``--out`` says otherwise. ``--seeds N`` repeats rows
whose generation samples (``do_sample: true``) N times and reports mean ± std; greedy and likelihood rows are
deterministic and run once. Writes ``study.json``, ``study.md`` and ``study.png`` under the output folder.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml

from callbacks.suite.study_report import study_figure, study_table

FAST_DEV_RUN = {
    "trainer.max_steps": 2,
    "trainer.max_epochs": 1,
    "trainer.limit_val_batches": 0,
    "trainer.num_sanity_val_steps": 0,
    "trainer.callbacks": "[]",
    "data.init_args.batch_size": 4,
    "data.init_args.num_workers": 0,
    "data.init_args.shapesworld.n_train": 16,
    "data.init_args.shapesworld.n_val": 8,
}
FAST_BENCHMARK = {"n": 8, "n_spatial": 2, "per_class": 1}
_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
STEP_FILE = "step.json"  # the resolved spec a step's output was made with


def resolve(value: Any, outputs: dict[str, str], where: str) -> Any:
    """``value`` with every ``${step}`` replaced by that step's output (a KeyError names ``where``)."""
    if isinstance(value, dict):
        return {k: resolve(v, outputs, where) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, outputs, where) for v in value]
    if not isinstance(value, str):
        return value

    def output(match: re.Match) -> str:
        if match.group(1) not in outputs:
            raise KeyError(f"{where}: ${{{match.group(1)}}} names no earlier step; steps so far: {list(outputs)}")
        return outputs[match.group(1)]

    return _REFERENCE.sub(output, value)


def fit_step(name: str, spec: dict[str, Any], out: Path, fast: bool) -> None:
    """``train.py fit`` of ``spec["config"]`` with ``spec["args"]``; the run goes to ``out/name``, its last checkpoint
    to ``out/name/last.ckpt`` and (``output: hf``) the exported transformers folder to ``out/name/hf``."""
    from callbacks.cli import main as cli_main

    overrides = {**spec.get("args", {}), **(FAST_DEV_RUN if fast else {})}
    if spec.get("output") == "hf":
        overrides["model.init_args.export_dir"] = str(out / name / "hf")
    args = ["--config", str(spec["config"]), "--trainer.default_root_dir", str(out / name)]
    args += ["--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", name]
    args += ["--trainer.enable_progress_bar", "false"]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    cli = cli_main(args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    cli.trainer.save_checkpoint(out / name / "last.ckpt")


def check_reuse(name: str, recorded: dict[str, Any], out: Path) -> None:
    """Refuse to reuse a step's output made with other settings (another spec, or a fast-dev-run's): its
    ``step.json`` names them."""
    path = out / name / STEP_FILE
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(recorded, sort_keys=True)):
        raise ValueError(
            f"step {name!r}: {out / name} was made with other settings than the config's now ({path}); delete "
            "that folder to redo the step, or give another --out"
        )


def run_step(name: str, spec: dict[str, Any], out: Path, fast: bool) -> str:
    """One step's output (reused when it already exists)."""
    if "fit" in spec:
        target = out / name / ("hf" if spec["fit"].get("output") == "hf" else "last.ckpt")
        if not target.exists():
            fit_step(name, spec["fit"], out, fast)
        return str(target)
    if "export_open_clip" in spec:
        folder = out / name
        weights = folder / "open_clip_pytorch_model.bin"
        if not weights.exists():
            from zoo.loading import load_model

            model, _ = load_model(spec["export_open_clip"], spec.get("module", "zoo.CLIP"), device="cpu")
            model.export_open_clip(folder)
        return str(weights)
    if "shapesworld_instructions" in spec:
        from datamodules.shapesworld.instructions import write_instruction_data

        options = {"split": "train", "stage": "finetune", **spec["shapesworld_instructions"]}
        if fast:
            options["n"] = min(options.get("n", 16), 16)
        target = out / name / f"{options['split']}.json"
        return str(target if target.exists() else write_instruction_data(out / name, **options))
    if "llava_captions" in spec:
        from datamodules.llava_captions import llava_to_captions

        options = dict(spec["llava_captions"])
        target = out / name / options.pop("out_name", "captions.csv")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            llava_to_captions(options.pop("json_path"), target, **options)
        return str(target)
    kinds = "fit, export_open_clip, shapesworld_instructions, llava_captions"
    raise ValueError(f"step {name!r}: expected one of {kinds}; got {sorted(spec)}")


def image_space(checkpoint: str, benchmarks: list, batch_size: int) -> tuple[torch.Tensor, dict[str, int]]:
    """Unit image embeddings of every benchmark image under the CLIP ``checkpoint``, and their index."""
    from callbacks.suite.scoring import embed_sharded_images
    from zoo.loading import load_model

    clip, _ = load_model(checkpoint, "zoo.CLIP", device="cpu")
    refs = {ref.key: ref for b in benchmarks for item in getattr(b, "items", []) for ref in item.images}
    refs = [refs[key] for key in sorted(refs)]
    transform = clip.data_transforms()["eval_transform"]
    features = embed_sharded_images(clip, refs, transform, batch_size, 0, None).cpu()
    return features, {ref.key: i for i, ref in enumerate(refs)}


def evaluate_row(row: dict[str, Any], specs: list[dict[str, Any]], batch_size: int, seeds: int) -> dict[str, Any]:
    """Figures of one evaluation row on the benchmarks of ``specs`` (mean and std over ``seeds`` runs when its
    generation samples)."""
    from callbacks.suite.generative import evaluate_generative
    from callbacks.suite.scoring import evaluate_suite
    from callbacks.suite.specs import load_benchmarks
    from zoo.loading import load_model

    model, _ = load_model(row["checkpoint"], row.get("module", "zoo.CLIP"), device="cpu")
    benchmarks = load_benchmarks(specs, None, model.data_transforms()["eval_transform"])
    scorer = row.get("scorer", "cosine")
    if scorer == "cosine":
        return {"benchmarks": evaluate_suite(model, benchmarks, batch_size=batch_size, num_workers=0)}
    generation = row.get("generation", {})
    space = image_space(row["image_space"], benchmarks, batch_size) if row.get("image_space") else None
    reranker = load_model(row["rerank_with"], "zoo.CLIP", device="cpu")[0] if row.get("rerank_with") else None
    runs = []
    for seed in range(seeds if generation.get("do_sample") else 1):
        torch.manual_seed(seed)
        runs.append(evaluate_generative(model, benchmarks, scorer, batch_size, generation,
                                        row.get("both_images", False), space, reranker))  # fmt: skip
    return mean_and_std(runs)


def mean_and_std(runs: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """One run's figures as they are; several runs' as ``benchmarks`` (mean), ``std`` (sample std) and ``seeds``."""
    if len(runs) == 1:
        return {"benchmarks": runs[0]}
    mean = {b: {k: statistics.fmean(r[b][k] for r in runs) for k in runs[0][b]} for b in runs[0]}
    std = {b: {k: statistics.stdev(r[b][k] for r in runs) for k in runs[0][b]} for b in runs[0]}
    return {"benchmarks": mean, "std": std, "seeds": len(runs)}


def run_study(config: str | Path, out: str | Path | None = None, seeds: int = 1, fast: bool = False) -> dict:
    """Run the study of ``config`` (see the module docstring); returns (and writes) its report."""
    spec = yaml.safe_load(Path(config).read_text())
    out = Path(out or Path(spec.get("out_dir", "runs/study")) / ("fast_dev_run" if fast else ""))
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    for name, step in (spec.get("steps") or {}).items():
        resolved = resolve(step, outputs, f"step {name!r}")
        check_reuse(name, {"step": resolved, "fast_dev_run": fast}, out)
        outputs[name] = run_step(name, resolved, out, fast)
        (out / name / STEP_FILE).write_text(json.dumps({"step": resolved, "fast_dev_run": fast}, sort_keys=True))
        print(f"study step {name}: {outputs[name]}", flush=True)
    specs = [{**b, **(FAST_BENCHMARK if fast and b.get("kind") == "shapesworld" else {})} for b in spec["benchmarks"]]
    batch_size = spec.get("batch_size", 16)
    report: dict[str, Any] = {"config": str(config), "steps": outputs, "rows": {}}
    report.update({k: spec[k] for k in ("report", "chance") if k in spec})
    for row in spec["evaluate"]:
        row = resolve(row, outputs, f"evaluate row {row.get('name')!r}")
        report["rows"][row["name"]] = {**evaluate_row(row, specs, batch_size, seeds), "row": row}
        print(f"study row {row['name']}: done", flush=True)
    (out / "study.json").write_text(json.dumps(report, indent=2, default=str))
    table = study_table(report)
    (out / "study.md").write_text(table + "\n")
    study_figure(report, out / "study.png")
    print(table)
    return report
