"""WiSE-FT (Wortsman et al., 2022) weight-space ensembles: θ_α = (1 − α)·θ_0 + α·θ_1, each point scored
by the evaluation suite, as FSC-CLIP's trade-off figure (compositionality vs zero-shot / retrieval).

    vlzoo-wise-ft --zeroshot ViT-B-32-quickgelu --zeroshot-pretrained openai \\
        --finetuned runs/fsc_clip/version_0/checkpoints/last.ckpt --benchmarks eval/suite --out wise_ft/

(``python -m callbacks.wise_ft`` in the repository; ``--benchmarks``: a suite YAML's path or a packaged config's
name, default ``eval/suite``.)

θ_0 and θ_1 are each a zoo checkpoint (``.ckpt``, any CLIP-family method; LoRA adapters merged) or an
open_clip model (a name with ``--*-pretrained``, or ``local-dir:``). Writes ``wise_ft.json`` (every
point's suite figures and the two axis summaries) and ``wise_ft.png``.

A method over a frozen base with adapters (``--module zoo.VladVA``) interpolates what trains: θ_1 a checkpoint,
θ_0 another checkpoint of it or ``--zeroshot base``, the same model with its adapters at their start (LoRA's B at
zero, soft prompts at the handcrafted prompt: ``zero_shot_state()``). With A fixed, (1 − α)·0 + α·B is the
ensemble (1 − α)·W + α·(W + BA) of the merged weights::

    vlzoo-wise-ft --module zoo.VladVA --zeroshot base --finetuned runs/vladva/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
from pathlib import Path
from typing import Any

import torch

from callbacks.plotting import pyplot, save_figure
from callbacks.suite import describe_model, evaluate_suite, suite_benchmarks
from vlzoo_configs import resolve
from zoo.backbones import OpenCLIPBackbone

# "benchmark/metric" patterns averaged into each axis of the trade-off plot
AXES = {
    "compositionality": ["*/accuracy"],
    "zero_shot": ["*/top1"],
    "retrieval": ["*/i2t_R@1", "*/t2i_R@1"],
}


def load_backbone(spec: str, pretrained: str | None = None) -> OpenCLIPBackbone:
    """A backbone from a zoo checkpoint (``.ckpt``) or an open_clip model name / ``local-dir:``."""
    if not spec.endswith(".ckpt"):
        return OpenCLIPBackbone(model_name=spec, pretrained=pretrained)
    checkpoint = torch.load(spec, map_location="cpu", weights_only=False)
    config = checkpoint.get("hyper_parameters", {}).get("backbone") or {}
    ignored = {"grad_checkpointing", "pretrained"}  # the weights come from the checkpoint
    backbone = OpenCLIPBackbone(**{k: v for k, v in config.items() if k not in ignored})
    prefix = "backbone."
    backbone.load_state_dict({k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return backbone


def interpolate(
    theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 − α)·θ_0 + α·θ_1 for floating tensors; any other tensor must be equal in both."""
    if theta0.keys() != theta1.keys():
        raise ValueError(f"the two models differ in weights: {sorted(theta0.keys() ^ theta1.keys())[:5]} ...")
    out = {}
    for key, w0 in theta0.items():
        w1 = theta1[key]
        if w0.shape != w1.shape:
            raise ValueError(f"{key}: shape {tuple(w0.shape)} vs {tuple(w1.shape)}: not the same architecture")
        if w0.is_floating_point():
            out[key] = torch.lerp(w0.float(), w1.float(), alpha).to(w0.dtype)
        elif torch.equal(w0, w1):
            out[key] = w0
        else:
            raise ValueError(f"{key}: non-float tensors differ between the two models")
    return out


def axis_value(results: dict[str, dict], patterns: list[str]) -> float | None:
    """Mean of the suite figures whose ``benchmark/metric`` key matches one of ``patterns``."""
    values = [
        v
        for name, figures in results.items()
        for metric, v in figures.items()
        if isinstance(v, float) and any(fnmatch.fnmatchcase(f"{name}/{metric}", p) for p in patterns)
    ]
    return sum(values) / len(values) if values else None


def adapter_states(module: str, zeroshot: str, finetuned: str) -> tuple[Any, dict, dict]:
    """The model of ``finetuned`` (a checkpoint of ``module``) and the trainable tensors of θ_0 (``"base"``: its
    ``zero_shot_state()``; else another checkpoint) and θ_1."""
    from zoo.loading import load_model

    model, _ = load_model(finetuned, module, device="cpu")
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    state1 = {name: param.detach().clone() for name, param in model.named_parameters() if name in names}
    if zeroshot == "base":
        if not hasattr(model, "zero_shot_state"):
            raise ValueError(f"{module} has no zero_shot_state(): give --zeroshot a checkpoint")
        return model, model.zero_shot_state(), state1
    other = dict(load_model(zeroshot, module, device="cpu")[0].named_parameters())
    return model, {name: other[name].detach().clone() for name in names if name in other}, state1


