"""The retrained controls, stored beside the teacher's masks: SPEC 9's random windows of AWD's
w x h containing p and random drop order, each drawn from the image key; SPEC 10's windows of
AWD's w x h centred on p and the blankest-first order (ties by a permutation seeded by the key);
each read through the same data path as the masks it replaces (``data.control=...``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import local_windows
from winft_lightning.core import baselines as B
from winft_lightning.core import interactions as ia
from winft_lightning.core.claims import centred_windows_like, random_windows_like
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.errors import MaskError
from winft_lightning.data.masks import (
    alpha_tag,
    blank_orders,
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


# ---- SPEC 10's controls without a teacher: centred windows, the blankest patches dropped ----


def stored_members(root, names_shapes):
    """{key: [array of each (name, shape)]} of every test image of the mask set ``root``."""
    test = read_manifest(root)["splits"]["test"]
    out = {}
    for shard, count in zip(test["shards"], test["shard_counts"], strict=True):
        for key, members in iter_tar(root / shard, count):
            arrays = []
            for name, shape in names_shapes:
                member, enc = find_member(members, name)
                arrays.append(decode_mask(members[member], enc, shape).astype(np.int64))
            out[key] = arrays
    return out


def views01(root):
    """{key: the analyzed view in 0..1 [3, H, W]} of every test image (mean 0, std 1)."""
    dm = ShardDataModule(root, batch_size=16, num_workers=0, img_size=16, hflip=False,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # fmt: skip
    return {k: x for b in dm.make_loader("test") for k, x in zip(b["key"], b["image"], strict=True)}


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_centred_windows_have_awd_size_contain_p_and_are_centred_on_p(analyzed_shards, alpha):
    win_name, dip_name = mask_names(alpha, "centred")
    assert (win_name, dip_name) == (f"awd_centred.{alpha_tag(alpha)}", "dip_order")
    masks = stored_members(analyzed_shards, [(mask_names(alpha)[0], (N, 4)), (win_name, (N, 4))])
    x, y = np.arange(N) % GRID[1], np.arange(N) // GRID[1]
    moved = 0
    for win, cen in masks.values():
        wd, ht = win[:, 2] - win[:, 0] + 1, win[:, 3] - win[:, 1] + 1
        assert np.array_equal(cen[:, 2] - cen[:, 0] + 1, wd)  # the teacher's w
        assert np.array_equal(cen[:, 3] - cen[:, 1] + 1, ht)  # and h
        assert ((cen[:, 0] <= x) & (x <= cen[:, 2]) & (cen[:, 1] <= y) & (y <= cen[:, 3])).all()
        assert (
            (cen[:, :2] >= 0).all() and (cen[:, 2] < GRID[1]).all() and (cen[:, 3] < GRID[0]).all()
        )
        # centred on p: start x_p - w // 2 wherever that fits, else shifted into the grid
        fits = (x - wd // 2 >= 0) & (x - wd // 2 + wd <= GRID[1])
        assert np.array_equal(cen[fits, 0], (x - wd // 2)[fits])
        fits = (y - ht // 2 >= 0) & (y - ht // 2 + ht <= GRID[0])
        assert np.array_equal(cen[fits, 1], (y - ht // 2)[fits])
        want = centred_windows_like(torch.from_numpy(win)[None], GRID)[0].numpy()
        assert np.array_equal(cen, want)  # C2's centred control, exactly
        moved += int((cen != win).any())
    assert moved > 0  # the teacher's windows are not all centred already


def test_blank_order_drops_the_blankest_first_with_key_seeded_ties(analyzed_shards):
    name = mask_names(0.1, "blank")[1]
    assert mask_names(0.1, "blank") == ("awd.a0100", "dip_order_blank")
    masks = stored_members(analyzed_shards, [(name, (N,))])
    views = views01(analyzed_shards)
    for key, (order,) in masks.items():
        scores = B.blank_scores(views[key][None], GRID)[0].numpy()
        assert sorted(order) == list(range(N))
        for beta in (0.2, 0.5):
            k = ia.dip_drop_count(beta, N)
            keep = ia.dip_keep(torch.from_numpy(order)[None], beta)[0].numpy()
            assert int((~keep).sum()) == k == int(beta * N)  # DIP's count
            assert scores[~keep].max() <= scores[keep].min()  # the k lowest blank scores
        assert (np.diff(scores[order]) >= 0).all()
        # the claims pass's blank order (C3, seed 0), recomputed from the pixels and the key
        ties = B.tie_permutations([B.key_seed(key, 0)], N)
        want = B.ascending_order(B.blank_scores(views[key][None], GRID), ties)[0].numpy()
        assert np.array_equal(order, want)
    # ties: the same pixels with the top half black (patches 0-7 blank, all scoring 0): the
    # blank half first, in an order another key changes and the same key repeats
    x = views[next(iter(masks))][None].clone()
    x[..., :8, :] = 0.0
    orders = blank_orders(x.expand(3, -1, -1, -1), ["test_a", "test_b", "test_a"], GRID)
    assert all(set(o[:8].tolist()) == set(range(8)) for o in orders)
    assert torch.equal(orders[0], orders[2]) and not torch.equal(orders[0, :8], orders[1, :8])
    assert torch.equal(orders[0, 8:], orders[1, 8:])  # only the ties moved
    assert not torch.equal(orders[0, :8], torch.arange(8))  # not by index (SPEC 10)


@pytest.mark.parametrize("control", ["centred", "blank"])
def test_the_datamodule_reads_a_control_in_place_of_the_member_it_replaces(
    analyzed_shards, control
):
    names = [(mask_names(0.1)[0], (N, 4)), (mask_names(0.1)[1], (N,)),
             (mask_names(0.1, control)[0], (N, 4)), (mask_names(0.1, control)[1], (N,))]  # fmt: skip
    masks = stored_members(analyzed_shards, names)
    dm = ShardDataModule(analyzed_shards, batch_size=16, num_workers=0, img_size=16, alpha=0.1,
                         use_masks=True, control=control, hflip=False)  # fmt: skip
    dm.setup()
    seen = 0
    for batch in dm.make_loader("test"):
        for key, win, order in zip(batch["key"], batch["windows"], batch["dip_order"], strict=True):
            teacher_win, teacher_order, cwin, corder = masks[key]
            assert np.array_equal(win.numpy(), cwin) and np.array_equal(order.numpy(), corder)
            if control == "centred":  # windows only: the teacher's own DIP order
                assert np.array_equal(order.numpy(), teacher_order)
            else:  # the order only: the teacher's own windows
                assert np.array_equal(win.numpy(), teacher_win)
                assert not np.array_equal(order.numpy(), teacher_order)
            seen += 1
    assert seen == 60


def test_a_control_the_mask_set_or_the_run_lacks_is_refused(analyzed_shards, tmp_path, make_cfg):
    from winft_lightning.stages.validate import ConfigError, validate_config

    older = tmp_path / "format2"  # a mask set made before SPEC 10's controls were stored
    shutil.copytree(analyzed_shards, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["controls"] = ["random"]
    for c in ("centred", "blank"):
        manifest["mask_members"]["controls"].pop(c)
    manifest.pop("mask_format")
    manifest["root"] = str(older)
    (older / "manifest.json").write_text(json.dumps(manifest))
    for control in ("centred", "blank"):
        dm = ShardDataModule(older, img_size=16, alpha=0.1, use_masks=True, control=control)
        with pytest.raises(MaskError, match=rf"data\.control={control} .*analyze it again"):
            dm.setup()
    ShardDataModule(older, img_size=16, alpha=0.1, use_masks=True, control="random").setup()
    ShardDataModule(older, img_size=16, alpha=0.1, use_masks=True).setup()  # still readable
    # a control must replace something the run reads: blank replaces only the DIP order
    for overrides in (["experiment=fmnist_awd_vit"], ["experiment=fmnist_winft", "model.beta=0"]):
        with pytest.raises(ConfigError, match=r"data\.control=blank replaces only the DIP order"):
            validate_config(make_cfg(*overrides, "debug=tiny", "data.control=blank"))
    for overrides in (["experiment=fmnist_awd_dip_vit", "data.control=blank"],
                      ["experiment=fmnist_winft", "model.beta=0.2", "data.control=blank"],
                      ["experiment=fmnist_awd_vit", "data.control=centred"]):  # fmt: skip
        validate_config(make_cfg(*overrides, "debug=tiny"))
