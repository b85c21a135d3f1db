"""Prompt analysis of a VladVA checkpoint (Ouali, Bulat et al., "Discriminative Fine-tuning of LVLMs", Sec. 3.1).

    python -m callbacks.prompts --checkpoint last.ckpt [--prompts prompts.yaml] [--out DIR] [--n 256] \\
        [--batch-size 32] [--split val] [--device cuda]

For each handcrafted prompt pair the model is measured twice: ``before`` (the base LVLM: LoRA off, soft prompts off,
that wording) and ``after`` (LoRA on, soft prompts off, that wording); one more row, ``trained prompts`` / ``after``,
is the model as trained (its own soft prompts or wording). Each row reports, on ``--n`` ShapesWorld images of
``--split`` and all their captions:

- ``entropy``: the mean entropy (nats) of the next-token distribution at the summary token (``lm_head`` at that
  position, softmax over the whole vocabulary), for images and texts;
- ``explained_variance``: the cumulative explained variance of the centred matrix of normalised embeddings (image
  and text): the number of components reaching 90 % and the whole curve;
- ``retrieval``: zero-shot R@1 image→text and text→image (and their mean);
- ``attention_density``: the share of the summary token's attention mass on the image tokens (the paper's Fig. 6),
  averaged over heads, per layer and over layers (the language model runs with eager attention for this).

``--prompts`` is a YAML list (default :data:`DEFAULT_PROMPTS`)::

    - name: paper
      image_prompt: "Summarize the provided image in one word:"
      text_prompt: "Summarize the provided text in one word:"

Writes ``prompt_analysis.json``, ``entropy_vs_retrieval.png``, ``explained_variance.png`` and
``attention_density.png`` under ``--out`` (default ``<checkpoint folder>/prompt_analysis``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from callbacks.plotting import pyplot, save_figure
from callbacks.retrieval import retrieval_recall

TRAINED = "trained prompts"
STATES = ("before", "after")
KEYS = ("name", "image_prompt", "text_prompt")
DEFAULT_PROMPTS: list[dict[str, str]] = [
    {"name": "paper", "image_prompt": "Summarize the provided image in one word:",
     "text_prompt": "Summarize the provided text in one word:"},
    {"name": "e5-v", "image_prompt": "Summary above image in one word:",
     "text_prompt": "Summary above sentence in one word:"},
    {"name": "describe-one-word", "image_prompt": "Describe the image in one word:",
     "text_prompt": "Describe the text in one word:"},
    {"name": "what-one-word", "image_prompt": "What is in the image? Answer in one word:",
     "text_prompt": "What is in the text? Answer in one word:"},
    {"name": "describe", "image_prompt": "Describe the image:", "text_prompt": "Describe the text:"},
]  # fmt: skip


def load_prompts(path: str | Path) -> list[dict[str, str]]:
    """The prompt list of a YAML file, checked: every entry a mapping with ``name``, ``image_prompt`` and
    ``text_prompt`` (strings), names unique."""
    entries = yaml.safe_load(Path(path).read_text())
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty YAML list of {{name, image_prompt, text_prompt}}")
    names = set()
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) else "")
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a mapping with keys {list(KEYS)}")
        missing = [k for k in KEYS if not isinstance(entry.get(k), str) or not entry[k]]
        if missing or set(entry) - set(KEYS):
            raise ValueError(f"{where}: missing or empty {missing}, unknown {sorted(set(entry) - set(KEYS))}")
        if entry["name"] in names or entry["name"] == TRAINED:
            raise ValueError(f"{where}: the name is used twice or reserved ({TRAINED!r})")
        names.add(entry["name"])
    return entries


# ------------------------------------------------------------------------------------------------ measures
def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax over the last dimension."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(embeddings: torch.Tensor) -> torch.Tensor:
    """Cumulative explained variance ``[min(N, D)]`` of the centred ``[N, D]`` matrix (ends at 1)."""
    centred = embeddings.double() - embeddings.double().mean(0)
    power = torch.linalg.svdvals(centred) ** 2
    total = power.sum()
    return torch.ones_like(power) if total == 0 else (power.cumsum(0) / total).clamp(max=1.0)


def components_for(curve: torch.Tensor, share: float = 0.9) -> int:
    """The number of components whose cumulative explained variance reaches ``share``."""
    return min(int((curve < share - 1e-9).sum()) + 1, len(curve))


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """The language model on transformers' eager attention inside the block (the only one that returns attention
    weights), its previous implementation restored after."""
    language_model = model.llava.model.language_model
    previous = language_model.config._attn_implementation
    language_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        language_model.set_attn_implementation(previous)


@contextlib.contextmanager
def summary_attention(model, summary_index: torch.Tensor, image_mask: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Collects, for each decoder layer run inside the block, the share ``[B]`` of each row's summary-token
    attention (averaged over heads) that falls on ``image_mask`` ``[B, L]``: a hook on each layer's attention
    reduces its weights at once (as ``output_attentions`` would give them, without keeping every layer's)."""
    shares: list[torch.Tensor] = []
    rows = torch.arange(len(summary_index))

    def hook(module, args, output) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("no attention weights: run the language model under eager_attention(model)")
        summary = weights[rows, :, summary_index.to(weights.device)].float()  # [B, H, L]
        shares.append((summary * image_mask[:, None, :].to(summary)).sum(-1).mean(-1))

    layers = model.llava.model.language_model.layers
    handles = [layer.self_attn.register_forward_hook(hook) for layer in layers]
    try:
        yield shares
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def tower_pass(model, modality: str, images: Any = None, texts: list[str] | None = None) -> dict[str, torch.Tensor]:
    """One batch through a tower as :meth:`zoo.VladVA.encode_image` / ``encode_text`` run it (the current prompts,
    soft prompts and adapters): ``embeddings`` ``[B, D]`` (normalised), ``entropy`` ``[B]`` at the summary token and
    ``attention`` ``[layers, B]`` (the summary token's attention share on image tokens; needs
    :func:`eager_attention`)."""
    if modality == "image":  # high-res too: each image's own count and size
        pixels, batch = model.image_inputs(images)
    else:
        pixels, batch = None, {k: v.to(model.device) for k, v in model.sequences.texts(list(texts)).items()}
    ids, index = batch[f"{modality}_input_ids"], batch[f"{modality}_summary_index"]
    image_mask = ids == model.llava.config.image_token_id
    with summary_attention(model, index, image_mask) as shares:
        mask, soft = batch[f"{modality}_attention_mask"], batch[f"{modality}_soft_mask"]
        states = model.sequence_states(modality, ids, mask, soft, pixels, batch.get("image_sizes"))
    summary = model.summary(states, index)
    return {
        "embeddings": F.normalize(summary.float(), dim=-1),
        "entropy": entropy(model.llava.lm_head(summary)),
        "attention": torch.stack(shares),
    }


