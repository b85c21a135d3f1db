"""zoo.backbones.llava.anyres: LLaVA-NeXT AnyRes / LLaVA-1.5-HD geometry in both conventions ("hw" =
transformers, "wh" = the original LLaVA code), against transformers' own functions, processor and a tiny
LlavaNextForConditionalGeneration, and against a transcription of the original algorithm (which takes and returns
(width, height) everywhere). Sizes in the tables are written W×H as in the issue; the module takes (H, W)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.zoo.llava_fixtures import one_thread
from zoo.backbones.llava import anyres
from zoo.backbones.llava.anyres import (
    DEFAULT_PINPOINTS,
    anyres_views,
    divide_into_tiles,
    grid_shape,
    hd_pinpoints,
    merge_tile_features,
    resize_and_pad,
    scaled_pinpoints,
    select_canvas,
    unpad,
    unpadded_shape,
    visual_token_count,
)

__all__ = ["one_thread"]  # fixture, used by name
pytestmark = pytest.mark.usefixtures("one_thread")

TINY, PATCH = 42, 14
TINY_PINPOINTS = scaled_pinpoints(TINY)
GEOMETRIES = {"336": (336, DEFAULT_PINPOINTS), "tiny": (TINY, TINY_PINPOINTS)}
# W×H → (hw grid (rows, cols), hw tokens, wh grid, wh tokens): spatial_unpad with newline, global view first
EXPECTED_336 = {
    (100, 100): ((1, 2), 1176, (2, 1), 1176),
    (200, 100): ((1, 2), 1752, (2, 1), 876),
    (300, 200): ((1, 2), 1464, (2, 1), 976),
    (64, 48): ((1, 2), 1368, (2, 1), 1026),
    (47, 1128): ((3, 1), 936, (3, 1), 792),
    (235, 1128): ((3, 1), 1800, (3, 1), 1656),
    (376, 799): ((3, 1), 1876, (3, 1), 1826),
    (640, 480): ((2, 2), 2340, (2, 2), 2340),
    (480, 640): ((2, 2), 2352, (2, 2), 2352),
    (1920, 1080): ((2, 2), 1948, (2, 2), 1948),
    (500, 300): ((1, 2), 1560, (1, 2), 1560),
    (400, 800): ((2, 1), 1776, (2, 1), 1776),
    (2000, 500): ((1, 3), 1890, (1, 3), 1890),
}
EXPECTED_TINY = {  # 42 px tiles, 14 px patches, pinpoints scaled by 1/8
    (100, 100): ((2, 2), 51, (2, 2), 51),
    (200, 100): ((1, 2), 30, (1, 2), 30),
    (300, 200): ((2, 2), 37, (2, 2), 37),
    (64, 48): ((2, 2), 37, (2, 2), 37),
    (47, 1128): ((3, 1), 27, (3, 1), 27),
    (235, 1128): ((3, 1), 27, (3, 1), 27),
    (376, 799): ((3, 1), 37, (3, 1), 37),
    (640, 480): ((2, 2), 37, (2, 2), 37),
    (480, 640): ((2, 2), 39, (2, 2), 39),
    (1920, 1080): ((2, 2), 37, (2, 2), 37),
    (500, 300): ((2, 2), 37, (2, 2), 37),
    (400, 800): ((2, 1), 33, (2, 1), 33),
    (2000, 500): ((1, 3), 39, (1, 3), 39),
}
EXPECTED = {"336": EXPECTED_336, "tiny": EXPECTED_TINY}


def expected(geometry: str, size_wh: tuple[int, int], order: str) -> tuple[tuple[int, int], int]:
    """(grid, tokens) from the tables."""
    row = EXPECTED[geometry][size_wh]
    return (row[0], row[1]) if order == "hw" else (row[2], row[3])


SIZES = list(EXPECTED_336)  # (W, H)
LATTICE = [(w, h) for w in range(5, 1400, 61) for h in range(3, 1400, 67)]  # (W, H), 23 × 21 sizes


def picture(size_wh: tuple[int, int], seed: int = 0) -> Image.Image:
    """A random RGB image of ``size_wh`` (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size_wh[1], size_wh[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def hw(size_wh: tuple[int, int]) -> tuple[int, int]:
    return size_wh[1], size_wh[0]


# --- a transcription of the original code (llava/mm_utils.py, llava_arch.py): (W, H) in and out ---------------
def ref_select_best_resolution(original_wh, possible_wh):
    width, height = original_wh
    best, best_effective, best_waste = None, 0, float("inf")
    for cw, ch in possible_wh:
        scale = min(cw / width, ch / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cw * ch - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cw, ch), effective, waste
    return best


def ref_grid(original_wh, pinpoints, tile):  # get_anyres_image_grid_shape: (cols, rows)
    width, height = ref_select_best_resolution(original_wh, pinpoints)
    return width // tile, height // tile


def ref_unpad(tensor, original_wh):
    width, height = original_wh
    current_h, current_w = tensor.shape[1:]
    if width / height > current_w / current_h:
        padding = (current_h - int(height * (current_w / width))) // 2
        return tensor[:, padding : current_h - padding, :]
    padding = (current_w - int(width * (current_h / height))) // 2
    return tensor[:, :, padding : current_w - padding]


def ref_merge(crops, original_wh, pinpoints, tile, newline):  # spatial_unpad, crops [1 + n, h·w, D]
    cols, rows = ref_grid(original_wh, pinpoints, tile)
    base, tiles = crops[0], crops[1:]
    side = int(tiles.shape[1] ** 0.5)
    feature = tiles.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
    feature = ref_unpad(feature.flatten(1, 2).flatten(2, 3), original_wh)
    feature = torch.cat((feature, newline[:, None, None].expand(*feature.shape[:-1], 1)), dim=-1)
    return torch.cat((base, feature.flatten(1, 2).transpose(0, 1)), dim=0)


def ref_count(original_wh, pinpoints, tile, patch):
    cols, rows = ref_grid(original_wh, pinpoints, tile)
    side = tile // patch
    return len(ref_merge(torch.zeros(1 + rows * cols, side * side, 1), original_wh, pinpoints, tile, torch.zeros(1)))


def ref_views(image, pinpoints, tile):  # process_anyres_image before the CLIP processor
    cw, ch = ref_select_best_resolution(image.size, pinpoints)
    width, height = image.size
    if cw / width < ch / height:
        new_w, new_h = cw, min(int(np.ceil(height * cw / width)), ch)
    else:
        new_w, new_h = min(int(np.ceil(width * ch / height)), cw), ch
    canvas = Image.new("RGB", (cw, ch), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), ((cw - new_w) // 2, (ch - new_h) // 2))
    tiles = [canvas.crop((x, y, x + tile, y + tile)) for y in range(0, ch, tile) for x in range(0, cw, tile)]
    return [image.resize((tile, tile))] + tiles


# --- transformers fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from zoo.backbones.llava.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(["a tiny text to train on"], vocab_size=280)


def processor(tokenizer, tile: int, pinpoints, pil: bool = True):
    """``LlavaNextProcessor`` with the PIL (``pil``) or torchvision image processor at ``tile``."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    cls = LlavaNextImageProcessorPil if pil else LlavaNextImageProcessor
    ip = cls(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints)
    return LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tiny_next(tokenizer, tile: int, pinpoints):
    """A random ``LlavaNextForConditionalGeneration`` at ``tile`` px, 14 px patches, width 32."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=tile,
        patch_size=PATCH,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config).eval()


def image_tokens(batch, tokenizer) -> list[int]:
    return (batch["input_ids"] == tokenizer.image_token_id).sum(1).tolist()


# --- the table ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["hw", "wh"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_table(geometry, order):
    tile, pins = GEOMETRIES[geometry]
    for size in SIZES:
        grid, tokens = expected(geometry, size, order)
        assert grid_shape(hw(size), pins, tile, order) == grid, size
        assert select_canvas(hw(size), pins, order) == (grid[0] * tile, grid[1] * tile), size
        assert len(anyres_views(picture(size), pins, tile, order)) == 1 + grid[0] * grid[1], size
        assert visual_token_count(hw(size), pins, tile, PATCH, order=order) == tokens, size


def test_table_facts():
    # square images reach the 2×2 maximum; the tiny geometry's odd 3×3 cells split the conventions on 42×42
    assert visual_token_count((1000, 1000), DEFAULT_PINPOINTS, 336, PATCH) == 2928
    assert visual_token_count((42, 42), TINY_PINPOINTS, TINY, PATCH, order="wh") == 25
    assert visual_token_count((42, 42), TINY_PINPOINTS, TINY, PATCH, order="hw") == 24
    assert TINY_PINPOINTS == [[42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]
    assert scaled_pinpoints(336) == DEFAULT_PINPOINTS
    with pytest.raises(ValueError):
        scaled_pinpoints(42, [[100, 336]])


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_original_code(geometry):
    """ "wh" is the original algorithm: grid, unpad (int()) and the merged length, on the table and a lattice."""
    tile, pins = GEOMETRIES[geometry]
    for size in SIZES + LATTICE:
        cols, rows = ref_grid(size, pins, tile)
        assert grid_shape(hw(size), pins, tile, "wh") == (rows, cols), size
        assert visual_token_count(hw(size), pins, tile, PATCH, order="wh") == ref_count(size, pins, tile, PATCH), size


def test_original_views():
    for size in [(200, 100), (47, 113), (130, 60)]:
        image = picture(size, 3)
        ours = anyres_views(image, TINY_PINPOINTS, TINY, "wh")
        theirs = ref_views(image, TINY_PINPOINTS, TINY)
        assert [np.array(v).tolist() for v in ours] == [np.array(v).tolist() for v in theirs], size
    # small images tie on effective area: the original puts them on a portrait canvas, transformers landscape
    assert select_canvas((100, 200), DEFAULT_PINPOINTS, "wh") == (672, 336)
    assert select_canvas((100, 200), DEFAULT_PINPOINTS, "hw") == (336, 672)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_grid_shape_against_transformers(geometry):
    """hw = transformers' get_anyres_image_grid_shape; wh = the same with every pinpoint swapped, or (the
    original code's call) with the image given as (W, H), which returns (cols, rows)."""
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
    )

    tile, pins = GEOMETRIES[geometry]
    swapped = [[b, a] for a, b in pins]
    for size in SIZES + LATTICE:
        assert grid_shape(hw(size), pins, tile, "hw") == get_anyres_image_grid_shape(hw(size), pins, tile)
        assert select_canvas(hw(size), pins, "hw") == select_best_resolution(hw(size), pins)
        rows, cols = grid_shape(hw(size), pins, tile, "hw")
        assert 1 + rows * cols == image_size_to_num_patches(hw(size), pins, tile)  # crops, global included
        rows, cols = grid_shape(hw(size), pins, tile, "wh")
        assert (rows, cols) == get_anyres_image_grid_shape(hw(size), swapped, tile)
        assert (cols, rows) == get_anyres_image_grid_shape(list(size), pins, tile)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_unpad_against_transformers(geometry):
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    tile, pins = GEOMETRIES[geometry]
    side = tile // PATCH
    for size in SIZES + LATTICE:
        for order in ("hw", "wh"):
            rows, cols = grid_shape(hw(size), pins, tile, order)
            grid_map = torch.arange(rows * side * cols * side).view(1, rows * side, cols * side)
            theirs = unpad_image(grid_map, hw(size)) if order == "hw" else ref_unpad(grid_map, size)
            assert torch.equal(unpad(grid_map, hw(size), order), theirs), (size, order)
            assert unpadded_shape(grid_map.shape[1:], hw(size), order) == tuple(theirs.shape[1:])


def test_count_against_processor_336(tokenizer):
    """The count is LlavaNextProcessor's number of <image> tokens (336/14, real images), and its own count on a
    lattice."""
    proc = processor(tokenizer, 336, DEFAULT_PINPOINTS, pil=False)
    batch = proc(images=[picture(s) for s in SIZES], text=["<image>"] * len(SIZES), padding=True, return_tensors="pt")
    assert image_tokens(batch, tokenizer) == [EXPECTED_336[s][1] for s in SIZES]
    assert batch["image_sizes"].tolist() == [list(hw(s)) for s in SIZES]
    for size in LATTICE:
        expected = proc._get_number_of_features(*hw(size), 336, 336) - 1  # "default" drops the CLS slot
        assert visual_token_count(hw(size), DEFAULT_PINPOINTS, 336, PATCH) == expected, size


def test_tiny_model_features(tokenizer):
    """For every size: the processor's token count, transformers' packed features' length, and our merge of the
    tower's per-crop features (with the model's image_newline) equal to the packed features themselves."""
    proc, model = processor(tokenizer, TINY, TINY_PINPOINTS), tiny_next(tokenizer, TINY, TINY_PINPOINTS)
    batch = proc(images=[picture(s) for s in SIZES], text=["<image>"] * len(SIZES), padding=True, return_tensors="pt")
    counts = [visual_token_count(hw(s), TINY_PINPOINTS, TINY, PATCH) for s in SIZES]
    assert counts == [EXPECTED_TINY[s][1] for s in SIZES]
    assert image_tokens(batch, tokenizer) == counts
    inner = model.model
    with torch.no_grad():
        packed = inner.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output
        for i, size in enumerate(SIZES):
            grid = grid_shape(hw(size), TINY_PINPOINTS, TINY)
            crops = batch["pixel_values"][i, : 1 + grid[0] * grid[1]]
            hidden = inner.vision_tower(crops, output_hidden_states=True).hidden_states[-2][:, 1:]
            ours = merge_tile_features(inner.multi_modal_projector(hidden), hw(size), grid, newline=inner.image_newline)
            assert len(packed[i]) == counts[i], size
            torch.testing.assert_close(ours, packed[i], rtol=0, atol=0)


def test_merge_against_pack_image_features(tokenizer):
    """spatial_unpad = LlavaNextModel.pack_image_features (336/14) where unpad removes rows, columns, and where
    transformers' round(x, 7) matters."""
    inner = tiny_next(tokenizer, 336, DEFAULT_PINPOINTS).model
    generator = torch.Generator().manual_seed(0)
    newline = torch.randn(4, generator=generator)
    removed = {}
    for size in [(1920, 1080), (480, 640), (376, 799), (47, 1128)]:
        grid = grid_shape(hw(size), DEFAULT_PINPOINTS, 336)
        crops = torch.randn(1 + grid[0] * grid[1], 576, 4, generator=generator)
        image_sizes = torch.tensor([hw(size)])
        (theirs,), _ = inner.pack_image_features([crops], image_sizes, "default", image_newline=newline)
        ours = merge_tile_features(crops, hw(size), grid, "spatial_unpad", newline)
        assert torch.equal(ours, theirs), size
        full = (grid[0] * 24, grid[1] * 24)
        kept = unpadded_shape(full, hw(size))
        removed[size] = (full[0] - kept[0], full[1] - kept[1])
    assert removed[(1920, 1080)][0] > 0 and removed[(1920, 1080)][1] == 0  # rows
    assert removed[(480, 640)][0] == 0 and removed[(480, 640)][1] > 0  # columns


def test_wh_merge_against_original_code():
    generator = torch.Generator().manual_seed(1)
    newline = torch.randn(3, generator=generator)
    for size in [(42, 42), (376, 799), (47, 1128), (200, 100)]:
        for tile, pins in GEOMETRIES.values():
            grid = grid_shape(hw(size), pins, tile, "wh")
            crops = torch.randn(1 + grid[0] * grid[1], (tile // PATCH) ** 2, 3, generator=generator)
            ours = merge_tile_features(crops, hw(size), grid, "spatial_unpad", newline, order="wh")
            assert torch.equal(ours, ref_merge(crops, size, pins, tile, newline)), (size, tile)


def encoded_tiles(rows: int, cols: int, side: int) -> torch.Tensor:
    """[rows·cols, side², 3] features whose vector is (tile index, cell row, cell column)."""
    t, i, j = torch.meshgrid(torch.arange(rows * cols), torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack((t, i, j), dim=-1).reshape(rows * cols, side * side, 3).float()


def test_stitching_order():
    """The stitched map at (r, c) holds tile (r // h)·cols + c // w's cell (r % h, c % w). (Checked to fail with
    a wrong permute planted in ``stitch``.)"""
    rows, cols, side = 2, 3, 4
    tiles = encoded_tiles(rows, cols, side)
    stitched = merge_tile_features(tiles, (100, 100), (rows, cols), "spatial", global_view=False)
    stitched = stitched.view(rows * side, cols * side, 3)
    for r in range(rows * side):
        for c in range(cols * side):
            assert stitched[r, c].tolist() == [(r // side) * cols + c // side, r % side, c % side], (r, c)
    # spatial_unpad without padding to remove (image shaped like the canvas): the same map with a newline column
    newline = torch.full((3,), -1.0)
    unpadded = merge_tile_features(tiles, (rows * 10, cols * 10), (rows, cols), "spatial_unpad", newline, "hw", False)
    unpadded = unpadded.view(rows * side, cols * side + 1, 3)
    assert torch.equal(unpadded[:, :-1], stitched) and bool((unpadded[:, -1] == -1).all())


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_count_equals_merge_length(geometry):
    tile, pins = GEOMETRIES[geometry]
    side = tile // PATCH
    for size in SIZES:
        for order in ("hw", "wh"):
            grid = grid_shape(hw(size), pins, tile, order)
            for global_view in (True, False):
                crops = torch.zeros(grid[0] * grid[1] + int(global_view), side * side, 1)
                for merge in ("flat", "spatial", "spatial_unpad"):
                    for newline in (torch.zeros(1), None):
                        merged = merge_tile_features(crops, hw(size), grid, merge, newline, order, global_view)
                        count = visual_token_count(
                            hw(size), pins, tile, PATCH, merge, order, global_view, newline=newline is not None
                        )
                        assert len(merged) == count, (size, order, global_view, merge, newline is None)


def test_flat_and_spatial_layouts():
    crops = encoded_tiles(1, 5, 3)  # a global view and a 2×2 grid
    flat = merge_tile_features(crops, (50, 50), (2, 2), "flat")
    assert torch.equal(flat, crops.reshape(-1, 3))
    spatial = merge_tile_features(crops, (50, 50), (2, 2), "spatial")
    assert torch.equal(spatial[:9], crops[0]) and len(spatial) == 45
    assert spatial[9:].view(6, 6, 3)[0, 3].tolist() == [2, 0, 0]  # tile 1 (first row, second column) follows global


@pytest.mark.parametrize("pil", [True, False])
def test_views_against_image_processor(tokenizer, pil):
    """resize_and_pad + divide_into_tiles + the squashed global view = LlavaNextImageProcessor's crops before
    rescale/normalise: exactly for the PIL backend (PIL bicubic, as the original code), within a few grey levels
    on average for the torchvision backend (its bicubic differs)."""
    for tile, pins in GEOMETRIES.values():
        ip = processor(tokenizer, tile, pins, pil=pil).image_processor
        for size in [(200, 100), (47, 113), (640, 480)]:
            image = picture(size, 7)
            theirs = ip(images=[image], do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
            ours = torch.stack(
                [torch.from_numpy(np.array(v)).permute(2, 0, 1) for v in anyres_views(image, pins, tile)]
            )
            assert ours.shape == theirs.shape, (size, tile)
            if pil:
                assert torch.equal(ours, theirs.to(ours.dtype)), (size, tile)
            else:
                assert (ours.float() - theirs.float()).abs().mean() < 0.5, (size, tile)


def test_resize_and_pad_geometry():
    image = picture((200, 100))
    canvas = resize_and_pad(image, (336, 672))  # (h, w): fits exactly
    assert canvas.size == (672, 336) and np.array(canvas).any(axis=2).all()
    canvas = np.array(resize_and_pad(image, (672, 672)))  # 336 rows of image, 168 black rows above and below
    assert not canvas[:168].any() and not canvas[504:].any() and canvas[168:504].any(axis=2).all()
    tiles = divide_into_tiles(Image.fromarray(canvas), 336)
    assert len(tiles) == 4 and np.array_equal(np.array(tiles[1]), canvas[:336, 336:])  # row-major
    views = anyres_views(image, DEFAULT_PINPOINTS, 336, global_view=False)
    assert len(views) == 2 and all(v.size == (336, 336) for v in views)
    assert anyres.fit_size((100, 47), (42, 84)) == (42, 20)  # ceil(47·0.42) = 20


def test_hd():
    """LLaVA-1.5-HD: one fixed canvas + spatial merge (+ global view): 1,280 tokens at 224 px, 2,880 at 336 px,
    for any image; a 1×1 grid without the global view is LLaVA-1.5's own tile features."""
    assert hd_pinpoints((2, 2), 224) == [[448, 448]] and hd_pinpoints((1, 2), 336) == [[336, 672]]
    for tile, tokens in [(224, 1280), (336, 2880)]:
        for size in [(100, 100), (1920, 1080), (47, 1128)]:
            assert grid_shape(hw(size), hd_pinpoints((2, 2), tile), tile) == (2, 2)
            assert visual_token_count(hw(size), hd_pinpoints((2, 2), tile), tile, PATCH, "spatial") == tokens
            side = tile // PATCH
            merged = merge_tile_features(torch.zeros(5, side * side, 1), hw(size), (2, 2), "spatial")
            assert len(merged) == tokens
        no_global = visual_token_count(
            (300, 500), hd_pinpoints((2, 2), tile), tile, PATCH, "spatial", global_view=False
        )
        assert no_global == tokens - (tile // PATCH) ** 2
    features = torch.randn(1, 9, 5)
    assert torch.equal(merge_tile_features(features, (70, 50), (1, 1), "spatial", global_view=False), features[0])
    views = anyres_views(picture((70, 50)), hd_pinpoints((1, 1), TINY), TINY, global_view=False)
    assert len(views) == 1 and views[0].size == (TINY, TINY)


def test_errors():
    with pytest.raises(ValueError):
        merge_tile_features(torch.zeros(4, 9, 1), (50, 50), (2, 2), "spatial")  # 4 crops, 5 expected
    with pytest.raises(ValueError):
        merge_tile_features(torch.zeros(5, 8, 1), (50, 50), (2, 2), "spatial")  # 8 tokens: not a square map
    with pytest.raises(ValueError):
        select_canvas((10, 10), DEFAULT_PINPOINTS, "xy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        visual_token_count((10, 10), DEFAULT_PINPOINTS, 336, 15)
