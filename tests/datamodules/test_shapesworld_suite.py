import json

from datamodules.benchmarks.shapesworld import spatial_benchmarks
from datamodules.shapesworld import SPATIAL_RELATIONS, is_true, parse_description, spatial_set, write_spatial_benchmark
from datamodules.shapesworld.scene import SceneObject
from datamodules.shapesworld.spatial import PLACEMENTS


def _scene_of(sample, relation):
    from datamodules.shapesworld import Scene

    a_desc = parse_description(sample["captions"][relation])
    (row_a, col_a), (row_b, col_b) = PLACEMENTS[relation]
    a = SceneObject(a_desc.first.shape, a_desc.first.color, a_desc.first.size, row_a, col_a)
    b = SceneObject(a_desc.second.shape, a_desc.second.color, a_desc.second.size, row_b, col_b)
    return Scene((a, b))


def test_each_image_shows_exactly_its_own_caption():
    for index in range(20):
        sample = spatial_set(index)
        for relation in SPATIAL_RELATIONS:
            scene = _scene_of(sample, relation)
            truths = [is_true(scene, parse_description(sample["captions"][r])) for r in SPATIAL_RELATIONS]
            assert truths == [r == relation for r in SPATIAL_RELATIONS]
            # the swapped caption "B rel A" holds exactly for the opposite arrangement
            assert is_true(scene, parse_description(sample["swapped"][relation])) is False
        assert spatial_set(index)["captions"] == sample["captions"]  # deterministic
    assert spatial_set(0)["images"]["left_of"].tobytes() == spatial_set(0)["images"]["left_of"].tobytes()


def test_spatial_benchmarks_structure(tmp_path):
    path = write_spatial_benchmark(tmp_path, n=3, image_size=32)
    spatial, wino, mmvp = spatial_benchmarks(path)
    assert (spatial.protocol, wino.protocol, mmvp.protocol) == ("whatsup", "winoground", "mmvp")
    assert len(spatial.items) == 12 and len(wino.items) == 6 and len(mmvp.items) == 6
    record = json.loads(path.read_text())[0]
    right_of = next(i for i in spatial.items if i.id == f"{record['key']}/right_of")
    assert right_of.meta == {
        "answer": 1,
        "pair": f"{record['key']}/left_of-right_of",
        "set": record["key"],
        "caption_pair": (1, 0),
    }
    assert right_of.texts[right_of.meta["answer"]] == record["captions"]["right_of"]
    first = wino.items[0]
    assert first.texts == [record["captions"]["left_of"], record["swapped"]["left_of"]]
    assert [ref.path.endswith(f"{record['key']}_{r}.png") for ref, r in zip(first.images, ("left_of", "right_of"))] == [
        True,
        True,
    ]
