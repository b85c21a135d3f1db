"""Which benchmarks the suite runs: specs ``{"kind": ..., **loader arguments}`` read into benchmarks.

``{"kind": "shapesworld"}`` generates every ShapesWorld counterpart offline on first use
(:func:`datamodules.benchmarks.shapesworld.shapesworld_benchmark_file`); its seed, image size and
directory come from the spec, else from the data module's ShapesWorld config when it has one
(read with ``getattr``: any data module, or none, will do), else the defaults.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule

from datamodules.benchmarks import (
    Benchmark,
    ClassificationSet,
    RetrievalSet,
    compositional_benchmarks,
    load_classification,
    load_karpathy,
)
from datamodules.benchmarks.shapesworld import (
    SHAPE_TEMPLATES,
    shapesworld_benchmark_file,
    shapesworld_benchmarks,
    shapesworld_settings,
)
from datamodules.shapesworld import SHAPES

Loader = Callable[..., "Benchmark | list[Benchmark]"]
SHAPESWORLD_OPTIONS = ("n", "n_spatial", "per_class", "classification_metric", "seed", "image_size", "benchmark_dir")


def _loaders() -> dict[str, Loader]:
    """Benchmark kinds a spec may name, with the function that reads their official files."""
    from datamodules.benchmarks import aro, mmvp, sugarcrepe, whatsup, winoground

    return {
        "compositional": compositional_benchmarks,
        "karpathy": load_karpathy,
        "sugarcrepe": sugarcrepe.load_sugarcrepe,
        "sugarcrepe_pp": sugarcrepe.load_sugarcrepe_pp,
        "vg_relation": aro.load_vg_relation,
        "vg_attribution": aro.load_vg_attribution,
        "coco_order": aro.load_coco_order,
        "flickr30k_order": aro.load_flickr30k_order,
        "whatsup": whatsup.load_whatsup,
        "winoground": winoground.load_winoground,
        "mmvp": mmvp.load_mmvp,
    }


def shapesworld_suite(
    spec: dict[str, Any], datamodule: Any = None, transform: Callable | None = None
) -> list[Benchmark | RetrievalSet | ClassificationSet]:
    """Every ShapesWorld counterpart for a spec ``{"n": 500, "n_spatial": 100, "per_class": 20,
    "classification_metric": "accuracy", "seed", "image_size", "benchmark_dir"}`` (all optional):
    the compositional split's categories, spatial / Winoground / MMVP / order / brittleness, retrieval
    and zero-shot shape classification, written on first use and read by the real loaders."""
    unknown = sorted(set(spec) - set(SHAPESWORLD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} of kind 'shapesworld'; known: {list(SHAPESWORLD_OPTIONS)}")
    where = shapesworld_settings(datamodule, spec.get("seed"), spec.get("image_size"), spec.get("benchmark_dir"))
    n = spec.get("n", 500)
    loaded: list[Any] = shapesworld_benchmarks(
        shapesworld_benchmark_file("compositional", n, **where),
        shapesworld_benchmark_file("spatial", spec.get("n_spatial", 100), **where),
    )
    retrieval = shapesworld_benchmark_file("retrieval", n, **where)
    loaded.append(load_karpathy(retrieval, retrieval.parent, name="shapesworld/retrieval"))
    classes = shapesworld_benchmark_file("classification", spec.get("per_class", 20), **where)
    loaded.append(
        load_classification(
            classes,
            transform,
            classnames=SHAPES,
            templates=SHAPE_TEMPLATES,
            name="shapesworld/shape_classification",
            metric=spec.get("classification_metric", "accuracy"),
        )
    )
    return loaded


def load_benchmarks(
    specs: list[dict[str, Any]], datamodule: Any = None, transform: Callable | None = None
) -> list[Benchmark | RetrievalSet | ClassificationSet]:
    """Benchmarks from specs ``{"kind": ..., **loader arguments}``. ``{"kind": "shapesworld", ...}`` is every
    ShapesWorld counterpart (:func:`shapesworld_suite`), generated offline on first use with the seed and
    image size of ``datamodule``'s ShapesWorld config if it has one; ``classification`` needs the model's
    eval ``transform``. A spec with an unknown kind or argument fails naming its index and kind, the
    accepted ones and the closest match."""
    from datamodules.benchmarks import sugarcrepe

    loaders = _loaders()
    for index, spec in enumerate(specs):  # every spec checked before anything is read or generated
        check_spec(index, spec.get("kind"), {k: v for k, v in spec.items() if k != "kind"}, loaders)
    benchmarks: list[Benchmark] = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind == "shapesworld":
            loaded = shapesworld_suite(spec, datamodule, transform)
        elif kind == "brittleness":  # SugarCrepe++-format files: caption, rewrite, negative
            loaded = []
            for benchmark in sugarcrepe.load_sugarcrepe_pp(**spec):
                benchmark.protocol = "brittleness"
                benchmark.name = benchmark.name.replace("sugarcrepe_pp/", "brittleness/")
                loaded.append(benchmark)
        elif kind == "classification":
            loaded = load_classification(transform=transform, **spec)
        else:
            loaded = loaders[kind](**spec)
        benchmarks.extend(loaded if isinstance(loaded, list) else [loaded])
    return benchmarks


def spec_arguments(kind: str, loaders: dict[str, Loader]) -> tuple[list[str], list[str]]:
    """(accepted, required) arguments of a spec of ``kind`` (besides ``kind``)."""
    from datamodules.benchmarks import sugarcrepe

    if kind == "shapesworld":
        return list(SHAPESWORLD_OPTIONS), []
    function = {"brittleness": sugarcrepe.load_sugarcrepe_pp, "classification": load_classification}.get(kind)
    parameters = inspect.signature(function or loaders[kind]).parameters.values()
    named = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "transform"]
    return [p.name for p in named], [p.name for p in named if p.default is p.empty]


def check_spec(index: int, kind: Any, spec: dict[str, Any], loaders: dict[str, Loader]) -> None:
    """Refuse, before loading anything, a spec whose kind or arguments are wrong, naming the spec."""
    kinds = sorted([*loaders, "shapesworld", "brittleness", "classification"])
    if kind not in kinds:
        hint = _closest(str(kind), kinds)
        raise ValueError(f"suite spec {index}: unknown benchmark kind {kind!r}{hint}; known kinds: {kinds}")
    accepted, required = spec_arguments(kind, loaders)
    unknown = [key for key in spec if key not in accepted]
    missing = [key for key in required if key not in spec]
    if unknown or missing:
        problems = [f"unknown argument {key!r}{_closest(key, accepted)}" for key in unknown]
        problems += [f"missing required argument {key!r}" for key in missing]
        raise ValueError(f"suite spec {index} (kind {kind!r}): {'; '.join(problems)}; accepted arguments: {accepted}")


def _closest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def specs_from_config(path: str | Path) -> list[dict[str, Any]]:
    """The benchmark specs of a suite YAML (the ``EvaluationSuite`` callback's ``benchmarks``)."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    for callback in config.get("trainer", {}).get("callbacks", []):
        if str(callback.get("class_path", "")).endswith("EvaluationSuite"):
            return callback.get("init_args", {}).get("benchmarks") or [{"kind": "shapesworld"}]
    raise ValueError(f"{path} configures no callbacks.EvaluationSuite")


def suite_benchmarks(config: str | Path, model: LightningModule) -> list[Benchmark | RetrievalSet | ClassificationSet]:
    """The benchmarks of a suite YAML, ShapesWorld's generated with the default settings (seed 0, 64 px,
    ``shapesworld/`` of the cache folder, ``$VLZOO_CACHE`` or ``~/.cache/vlzoo``: those of the default data
    module)."""
    transform = model.data_transforms()["eval_transform"]
    return load_benchmarks(specs_from_config(config), None, transform)
