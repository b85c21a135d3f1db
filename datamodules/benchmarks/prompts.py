"""Zero-shot prompts: class names filled into templates (clip_benchmark's ``{c}`` or open_clip's ``{}``).

Needed by data code (REACT's retrieval queries) and by the zero-shot evaluation above it, so it lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Template = str | Callable[[str], str]


def format_prompt(template: Template, classname: str) -> str:
    """``template`` filled with ``classname``: a callable, or a format string with ``{c}`` (clip_benchmark)
    or ``{}`` (open_clip)."""
    return template(classname) if callable(template) else template.format(classname, c=classname)


def class_prompts(
    classnames: Sequence[str], templates: Sequence[Template] | Mapping[str, Sequence[str]]
) -> list[list[str]]:
    """The prompts of each class: every template filled with the class name, or, for a mapping
    (class-specific prompts, CuPL style, as clip_benchmark accepts), ``templates[classname]``."""
    if not classnames:
        raise ValueError("no class names")
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if not templates.get(c)]
        if missing:
            raise ValueError(f"no prompts for class(es) {missing[:10]}")
        return [list(templates[c]) for c in classnames]
    if not templates:
        raise ValueError("no templates")
    return [[format_prompt(t, c) for t in templates] for c in classnames]
