"""The suite from the command line, on a checkpoint or an open_clip model, and side-by-side reports.

    vlzoo-suite --model ViT-B-32-quickgelu --pretrained openai --benchmarks eval/suite
    vlzoo-suite --checkpoint runs/clip/version_0/checkpoints/last.ckpt --out report.json
    vlzoo-suite compare clip.json negclip.json --out compare/   (table + a PNG per family)
    vlzoo-suite --checkpoint llava.ckpt --module zoo.LLaVA --scorer mc_full   (a generative model; see .generative)
    vlzoo-suite study --config eval/erroneous_agreements   (train or load, then score several models: see .study)

(``python -m callbacks.suite`` in the repository.) ``--benchmarks`` is a suite YAML's path or a packaged config's
name; the default, ``eval/suite``, is every ShapesWorld counterpart, generated under ``$VLZOO_CACHE/shapesworld``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from callbacks.suite import study
from callbacks.suite.generative import SCORERS, evaluate_generative
from callbacks.suite.report import compare, describe_model, to_markdown
from callbacks.suite.scoring import evaluate_suite
from callbacks.suite.specs import suite_benchmarks
from vlzoo_configs import resolve


def main(argv: list[str] | None = None, prog: str = "python -m callbacks.suite") -> dict[str, Any]:
    """Stand-alone suite on an open_clip model (name + pretrained tag, ``local-dir:``) or a checkpoint;
    ``compare A.json B.json [--out DIR]`` puts several reports side by side."""
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["study"]:
        parser = argparse.ArgumentParser(prog=f"{prog} study", description=study.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        parser.add_argument("--config", required=True, help="the study YAML (configs/eval/erroneous_agreements.yaml)")
        parser.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
        parser.add_argument("--seeds", type=int, default=1, help="repeats of sampling-based generation rows")
        parser.add_argument("--fast-dev-run", action="store_true", help="2 training steps, a few items: a smoke test")
        args = parser.parse_args(argv[1:])
        return study.run_study(resolve(args.config), args.out, args.seeds, args.fast_dev_run)
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog=f"{prog} compare")
        parser.add_argument("reports", nargs="+")
        parser.add_argument("--out", default="suite-compare")
        args = parser.parse_args(argv[1:])
        print(compare(args.reports, args.out))
        return {}

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="open_clip model name or local-dir:/path")
    source.add_argument("--checkpoint", help="a zoo checkpoint (.ckpt)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    parser.add_argument("--module", default="zoo.CLIP", help="the zoo class of --checkpoint")
    parser.add_argument("--benchmarks", default="eval/suite", help="suite YAML: a path or a packaged config name")
    parser.add_argument("--out", default="suite.json")
    parser.add_argument(
        "--scorer",
        default="cosine",
        choices=SCORERS,
        help="cosine (CLIP family) or, for a LLaVA checkpoint (--module zoo.LLaVA), vqascore / mc_letters / mc_full "
        "/ generation",
    )
    parser.add_argument("--both-images", action="store_true", help="LLaVA: What'sUp pairs also with both images")
    parser.add_argument("--rerank-with", default=None, help="vqascore: a CLIP checkpoint whose top 10 it reranks")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        benchmarks_config = resolve(args.benchmarks)
    except FileNotFoundError as error:
        parser.error(str(error))

    from zoo.loading import load_model

    model, _ = load_model(args.checkpoint, args.module, args.model, args.pretrained)
    benchmarks = suite_benchmarks(benchmarks_config, model)
    if args.scorer == "cosine":
        results = evaluate_suite(model, benchmarks, batch_size=args.batch_size, num_workers=args.num_workers)
    else:
        reranker = load_model(args.rerank_with, "zoo.CLIP")[0] if args.rerank_with else None
        results = evaluate_generative(model, benchmarks, args.scorer, args.batch_size, both_images=args.both_images,
                                      reranker=reranker)  # fmt: skip
    report = {
        "benchmarks": results,
        "sources": {b.name: b.source for b in benchmarks},
        "model": describe_model(model),
        "checkpoint": args.checkpoint,
        "pretrained": args.pretrained,
        "scorer": args.scorer,
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(to_markdown(results))
    print(f"wrote {args.out}")
    return report


def console() -> None:
    """The ``vlzoo-suite`` console script."""
    main(prog="vlzoo-suite")
