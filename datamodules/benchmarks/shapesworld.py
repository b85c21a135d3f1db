"""ShapesWorld counterparts of the suite's benchmarks, so the whole suite runs offline.

* ``shapesworld/<category>``: SugarCrepe-style multiple choice (the compositional split);
* ``shapesworld/spatial``: What'sUp-style sets of four arrangements (individual / pair / set accuracy);
* ``shapesworld/winoground``: image pairs with "A rel B" / "B rel A" captions (text / image / group);
* ``shapesworld/mmvp``: image pairs with "A rel B" / "A opposite-rel B" statements (pair accuracy);
* ``shapesworld/order``: ARO-style order perturbations of the compositional split's captions, built
  by the same loader as COCO-Order;
* ``shapesworld/brittleness``: positive, a WordNet-synonym hard positive and the exact negative;
* ``shapesworld/retrieval`` and ``shapesworld/shape_classification``: written as a Karpathy JSON and
  an ImageFolder tree (``datamodules.shapesworld.evaluation_files``) and read by the real loaders.

:func:`shapesworld_benchmark_file` writes each generated file once (per seed, size and image size)
under a benchmark directory; :func:`shapesworld_settings` reads seed, image size and directory from a
data module's ShapesWorld config when it has one, so evaluation callbacks need nothing else from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.benchmarks.aro_order import load_coco_order
from datamodules.benchmarks.base import Benchmark, ImageRef, Item
from datamodules.benchmarks.compositional import compositional_benchmarks, load_compositional_benchmark
from datamodules.cache import cache_dir
from datamodules.shapesworld import (
    write_classification_benchmark,
    write_compositional_benchmark,
    write_retrieval_benchmark,
    write_spatial_benchmark,
)

RELATIONS = ("left_of", "right_of", "above", "below")
# zero-shot shape classification of single-object scenes
SHAPE_TEMPLATES = ("a {c}.", "a small {c}.", "a large {c}.", "a picture of a {c}.")
PAIRS = (("left_of", "right_of"), ("above", "below"))
DEFAULT_SIZES = {"compositional": 500, "spatial": 100, "retrieval": 500, "classification": 20}


def default_benchmark_dir() -> Path:
    """Where generated ShapesWorld benchmarks go unless a ``benchmark_dir`` is given: ``<cache>/shapesworld``
    (:func:`datamodules.cache.cache_dir`: ``$VLZOO_CACHE`` or ``~/.cache/vlzoo``)."""
    return cache_dir("shapesworld")


def shapesworld_benchmark_file(
    kind: str,
    n: int | None = None,
    seed: int = 0,
    image_size: int = 64,
    benchmark_dir: str | Path | None = None,
) -> Path:
    """A generated ShapesWorld benchmark (written on first use, then reused):

    * ``compositional``: ``<dir>/compositional-seed{seed}-n{n}-px{size}/compositional.json``;
    * ``spatial``: ``<dir>/spatial-seed{seed}-n{n}-px{size}/spatial.json``;
    * ``retrieval``: ``<dir>/retrieval-seed{seed}-n{n}-px{size}/dataset_shapesworld.json`` (Karpathy);
    * ``classification``: the ImageFolder root ``<dir>/classification-seed{seed}-k{n}-px{size}`` (``n``
      images per shape; a ``DONE`` file marks it complete).

    ``n`` defaults to 500 / 100 / 500 / 20 (:data:`DEFAULT_SIZES`); scenes come from the test split.
    ``benchmark_dir`` defaults to :func:`default_benchmark_dir` (the cache folder).
    """
    if kind not in DEFAULT_SIZES:
        raise ValueError(f"unknown ShapesWorld benchmark {kind!r}; known: {sorted(DEFAULT_SIZES)}")
    n = DEFAULT_SIZES[kind] if n is None else n
    size = f"k{n}" if kind == "classification" else f"n{n}"
    out = Path(benchmark_dir or default_benchmark_dir()) / f"{kind}-seed{seed}-{size}-px{image_size}"
    settings = {"split": "test", "seed": seed, "image_size": image_size}
    if kind == "classification":
        if not (out / "DONE").is_file():
            write_classification_benchmark(out, per_class=n, **settings)
            (out / "DONE").write_text("")
        return out
    files = {"compositional": "compositional.json", "spatial": "spatial.json", "retrieval": "dataset_shapesworld.json"}
    if (out / files[kind]).is_file():
        return out / files[kind]
    writers = {
        "compositional": write_compositional_benchmark,
        "spatial": write_spatial_benchmark,
        "retrieval": write_retrieval_benchmark,
    }
    return writers[kind](out, n=n, **settings)


def shapesworld_settings(
    datamodule: Any = None,
    seed: int | None = None,
    image_size: int | None = None,
    benchmark_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``seed``, ``image_size`` and ``benchmark_dir`` for :func:`shapesworld_benchmark_file`: each given
    value, else the data module's (``datamodule.shapesworld.seed`` / ``.image_size``,
    ``datamodule.benchmark_dir``, read only if present), else the defaults (0, 64, :func:`default_benchmark_dir`)."""
    config = getattr(datamodule, "shapesworld", None)
    chosen = {
        "seed": seed if seed is not None else getattr(config, "seed", 0),
        "image_size": image_size if image_size is not None else getattr(config, "image_size", 64),
        "benchmark_dir": benchmark_dir if benchmark_dir is not None else getattr(datamodule, "benchmark_dir", None),
    }
    chosen["benchmark_dir"] = Path(chosen["benchmark_dir"] or default_benchmark_dir())
    return chosen


