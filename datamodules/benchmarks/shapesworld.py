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
"""

from __future__ import annotations

import json
from pathlib import Path

from datamodules.benchmarks.aro import load_coco_order
from datamodules.benchmarks.base import Benchmark, ImageRef, Item
from datamodules.benchmarks.compositional import compositional_benchmarks, load_compositional_benchmark

RELATIONS = ("left_of", "right_of", "above", "below")
# zero-shot shape classification of single-object scenes
SHAPE_TEMPLATES = ("a {c}.", "a small {c}.", "a large {c}.", "a picture of a {c}.")
PAIRS = (("left_of", "right_of"), ("above", "below"))


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