def measure(model, images: Sequence, captions: Sequence[Sequence[str]], batch_size: int = 32) -> dict[str, Any]:
    """Every figure of one model state on ``images`` and their ``captions`` (a list per image)."""
    texts = [c for group in captions for c in group]
    owner = torch.tensor([i for i, group in enumerate(captions) for _ in group])
    runs: dict[str, list[dict[str, torch.Tensor]]] = {"image": [], "text": []}
    with eager_attention(model):
        for start in range(0, len(images), batch_size):
            runs["image"].append(tower_pass(model, "image", images=list(images[start : start + batch_size])))
        for start in range(0, len(texts), batch_size):
            runs["text"].append(tower_pass(model, "text", texts=texts[start : start + batch_size]))
    out: dict[str, Any] = {"entropy": {}, "explained_variance": {}}
    joined = {}
    for modality, parts in runs.items():
        joined[modality] = {k: torch.cat([p[k] for p in parts], dim=-1 if k == "attention" else 0) for k in parts[0]}
        curve = explained_variance(joined[modality]["embeddings"])
        out["entropy"][modality] = float(joined[modality]["entropy"].mean())
        out["explained_variance"][modality] = {"components_90": components_for(curve), "curve": curve.tolist()}
    recall = retrieval_recall(joined["image"]["embeddings"], joined["text"]["embeddings"], owner, ks=(1,))
    out["retrieval"] = {**recall, "mean_R@1": (recall["i2t_R@1"] + recall["t2i_R@1"]) / 2}
    per_layer = joined["image"]["attention"].mean(-1)
    out["attention_density"] = {"mean": float(per_layer.mean()), "per_layer": per_layer.tolist()}
    return out


def analyse(
    model, prompts: list[dict[str, str]], images: Sequence, captions: Sequence[Sequence[str]], out_dir: str | Path,
    batch_size: int = 32,
) -> dict[str, Any]:  # fmt: skip
    """Measures each prompt ``before`` / ``after`` fine-tuning and the model as trained; writes the JSON and the
    three plots to ``out_dir``, prints a table and returns the report."""
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    total = len(prompts) + 1
    for i, prompt in enumerate(prompts, 1):
        wording = {"image_prompt": prompt["image_prompt"], "text_prompt": prompt["text_prompt"]}
        print(f"[{i}/{total}] prompt {prompt['name']!r}: {wording}", flush=True)
        with model.handcrafted(wording):
            with model.adapters_disabled():
                before = measure(model, images, captions, batch_size)
            results[prompt["name"]] = {"before": before, "after": measure(model, images, captions, batch_size)}
    print(f"[{total}/{total}] the model as trained", flush=True)
    results[TRAINED] = {"after": measure(model, images, captions, batch_size)}
    trained = {k: model.sequences.prompts[k] for k in ("image_prompt", "text_prompt")}
    report = {
        "n_images": len(images),
        "n_captions": sum(len(c) for c in captions),
        "prompts": [dict(p) for p in prompts],
        "trained_prompts": {**trained, "soft_prompts": model.soft_prompts is not None,
                            "soft_prompt_words": model.soft_prompt_words()},
        "results": results,
    }  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompt_analysis.json").write_text(json.dumps(report, indent=2))
    plot(results, out)
    print(table(results))
    print(f"wrote {out / 'prompt_analysis.json'} and 3 plots under {out}")
    return report


