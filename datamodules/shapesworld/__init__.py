"""ShapesWorld: a deterministic procedural scene generator, vlzoo's built-in offline dataset.

Scenes of 1-4 coloured shapes on a 3x3 grid, rendered with PIL, with captions, a long caption,
exact compositional hard negatives and QA pairs. See ``generate_sample`` for the sample format.
"""

from .benchmark import write_compositional_benchmark
from .captions import caption_descriptions, long_caption
from .dataset import ShapesWorld
from .description import Description, ObjectDescription, is_true, parse_description
from .evaluation_files import write_classification_benchmark, write_retrieval_benchmark
from .generate import generate_sample
from .negatives import NEGATIVE_TYPES, negative_descriptions
from .qa import question_answers
from .render import png_bytes, render_scene
from .scene import SPLITS, Scene, SceneObject, relation_holds, sample_scene, scene_rng
from .shards import write_shards
from .spatial import SPATIAL_RELATIONS, spatial_set, write_spatial_benchmark
from .vocabulary import COLORS, RELATIONS, SHAPES, SIZES

__all__ = [
    "COLORS",
    "NEGATIVE_TYPES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPATIAL_RELATIONS",
    "SPLITS",
    "Description",
    "ObjectDescription",
    "Scene",
    "SceneObject",
    "ShapesWorld",
    "caption_descriptions",
    "generate_sample",
    "is_true",
    "long_caption",
    "negative_descriptions",
    "parse_description",
    "png_bytes",
    "question_answers",
    "relation_holds",
    "render_scene",
    "sample_scene",
    "scene_rng",
    "spatial_set",
    "write_classification_benchmark",
    "write_compositional_benchmark",
    "write_retrieval_benchmark",
    "write_shards",
    "write_spatial_benchmark",
]
