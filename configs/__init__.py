"""vlzoo's configs, installed with the package as ``vlzoo_configs`` (this folder, mapped in pyproject.toml),
so commands find them from any directory: ``--config clip`` is ``configs/clip.yaml``, ``strategy/fsdp``
is ``configs/strategy/fsdp.yaml``, ``eval/suite`` is ``configs/eval/suite.yaml`` (``.yaml`` optional).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the packaged configs: ``clip``, ``eval/suite``, ``strategy/fsdp``, ..."""
    return sorted(path.relative_to(CONFIG_DIR).with_suffix("").as_posix() for path in CONFIG_DIR.rglob("*.yaml"))


def resolve(name_or_path: str | Path) -> Path:
    """A config file: ``name_or_path`` itself when it exists (relative to the current directory, as any path),
    else the packaged config of that name; an unknown name raises ``FileNotFoundError`` listing the packaged
    ones."""
    path = Path(name_or_path).expanduser()
    if path.exists() or path.is_absolute():
        return path
    name = path.as_posix().removesuffix(".yaml")
    packaged = CONFIG_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} is neither a file (relative to {Path.cwd()}) nor a packaged config; "
        f"packaged configs: {', '.join(available())}"
    )
