"""Where vlzoo writes what it generates (ShapesWorld benchmark files, the WordNet copy): one cache folder,
never the current directory by surprise. An explicit path given to a command or a class still wins."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "VLZOO_CACHE"
LEGACY_CACHE_ENV = "VLZOO_CACHE_DIR"  # the text engine's earlier name for the same folder, still read


def cache_dir(*parts: str) -> Path:
    """``$VLZOO_CACHE`` (else ``$VLZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlzoo``, else ``~/.cache/vlzoo``),
    joined with ``parts``; read at each call, so a changed environment takes effect at once. Not created."""
    base = os.environ.get(CACHE_ENV) or os.environ.get(LEGACY_CACHE_ENV)
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "vlzoo")
    return Path(base, *parts).expanduser()
