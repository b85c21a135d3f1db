"""The installed commands work from any directory (STYLE.md, habit 14), configs go by name or path, generated files
go to the cache folder, and resuming does what it says (its own log folder, a finished run named as such, a
missing checkpoint caught first, no empty version folders)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
import torch

import train
import vlzoo_configs
from callbacks.cli import ZooCLI

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's console scripts
SCRIPTS = {"vlzoo", "vlzoo-suite", "vlzoo-wise-ft", "vlzoo-retrieval", "vlzoo-neighbours"}
TINY = ["--data.init_args.shapesworld.n_train", "16", "--data.init_args.batch_size", "8"]
TINY += ["--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]
FIT = ["fit", "--config", "clip", *TINY, "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]"]


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's Lightning project: its own ``callbacks.py`` and ``datamodules/``, which vlzoo must not import."""
    folder = tmp_path / "project"
    (folder / "datamodules").mkdir(parents=True)
    (folder / "callbacks.py").write_text("raise ImportError(\"the project's callbacks.py was imported\")\n")
    (folder / "datamodules" / "__init__.py").write_text("raise ImportError(\"the project's datamodules/\")\n")
    return folder


def _run(command: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "VLZOO_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    environment.pop("PYTHONPATH", None)
    run = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_console_scripts_run_from_a_project_that_shadows_vlzoo_and_write_generated_files_to_the_cache(
    project, tmp_path
):
    cache = tmp_path / "cache"
    callbacks = "[{class_path: callbacks.CompositionalityEvaluation, init_args: {n: 8, num_workers: 0}}]"
    fit = [str(BIN / "vlzoo"), "fit", "--config", "clip", *TINY, "--trainer.max_epochs", "1"]
    _run([*fit, "--trainer.limit_val_batches", "1", "--trainer.callbacks", callbacks], project, cache)
    checkpoint = project / "runs" / "clip" / "version_0" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert (cache / "shapesworld" / "compositional-seed0-n8-px64" / "compositional.json").is_file()

    suite = tmp_path / "suite.yaml"  # every ShapesWorld counterpart, a few items each
    suite.write_text(
        "trainer:\n  callbacks:\n    - class_path: callbacks.EvaluationSuite\n      init_args:\n"
        "        benchmarks: [{kind: shapesworld, n: 8, n_spatial: 2, per_class: 1}]\n"
    )
    command = [str(BIN / "vlzoo-suite"), "--checkpoint", str(checkpoint.relative_to(project)), "--out", "report.json"]
    _run([*command, "--benchmarks", str(suite), "--num-workers", "0"], project, cache)
    assert (cache / "shapesworld" / "spatial-seed0-n2-px64" / "spatial.json").is_file()
    # only what was asked for lands in the current directory: the run's logs and the report
    assert sorted(path.name for path in project.iterdir()) == ["callbacks.py", "datamodules", "report.json", "runs"]


def test_every_console_script_is_installed_and_loads():
    scripts = {e.name: e for e in distribution("vlzoo").entry_points if e.group == "console_scripts"}
    assert set(scripts) == SCRIPTS
    for name, entry in scripts.items():
        assert (BIN / name).is_file(), f"{name} missing: reinstall with pip install -e ."
        assert callable(entry.load())


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages, data folders included (configs/ installs as vlzoo_configs): a new
    folder must join the list."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    trees = {"zoo": "zoo", "datamodules": "datamodules", "callbacks": "callbacks", "configs": "vlzoo_configs"}
    found = {
        ".".join([name, *folder.relative_to(ROOT / top).parts])
        for top, name in trees.items()
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]
        if folder.is_dir() and folder.name != "__pycache__"
    }
    assert listed == found


def test_configs_go_by_packaged_name_or_by_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert vlzoo_configs.resolve("eval/suite") == ROOT / "configs" / "eval" / "suite.yaml"
    assert {"clip", "eval/suite", "fsc_clip/no_local", "strategy/fsdp"} <= set(vlzoo_configs.available())
    cli = train.main(["--config", "fsc_clip", "--config=fsc_clip/no_local.yaml"], run=False)
    assert type(cli.model).__name__ == "FSCCLIP" and cli.model.hparams.use_local is False
    (tmp_path / "clip.yaml").write_text((ROOT / "configs" / "clip.yaml").read_text().replace("lr: 1.0e-3", "lr: 0.5"))
    assert train.main(["-c", "clip.yaml"], run=False).model.hparams.lr == 0.5  # a file here wins over the name
    with pytest.raises(SystemExit):
        train.main(["fit", "--config", "clipp"])
    error = capsys.readouterr().err
    listing = ", ".join(vlzoo_configs.available())  # every packaged name, in order (clip, ..., strategy/fsdp, ...)
    assert "'clipp'" in error and listing in error and "strategy/fsdp" in listing


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_missing_ckpt_path_fails_before_model_and_data_are_built(subcommand, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def built(self):
        raise AssertionError("model and data were built before --ckpt_path was checked")

    monkeypatch.setattr(ZooCLI, "instantiate_classes", built)
    with pytest.raises(SystemExit) as exit:
        train.main([subcommand, "--config", "clip", "--ckpt_path", "missing.ckpt"])
    assert exit.value.code != 0
    assert "--ckpt_path missing.ckpt: no such checkpoint" in capsys.readouterr().err


def test_a_resumed_run_logs_in_its_checkpoint_s_folder_and_a_finished_one_says_how_to_extend_it(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    version = Path("runs") / "clip" / "version_0"
    first = train.main([*FIT, "--trainer.max_epochs", "1"])
    assert Path(first.trainer.log_dir) == version  # a run of clip.yaml logs under runs/clip/version_N
    last = version / "checkpoints" / "last.ckpt"

    with pytest.raises(SystemExit) as exit:  # the same max_epochs: nothing to train, and it says so
        train.main([*FIT, "--trainer.max_epochs", "1", "--ckpt_path", str(last)])
    assert exit.value.code == 0
    error = capsys.readouterr().err
    assert "Nothing to train" in error and "1 epoch done, max_epochs=1" in error
    assert "--trainer.max_epochs 2 (1 more epoch)" in error

    resumed = train.main([*FIT, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 4
    assert Path(resumed.trainer.log_dir) == version
    assert [path.name for path in version.parent.iterdir()] == ["version_0"]  # one run, one folder
    assert len(list(version.glob("events.out.tfevents.*"))) == 2  # both legs' TensorBoard logs
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4


def test_a_run_that_fails_before_writing_leaves_no_version_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = [*FIT, "--data.init_args.source", "manifest", "--data.init_args.train", "missing.json"]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        train.main(broken)
    assert not (tmp_path / "runs").exists()  # nor the runs/clip it made
    earlier = tmp_path / "runs" / "clip" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("an earlier run's folder stays\n")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        train.main(broken)
    assert [path.name for path in earlier.parent.iterdir()] == ["version_0"]
