"""Every YAML under configs/ runs fit and test through LightningCLI on CPU (found by glob, not by a list)."""

from pathlib import Path

import pytest
import yaml

import train

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_are_found():
    assert ROOT / "configs" / "clip.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fits_validates_and_tests(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logs and checkpoints stay in tmp_path, generated benchmarks in $VLZOO_CACHE
    common = ["--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)]
    cli = train.main(["fit", *common])
    assert cli.trainer.state.finished
    assert "train/loss" in cli.trainer.callback_metrics
    callbacks = [c["class_path"] for c in yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])]
    if "callbacks.RetrievalEvaluation" in callbacks:
        assert any(k.startswith("val/retrieval/") for k in cli.trainer.callback_metrics)
    if "callbacks.VQAEvaluation" in callbacks:
        assert "val/vqa/accuracy" in cli.trainer.callback_metrics
    for subcommand in ("validate", "test"):
        cli = train.main([subcommand, *common])
        assert cli.trainer.state.finished
        assert f"{'val' if subcommand == 'validate' else 'test'}/loss" in cli.trainer.callback_metrics


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_each_config_logs_under_runs_and_its_name(config):
    """A run of configs/<name>.yaml logs in runs/<name>/version_N (README, train.py), not runs/lightning_logs."""
    trainer = yaml.safe_load(config.read_text())["trainer"]
    assert trainer["logger"]["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    assert trainer["logger"]["init_args"] == {"save_dir": "runs", "name": config.stem}
    assert trainer["default_root_dir"] == f"runs/{config.stem}"


def test_command_line_overrides_reach_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = train.main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "clip.yaml"),
            "--trainer.fast_dev_run",
            "true",
            "--model.init_args.lr",
            "1e-4",
            "--data.init_args.batch_size",
            "8",
        ]
    )
    assert cli.model.hparams.lr == 1e-4
    assert cli.datamodule.batch_size == 8
    assert cli.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(1e-4)


def is_study(config: Path) -> bool:
    """A study config (``python -m callbacks.suite study``: steps and rows to evaluate), not a callback stack."""
    return "evaluate" in (yaml.safe_load(config.read_text()) or {})


EVAL_CONFIGS = sorted((ROOT / "configs" / "eval").glob("*.yaml"))
STUDIES = [p for p in EVAL_CONFIGS if is_study(p)]


