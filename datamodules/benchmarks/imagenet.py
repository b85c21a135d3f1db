"""ImageNet-1k zero-shot defaults: the 1000 class names and CLIP's prompt templates.

Taken from open_clip (``open_clip.zero_shot_metadata``) rather than copied: its
``IMAGENET_CLASSNAMES`` are the cleaned names of OpenAI's CLIP ImageNet notebook, in the standard
class-index order (= sorted synset folders, as torchvision's ``ImageFolder`` numbers them), and
its ``OPENAI_IMAGENET_TEMPLATES`` are the 80 templates of that notebook. open_clip writes the
templates as lambdas; here they are ``str.format`` strings with a ``{c}`` placeholder, the form
clip_benchmark stores in ``en_zeroshot_classification_templates.json`` (``imagenet1k``). Both lists
are identical to clip_benchmark 1.6.2's ``imagenet1k`` class names and templates.
"""

from __future__ import annotations

from open_clip import zero_shot_metadata as _metadata

#: The 1000 ImageNet-1k class names, index ``i`` = class ``i`` (sorted synset ids n01440764 ...).
IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(_metadata.IMAGENET_CLASSNAMES)

#: The 80 prompt templates of OpenAI's CLIP ImageNet evaluation, e.g. ``"a bad photo of a {c}."``.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{c}") for template in _metadata.OPENAI_IMAGENET_TEMPLATES)

#: The 7-template subset OpenAI's notebook also recommends (``"itap of a {c}."``, ...).
SIMPLE_IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{c}") for template in _metadata.SIMPLE_IMAGENET_TEMPLATES)

assert len(IMAGENET_CLASSNAMES) == 1000 and len(OPENAI_IMAGENET_TEMPLATES) == 80

__all__ = ["IMAGENET_CLASSNAMES", "OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES"]