def wise_ft(
    theta0: OpenCLIPBackbone | dict[str, torch.Tensor],
    theta1: OpenCLIPBackbone | dict[str, torch.Tensor],
    benchmarks_config: str | Path,
    alphas: list[float],
    batch_size: int = 128,
    num_workers: int = 2,
    model: Any = None,
) -> dict[str, Any]:
    """Suite figures of every interpolation point, plus each point's axis summaries. θ's are open_clip backbones,
    or (with ``model``) state dicts of ``model``'s trainable tensors (:func:`adapter_states`)."""
    import zoo

    if model is None:
        state0, state1 = theta0.open_clip_state_dict(), theta1.open_clip_state_dict()
        model = zoo.CLIP(backbone={"model_name": theta0.model_name, "model_cfg": theta0.model_cfg})
        load = model.backbone.load_open_clip_state_dict
    else:
        state0, state1 = theta0, theta1
        load = functools.partial(model.load_state_dict, strict=False)  # the trainable tensors only
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    benchmarks = suite_benchmarks(benchmarks_config, model)
    points = []
    for alpha in alphas:
        load(interpolate(state0, state1, alpha))
        results = evaluate_suite(model, benchmarks, batch_size=batch_size, num_workers=num_workers)
        summary = {axis: axis_value(results, patterns) for axis, patterns in AXES.items()}
        print(f"alpha {alpha:.2f}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in summary.items() if v is not None))
        points.append({"alpha": alpha, **summary, "benchmarks": results})
    return {"axes": AXES, "points": points, "model": describe_model(model)}


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Compositionality (y) against zero-shot classification and retrieval (x), one point per α."""
    plt = pyplot()

    points = report["points"]
    panels = [axis for axis in ("zero_shot", "retrieval") if all(p[axis] is not None for p in points)]
    if not panels or any(p["compositionality"] is None for p in points):
        raise ValueError("the suite reported no compositional accuracy or no zero-shot / retrieval figure to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, axis in zip(axes[0], panels):
        xs = [100 * p[axis] for p in points]
        ys = [100 * p["compositionality"] for p in points]
        ax.plot(xs, ys, "-o", color="tab:blue", markersize=4)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"{p['alpha']:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.scatter(xs[:1], ys[:1], color="tab:gray", zorder=3, label="θ0 (α=0)")
        ax.scatter(xs[-1:], ys[-1:], color="tab:red", zorder=3, label="θ1 (α=1)")
        ax.set_xlabel({"zero_shot": "zero-shot classification top-1 (%)", "retrieval": "retrieval R@1 (%)"}[axis])
        ax.set_ylabel("compositional accuracy (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("WiSE-FT: θ = (1 − α)·θ0 + α·θ1")
    save_figure(fig, path)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--zeroshot", required=True, help="θ0: .ckpt, open_clip name, local-dir: or base (--module)")
    parser.add_argument("--zeroshot-pretrained", default=None, help="open_clip pretrained tag of θ0")
    parser.add_argument("--finetuned", required=True, help="θ1: .ckpt, open_clip name or local-dir:")
    parser.add_argument("--finetuned-pretrained", default=None, help="open_clip pretrained tag of θ1")
    parser.add_argument("--module", default=None, help="a zoo method over a frozen base (zoo.VladVA): θ's adapters")
    parser.add_argument("--benchmarks", default="eval/suite", help="suite YAML: a path or a packaged config name")
    parser.add_argument("--alphas", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(11)])
    parser.add_argument("--out", default="wise_ft")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    if any(not 0 <= a <= 1 for a in args.alphas):
        parser.error(f"alphas must lie in [0, 1], got {args.alphas}")
    try:
        benchmarks_config = resolve(args.benchmarks)
    except FileNotFoundError as error:
        parser.error(str(error))
    model = None
    if args.module:
        model, theta0, theta1 = adapter_states(args.module, args.zeroshot, args.finetuned)
    else:
        theta0 = load_backbone(args.zeroshot, args.zeroshot_pretrained)
        theta1 = load_backbone(args.finetuned, args.finetuned_pretrained)
    report = wise_ft(theta0, theta1, benchmarks_config, args.alphas, args.batch_size, args.num_workers, model)
    report.update(zeroshot=args.zeroshot, finetuned=args.finetuned, benchmarks_config=str(benchmarks_config))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wise_ft.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, out / "wise_ft.png")
    print(f"wrote {out / 'wise_ft.json'} and {out / 'wise_ft.png'}")
    return report


def console() -> None:
    """The ``vlzoo-wise-ft`` console script."""
    main(prog="vlzoo-wise-ft")


if __name__ == "__main__":
    main()