# ------------------------------------------------------------------------------------------- reporting
def rows(results: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, states in results.items():
        for state, figures in states.items():
            yield name, state, figures


def table(results: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table: one line per prompt and state."""
    head = f"{'prompt':<24} {'state':<7} {'H img':>6} {'H txt':>6} {'k90 i':>5} {'k90 t':>5} "
    lines = [head + f"{'i2t@1':>6} {'t2i@1':>6} {'attn':>6}"]
    for name, state, f in rows(results):
        ev, r = f["explained_variance"], f["retrieval"]
        lines.append(
            f"{name[:24]:<24} {state:<7} {f['entropy']['image']:6.3f} {f['entropy']['text']:6.3f} "
            f"{ev['image']['components_90']:5d} {ev['text']['components_90']:5d} {r['i2t_R@1']:6.3f} "
            f"{r['t2i_R@1']:6.3f} {f['attention_density']['mean']:6.3f}"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], out: Path) -> None:
    """``entropy_vs_retrieval.png``, ``explained_variance.png`` and ``attention_density.png`` in ``out``."""
    plt = pyplot()

    colours = {name: f"C{i % 10}" for i, name in enumerate(results)}
    style = {"before": dict(linestyle="--", marker="o"), "after": dict(linestyle="-", marker="s")}
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, state, f in rows(results):
        x = (f["entropy"]["image"] + f["entropy"]["text"]) / 2
        y = f["retrieval"]["mean_R@1"]
        ax.scatter([x], [y], color=colours[name], marker=style[state]["marker"])
        ax.annotate(f"{name} ({state})", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="mean entropy at the summary token (nats)", ylabel="mean R@1 (i2t, t2i)")
    ax.ticklabel_format(useOffset=False)
    ax.grid(alpha=0.3)
    save_figure(fig, out / "entropy_vs_retrieval.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, modality in zip(axes, ("image", "text")):
        for name, state, f in rows(results):
            curve = f["explained_variance"][modality]["curve"]
            ax.plot(range(1, len(curve) + 1), curve, color=colours[name], linestyle=style[state]["linestyle"],
                    label=f"{name} ({state})")  # fmt: skip
        ax.axhline(0.9, color="grey", linewidth=0.8)
        ax.set(title=f"{modality} embeddings", xlabel="components", ylabel="cumulative explained variance")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    save_figure(fig, out / "explained_variance.png")

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, state, f in rows(results):
        layers = f["attention_density"]["per_layer"]
        ax.plot(range(len(layers)), layers, color=colours[name], label=f"{name} ({state})", **style[state])
    ax.set(xlabel="layer", ylabel="summary-token attention on image tokens", title="attention density (images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "attention_density.png")


# -------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None, prog: str = "python -m callbacks.prompts") -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a zoo.VladVA checkpoint (.ckpt)")
    parser.add_argument("--prompts", default=None, help="YAML list of {name, image_prompt, text_prompt}")
    parser.add_argument("--out", default=None, help="output folder (default <checkpoint folder>/prompt_analysis)")
    parser.add_argument("--n", type=int, default=256, help="ShapesWorld images (with all their captions)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error(f"--n and --batch-size must be positive, got {args.n}, {args.batch_size}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        parser.error(f"no checkpoint at {checkpoint}")
    try:
        prompts = load_prompts(args.prompts) if args.prompts else [dict(p) for p in DEFAULT_PROMPTS]
    except (OSError, ValueError, yaml.YAMLError) as error:
        parser.error(f"bad --prompts: {error}")

    import zoo
    from datamodules.shapesworld import ShapesWorld

    print(f"loading {checkpoint}", flush=True)
    model = zoo.VladVA.load_from_checkpoint(checkpoint, map_location="cpu").to(args.device).eval()
    records = [record for record in ShapesWorld(args.n, split=args.split)]
    out = Path(args.out) if args.out else checkpoint.parent / "prompt_analysis"
    report = analyse(model, prompts, [r["image"] for r in records], [r["captions"] for r in records], out,
                     args.batch_size)  # fmt: skip
    report.update(checkpoint=str(checkpoint), split=args.split)
    (out / "prompt_analysis.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
