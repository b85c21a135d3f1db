"""The evaluation suite: every benchmark scored in one pass, one JSON report, one Markdown table.

Each unique image (crop) and each unique text across all benchmarks is embedded once; under DDP each
rank embeds every world-th of them and the shards are gathered in order, so every item is scored
exactly once and 1 and 2 processes give identical figures.

* :mod:`.specs`: benchmark specs (``{"kind": ..., **loader arguments}``) read into benchmarks;
* :mod:`.scoring`: the shared embedding pass and the figures of every benchmark;
* :mod:`.report`: model description, Markdown table, side-by-side comparison charts;
* :mod:`.callback`: :class:`EvaluationSuite`, the suite after validation / test epochs;
* :mod:`.cli`: ``python -m callbacks.suite [compare] ...``.
"""

from callbacks.suite.callback import EvaluationSuite
from callbacks.suite.cli import main
from callbacks.suite.report import compare, describe_model, to_markdown
from callbacks.suite.scoring import (
    embed_benchmarks,
    embed_sharded_images,
    embed_sharded_texts,
    evaluate_retrieval_set,
    evaluate_suite,
)
from callbacks.suite.specs import load_benchmarks, shapesworld_suite, specs_from_config, suite_benchmarks

__all__ = [
    "EvaluationSuite",
    "compare",
    "describe_model",
    "embed_benchmarks",
    "embed_sharded_images",
    "embed_sharded_texts",
    "evaluate_retrieval_set",
    "evaluate_suite",
    "load_benchmarks",
    "main",
    "shapesworld_suite",
    "specs_from_config",
    "suite_benchmarks",
    "to_markdown",
]
