"""Imports run one way (STYLE.md, habit 11) and no source file outgrows 400 lines.

``zoo/losses`` imports only torch (no Lightning, transformers, open_clip, nor another zoo module);
``zoo`` never imports ``datamodules``, ``callbacks`` or ``train``; ``datamodules`` never imports
``callbacks`` or ``train``; ``callbacks`` may import both; command lines sit on top. Every import
counts: module level or inside a function, ``import a.b`` or ``from a import b``, relative ones resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "datamodules", "callbacks")
MAX_LINES = 400
# importing package -> top-level modules it must not import (the most specific package also gets its parents' rules)
FORBIDDEN = {
    "datamodules": {"callbacks", "train"},
    "zoo": {"datamodules", "callbacks", "train"},
    "zoo.losses": {"lightning", "pytorch_lightning", "transformers", "open_clip"},
}
SKIPPED_DIRS = {".venv", "tests", "__pycache__"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every import in ``source`` (the code of ``module``), at any depth.
    ``from a import b`` gives ``a.b`` (``b`` may be a submodule); relative imports are resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
    return found


def violations(root: Path = ROOT) -> list[str]:
    """One line per import that runs the wrong way, naming the file, line and import."""
    problems = []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(path, root)
            rules = [prefix for prefix in FORBIDDEN if module == prefix or module.startswith(prefix + ".")]
            in_losses = module == "zoo.losses" or module.startswith("zoo.losses.")
            for line, name in imported_modules(path.read_text(), module, path.name == "__init__.py"):
                first = name.split(".")[0]
                where = f"{path.relative_to(root)}:{line} imports {name}"
                if any(first in FORBIDDEN[prefix] for prefix in rules):
                    problems.append(where)
                elif in_losses and first == "zoo" and not (name + ".").startswith("zoo.losses."):
                    problems.append(f"{where} (zoo/losses imports only torch and zoo.losses)")
    return problems


def long_files(root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """Non-test .py files of the repository with more than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part in SKIPPED_DIRS or part.startswith(".") for part in relative.parts[:-1]):
            continue
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found.append(f"{relative}: {lines} lines")
    return found


def test_imports_run_one_way():
    found = violations()
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_no_source_file_over_400_lines():
    found = long_files()
    assert not found, f"files over {MAX_LINES} lines (split them):\n" + "\n".join(found)


def test_the_checks_catch_planted_mistakes(tmp_path):
    """Each rule, planted once in a throw-away tree: the checks must name it."""
    planted = {
        "datamodules/reader.py": "def f():\n    from callbacks.embedding import embed_texts\n",
        "datamodules/sub/__init__.py": "from ...train import main\n",
        "zoo/method.py": "import datamodules.samples\n",
        "zoo/other.py": "from callbacks import suite\n",
        "zoo/losses/loss.py": "import torch\nfrom lightning.pytorch import LightningModule\n",
        "zoo/losses/bad.py": "from zoo import clip\nfrom zoo.losses import distributed\nimport transformers\n",
        "zoo/losses/rel.py": "from ..backbones import openclip\nfrom . import distributed\n",
        "callbacks/fine.py": "import zoo\nimport datamodules\nfrom zoo.losses import rank\n",
    }
    for name, source in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    found = violations(tmp_path)
    assert sorted(line.split(" (")[0] for line in found) == [
        "datamodules/reader.py:2 imports callbacks.embedding.embed_texts",
        "datamodules/sub/__init__.py:1 imports train.main",
        "zoo/losses/bad.py:1 imports zoo.clip",
        "zoo/losses/bad.py:3 imports transformers",
        "zoo/losses/loss.py:2 imports lightning.pytorch.LightningModule",
        "zoo/losses/rel.py:1 imports zoo.backbones.openclip",
        "zoo/method.py:1 imports datamodules.samples",
        "zoo/other.py:1 imports callbacks.suite",
    ]
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "big.py").write_text("x = 1\n" * 401)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "big_test.py").write_text("x = 1\n" * 401)
    assert long_files(tmp_path) == ["tools/big.py: 401 lines"]
