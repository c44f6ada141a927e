"""SPEC 6 geometry: masks move with a flipped image; grid-breaking augmentations and foreign
mask sets are refused."""

from __future__ import annotations

import pytest
import torch
from skimage import data as skdata
from torchvision.transforms.v2 import functional as TF

from helpers import tiny_vit
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.core.interactions import awd_windows, dip_keep, dip_order, uncertainty_map
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.errors import MaskError
from winft_lightning.data.geometry import (
    check_augmentations,
    check_mask_geometry,
    hflip_dip_order,
    hflip_windows,
    mirror_index,
)

GRID = (8, 8)  # 32 px, patch 4
P = 4


def astronaut() -> torch.Tensor:
    img = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    return TF.resize(img, 32, antialias=True).float().div(255).unsqueeze(0)  # [1, 3, 32, 32]


def pixel_regions(windows: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` windows -> ``[N, 32, 32]`` bool: the pixels each patch's window covers."""
    ys = torch.arange(32).view(32, 1) // P
    xs = torch.arange(32).view(1, 32) // P
    w = windows.view(-1, 4, 1, 1)
    return (xs >= w[:, 0]) & (xs <= w[:, 2]) & (ys >= w[:, 1]) & (ys <= w[:, 3])


def patch_pixels(p: int) -> tuple[slice, slice]:
    y, x = divmod(p, GRID[1])
    return slice(y * P, (y + 1) * P), slice(x * P, (x + 1) * P)


def test_hflip_moves_windows_and_dip_with_a_real_image():
    image = astronaut()
    model = tiny_vit(img_size=32)
    u = uncertainty_map(iter_block_attention(model, image))
    win, order = awd_windows(u, 0.05, GRID)[0], dip_order(u)[0]
    assert len({tuple(w) for w in win.tolist()}) > 4  # a non-trivial set of windows
    flipped = image.flip(-1)
    fwin, forder = hflip_windows(win, GRID), hflip_dip_order(order, GRID)
    regions, fregions = pixel_regions(win), pixel_regions(fwin)
    mirror = mirror_index(GRID)
    for p in range(64):
        q = int(mirror[p])  # the patch of the flipped image showing p's pixels
        ys, xs = patch_pixels(p)
        fys, fxs = patch_pixels(q)
        torch.testing.assert_close(flipped[0, :, fys, fxs], image[0, :, ys, xs].flip(-1))
        # the window of that patch covers exactly the mirrored pixels of p's window
        assert torch.equal(fregions[q], regions[p].flip(-1))
        fw = fwin[q]
        assert fw[0] <= q % 8 <= fw[2] and fw[1] <= q // 8 <= fw[3]
    # DIP: the dropped pixels are the mirrored dropped pixels, for any beta
    for beta in (0.25, 0.5):
        keep, fkeep = dip_keep(order[None], beta)[0], dip_keep(forder[None], beta)[0]
        kept = torch.zeros(32, 32, dtype=torch.bool)
        fkept = torch.zeros(32, 32, dtype=torch.bool)
        for p in range(64):
            kept[patch_pixels(p)] = keep[p]
            fkept[patch_pixels(p)] = fkeep[p]
        assert torch.equal(fkept, kept.flip(-1)) and (~kept).sum() == int(beta * 64) * 16
    # flipping twice is the identity; batched shapes work
    assert torch.equal(hflip_windows(fwin, GRID), win)
    assert torch.equal(hflip_dip_order(forder, GRID), order)
    assert hflip_windows(win[None].repeat(3, 1, 1), GRID).shape == (3, 64, 4)


def test_datamodule_flips_masks_with_the_image(analyzed_shards):
    args = dict(batch_size=20, num_workers=0, img_size=16, mean=(0.3053,) * 3, std=(0.3759,) * 3)
    plain = ShardDataModule(analyzed_shards, use_masks=True, alpha=0.1, hflip=False, **args)
    flip = ShardDataModule(analyzed_shards, use_masks=True, alpha=0.1, hflip=True, **args)
    ref = {}
    for b in plain.make_loader("train"):
        for i, k in enumerate(b["key"]):
            ref[k] = (b["image"][i], b["windows"][i], b["dip_order"][i])
    n_flipped = n_same = 0
    for b in flip.make_loader("train"):
        for i, k in enumerate(b["key"]):
            image, win, order = ref[k]
            if torch.equal(b["image"][i], image):
                assert torch.equal(b["windows"][i], win) and torch.equal(b["dip_order"][i], order)
                n_same += 1
            else:
                torch.testing.assert_close(b["image"][i], image.flip(-1))
                assert torch.equal(b["windows"][i], hflip_windows(win, (4, 4)))
                assert torch.equal(b["dip_order"][i], hflip_dip_order(order, (4, 4)))
                n_flipped += 1
    assert n_flipped > 40 and n_same > 40


def test_grid_breaking_augmentation_refused_for_mask_runs(analyzed_shards):
    with pytest.raises(
        MaskError, match=r"random_resized_crop=True does not keep the patch grid.*use_masks=true"
    ):
        ShardDataModule(analyzed_shards, use_masks=True, alpha=0.1, random_resized_crop=True)
    check_augmentations(False, random_resized_crop=True)  # fine without masks
    check_augmentations(True, hflip=True, random_resized_crop=False)
    with pytest.raises(MaskError, match="use_masks=true needs an alpha"):
        ShardDataModule(analyzed_shards, use_masks=True)


def test_check_mask_geometry_names_both_sides():
    manifest = {
        "root": "/x/masks",
        "teacher": {"sha256": "ab" * 32, "model_name": "vit_b", "img_size": 384, "patch_size": 16}
        | {"grid": [24, 24], "num_prefix_tokens": 1},
    }
    check_mask_geometry(manifest, img_size=384, patch_size=16, grid=(24, 24), num_prefix_tokens=2)
    check_mask_geometry(
        manifest, img_size=[384, 384], patch_size=(16, 16), teacher_sha256="ab" * 32
    )
    cases = [
        (dict(img_size=224, patch_size=16), r"img_size: model 224 vs masks 384"),
        (dict(img_size=384, patch_size=32), r"patch_size: model 32 vs masks 16"),
        (
            dict(img_size=384, patch_size=16, grid=[12, 12]),
            r"grid: model \[12, 12\] vs masks \[24, 24\]",
        ),
        (
            dict(img_size=384, patch_size=16, num_patches=196),
            r"num_patches: model 196 vs masks 576",
        ),
        (dict(img_size=384, patch_size=16, teacher_sha256="cd" * 32), r"cdcdcd.* vs masks abab"),
    ]
    for kw, pattern in cases:
        with pytest.raises(MaskError, match=pattern) as e:
            check_mask_geometry(manifest, **kw)
        assert "/x/masks" in str(e.value)
    with pytest.raises(MaskError, match="carries no masks"):
        check_mask_geometry({"root": "/x/plain"}, img_size=384, patch_size=16)