@pytest.mark.parametrize("config", [p for p in EVAL_CONFIGS if p not in STUDIES], ids=lambda p: p.stem)
def test_eval_configs_stack_on_clip(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs" / "clip.yaml"), "--config", str(config)]
    cli = train.main(["validate", *args, "--trainer.fast_dev_run", "true"])
    assert any(k.startswith("val/suite/shapesworld/") for k in cli.trainer.callback_metrics)


STACKED = sorted(
    p for p in (ROOT / "configs").glob("*/*.yaml") if (ROOT / "configs" / f"{p.parent.name}.yaml").is_file()
)


def test_stacked_configs_are_found():
    assert ROOT / "configs" / "fsc_clip" / "no_local.yaml" in STACKED


def offline_stand_in(config: Path, tmp_path: Path) -> list[str]:
    """Overrides pointing a config that names hub weights (none can be downloaded here) at a tiny random model
    saved as a user's folder would be; nothing for the others."""
    if config.relative_to(ROOT / "configs").as_posix() != "vladva/qwen2vl.yaml":
        return []
    from tests.zoo.qwen2vl_fixtures import IMAGE_SIZE, qwen2vl_model_folder

    folder = qwen2vl_model_folder(tmp_path / "Qwen2-VL-tiny")
    return ["--model.init_args.model_name_or_path", str(folder), "--model.init_args.image_spec",
            f"{{image_size: {IMAGE_SIZE}}}", "--trainer.precision", "32-true"]  # fmt: skip


@pytest.mark.parametrize("config", STACKED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stacked_config_fits(config, tmp_path, monkeypatch):
    """configs/<method>/*.yaml (e.g. the paper's ablations) stack on configs/<method>.yaml."""
    monkeypatch.chdir(tmp_path)
    base = ROOT / "configs" / f"{config.parent.name}.yaml"
    args = ["fit", "--config", str(base), "--config", str(config), "--trainer.fast_dev_run", "true"]
    cli = train.main([*args, *offline_stand_in(config, tmp_path)])
    assert cli.trainer.state.finished and "train/loss" in cli.trainer.callback_metrics


def test_configs_interpolate_with_omegaconf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "model:\n  init_args:\n    lr: 2.0e-4\ntrainer:\n  default_root_dir: runs/lr-${model.init_args.lr}\n"
    )
    cli = train.main(["--config", str(ROOT / "configs" / "clip.yaml"), "--config", str(sweep)], run=False)
    assert cli.trainer.default_root_dir == "runs/lr-0.0002"
    assert cli.model.hparams.lr == 2e-4


def test_backbone_arguments_pass_through_once_and_misspelt_keys_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = ["--config", str(ROOT / "configs" / "fsc_clip.yaml")]
    overrides = ["--model.init_args.backbone.cache_dir", str(tmp_path), "--model.init_args.backbone.lora_rank", "2"]
    cli = train.main([*config, *overrides], run=False)
    assert cli.model.backbone_config["cache_dir"] == str(tmp_path)  # every backbone argument reaches it from YAML
    assert cli.model.backbone_config["model_name"] == "vlzoo-tiny-vit"  # the config's other keys stay
    assert any("lora_" in name for name, _ in cli.model.named_parameters())
    with pytest.raises(SystemExit):
        train.main([*config, "--model.init_args.backbone.lora_rnak", "2"], run=False)
    assert "lora_rnak" in capsys.readouterr().err


def test_every_run_gets_the_summary_and_file_logging_and_no_hp_metric(tmp_path, monkeypatch):
    from callbacks import FileProgressLog, RunSummary

    monkeypatch.chdir(tmp_path)
    cli = train.main(["--config", str(ROOT / "configs" / "clip.yaml")], run=False)
    kinds = {type(callback) for callback in cli.trainer.callbacks}
    assert {RunSummary, FileProgressLog} <= kinds
    assert cli.trainer.logger._default_hp_metric is False  # merged into the config's own logger


def test_data_hyperparameters_load_with_weights_only(tmp_path):
    """A data module built in Python (not only through the CLI) saves plain hyper-parameters, so a checkpoint
    loads with ``weights_only`` (what ``Trainer.validate(ckpt_path=...)`` does) and rebuilds it."""
    import torch

    from datamodules import ImageCaptionDataModule, ShapesWorldConfig

    data = ImageCaptionDataModule(shapesworld=ShapesWorldConfig(n_train=32, image_size=32))
    torch.save({"datamodule_hyper_parameters": dict(data.hparams)}, tmp_path / "data.ckpt")
    saved = torch.load(tmp_path / "data.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    assert ImageCaptionDataModule(**saved).shapesworld == data.shapesworld


@pytest.mark.parametrize("config", STUDIES, ids=lambda p: p.stem)
def test_study_configs_run_end_to_end_at_fast_dev_run_size(config, tmp_path, monkeypatch):
    """Every step trains 2 steps, every row scores a few items; the report has every row and column."""
    from callbacks.suite.cli import main as suite

    monkeypatch.chdir(tmp_path)
    report = suite(["study", "--config", str(config), "--out", str(tmp_path / "study"), "--fast-dev-run"])
    spec = yaml.safe_load(config.read_text())
    assert list(report["rows"]) == [row["name"] for row in spec["evaluate"]]
    for name, row in report["rows"].items():
        for benchmark in spec.get("report", {}):
            assert benchmark in row["benchmarks"], (name, benchmark)
    assert (tmp_path / "study" / "study.png").is_file() and (tmp_path / "study" / "study.md").is_file()
    for row in spec["evaluate"]:  # a reranking row scores the retrieval sets it reranks
        if row.get("rerank_with"):
            assert "i2t_R@1" in report["rows"][row["name"]]["benchmarks"]["shapesworld/retrieval"]
