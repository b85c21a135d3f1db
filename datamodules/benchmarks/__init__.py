"""Benchmark file formats: loaders that turn official files into evaluation items."""

from datamodules.benchmarks.aro import (
    ARO_ORDER_PERTURBATIONS,
    ARO_SYMMETRIC_RELATIONS,
    load_coco_order,
    load_flickr30k_order,
    load_vg_attribution,
    load_vg_relation,
)
from datamodules.benchmarks.base import Benchmark, BenchmarkFormatError, ImageRef, Item, resolve_image
from datamodules.benchmarks.classification import (
    ClassificationSet,
    WebDatasetClassification,
    image_folder_classification,
    load_classification,
    load_classnames,
    load_templates,
    wds_classification,
)
from datamodules.benchmarks.compositional import ImageFiles, compositional_benchmarks, load_compositional_benchmark
from datamodules.benchmarks.imagenet import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from datamodules.benchmarks.mmvp import MMVP_CATEGORIES, load_mmvp
from datamodules.benchmarks.retrieval import RetrievalImages, RetrievalSet, collate_retrieval, load_karpathy
from datamodules.benchmarks.sugarcrepe import (
    SUGARCREPE_CATEGORIES,
    SUGARCREPE_FAMILIES,
    SUGARCREPE_PP_CATEGORIES,
    load_sugarcrepe,
    load_sugarcrepe_pp,
    sugarcrepe_averages,
)
from datamodules.benchmarks.whatsup import WHATSUP_FILES, load_whatsup, load_whatsup_controlled, load_whatsup_qa
from datamodules.benchmarks.winoground import load_winoground

__all__ = [
    "ARO_ORDER_PERTURBATIONS",
    "ARO_SYMMETRIC_RELATIONS",
    "MMVP_CATEGORIES",
    "SUGARCREPE_CATEGORIES",
    "SUGARCREPE_FAMILIES",
    "SUGARCREPE_PP_CATEGORIES",
    "WHATSUP_FILES",
    "load_coco_order",
    "load_flickr30k_order",
    "load_mmvp",
    "load_sugarcrepe",
    "load_sugarcrepe_pp",
    "load_vg_attribution",
    "load_vg_relation",
    "load_whatsup",
    "load_whatsup_controlled",
    "load_whatsup_qa",
    "load_winoground",
    "sugarcrepe_averages",
    "IMAGENET_CLASSNAMES",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_IMAGENET_TEMPLATES",
    "Benchmark",
    "BenchmarkFormatError",
    "ClassificationSet",
    "ImageFiles",
    "ImageRef",
    "Item",
    "RetrievalImages",
    "RetrievalSet",
    "WebDatasetClassification",
    "collate_retrieval",
    "compositional_benchmarks",
    "image_folder_classification",
    "load_classification",
    "load_classnames",
    "load_compositional_benchmark",
    "load_karpathy",
    "load_templates",
    "resolve_image",
    "wds_classification",
]
