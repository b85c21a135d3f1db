"""REACT's retrieval stage on a tiny corpus: embedding, FAISS indexes, queries, output shards."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from PIL import Image

import zoo
from callbacks.retrieval_stage import embed_corpus, embed_queries, main, retrieve, stage
from datamodules.retrieval import (
    IndexConfig,
    approximate_recall,
    build_faiss_index,
    build_index,
    list_corpus_shards,
    load_classnames,
    load_embeddings,
    load_index,
    load_templates,
    search_classes,
)
from datamodules.sources import WebDatasetSource
from tests.conftest import TINY_MODEL_CFG, free_port

CLASSES = ["red circle", "blue square"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]
# (shard, sample) -> a caption identical to one query prompt: T2T must rank it first for its class
PLANTED = {(1, 5): "a photo of a red circle.", (2, 7): "a drawing of a blue square."}
WORDS = ["cat", "dog", "tree", "car", "house", "boat", "bird", "lamp", "cup", "shoe"]


def _model(seed=0):
    torch.manual_seed(seed)
    return zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG}).eval()


def _write_corpus(root):
    """3 shards x 20 random images (shard 2 as JPEG) with two captions each; returns the brace pattern."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(3):
        ext = "jpg" if s == 2 else "png"
        with wds.TarWriter(str(root / f"kb-{s:06d}.tar"), encoder=False) as sink:
            for i in range(20):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    buffer, format=ext.replace("jpg", "jpeg")
                )
                a, b = rng.choice(WORDS, 2)
                caption = PLANTED.get((s, i), f"a {a} number {20 * s + i} next to a {b}")
                meta = {"captions": [caption, f"another caption {s}-{i}"]}
                sink.write(
                    {
                        "__key__": f"s{s}-{i:03d}",
                        ext: buffer.getvalue(),
                        "txt": caption.encode(),
                        "json": json.dumps(meta).encode(),
                    }
                )
    return str(root / "kb-{000000..000002}.tar")


