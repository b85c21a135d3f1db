"""The command line of REACT's retrieval stage (Liu et al., "Learning Customized Visual Models with
Retrieval-Augmented Knowledge", CVPR 2023): embed a web-scale image-caption corpus once, index it with
FAISS, and retrieve the pairs most relevant to a task's class names.

    vlzoo-retrieval build-index --corpus 'kb/{000000..000009}.tar' \\
        (--checkpoint last.ckpt [--module zoo.CLIP] | --model ViT-B-32-quickgelu --pretrained openai) \\
        --out index_dir [--kind hnsw|flat|ivfpq] [--modality image|text|both] [--batch-size 256]
    vlzoo-retrieval retrieve --index index_dir \\
        --classnames classes.txt | "red circle,blue square" \\
        [--templates default|templates.txt] [--mode t2i|t2t] [--k 100] --out retrieved/ [--dedup-across-classes]

(``python -m callbacks.retrieval_stage`` in the repository, also under ``torchrun -m``.)

``build-index`` embeds every corpus shard (webdataset tars, or fixed-size row chunks of a manifest)
into ``index_dir/embeddings/<shard>.npz`` (L2-normalised image and first-caption embeddings, keys,
all captions), skipping shards already embedded, so an interrupted run resumes; under ``torchrun``
rank r embeds shards r, r + w, ... Rank 0 then builds one inner-product index per modality
(``image.faiss`` / ``text.faiss`` + ``image.json`` / ``text.json`` build parameters) over the shard
files read in corpus order, writes ``metadata.jsonl`` (one row per vector) and prints the
approximate index's recall@k against exact search. ``retrieve`` embeds one query per class x prompt
template, takes the top-K of each query from the image index (``t2i``) or the caption index
(``t2t``), de-duplicates each class's union (and optionally across classes), and writes the
retrieved pairs, original image bytes and captions, as ``out/retrieved-%06d.tar`` webdataset shards
plus ``out/summary.json`` (unique pairs per class).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from callbacks.retrieval_stage.stage import embed_corpus, retrieve
from datamodules.retrieval import MODALITIES, MODE_MODALITY, IndexConfig, build_index
from zoo.loading import load_model
from zoo.losses.distributed import rank


def _device() -> str:
    """This process's GPU under torchrun (``LOCAL_RANK``), else the CPU."""
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"


def _model_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--checkpoint", help="a zoo checkpoint (.ckpt)")
    source.add_argument("--model", help="open_clip model name or local-dir:/path")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    parser.add_argument("--module", default="zoo.CLIP", help="the zoo class of --checkpoint")


def _build_command(args: argparse.Namespace) -> None:
    # torchrun's WORLD_SIZE tells whether to start the process group; after it, rank() is the one reader
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    model, source = load_model(args.checkpoint, args.module, args.model, args.pretrained, _device())
    embed_corpus(
        model,
        args.corpus,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        manifest_chunk=args.manifest_chunk,
        dtype=args.dtype,
        skip_corrupt=args.skip_corrupt,
        model_source=source,
    )
    if rank() == 0:
        config = IndexConfig(**{name: getattr(args, name) for name in IndexConfig.__dataclass_fields__})
        for modality in MODALITIES if args.modality == "both" else (args.modality,):
            build = build_index(args.out, modality, config, args.recall_k, args.recall_queries)
            recall = build["approximate_recall"]
            print(
                f"{modality} index: {build['kind']} {build['params']}, {build['num_vectors']} vectors of dim "
                f"{build['dim']}; recall@{recall['k']} vs exact search on {recall['queries']} corpus queries: "
                f"{recall['recall']:.4f}"
            )
    if dist.is_initialized():
        dist.destroy_process_group()


def _retrieve_command(args: argparse.Namespace) -> None:
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise SystemExit("retrieve runs in one process: start it with python, not torchrun")
    if not Path(args.index).is_dir():
        raise FileNotFoundError(f"index directory {args.index} does not exist")
    if args.checkpoint or args.model:
        model, _ = load_model(args.checkpoint, args.module, args.model, args.pretrained, _device())
    else:
        index = Path(args.index) / f"{MODE_MODALITY[args.mode]}.json"
        if not index.is_file():
            raise FileNotFoundError(f"{index} does not exist: run build-index (or check --index / --mode)")
        source = json.loads(index.read_text())["model"]["source"]
        if not source:
            raise SystemExit("the index does not record how to load its model: pass --checkpoint or --model")
        model, _ = load_model(
            source.get("checkpoint"),
            source.get("module", "zoo.CLIP"),
            source.get("model"),
            source.get("pretrained"),
            _device(),
        )
    counts = retrieve(
        model,
        args.index,
        args.classnames,
        args.out,
        templates=args.templates,
        mode=args.mode,
        k=args.k,
        dedup_across_classes=args.dedup_across_classes,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    for name, count in counts.items():
        print(f"{name}: {count} unique pairs")
    print(f"{sum(counts.values())} pairs for {len(counts)} classes in {args.out} (summary.json)")


def main(argv: list[str] | None = None, prog: str = "python -m callbacks.retrieval_stage") -> None:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-index", help="embed a corpus and build its FAISS index")
    build.add_argument("--corpus", required=True, nargs="+", help="webdataset URLs / brace patterns, or a manifest")
    _model_arguments(build, required=True)
    build.add_argument("--out", required=True, help="index directory")
    build.add_argument("--kind", default="hnsw", choices=["hnsw", "flat", "ivfpq"])
    defaults = IndexConfig()
    for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "pq_nbits", "nprobe"):
        build.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    build.add_argument("--modality", default="both", choices=["image", "text", "both"])
    build.add_argument("--batch-size", type=int, default=256)
    build.add_argument("--num-workers", type=int, default=4)
    build.add_argument("--manifest-chunk", type=int, default=10_000, help="manifest rows per resumable shard")
    build.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored embeddings")
    build.add_argument("--skip-corrupt", action="store_true", help="skip unreadable samples instead of failing")
    build.add_argument("--recall-k", type=int, default=10)
    build.add_argument("--recall-queries", type=int, default=1000)
    build.set_defaults(run=_build_command)

    fetch = commands.add_parser("retrieve", help="retrieve image-caption pairs for class names")
    fetch.add_argument("--index", required=True, help="index directory of build-index")
    fetch.add_argument("--classnames", required=True, help="file (one per line / JSON list) or 'a,b,c'")
    fetch.add_argument("--templates", default="default", help="'default' (80 OpenAI ImageNet) or a file")
    fetch.add_argument("--mode", default="t2i", choices=sorted(MODE_MODALITY))
    fetch.add_argument("--k", type=int, default=100)
    fetch.add_argument("--out", required=True)
    fetch.add_argument("--dedup-across-classes", action="store_true")
    fetch.add_argument("--batch-size", type=int, default=256)
    fetch.add_argument("--shard-size", type=int, default=10_000, help="samples per output shard")
    _model_arguments(fetch, required=False)
    fetch.set_defaults(run=_retrieve_command)

    args = parser.parse_args(argv)
    args.run(args)


def console() -> None:
    """The ``vlzoo-retrieval`` console script."""
    main(prog="vlzoo-retrieval")


if __name__ == "__main__":
    main()
