"""SPEC 9's retrained controls, stored beside the teacher's masks: random windows of AWD's
w x h containing p and a random drop order, each drawn from the image key, read through the
same data path as the masks they control (``data.control=random``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import local_windows
from winft_lightning.core import interactions as ia
from winft_lightning.core.claims import random_windows_like
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.errors import MaskError
from winft_lightning.data.masks import (
    alpha_tag,
    control_generator,
    decode_mask,
    find_member,
    mask_names,
    random_controls,
)
from winft_lightning.data.shards import iter_tar, read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID, N = (4, 4), 16


def stored(root, alpha=0.1):
    """{key: (windows, random windows, order, random order)} of every test image."""
    manifest = read_manifest(root)
    test = manifest["splits"]["test"]
    win_name, dip_name = mask_names(alpha)
    rwin_name, rdip_name = mask_names(alpha, "random")
    out = {}
    for shard, count in zip(test["shards"], test["shard_counts"], strict=True):
        for key, members in iter_tar(root / shard, count):
            arrays = []
            for name, shape in ((win_name, (N, 4)), (rwin_name, (N, 4)), (dip_name, (N,)),
                                (rdip_name, (N,))):  # fmt: skip
                member, enc = find_member(members, name)
                arrays.append(decode_mask(members[member], enc, shape).astype(np.int64))
            out[key] = tuple(arrays)
    return out


def test_random_windows_have_awd_size_contain_p_and_differ_between_images(analyzed_shards):
    masks = stored(analyzed_shards)
    assert len(masks) == 60
    x, y = np.arange(N) % GRID[1], np.arange(N) // GRID[1]
    for win, rnd, _, _ in masks.values():
        assert np.array_equal(win[:, 2] - win[:, 0], rnd[:, 2] - rnd[:, 0])  # same w
        assert np.array_equal(win[:, 3] - win[:, 1], rnd[:, 3] - rnd[:, 1])  # same h
        assert ((rnd[:, 0] <= x) & (x <= rnd[:, 2]) & (rnd[:, 1] <= y) & (y <= rnd[:, 3])).all()
        assert (
            (rnd[:, :2] >= 0).all() and (rnd[:, 2] < GRID[1]).all() and (rnd[:, 3] < GRID[0]).all()
        )
    placed = {tuple(r.ravel()) for _, r, _, _ in masks.values()}
    orders = {tuple(o) for _, _, _, o in masks.values()}
    assert len(placed) > 50 and len(orders) == 60  # a different draw per image
    # the draw is the key's: recomputed from the key and the stored AWD windows alone
    for key, (win, rnd, _, order) in list(masks.items())[:5]:
        again = random_controls(key, {0.1: win}, GRID)
        assert np.array_equal(again[mask_names(0.1, "random")[0]], rnd)
        assert np.array_equal(again[mask_names(0.1, "random")[1]], order)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (14, 14)])
def test_all_alphas_placed_at_once_are_each_alphas_own_draw(grid):
    """``random_controls`` places every alpha's windows in one batch; each is still
    ``random_windows_like`` of that alpha's windows with that alpha's own generator."""
    alphas = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5]
    for k in range(4):
        key = f"train_{k:08d}"
        wins = {a: local_windows(1, grid, seed=10 * k + i, reach=4)[0].numpy()
                for i, a in enumerate(alphas)}  # fmt: skip
        got = random_controls(key, wins, grid)
        for a in alphas:
            gen = control_generator(key, f"windows/{alpha_tag(a)}")
            want = random_windows_like(torch.from_numpy(wins[a])[None], grid, gen)[0]
            assert np.array_equal(got[mask_names(a, "random")[0]], want.numpy())


@pytest.mark.parametrize("beta", [0.2, 0.5])
def test_random_drop_drops_floor_beta_n_patches(analyzed_shards, beta):
    for _, _, _, order in stored(analyzed_shards).values():
        assert sorted(order) == list(range(N))  # a permutation: its first floor(beta N) go
        keep = ia.dip_keep(torch.from_numpy(order)[None], beta)
        assert int((~keep).sum()) == ia.dip_drop_count(beta, N) == int(beta * N)


def test_a_control_reads_the_same_draw_in_every_epoch_and_rank(analyzed_shards):
    masks = stored(analyzed_shards)

    def loader(rank, control):
        dm = ShardDataModule(analyzed_shards, batch_size=8, num_workers=0, img_size=16,
                             alpha=0.1, use_masks=True, control=control, hflip=False)  # fmt: skip
        return dm.make_loader("test", rank=rank, world_size=2)

    seen: dict[str, list] = {}
    for _epoch in range(2):
        for rank in (0, 1):
            for batch in loader(rank, "random"):
                for key, win, order in zip(batch["key"], batch["windows"], batch["dip_order"],
                                           strict=True):  # fmt: skip
                    seen.setdefault(key, []).append((win.numpy(), order.numpy()))
    assert set(seen) == set(masks)
    for key, reads in seen.items():
        assert len(reads) == 2
        for win, order in reads:
            assert np.array_equal(win, masks[key][1]) and np.array_equal(order, masks[key][3])
    real = next(iter(loader(0, None)))
    key = real["key"][0]
    assert np.array_equal(real["windows"][0].numpy(), masks[key][0])  # null: the teacher's


def test_controls_are_refused_where_they_cannot_run(analyzed_shards, tmp_path, make_cfg):
    from winft_lightning.stages.validate import ConfigError, validate_config

    with pytest.raises(MaskError, match=r"data\.control"):
        ShardDataModule(analyzed_shards, img_size=16, alpha=0.1, control="random")  # no masks
    with pytest.raises(MaskError, match=r"data\.control=.shuffled."):
        ShardDataModule(analyzed_shards, img_size=16, alpha=0.1, use_masks=True,
                        control="shuffled")  # fmt: skip
    old = tmp_path / "old_masks"  # a mask set made before the controls were stored
    shutil.copytree(analyzed_shards, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("controls")
    manifest["root"] = str(old)
    (old / "manifest.json").write_text(json.dumps(manifest))
    dm = ShardDataModule(old, img_size=16, alpha=0.1, use_masks=True, control="random")
    with pytest.raises(MaskError, match="analyze it again"):
        dm.setup()
    with pytest.raises(ConfigError, match=r"data\.control=random"):
        validate_config(make_cfg("experiment=fmnist_vit", "debug=tiny", "data.control=random"))
    validate_config(make_cfg("experiment=fmnist_awd_vit", "debug=tiny", "data.control=random"))


def test_the_teacher_is_the_same_for_a_control_arm(make_cfg, digits_shards):
    from winft_lightning.stages.cache import teacher_key

    arm = make_cfg("experiment=fmnist_awd_vit", "debug=tiny")
    control = make_cfg("experiment=fmnist_awd_vit", "debug=tiny", "data.control=random")
    assert teacher_key(arm, digits_shards) == teacher_key(control, digits_shards)