def _raw_samples(urls):
    return {
        s["__key__"]: s
        for s in wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The corpus embedded once (float32) with HNSW image and text indexes."""
    root = tmp_path_factory.mktemp("react")
    pattern = _write_corpus(root / "kb")
    model = _model()
    embed_corpus(model, pattern, root / "index", batch_size=8, num_workers=0, dtype="float32")
    builds = {
        m: build_index(root / "index", m, IndexConfig(), recall_k=5, recall_queries=1000) for m in ("image", "text")
    }
    return {"root": root, "pattern": pattern, "index": root / "index", "model": model, "builds": builds}


def _copy_index(built, dest, modality, config):
    """Another index over the same embeddings (no re-embedding)."""
    shutil.copytree(built["index"] / "embeddings", dest / "embeddings")
    shutil.copy(built["index"] / "corpus.json", dest / "corpus.json")
    return build_index(dest, modality, config, recall_k=5)


def _queries(model):
    return embed_queries(model, CLASSES, TEMPLATES, batch_size=4)


def _row(metadata, shard, key):
    return next(i for i, m in enumerate(metadata) if m["shard"] == shard and m["key"] == key)


def test_corpus_listing_and_metadata_order(built):
    shards = list_corpus_shards(built["pattern"])
    assert [s.name for s in shards] == ["kb-000000", "kb-000001", "kb-000002"]
    vectors, metadata = load_embeddings(built["index"], "image")
    assert vectors.shape == (60, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert [m["key"] for m in metadata] == [f"s{s}-{i:03d}" for s in range(3) for i in range(20)]
    assert metadata[_row(metadata, "kb-000001", "s1-005")]["captions"] == [
        "a photo of a red circle.",
        "another caption 1-5",
    ]
    text, _ = load_embeddings(built["index"], "text")
    assert not np.allclose(text, vectors)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_t2t_ranks_planted_captions_first(built, tmp_path, kind):
    _copy_index(built, tmp_path, "text", IndexConfig(kind=kind))
    index = load_index(tmp_path, "text")
    prompts, queries = _queries(built["model"])
    scores, rows = index.search(queries, 3)
    for (s, i), caption in PLANTED.items():
        q = [p for ps in prompts for p in ps].index(caption)
        assert rows[q, 0] == _row(index.metadata, f"kb-{s:06d}", f"s{s}-{i:03d}")
        assert scores[q, 0] == pytest.approx(1.0, abs=1e-4)
    hits = search_classes(index, queries, prompts, k=3)
    assert index.metadata[hits[0][0].row]["captions"][0] == "a photo of a red circle."
    assert hits[0][0].query == "a photo of a red circle."
    assert index.metadata[hits[1][0].row]["captions"][0] == "a drawing of a blue square."


def test_t2i_and_t2t_search_their_own_index_exactly(built):
    prompts, queries = _queries(built["model"])
    results = {}
    for mode, modality in (("t2i", "image"), ("t2t", "text")):
        index = load_index(built["index"], modality)
        vectors, _ = load_embeddings(built["index"], modality)
        _, rows = index.search(queries, 5)
        brute = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5]
        assert (rows[:, 0] == brute[:, 0]).all()  # top-1 = exact argmax of query . corpus embedding
        assert all(set(r) == set(b) for r, b in zip(rows, brute))
        results[mode] = {h.row for hits in search_classes(index, queries, prompts, k=5) for h in hits}
    assert results["t2i"] != results["t2t"]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_saved_index_reloads_with_same_results_and_parameters(built, tmp_path, kind):
    config = IndexConfig(kind=kind, hnsw_m=16, ef_construction=100, ef_search=64)
    build = _copy_index(built, tmp_path, "image", config)
    recorded = json.loads((tmp_path / "image.json").read_text())
    assert recorded == json.loads(json.dumps(build))
    assert recorded["kind"] == kind and recorded["modality"] == "image"
    assert recorded["num_vectors"] == 60 and recorded["dim"] == 32
    assert recorded["model"]["description"]["model_name"] == "t"
    expected = {"M": 16, "efConstruction": 100, "efSearch": 64} if kind == "hnsw" else {}
    assert recorded["params"] == expected
    loaded = load_index(tmp_path, "image")
    if kind == "hnsw":
        assert (loaded.index.hnsw.efSearch, loaded.index.hnsw.efConstruction) == (64, 100)
    _, queries = _queries(built["model"])
    vectors, _ = load_embeddings(tmp_path, "image")
    fresh_scores, fresh_rows = build_faiss_index(vectors, config).search(queries, 10)
    scores, rows = loaded.search(queries, 10)
    assert (rows == fresh_rows).all() and np.allclose(scores, fresh_scores)
    assert len(loaded.metadata) == 60


def test_default_hnsw_parameters_are_explicit_and_recall_is_reported(built):
    for modality, build in built["builds"].items():
        assert build["params"] == {"M": 32, "efConstruction": 200, "efSearch": 128}
        assert build["approximate_recall"] == {"k": 5, "queries": 60, "recall": 1.0}
        assert approximate_recall(built["index"], 1000, k=10, modality=modality) == 1.0
    _, queries = _queries(built["model"])
    assert approximate_recall(built["index"], queries, k=10, modality="image") == 1.0


def test_ivfpq_needs_enough_training_vectors(built, tmp_path):
    with pytest.raises(ValueError, match="needs at least 1024 training vectors .* got 60"):
        _copy_index(built, tmp_path / "a", "image", IndexConfig(kind="ivfpq"))
    with pytest.raises(ValueError, match="pq_m=5 must divide the embedding dimension 32"):
        _copy_index(built, tmp_path / "b", "image", IndexConfig(kind="ivfpq", nlist=2, pq_m=5, pq_nbits=4))
    build = _copy_index(
        built, tmp_path / "c", "image", IndexConfig(kind="ivfpq", nlist=2, pq_m=4, pq_nbits=4, nprobe=2)
    )
    assert build["params"] == {"nlist": 2, "pq_m": 4, "pq_nbits": 4, "nprobe": 2}
    assert 0 < build["approximate_recall"]["recall"] <= 1
    loaded = load_index(tmp_path / "c", "image")
    assert loaded.index.nprobe == 2 and loaded.index.ntotal == 60


def test_deduplication_within_and_across_classes(built):
    index = load_index(built["index"], "image")
    prompts, queries = _queries(built["model"])
    scores, rows = index.search(queries, 10)
    hits = search_classes(index, queries, prompts, k=10)
    for c, class_hits in enumerate(hits):
        qs = [2 * c, 2 * c + 1]
        best = {}
        for q in qs:
            for score, row in zip(scores[q], rows[q]):
                best[int(row)] = max(best.get(int(row), -np.inf), float(score))
        assert [h.row for h in class_hits] == sorted(best, key=lambda r: (-best[r], r))  # union, best first
        assert len(best) < 20  # some row was found by both templates and is counted once
        assert all(h.score == pytest.approx(best[h.row]) for h in class_hits)
    everything = search_classes(index, queries, prompts, k=60)  # every row, for both classes
    assert all(len(class_hits) == 60 for class_hits in everything)
    split = search_classes(index, queries, prompts, k=60, dedup_across_classes=True)
    owners = {h.row: c for c, class_hits in enumerate(split) for h in class_hits}
    assert sum(len(class_hits) for class_hits in split) == len(owners) == 60
    score = [{h.row: h.score for h in class_hits} for class_hits in everything]
    assert all(owners[r] == (0 if score[0][r] >= score[1][r] else 1) for r in owners)
    assert all(split[0]) and all(split[1])


def test_retrieved_shards_read_back_with_original_bytes(built, tmp_path):
    out = tmp_path / "retrieved"
    counts = retrieve(
        built["model"], built["index"], ",".join(CLASSES), out, templates=TEMPLATES, mode="t2t", k=3, shard_size=4
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs_per_class"] == counts and summary["mode"] == "t2t" and summary["k"] == 3
    shards = sorted(str(p) for p in out.glob("retrieved-*.tar"))
    assert len(shards) == -(-sum(counts.values()) // 4)
    records = list(WebDatasetSource(shards))
    raw = _raw_samples(shards)
    source = _raw_samples(sorted(str(p) for p in (built["root"] / "kb").glob("*.tar")))
    assert len(records) == len(raw) == sum(counts.values())
    per_class = {}
    for record in records:
        meta = json.loads(raw[record["key"]]["json"])
        original = source[meta["source_key"]]
        original_meta = json.loads(original["json"])
        assert record["captions"] == meta["captions"] == original_meta["captions"]
        ext = "jpg" if "jpg" in original else "png"
        assert raw[record["key"]][ext] == original[ext]  # the original image bytes, not re-encoded
        assert raw[record["key"]]["txt"] == original["txt"]
        assert meta["class"] == CLASSES[meta["class_index"]] and int(raw[record["key"]]["cls"]) == meta["class_index"]
        assert meta["query"] in [t.format(c=meta["class"]) for t in TEMPLATES]
        per_class.setdefault(meta["class"], []).append(meta)
    assert {c: len(m) for c, m in per_class.items()} == counts
    red = max(per_class["red circle"], key=lambda m: m["score"])
    assert red["source_key"] == "s1-005" and red["source_shard"] == "kb-000001"
    with pytest.raises(FileExistsError, match="already holds retrieved"):
        retrieve(built["model"], built["index"], CLASSES, out, templates=TEMPLATES, mode="t2t", k=3)


def test_loader_workers_keep_each_shards_order(built, tmp_path):
    embed_corpus(built["model"], built["pattern"], tmp_path, batch_size=3, num_workers=2, dtype="float32")
    for modality in ("image", "text"):
        vectors, metadata = load_embeddings(tmp_path, modality)
        reference, reference_metadata = load_embeddings(built["index"], modality)
        assert metadata == reference_metadata and np.allclose(vectors, reference, atol=1e-5)


def test_embedding_resumes_by_shard(built, tmp_path, monkeypatch):
    calls = []
    embed = stage._embed_shard
    monkeypatch.setattr(
        stage, "_embed_shard", lambda model, shard, *a: calls.append(shard.name) or embed(model, shard, *a)
    )
    embed_corpus(built["model"], built["pattern"], tmp_path, batch_size=16, num_workers=0)
    assert calls == ["kb-000000", "kb-000001", "kb-000002"]
    files = sorted((tmp_path / "embeddings").glob("*.npz"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert not list((tmp_path / "embeddings").glob(".*"))  # no temporary files left
    embed_corpus(built["model"], built["pattern"], tmp_path, batch_size=16, num_workers=0)
    assert len(calls) == 3 and [f.stat().st_mtime_ns for f in files] == mtimes
    files[1].unlink()
    embed_corpus(built["model"], built["pattern"], tmp_path, batch_size=16, num_workers=0)
    assert calls[3:] == ["kb-000001"]
    vectors, _ = load_embeddings(tmp_path, "image")  # float16 by default
    reference, _ = load_embeddings(built["index"], "image")
    assert np.allclose(vectors, reference, atol=2e-3)
    with pytest.raises(ValueError, match="embedded with another model"):
        embed_corpus(_model(seed=1), built["pattern"], tmp_path, num_workers=0)


def test_manifest_corpus_is_chunked_into_shards(built, tmp_path):
    source = _raw_samples(built["pattern"].replace("{000000..000002}", "000000"))
    rows = []
    for key, sample in sorted(source.items())[:7]:
        (tmp_path / f"{key}.png").write_bytes(sample["png"])
        rows.append({"image": f"{key}.png", "captions": json.loads(sample["json"])["captions"], "key": key})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shards = embed_corpus(
        built["model"], str(manifest), tmp_path / "index", batch_size=4, num_workers=0, manifest_chunk=3
    )
    assert [(s.name, s.rows) for s in shards] == [
        ("manifest-000000", (0, 3)),
        ("manifest-000001", (3, 6)),
        ("manifest-000002", (6, 7)),
    ]
    build_index(tmp_path / "index", "text", IndexConfig(kind="flat"))
    counts = retrieve(built["model"], tmp_path / "index", CLASSES, tmp_path / "out", TEMPLATES, mode="t2t", k=2)
    raw = _raw_samples(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")))
    assert len(raw) == sum(counts.values()) > 0
    for sample in raw.values():
        meta = json.loads(sample["json"])
        assert sample["png"] == source[meta["source_key"]]["png"]


def test_clear_errors(built, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards matched"):
        list_corpus_shards(str(tmp_path / "nothing-{000..003}.tar"))
    with pytest.raises(FileNotFoundError, match="index directory .* does not exist"):
        load_index(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no image index"):
        load_index(tmp_path / "empty", "image")
    with pytest.raises(ValueError, match="empty class list"):
        load_classnames(" , ")
    with pytest.raises(FileNotFoundError, match="class-name file .* does not exist"):
        load_classnames(str(tmp_path / "classes.txt"))
    with pytest.raises(ValueError, match="duplicate class names"):
        load_classnames(["cat", "cat"])
    with pytest.raises(ValueError, match="needs one class-name placeholder"):
        load_templates(["a photo."])
    assert len(load_templates("default")) == 80 and load_templates(None)[0] == "a bad photo of a {c}."
    wide = dict(TINY_MODEL_CFG, embed_dim=16)
    torch.manual_seed(0)
    other = zoo.CLIP(backbone={"model_name": "t", "model_cfg": wide}).eval()
    with pytest.raises(ValueError, match="dimension 16, the index in 32"):
        retrieve(other, built["index"], CLASSES, tmp_path / "out", TEMPLATES)
    with pytest.raises(ValueError, match="another model"):
        retrieve(_model(seed=1), built["index"], CLASSES, tmp_path / "out", TEMPLATES)


def test_command_line_builds_and_retrieves(built, tmp_path, capsys):
    built["model"].export_open_clip(tmp_path / "export")
    index = tmp_path / "index"
    main(
        [
            "build-index",
            "--corpus",
            built["pattern"],
            "--model",
            f"local-dir:{tmp_path / 'export'}",
            "--out",
            str(index),
            "--kind",
            "flat",
            "--modality",
            "text",
            "--batch-size",
            "16",
            "--num-workers",
            "0",
        ]
    )
    assert "recall@10 vs exact search on 60 corpus queries: 1.0000" in capsys.readouterr().out
    assert json.loads((index / "text.json").read_text())["model"]["source"]["model"].startswith("local-dir:")
    (tmp_path / "classes.txt").write_text("red circle\nblue square\n")
    (tmp_path / "templates.json").write_text(json.dumps(TEMPLATES))
    main(
        [
            "retrieve",
            "--index",
            str(index),
            "--classnames",
            str(tmp_path / "classes.txt"),
            "--templates",
            str(tmp_path / "templates.json"),
            "--mode",
            "t2t",
            "--k",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert "red circle: " in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["templates"] == TEMPLATES and set(summary["pairs_per_class"]) == set(CLASSES)


def _worker(rank, port, pattern, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    embed_corpus(_model(), pattern, out, batch_size=8, num_workers=0, dtype="float32")
    dist.destroy_process_group()



@pytest.mark.slow
def test_two_processes_embed_like_one(built, tmp_path):
    mp.spawn(_worker, args=(free_port(), built["pattern"], str(tmp_path)), nprocs=2, join=True)
    for modality in ("image", "text"):
        one, one_meta = load_embeddings(built["index"], modality)
        two, two_meta = load_embeddings(tmp_path, modality)
        assert two_meta == one_meta
        assert np.allclose(two, one, atol=1e-6)
    build = build_index(tmp_path, "image", IndexConfig(kind="flat"))
    assert build["num_vectors"] == 60
    loaded = load_index(tmp_path, "image")
    assert loaded.metadata == load_index(built["index"], "image").metadata
    assert np.allclose(loaded.index.reconstruct_n(0, 60), load_embeddings(built["index"], "image")[0], atol=1e-6)