def spatial_benchmarks(path: str | Path) -> list[Benchmark]:
    """What'sUp-, Winoground- and MMVP-style benchmarks from ``spatial.json``."""
    path = Path(path)
    root = path.parent
    spatial, wino, mmvp = [], [], []
    for record in json.loads(path.read_text()):
        key, captions, swapped = record["key"], record["captions"], record["swapped"]
        images = {r: ImageRef(str((root / record["images"][r]).resolve())) for r in RELATIONS}
        options = [captions[r] for r in RELATIONS]
        for first, second in PAIRS:
            for own, partner in ((first, second), (second, first)):
                spatial.append(
                    Item(
                        id=f"{key}/{own}",
                        images=[images[own]],
                        texts=options,
                        group=own,
                        meta={
                            "answer": RELATIONS.index(own),
                            "pair": f"{key}/{first}-{second}",
                            "set": key,
                            "caption_pair": (RELATIONS.index(own), RELATIONS.index(partner)),
                        },
                    )
                )
            pair_images = [images[first], images[second]]
            # "B left of A" is what the right-of image shows
            wino.append(Item(f"{key}/{first}", pair_images, [captions[first], swapped[first]], group=first))
            mmvp.append(Item(f"{key}/{first}", pair_images, [captions[first], captions[second]], group=first))
    return [
        Benchmark("shapesworld/spatial", "whatsup", spatial, source=str(path)),
        Benchmark("shapesworld/winoground", "winoground", wino, source=str(path)),
        Benchmark("shapesworld/mmvp", "mmvp", mmvp, source=str(path)),
    ]


def order_benchmark(compositional: str | Path, seed: int = 0) -> Benchmark:
    """ARO order perturbations of the compositional split's positives, through ARO's COCO-Order loader."""
    compositional = Path(compositional)
    annotation = compositional.parent / "order_annotations.json"
    if not annotation.is_file():
        captions: dict[str, list[str]] = {}
        for record in load_compositional_benchmark(compositional):
            captions.setdefault(Path(record["image"]).name, [record["positive"]])
        rows = [{"image": f"images/{name}", "caption": caps} for name, caps in sorted(captions.items())]
        annotation.write_text(json.dumps(rows))
    benchmark = load_coco_order(annotation, compositional.parent, seed=seed)
    benchmark.name = "shapesworld/order"
    return benchmark


def brittleness_benchmark(compositional: str | Path, seed: int = 0) -> Benchmark:
    """Items [positive, synonym rewrite of the positive, exact negative] (one per image and category)."""
    from datamodules.text_augment import HardNegativeEngine

    engine = HardNegativeEngine(["synonym"], seed=seed)
    items = []
    for index, record in enumerate(load_compositional_benchmark(compositional)):
        (positive_rewrite,) = engine(record["positive"], index, 0)
        if positive_rewrite is None:
            continue
        texts = [record["positive"], positive_rewrite, record["negative"]]
        items.append(Item(str(record["id"]), [ImageRef(str(record["image"]))], texts, group=record["category"]))
    return Benchmark("shapesworld/brittleness", "brittleness", items, source=str(compositional))


def shapesworld_benchmarks(compositional: str | Path, spatial: str | Path) -> list[Benchmark]:
    """Every ShapesWorld counterpart, from the two generated files."""
    return [
        *compositional_benchmarks(compositional),
        *spatial_benchmarks(spatial),
        order_benchmark(compositional),
        brittleness_benchmark(compositional),
    ]
